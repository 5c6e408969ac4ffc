#!/usr/bin/env bash
# Builds the standard builder images from local sources (nothing is pulled from the internet).
# Idempotent: an image built from the same context (see build_image) is kept unless --rebuild
# is given.
# Needs the engine and the base image from scripts/dev-env.sh.
set -euo pipefail
# Debian's docker CLI (from docker.io) matches its engine.
export PATH="/usr/bin:$PATH"
cd "$(dirname "$0")"
rebuild=false
[ "${1:-}" = "--rebuild" ] && rebuild=true

log() { echo "builders: $*" >&2; }

# What an image is built from: its context's files (paths, modes, contents) and the images its
# Dockerfile starts FROM (by ID), so that a changed Dockerfile or script, a new host docker CLI or
# a rebuilt base image each make a new hash, and with it a rebuild.
context_hash() { # context_hash CONTEXT_DIR
  local context="$1"
  {
    (cd "$context" && find . -type f -printf '%p %m\n' | LC_ALL=C sort)
    (cd "$context" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    awk 'toupper($1) == "FROM" { print $2 }' "$context/Dockerfile" | while read -r base; do
      # A name that is no image is a stage of the same Dockerfile, already hashed with it.
      docker image inspect -f '{{.Id}}' "$base" 2>/dev/null || echo "$base"
    done
  } | sha256sum | cut -d' ' -f1
}

# Points TAG at IMAGE unless it already is.
tag_image() { # tag_image IMAGE TAG
  local id; id="$(docker image inspect -f '{{.Id}}' "$1")"
  [ "$(docker image inspect -f '{{.Id}}' "$2" 2>/dev/null)" = "$id" ] || docker tag "$1" "$2"
}

# Builds builders/NAME as builder/NAME:latest (and any extra tags): its directory but the README
# is the build context, plus the files a builder needs from this machine, staged by stage_NAME if
# defined. The image is labelled with the context's hash; an image whose label matches is kept
# (unless --rebuild), any other is rebuilt, so a machine with an older builder gets the new one.
build_image() { # build_image NAME [EXTRA_TAG...]
  local name="$1"; shift
  local context; context="$(mktemp -d)"
  tar -C "$name" -c --exclude=README.md . | tar -C "$context" -x
  if declare -F "stage_$name" >/dev/null; then "stage_$name" "$context"; fi
  local hash; hash="$(context_hash "$context")"
  local current
  current="$(docker image inspect -f '{{index .Config.Labels "builder.context"}}' "builder/$name:latest" 2>/dev/null || true)"
  if $rebuild || [ "$current" != "$hash" ]; then
    log "building builder/$name"
    if ! docker build -q --force-rm --label "builder.context=$hash" -t "builder/$name:latest" "$context" >"$context/build.log" 2>&1; then
      report_failure "$name" "$context/build.log"
      rm -rf "$context"
      return 1
    fi
  fi
  rm -rf "$context"
  local tag
  for tag in "$@"; do tag_image "builder/$name:latest" "$tag"; done
}

# Shows a failed build's log and names the Dockerfile line that failed.
report_failure() { # report_failure NAME BUILD_LOG
  local name="$1" build_log="$2" step line
  cat "$build_log" >&2
  # The engine numbers the failing instruction (`Step N/M : …`); find the line it starts on.
  step="$(sed -n 's|^Step \([0-9]*\)/.*|\1|p' "$build_log" | tail -n 1)"
  line="$(awk -v n="${step:-0}" 'continued { continued = /\\$/; next }
    /^[[:space:]]*(#|$)/ { next }
    ++i == n { print NR; exit }
    { continued = /\\$/ }' "$name/Dockerfile")"
  log "builder/$name failed to build: builders/$name/Dockerfile:${line:-?}: $(sed -n "${line:-0}p" "$name/Dockerfile")"
}

# Debian's CLI (from docker.io, matching the engine), not any other docker on PATH. Only the
# binary: it links nothing but libc, which builder/debian has from the same release.
stage_docker() { cp /usr/bin/docker "$1/docker"; }
# The machine's CA bundle, so that the image reaches PyPI wherever this machine does.
stage_python() { cp /etc/ssl/certs/ca-certificates.crt "$1/host-ca.crt"; }

# A minimal Debian (the machine's release) from debootstrap: the base of the service's own image.
build_debian() {
  if ! $rebuild && docker image inspect builder/debian:latest >/dev/null 2>&1; then return; fi
  local release; release="$(. /etc/os-release && echo "$VERSION_CODENAME")"
  log "building builder/debian ($release, debootstrap --variant=minbase; about a minute)"
  local root; root="$(mktemp -d)"
  debootstrap --variant=minbase "$release" "$root" http://deb.debian.org/debian >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "builder/debian:$release" >/dev/null
  docker tag "builder/debian:$release" builder/debian:latest
  rm -rf "$root"
}

build_debian
build_image docker gcr.io/cloud-builders/docker:latest
# bash is built on shell, so shell comes first; alpine is built on the imported builder/busybox.
for name in shell bash alpine git curl python; do build_image "$name"; done
