# shellcheck shell=bash disable=SC2034,SC2154 # sets and reads the sourcing script's variables
# Shell shared by the benchmarks that run `builder serve` (webhooks.sh, chaos.sh, load.sh); sourced,
# not run. The sourcing script sets `here` (the repository) and `bench` (its name, for messages)
# first.

die() { echo "$bench: $*" >&2; exit 1; }

# Prints the script's header comment (from line 2 to `set -euo`) for -h/--help.
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# only_help HINT ARG...: -h/--help prints the usage and exits; any other argument stops the script
# (sizes come from the environment; HINT names the variables).
only_help() {
  local hint="$1"
  shift
  case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) die "no arguments (sizes come from $hint; see --help)" ;;
  esac
}

# positive_integers VAR...: stops unless each variable holds a positive integer.
positive_integers() {
  local v
  for v in "$@"; do [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"; done
}

# need_tools TOOL=PACKAGE...: installs the Debian packages of the missing tools (as root, as
# scripts/dev-env.sh does), or stops saying what is missing.
need_tools() {
  local pair missing=()
  for pair in "$@"; do command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run this as root once (it installs them with apt-get), or install them"
  echo "$bench: installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_engine: `builder serve` connects to the Docker engine at start.
need_engine() {
  [ -x "$BUILDER" ] || die "no binary at $BUILDER; run \`cargo build --release\` in $here"
  docker info >/dev/null 2>&1 || die "the Docker engine is not reachable; run scripts/dev-env.sh (as root)"
}

# What was measured: the commit and when the binary was built.
describe_binary() {
  if [ "$BUILDER" = "$here/target/release/builder" ]; then
    echo "builder $(git -C "$here" describe --always --dirty 2>/dev/null || echo "(no git)") (binary built $(date -u -r "$BUILDER" +%Y-%m-%dT%H:%MZ))"
  else
    echo "builder $BUILDER (built $(date -u -r "$BUILDER" +%Y-%m-%dT%H:%MZ))"
  fi
}

# start_serve LOG DATA_DIR SERVE_ARGS...: starts `builder serve` (stderr appended to LOG, the
# webhook secret from $SECRET) and waits until it listens; sets serve_pid and serve_addr
# (HOST:PORT). Stops the script if it exits or does not listen within 30 s.
start_serve() {
  local log="$1" data="$2" p addr=""
  shift 2
  local lines_before
  lines_before="$( (grep -c . "$log" 2>/dev/null) || echo 0)"
  BUILDER_DATA_DIR="$data" BUILDER_WEBHOOK_SECRET="$SECRET" "$BUILDER" serve "$@" 2>>"$log" &
  p=$!
  for _ in $(seq 1 300); do
    # Only this start's line counts: LOG may hold earlier runs' (chaos.sh restarts the server).
    addr="$(tail -n +"$((lines_before + 1))" "$log" | sed -n 's|.* listening on http://\([^ ]*\) .*|\1|p' | head -n 1)"
    [ -n "$addr" ] && break
    kill -0 "$p" 2>/dev/null || { tail -n 20 "$log" >&2; die "builder serve exited at start"; }
    sleep 0.1
  done
  [ -n "$addr" ] || { tail -n 20 "$log" >&2; die "builder serve did not listen within 30 s"; }
  serve_pid=$p serve_addr=$addr
}

# push_fixture DIR CLOUDBUILD_YAML: a repository acme/app (a bare one under DIR/github, which
# `serve` fetches through fixture_args' --git-url-rewrite) whose master holds CLOUDBUILD_YAML; a
# trigger (DIR/triggers/push.yaml) that every push of its master fires; and DIR/payload.json, a real
# delivery (webhooks/) rewritten to be that push. Sets fixture_args (serve's --triggers and
# --git-url-rewrite).
push_fixture() {
  local dir="$1" commit
  git init -q --bare "$dir/github/acme/app.git"
  git clone -q "$dir/github/acme/app.git" "$dir/work" 2>/dev/null
  printf '%s\n' "$2" >"$dir/work/cloudbuild.yaml"
  git -C "$dir/work" add -A
  git -C "$dir/work" -c user.name=bench -c user.email=bench@localhost commit -q -m "the build"
  git -C "$dir/work" push -q origin HEAD:refs/heads/master
  commit="$(git -C "$dir/work" rev-parse HEAD)"
  mkdir -p "$dir/triggers"
  printf 'name: push\nfilename: cloudbuild.yaml\ngithub: {owner: acme, name: app, push: {branch: "^master$"}}\n' \
    >"$dir/triggers/push.yaml"
  python3 - "$here/webhooks/github/push/branch-update.json" "$commit" >"$dir/payload.json" <<'PY'
import json, sys
payload = json.load(open(sys.argv[1]))
payload.update(ref="refs/heads/master", before="0" * 40, after=sys.argv[2], created=True)
payload["head_commit"]["id"] = sys.argv[2]
repository = payload["repository"]
repository.update(name="app", full_name="acme/app", clone_url="https://github.com/acme/app.git")
repository["owner"].update(login="acme", name="acme")
print(json.dumps(payload))
PY
  fixture_args=(--triggers "$dir/triggers" --git-url-rewrite "https://github.com/=$dir/github/")
}

# free_port: a loopback port nothing listens on now (for a server that restarts on the same one).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# sql DB QUERY: one SQLite query, rows one a line, columns split by '|'.
sql() { sqlite3 -batch -noheader "$1" "$2"; }

load_average() { cut -d' ' -f1-3 /proc/loadavg; }
