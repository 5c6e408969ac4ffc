#!/usr/bin/env bash
# Installs and starts the engines builder needs on this machine, idempotently:
# Debian's Docker engine, the CNCF registry on 127.0.0.1:5000, Chromium for the console's tests, Debian's
# PostgreSQL (its `main` cluster, with a role `builder` the store's tests use), and a local busybox base image
# and the standard builders (nothing can be pulled from the internet here), and a second engine
# (scripts/second-engine.sh).
# Usage: scripts/dev-env.sh            (as root; safe to run again)
# Env:   BUILDER_DATA_DIR  where the registry keeps its storage (default ~/.local/share/builder)
set -euo pipefail
# Debian's docker CLI (from docker.io) matches its engine.
export PATH="/usr/bin:$PATH"

data_dir="${BUILDER_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/builder}"
registry_addr="127.0.0.1:5000"
base_image="builder/busybox:latest"

log() { echo "dev-env: $*" >&2; }

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  [ -x /bin/busybox ] || missing+=(busybox-static)
  command -v curl >/dev/null || missing+=(curl)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  # git2's https feature builds against OpenSSL; the git tests drive the git CLI.
  command -v git >/dev/null || missing+=(git)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
  # The registry tests run a registry with htpasswd auth over TLS (scripts/auth-registry.sh);
  # tests/facing.rs serves HTTPS with a certificate openssl makes.
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  command -v openssl >/dev/null || missing+=(openssl)
  # The console's tests drive Debian's Chromium headless through chromedriver (tests/console.rs).
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  dpkg -s fonts-liberation >/dev/null 2>&1 || missing+=(fonts-liberation)
  # The store's PostgreSQL dialect is tested on Debian's server (tests/store.rs).
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
  # tests/notifications.rs mails through Debian's aiosmtpd, a real SMTP server, into a Maildir.
  dpkg -s python3-aiosmtpd >/dev/null 2>&1 || missing+=(python3-aiosmtpd)
  # tests/kfp.rs drives the real kfp SDK from PyPI in a venv it makes (cached under target/).
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

wait_for() { # wait_for DESCRIPTION COMMAND...
  local what="$1"; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$what did not come up"; return 1
}

start_dockerd() {
  if docker info >/dev/null 2>&1; then
    ip link show docker0 >/dev/null 2>&1 && return
    # Plain `docker run`s need the default bridge; a dockerd makes it only as it starts.
    log "docker0 is gone from the machine: restarting dockerd"
    local pid; pid="$(cat /var/run/docker.pid)"
    kill "$pid"
    wait_for "dockerd to stop" bash -c "! kill -0 $pid"
  fi
  log "starting dockerd (log: $data_dir/dockerd.log)"
  nohup dockerd >"$data_dir/dockerd.log" 2>&1 &
  wait_for "dockerd" docker info
}

start_registry() {
  if curl -fsS "http://$registry_addr/v2/" >/dev/null 2>&1; then return; fi
  mkdir -p "$data_dir/registry"
  cat >"$data_dir/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $data_dir/registry
  delete:
    enabled: true
http:
  addr: $registry_addr
YAML
  log "starting registry on $registry_addr (log: $data_dir/registry.log)"
  nohup docker-registry serve "$data_dir/registry.yml" >"$data_dir/registry.log" 2>&1 &
  wait_for "registry" curl -fsS "http://$registry_addr/v2/"
}

# Debian's cluster `main` of the newest installed PostgreSQL (made if the package's install did not
# make it), started if it is down, with a role `builder` (password `builder`) that may create the
# fresh databases the tests use: BUILDER_TEST_POSTGRES's default,
# postgres://builder:builder@127.0.0.1:5432/postgres.
start_postgres() {
  local version port status
  version="$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | sort -V | tail -1 | cut -d/ -f5)"
  if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" { found = 1 } END { exit !found }'; then
    log "creating PostgreSQL $version cluster main"
    pg_createcluster "$version" main >/dev/null
  fi
  read -r port status < <(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" { print $3, $4 }')
  if [ "$status" != online ]; then
    log "starting PostgreSQL $version main on port $port (log: /var/log/postgresql/postgresql-$version-main.log)"
    pg_ctlcluster "$version" main start
  fi
  wait_for "postgresql" pg_isready -q -h 127.0.0.1 -p "$port"
  if ! runuser -u postgres -- psql -p "$port" -qtAc "SELECT 1 FROM pg_roles WHERE rolname = 'builder'" | grep -q 1; then
    runuser -u postgres -- psql -p "$port" -qc "CREATE ROLE builder LOGIN CREATEDB PASSWORD 'builder'"
  fi
  # A test drops its database WITH (FORCE), which must end every backend on it: an autovacuum
  # worker there (no role of builder's) made the drop fail under load without this membership.
  runuser -u postgres -- psql -p "$port" -qc "GRANT pg_signal_backend TO builder" 2>/dev/null
  [ "$port" = 5432 ] || log "PostgreSQL listens on $port: set BUILDER_TEST_POSTGRES=postgres://builder:builder@127.0.0.1:$port/postgres"
}

import_base_image() {
  if docker image inspect "$base_image" >/dev/null 2>&1; then return; fi
  log "importing $base_image from busybox-static"
  local root; root="$(mktemp -d)"
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
  cp /bin/busybox "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/bin/sh' >>"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  echo 'nogroup:x:65534:' >>"$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$base_image" >/dev/null
  rm -rf "$root"
}

mkdir -p "$data_dir"
install_packages
start_dockerd
start_registry
start_postgres
import_base_image
"$(dirname "$0")/../builders/build.sh"
# A second engine, for tests that run workers as if on two machines (tests/workers.rs).
"$(dirname "$0")/second-engine.sh" >/dev/null
if ! ip link show docker0 >/dev/null 2>&1; then
  log "docker0 went from the machine as the second engine started (see scripts/second-engine.sh)"
  exit 1
fi
log "ready: docker $(docker version -f '{{.Server.Version}}'), registry http://$registry_addr, postgresql $(pg_lsclusters -h | awk '$2 == "main" { print $1 ":" $3 }' | tail -1), base image $base_image"
