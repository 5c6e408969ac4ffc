#!/usr/bin/env bash
# builder serve under load (a benchmark, not a test): does its memory and its store stay bounded?
#
# One `builder serve` (SQLite store) receives, from bench/send.py:
#   1. FORGED deliveries whose signatures are wrong (a stranger's), at FORGED_RATE a second: each
#      is answered 401 and recorded as a rejected delivery, of which the store keeps the newest
#      1,000 and a count;
#   2. then BUILDS signed push deliveries of acme/app's master (a local bare repository, one
#      trigger) at BUILD_RATE a second, each queueing a one-step build (builder/busybox) that
#      prints LOG_BYTES of base64 text (random bytes: it compresses as real output does),
#      --max-concurrent-builds AT_ONCE; the server runs them all (at most DRAIN seconds).
# It reports the server's peak RSS (VmHWM from /proc) after each phase, the store's size (builds.db
# + its WAL) while the server is up after the last build and after it stops (SIGTERM), against the
# bounds in bench/README.md:
#   peak RSS <= 256 MB; store <= 1.2 x the log bytes printed + 16 MB; rejected deliveries kept
#   <= 1,000, each one answered 401 counted. Exit 1 if one is missed or a delivery is answered otherwise.
#
# Usage:  bench/load.sh          (after scripts/dev-env.sh and `cargo build --release`)
# Env:    FORGED=10000 FORGED_RATE=300      forged deliveries, a second
#         BUILDS=1000 BUILD_RATE=20         builds queued, deliveries a second
#         LOG_BYTES=1048576 AT_ONCE=2       log per build; --max-concurrent-builds
#         DRAIN=3600                        at most this many seconds for the builds to run
#         BUILDER=target/release/builder   KEEP=1 keeps the temp dir
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")/.." && pwd)"
FORGED="${FORGED:-10000}" FORGED_RATE="${FORGED_RATE:-300}" BUILDS="${BUILDS:-1000}" BUILD_RATE="${BUILD_RATE:-20}"
LOG_BYTES="${LOG_BYTES:-1048576}" AT_ONCE="${AT_ONCE:-2}" DRAIN="${DRAIN:-3600}"
BUILDER="${BUILDER:-$here/target/release/builder}"
SECRET="builder-bench-load-secret"
IMAGE="builder/busybox"
RSS_BOUND_MB=256 STORE_FACTOR=1.2 STORE_FIXED_MB=16 REJECTED_KEPT=1000
bench=load.sh
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"

only_help "FORGED, BUILDS, LOG_BYTES, ..." "$@"
positive_integers FORGED FORGED_RATE BUILDS BUILD_RATE LOG_BYTES AT_ONCE DRAIN
need_tools sqlite3=sqlite3 git=git python3=python3
need_engine
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no local $IMAGE; run scripts/dev-env.sh"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/builder-bench-load.XXXXXX")"
serve_pid=""
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  [ -n "$serve_pid" ] && { kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; }
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# The step prints exactly LOG_BYTES: base64 (76-column lines) of random bytes, cut. No `$` in the
# script: builder would substitute it.
random_bytes=$((LOG_BYTES * 3 / 4 + 3))
push_fixture "$tmp" "$(printf "steps:\n- name: %s\n  args: ['sh', '-c', 'head -c %d /dev/urandom | base64 | head -c %d']\n" \
  "$IMAGE" "$random_bytes" "$LOG_BYTES")"
data="$tmp/data" db="$tmp/data/builds.db"
start_serve "$tmp/serve.log" "$data" --listen 127.0.0.1:0 --max-concurrent-builds "$AT_ONCE" "${fixture_args[@]}"
url="http://$serve_addr/webhooks/github"

peak_rss_mb() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$serve_pid/status"; }
store_mb() { du -cb "$db" "$db-wal" 2>/dev/null | awk 'END { printf "%.1f", $1 / 1048576 }'; }
answers() { cut -d' ' -f2 "$1" | sort | uniq -c | awk '{ printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1 }'; }

load_before="$(load_average)"
echo "$bench: $FORGED forged deliveries, then $BUILDS builds printing $LOG_BYTES bytes each (BUILDER=$BUILDER); load $load_before" >&2
rss_start="$(peak_rss_mb)"

t0="$(date +%s)"
python3 "$here/bench/send.py" "$url" "$tmp/payload.json" "$SECRET" "$FORGED_RATE" "$FORGED" "$tmp/forged" forged
forged_for="$(($(date +%s) - t0))"
forged_401="$(awk '$2 == 401' "$tmp/forged" | grep -c . || true)"
rss_forged="$(peak_rss_mb)"
rejected_rows="$(sql "$db" "SELECT count(*) FROM deliveries WHERE verified = 0")"
rejected_count="$(sql "$db" "SELECT coalesce((SELECT value FROM counters WHERE name = 'rejected_deliveries'), 0)")"
store_forged="$(store_mb)"

t0="$(date +%s)"
python3 "$here/bench/send.py" "$url" "$tmp/payload.json" "$SECRET" "$BUILD_RATE" "$BUILDS" "$tmp/signed"
signed_202="$(awk '$2 == 202' "$tmp/signed" | grep -c . || true)"
echo "$bench: $signed_202 builds queued; running them..." >&2
while [ "$(sql "$db" "SELECT count(*) FROM builds WHERE status IN ('QUEUED', 'WORKING')")" -gt 0 ] &&
  [ $(($(date +%s) - t0)) -lt "$DRAIN" ]; do
  sleep 2
done
builds_for="$(($(date +%s) - t0))"
rss_builds="$(peak_rss_mb)"
store_up="$(store_mb)"
statuses="$(sql "$db" "SELECT group_concat(status || ' ' || n, ', ') FROM (SELECT status, count(*) AS n FROM builds GROUP BY status ORDER BY n DESC)")"
succeeded="$(sql "$db" "SELECT count(*) FROM builds WHERE status = 'SUCCESS'")"
kill -TERM "$serve_pid"
wait "$serve_pid" || echo "$bench: builder serve exited with $? on SIGTERM" >&2
serve_pid=""
store_down="$(store_mb)"
load_after="$(load_average)"

# --- figures -------------------------------------------------------------------------------------
raw_mb="$(awk -v n="$succeeded" -v b="$LOG_BYTES" 'BEGIN { printf "%.1f", n * b / 1048576 }')"
store_bound="$(awk -v r="$raw_mb" -v f="$STORE_FACTOR" -v c="$STORE_FIXED_MB" 'BEGIN { printf "%.1f", r * f + c }')"
# Every 401 answered must be counted; a request the sender gave up on may be counted or not.
unanswered=$((FORGED - forged_401))
count_bound="$forged_401"
[ "$unanswered" -eq 0 ] || count_bound="$forged_401-$FORGED"
count_verdict=MISSED
[ "$rejected_count" -ge "$forged_401" ] && [ "$rejected_count" -le "$FORGED" ] && count_verdict=met
verdict() { awk -v v="$1" -v b="$2" 'BEGIN { print (v <= b ? "met" : "MISSED") }'; }
echo
printf 'builder load, %s, %s cores, load %s -> %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$load_before" "$load_after"
printf '%s; SQLite store; %s forged deliveries in %s s; %s builds of one step printing %s bytes, %s at once, in %s s\n' \
  "$(describe_binary)" "$FORGED" "$forged_for" "$BUILDS" "$LOG_BYTES" "$AT_ONCE" "$builds_for"
echo
line() { printf '%-62s %12s %14s %8s\n' "$@"; }
line "figure" "value" "bound" ""
line "peak RSS at start (MB)" "$rss_start" "" ""
line "peak RSS after the forged deliveries (MB)" "$rss_forged" "<= $RSS_BOUND_MB" "$(verdict "$rss_forged" "$RSS_BOUND_MB")"
line "peak RSS after the builds (MB)" "$rss_builds" "<= $RSS_BOUND_MB" "$(verdict "$rss_builds" "$RSS_BOUND_MB")"
line "rejected deliveries kept (rows)" "$rejected_rows" "<= $REJECTED_KEPT" "$(verdict "$rejected_rows" "$REJECTED_KEPT")"
line "rejected deliveries counted (answered 401: $forged_401)" "$rejected_count" "= $count_bound" "$count_verdict"
line "store after the forged deliveries: db + WAL (MB)" "$store_forged" "<= $STORE_FIXED_MB" "$(verdict "$store_forged" "$STORE_FIXED_MB")"
line "log bytes printed by the builds that succeeded (MB)" "$raw_mb" "" ""
line "store after the builds, server up: db + WAL (MB)" "$store_up" "<= $store_bound" "$(verdict "$store_up" "$store_bound")"
line "store after SIGTERM: db + WAL (MB)" "$store_down" "<= $store_bound" "$(verdict "$store_down" "$store_bound")"
line "store / log bytes (after SIGTERM)" "$(awk -v s="$store_down" -v r="$raw_mb" 'BEGIN { if (r > 0) printf "%.2f", s / r; else print "-" }')" "" ""
echo "forged: $(answers "$tmp/forged"); signed: $(answers "$tmp/signed"); builds: $statuses"
echo "store bound: $STORE_FACTOR x log bytes + $STORE_FIXED_MB MB; RSS is VmHWM (the kernel's peak resident set)"

status=0
for v in "$rss_forged:$RSS_BOUND_MB" "$rss_builds:$RSS_BOUND_MB" "$rejected_rows:$REJECTED_KEPT" \
  "$store_forged:$STORE_FIXED_MB" "$store_up:$store_bound" "$store_down:$store_bound"; do
  [ "$(verdict "${v%%:*}" "${v#*:}")" = met ] || status=1
done
[ "$count_verdict" = met ] || status=1
[ "$forged_401" -eq "$FORGED" ] || { echo "UNEXPECTED: $((FORGED - forged_401)) forged deliveries not answered 401"; status=1; }
[ "$signed_202" -eq "$BUILDS" ] || { echo "UNEXPECTED: $((BUILDS - signed_202)) signed deliveries not answered 202"; status=1; }
[ "$succeeded" -eq "$BUILDS" ] || { echo "UNEXPECTED: $((BUILDS - succeeded)) builds did not succeed"; status=1; }
[ "$status" -eq 0 ] && echo "bounds met" || echo "BOUNDS MISSED (or unexpected answers; KEEP=1 keeps the store and the log)"
exit "$status"
