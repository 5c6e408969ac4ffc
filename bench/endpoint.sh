#!/usr/bin/env bash
# What a build's engine endpoint costs, in figures (a benchmark, not a test): the same Docker CLI
# commands through a running build's endpoint (the socket its steps see as /var/run/docker.sock)
# and through the engine's own socket, interleaved in one run:
#
#   (a) `docker build` of a 100 MB context (incompressible data, a cached `RUN`: what is timed is
#       the context's trip to the engine), its Dockerfile first in the archive (the CLI's order
#       for a Dockerfile at the context's root);
#   (b) the same context with the data first and the Dockerfile last in the archive (where the
#       CLI puts a `-f` from outside the context): the endpoint holds nothing back either way;
#   (c) 10 `docker run --rm builder/busybox true`, one after the other.
#
# The CLI runs on this machine against the endpoint's socket (/tmp/builder-endpoints/ID/…) while
# the build's step waits: the same requests a step's CLI sends, minus the step's own CPU
# placement. Each case runs R times; medians and ratios are printed (goal: <= 1.05).
#
# Usage:  bench/endpoint.sh           (after scripts/dev-env.sh and `cargo build --release`)
# Env:    R=5 MB=100 RUNS=10          rounds, context size, docker runs per round
#         BUILDER=target/release/builder
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")/.." && pwd)"
R="${R:-5}" MB="${MB:-100}" RUNS="${RUNS:-10}"
BUILDER="${BUILDER:-$here/target/release/builder}"
IMAGE="builder/busybox"

die() { echo "endpoint.sh: $*" >&2; exit 1; }
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "no arguments (sizes come from R, MB, RUNS; see --help)" ;;
esac
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash 5 (EPOCHREALTIME)"
[ -x "$BUILDER" ] || die "no binary at $BUILDER; run \`cargo build --release\` in $here"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable; run scripts/dev-env.sh (as root)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/builder-bench-endpoint.XXXXXX")"
build_pid="" id=""
cleanup() {
  if [ -n "$id" ]; then
    docker create --label "builder.build=$id" --name "bench-stop-$id" "$IMAGE" >/dev/null 2>&1 || true
  fi
  if [ -n "$build_pid" ]; then wait "$build_pid" 2>/dev/null || true; fi
  docker rmi -f bench-endpoint:ctx >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- contexts ------------------------------------------------------------------------------------
for order in first last; do
  mkdir -p "$tmp/$order"
  printf 'FROM %s\nRUN true\n' "$IMAGE" >"$tmp/$order/Dockerfile"
done
# The CLI archives a directory in name order: `Dockerfile` before `data.bin`, after `A.bin`.
head -c "$((MB * 1024 * 1024))" /dev/urandom >"$tmp/first/data.bin"
ln "$tmp/first/data.bin" "$tmp/last/A.bin"

# --- the build whose endpoint is measured ----------------------------------------------------------
# Its one step waits until a container of the build named bench-stop-ID exists (the cleanup
# makes it); the build's teardown removes it.
cat >"$tmp/cloudbuild.yaml" <<'EOF'
steps:
- name: gcr.io/cloud-builders/docker
  entrypoint: bash
  args: [-c, 'echo ready; until docker inspect bench-stop-$BUILD_ID >/dev/null 2>&1; do sleep 0.2; done']
EOF
export BUILDER_DATA_DIR="$tmp/data"
"$BUILDER" submit --no-source --config "$tmp/cloudbuild.yaml" >"$tmp/build.out" 2>&1 &
build_pid=$!
for _ in $(seq 1 300); do
  grep -q 'ready' "$tmp/build.out" 2>/dev/null && break
  sleep 0.1
done
id="$(sed -n 's/^starting build "\(.*\)"$/\1/p' "$tmp/build.out")"
[ -n "$id" ] || { cat "$tmp/build.out" >&2; die "the build did not start"; }
socket="${TMPDIR:-/tmp}/builder-endpoints/$id/docker.sock"
[ -S "$socket" ] || die "no endpoint socket at $socket"

now_us() { local t="${EPOCHREALTIME/[.,]/}"; echo "$t"; }
: >"$tmp/times"
run_case() { # run_case CASE HOST
  local i
  case "$1" in
    build_first) docker -H "$2" build -q -t bench-endpoint:ctx "$tmp/first" >/dev/null 2>&1 ;;
    build_last) docker -H "$2" build -q -t bench-endpoint:ctx "$tmp/last" >/dev/null 2>&1 ;;
    runs) for ((i = 0; i < RUNS; i++)); do docker -H "$2" run --rm "$IMAGE" true; done ;;
  esac
}
timed() { # timed CASE VIA HOST
  local start end
  start="$(now_us)"
  run_case "$1" "$3" || die "$1 through $2 failed"
  end="$(now_us)"
  awk -v s="$start" -v e="$end" -v c="$1.$2" 'BEGIN { printf "%s %.6f\n", c, (e - s) / 1e6 }' >>"$tmp/times"
}

echo "endpoint benchmark: ${MB} MB context, $RUNS docker runs, R=$R rounds; build $id" >&2
echo "warm-up..." >&2
for via in raw endpoint; do
  host="unix:///var/run/docker.sock"; [ "$via" = endpoint ] && host="unix://$socket"
  run_case build_first "$host"; run_case runs "$host"
done
for ((round = 1; round <= R; round++)); do
  echo "round $round/$R..." >&2
  # Alternate which side goes first, so that drift falls on both alike.
  if ((round % 2)); then order="raw endpoint"; else order="endpoint raw"; fi
  for c in build_first build_last runs; do
    for via in $order; do
      host="unix:///var/run/docker.sock"; [ "$via" = endpoint ] && host="unix://$socket"
      timed "$c" "$via" "$host"
    done
  done
done

median() {
  awk -v c="$1" '$1 == c { print $2 }' "$tmp/times" | sort -g | awk '
    { v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
echo
printf 'builder engine endpoint, %s, %s cores, load %s\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-52s %9s %9s %7s\n' "case (medians of $R)" "raw" "endpoint" "ratio"
row() { # row LABEL CASE
  local raw endpoint
  raw="$(median "$2.raw")" endpoint="$(median "$2.endpoint")"
  printf '%-52s %8.2fs %8.2fs %7.3f\n' "$1" "$raw" "$endpoint" "$(awk "BEGIN { print $endpoint / $raw }")"
}
row "(a) docker build, ${MB} MB context, Dockerfile first" build_first
row "(b) docker build, ${MB} MB context, Dockerfile last" build_last
row "(c) docker run --rm ... true, x$RUNS" runs
echo "goal: ratios <= 1.05"
