#!/usr/bin/env bash
# Queued → started latency of builds run by `builder worker` over PostgreSQL, in figures (a
# benchmark, not a test): a worker woken by the store (LISTEN/NOTIFY, the default) against one
# that finds builds by reading the queue every second (`--no-listen --poll-ms 1000`), in one run.
#
# One `builder serve --no-worker` and the two workers share a fresh database on the server that
# scripts/dev-env.sh starts; each worker has a pool of its own (`notify`, `poll`). Builds of one
# trivial step are submitted through the API one at a time, alternating between the pools, each
# after the previous one ended, so that nothing else waits in the queue or runs; a random pause
# (0 to 1 s) before each submission spreads them over the poll's phase. The latency is the
# store's own: a build's start_time (set by the claim) minus its create_time (set when the API
# queued it), both in milliseconds on the server's clock. p50, p99 and max per worker, and the
# ratios poll / notify, are printed.
#
# Usage:  bench/workers.sh          (after scripts/dev-env.sh and `cargo build --release`)
# Env:    N=100                     builds per worker
#         PG=postgres://builder:builder@127.0.0.1:5432/postgres   the server (a database is made
#                                   there and dropped after)
#         BUILDER=target/release/builder
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")/.." && pwd)"
bench=workers.sh
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"
N="${N:-100}"
PG="${PG:-postgres://builder:builder@127.0.0.1:5432/postgres}"
BUILDER="${BUILDER:-$here/target/release/builder}"
SECRET="bench"
TOKEN="bench-token"
only_help "N, PG" "$@"
positive_integers N
need_tools psql=postgresql-client curl=curl
need_engine
psql "$PG" -qAtc 'SELECT 1' >/dev/null || die "PostgreSQL at $PG is not reachable; run scripts/dev-env.sh (as root)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/builder-bench-workers.XXXXXX")"
database="bench_workers_$$"
url="${PG%/*}/$database"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  psql "$PG" -qAtc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] && echo "kept $tmp" >&2 || rm -rf "$tmp"
}
trap cleanup EXIT
psql "$PG" -qAtc "CREATE DATABASE $database" >/dev/null

printf '%s' "$TOKEN" >"$tmp/token"
mkdir -p "$tmp/serve" "$tmp/notify" "$tmp/poll"
start_serve "$tmp/serve.log" "$tmp/serve" --listen 127.0.0.1:0 --store "$url" --no-worker \
  --api-token-file "$tmp/token"
pids+=("$serve_pid")
start_worker() {
  local pool="$1"
  shift
  BUILDER_DATA_DIR="$tmp/$pool" "$BUILDER" worker --store "$url" --pool "$pool" --name "bench-$pool" \
    "$@" 2>>"$tmp/$pool.log" &
  pids+=("$!")
}
start_worker notify
start_worker poll --no-listen --poll-ms 1000
for pool in notify poll; do
  for _ in $(seq 1 300); do grep -q "worker started" "$tmp/$pool.log" && break; sleep 0.1; done
  grep -q "worker started" "$tmp/$pool.log" || { tail -n 20 "$tmp/$pool.log" >&2; die "the $pool worker did not start"; }
done

# submit POOL: queues a build of POOL through the API; prints its id.
submit() {
  python3 -c 'import json, sys
config = "steps:\n- name: builder/busybox\n  args: [\"true\"]\noptions:\n  pool: {name: projects/p/locations/l/workerPools/%s}\n"
print(json.dumps({"config": config % sys.argv[1]}))' "$1" |
    curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      --data @- "http://$serve_addr/v1/builds" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["build"])'
}
# until_done ID: waits for the build to end; stops the script if it did not succeed.
until_done() {
  local status=""
  for _ in $(seq 1 1200); do
    status="$(psql "$url" -qAtc "SELECT status FROM builds WHERE id = '$1'")"
    case "$status" in SUCCESS) return 0 ;; QUEUED|WORKING) sleep 0.05 ;; *) break ;; esac
  done
  die "build $1 ended $status (logs in $tmp; KEEP=1 keeps them)"
}

echo "$(describe_binary); $N builds per worker; load $(load_average)" >&2
for i in $(seq 1 "$N"); do
  for pool in notify poll; do
    sleep "$(python3 -c 'import random; print(random.random())')"
    until_done "$(submit "$pool")"
  done
  [ $((i % 10)) -eq 0 ] && echo "  $i/$N" >&2
done

psql "$url" -qAt -F' ' -c "SELECT pool, start_time - create_time FROM builds" >"$tmp/latency"
python3 - "$tmp/latency" <<'PY'
import sys
latency = {}
for line in open(sys.argv[1]):
    pool, ms = line.split()
    latency.setdefault(pool, []).append(int(ms))
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]
rows = {pool: (pct(v, 50), pct(v, 99), max(v)) for pool, v in latency.items()}
print(f"{'queued -> started (ms)':<34}{'p50':>8}{'p99':>8}{'max':>8}")
for pool, name in (("notify", "LISTEN/NOTIFY"), ("poll", "poll every 1 s (--no-listen)")):
    print(f"{name:<34}" + "".join(f"{v:>8}" for v in rows[pool]))
ratios = [rows["poll"][i] / max(rows["notify"][i], 1) for i in range(3)]
print(f"{'ratio poll / notify':<34}" + "".join(f"{r:>8.1f}" for r in ratios))
PY
echo "load $(load_average)" >&2
