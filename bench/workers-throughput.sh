#!/usr/bin/env bash
# Builds per minute with 1, 2 and 3 `builder worker`s over one PostgreSQL store, in figures (a
# benchmark, not a test), and how close the growth is to linear.
#
# For each worker count W (1, 2, 3): a fresh database on the PostgreSQL server of --store; one
# `builder serve --no-worker` on it; W workers, each with --max-concurrent-builds M, worker i on
# engine i mod 2: the machine's engine (DOCKER_HOST unset) or the second engine
# scripts/second-engine.sh starts (its own data root and bridge), so with 3 workers two share the
# first engine. B builds of 10 trivial steps each (`builder/busybox true`, one after the other)
# are submitted through the API at once, before the workers start; the clock runs from the first
# worker's start to the last build's end (the server's finishTime). Every build must end SUCCESS.
#
#   builds/min    B / that time
#   vs linear     builds/min with W workers / (W x builds/min with 1 worker)
#
# On one machine the workers share its cores and its disk: the ratio measures how builder's
# queue and leases scale only where the machine has cores to spare; on a 2-core machine it is
# bounded by the engines' own CPU (each step is a container created, started, waited for and
# removed), which is what the figure shows there.
#
# Usage:  bench/workers-throughput.sh [--store postgres://USER:PASSWORD@HOST:PORT/DATABASE]
#         (after scripts/dev-env.sh and `cargo build --release`; as root, to start the second
#         engine). DATABASE is where the script may CREATE and DROP databases of its own; default
#         the dev-env's postgres://builder:builder@127.0.0.1:5432/postgres.
# Env:    B=30 M=2             builds per worker count, builds each worker runs at once
#         BUILDER=target/release/builder   the binary to measure
#         KEEP=1               keep the temp dir (logs)
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")/.." && pwd)"
B="${B:-30}" M="${M:-2}"
BUILDER="${BUILDER:-$here/target/release/builder}"
SECRET="builder-bench-workers"
export BUILDER_API_TOKEN="builder-bench-token"
bench=workers-throughput.sh
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"

postgres="postgres://builder:builder@127.0.0.1:5432/postgres"
if [ "${1:-}" = --store ]; then
  [[ "${2:-}" == postgres://* ]] || die "--store takes a postgres:// URL"
  postgres="$2"
  shift 2
fi
only_help "B, M" "$@"
positive_integers B M
need_tools psql=postgresql-client curl=curl jq=jq bc=bc
need_engine
second="$("$here/scripts/second-engine.sh")"
engines=("" "$second")

tmp="$(mktemp -d "${TMPDIR:-/tmp}/builder-bench-workers.XXXXXX")"
pids=()
databases=()
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  local p d
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for d in "${databases[@]}"; do psql -q "$postgres" -c "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

config="steps:"
for _ in $(seq 1 10); do config+=$'\n- name: builder/busybox\n  args: [\"true\"]'; done
body="$(jq -n --arg config "$config" '{config: $config}')"

api() { # api METHOD PATH [BODY]
  curl -sfS -X "$1" -H "Authorization: Bearer $BUILDER_API_TOKEN" ${3:+--data-binary "$3"} "http://$serve_addr$2"
}

# measure W: writes "SECONDS BUILDS_PER_MINUTE" to $tmp/result-W
measure() {
  local w="$1" db url i started finished ended
  db="builder_bench_workers_$$_$w"
  url="${postgres%/*}/$db"
  psql -q "$postgres" -c "CREATE DATABASE $db" >/dev/null || die "cannot create a database on $postgres"
  databases+=("$db")
  start_serve "$tmp/serve-$w.log" "$tmp/serve-$w" --listen 127.0.0.1:0 \
    --no-worker --store "$url"
  pids+=("$serve_pid")
  : >"$tmp/ids-$w"
  for ((i = 0; i < B; i++)); do
    api POST /v1/builds "$body" | jq -r .build >>"$tmp/ids-$w"
  done
  started="$(date +%s.%N)"
  for ((i = 0; i < w; i++)); do
    local engine="${engines[$((i % 2))]}"
    if [ -n "$engine" ]; then export DOCKER_HOST="$engine"; else unset DOCKER_HOST; fi
    BUILDER_DATA_DIR="$tmp/worker-$w-$i" "$BUILDER" worker --store "$url" --name "bench-$w-$i" \
      --max-concurrent-builds "$M" 2>>"$tmp/worker-$w-$i.log" &
    pids+=($!)
  done
  unset DOCKER_HOST
  while :; do
    api GET "/v1/builds?limit=1000" >"$tmp/builds-$w.json"
    [ "$(jq '[.builds[] | select(.status == "QUEUED" or .status == "WORKING")] | length' "$tmp/builds-$w.json")" -eq 0 ] && break
    sleep 0.5
  done
  ended="$(jq -r '[.builds[].finishTime] | max' "$tmp/builds-$w.json")"
  finished="$(date -d "$ended" +%s.%N)"
  local failed
  failed="$(jq '[.builds[] | select(.status != "SUCCESS")] | length' "$tmp/builds-$w.json")"
  [ "$failed" -eq 0 ] || die "$failed build(s) of $w worker(s) did not succeed; see $tmp (KEEP=1)"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
  awk -v s="$(echo "$finished - $started" | bc -l)" -v b="$B" \
    'BEGIN { printf "%.1f %.1f\n", s, 60 * b / s }' >"$tmp/result-$w"
}

load_before="$(load_average)"
echo "builder workers throughput: $B builds of 10 steps per worker count, $M at once per worker" >&2
declare -A seconds rate
for w in 1 2 3; do
  echo "$w worker(s)..." >&2
  measure "$w"
  read -r "seconds[$w]" "rate[$w]" <"$tmp/result-$w"
done
load_after="$(load_average)"

echo
printf 'builder workers throughput, %s, %s cores, load %s -> %s\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$load_before" "$load_after"
printf '%s; PostgreSQL %s at %s; engines: %s and %s\n' "$(describe_binary)" \
  "$(psql -tAq "$postgres" -c 'SHOW server_version' | cut -d' ' -f1)" "${postgres#*@}" \
  "unix:///var/run/docker.sock" "$second"
printf '%s builds of 10 steps (builder/busybox true) per run; each worker --max-concurrent-builds %s\n\n' "$B" "$M"
printf '%-10s %-34s %10s %12s %10s\n' "workers" "engines" "seconds" "builds/min" "vs linear"
for w in 1 2 3; do
  case "$w" in 1) where="first" ;; 2) where="first, second" ;; 3) where="first, second, first" ;; esac
  printf '%-10s %-34s %10s %12s %10s\n' "$w" "$where" "${seconds[$w]}" "${rate[$w]}" \
    "$(awk -v r="${rate[$w]}" -v one="${rate[1]}" -v w="$w" 'BEGIN { printf "%.2f", r / (w * one) }')"
done
