#!/usr/bin/env bash
# builder serve killed and restarted while it receives deliveries (a benchmark, not a test): does
# every delivery it accepted build exactly once?
#
# A sender (bench/send.py) posts signed GitHub push deliveries of acme/app's master at RATE a
# second for D seconds, each with a body of its own (a nonce field: bodies are taken once by
# their digest) and a new X-GitHub-Delivery id, to a `builder serve` on a fixed loopback port
# whose one trigger matches every push and runs a one-step build (builder/busybox `true`) of a
# local bare repository (--git-url-rewrite). Meanwhile the server is killed with SIGKILL at random
# intervals (KILL_MIN to KILL_MAX seconds) and started again at once on the same store. When the
# sender is done the server stays up until the queue has drained (no build QUEUED or WORKING, no
# delivery PENDING; at most DRAIN seconds), then stops (SIGTERM). The store (SQLite) and the
# engine's container starts (`docker events`, builder's containers are labelled with their build)
# then give:
#
#   sent        deliveries posted
#   accepted    answered 2xx: GitHub counts them delivered
#   refused     answered 5xx, or a connection error or timeout: the sender saw them fail
#   builds queued, builds ended (by status), of which INTERNAL_ERROR: running when the server was
#               killed (closed so at the next start, as documented)
#   duplicates  a delivery with more than one build, or a build whose step was started twice
#   losses      an accepted delivery with no build, a build never ended (still QUEUED or WORKING),
#               a delivery still PENDING
#
# Goal: no duplicates, no losses (exit 1 otherwise). Deliveries that the store kept although the
# sender saw them refused (the server died between its commit and its answer) are shown: they are
# built, which is no loss, and GitHub would show them failed.
#
# Usage:  bench/chaos.sh          (after scripts/dev-env.sh and `cargo build --release`)
# Env:    D=90 RATE=1             seconds of deliveries and deliveries a second
#         KILL_MIN=3 KILL_MAX=10  seconds between a (re)start and the next SIGKILL
#         BUILDS=2                --max-concurrent-builds
#         DRAIN=600               at most this many seconds for the queue to drain at the end
#         BUILDER=target/release/builder   the binary (a debug one works too)
#         KEEP=1                  keep the temp dir (repository, store, server log, answers)
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")/.." && pwd)"
D="${D:-90}" RATE="${RATE:-1}" KILL_MIN="${KILL_MIN:-3}" KILL_MAX="${KILL_MAX:-10}"
BUILDS="${BUILDS:-2}" DRAIN="${DRAIN:-600}"
BUILDER="${BUILDER:-$here/target/release/builder}"
SECRET="builder-bench-chaos-secret"
IMAGE="builder/busybox"
bench=chaos.sh
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"

only_help "D, RATE, KILL_MIN, KILL_MAX, BUILDS, DRAIN" "$@"
positive_integers D KILL_MIN KILL_MAX BUILDS DRAIN
[[ "$RATE" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "RATE must be a number of deliveries a second, not '$RATE'"
[ "$KILL_MAX" -ge "$KILL_MIN" ] || die "KILL_MAX must be at least KILL_MIN"
need_tools sqlite3=sqlite3 git=git python3=python3
need_engine
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no local $IMAGE; run scripts/dev-env.sh"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/builder-bench-chaos.XXXXXX")"
serve_pid="" events_pid="" sender_pid=""
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  local p
  for p in "$sender_pid" "$serve_pid" "$events_pid"; do
    [ -n "$p" ] && { kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; }
  done
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# --- the repository, its trigger, the payload ----------------------------------------------------
push_fixture "$tmp" "$(printf "steps:\n- name: %s\n  args: ['true']\n" "$IMAGE")"

# --- the server, its killer, the sender ----------------------------------------------------------
port="$(free_port)"
data="$tmp/data" log="$tmp/serve.log"
serve() {
  start_serve "$log" "$data" --listen "127.0.0.1:$port" --max-concurrent-builds "$BUILDS" \
    "${fixture_args[@]}"
}

docker events --filter type=container --filter event=start --filter label=builder.build \
  --format '{{index .Actor.Attributes "builder.build"}}' >"$tmp/starts" 2>/dev/null &
events_pid=$!

load_before="$(load_average)"
echo "$bench: $RATE deliveries/s for ${D}s, SIGKILL every ${KILL_MIN}-${KILL_MAX}s (BUILDER=$BUILDER); load $load_before" >&2
serve
python3 "$here/bench/send.py" "http://127.0.0.1:$port/webhooks/github" "$tmp/payload.json" "$SECRET" \
  "$RATE" "$(awk "BEGIN { print int($RATE * $D) }")" "$tmp/answers" &
sender_pid=$!
start="$(date +%s)" kills=0
while kill -0 "$sender_pid" 2>/dev/null; do
  sleep "$((KILL_MIN + RANDOM % (KILL_MAX - KILL_MIN + 1)))"
  kill -0 "$sender_pid" 2>/dev/null || break
  kill -KILL "$serve_pid"
  wait "$serve_pid" 2>/dev/null || true
  kills=$((kills + 1))
  serve
done
wait "$sender_pid" || die "the sender failed"
sender_pid=""
sent_for="$(($(date +%s) - start))"

# --- drain, then stop ----------------------------------------------------------------------------
db="$data/builds.db"
open_work() {
  sql "$db" "SELECT (SELECT count(*) FROM builds WHERE status IN ('QUEUED', 'WORKING'))
                  + (SELECT count(*) FROM deliveries WHERE state = 'PENDING')"
}
drain_start="$(date +%s)"
while [ "$(open_work)" -gt 0 ] && [ $(($(date +%s) - drain_start)) -lt "$DRAIN" ]; do sleep 1; done
drained_in="$(($(date +%s) - drain_start))"
kill -TERM "$serve_pid"
wait "$serve_pid" || echo "$bench: builder serve exited with $? on SIGTERM" >&2
serve_pid=""
sleep 1 # the last start events
kill "$events_pid" 2>/dev/null || true
wait "$events_pid" 2>/dev/null || true
events_pid=""
load_after="$(load_average)"

# --- figures -------------------------------------------------------------------------------------
python3 - "$db" "$tmp/answers" "$tmp/starts" >"$tmp/figures" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("CREATE TEMP TABLE answers (delivery TEXT PRIMARY KEY, answer TEXT)")
db.execute("CREATE TEMP TABLE starts (build TEXT)")
db.executemany("INSERT INTO answers VALUES (?, ?)", (l.split() for l in open(sys.argv[2])))
db.executemany("INSERT INTO starts VALUES (?)", ((l.strip(),) for l in open(sys.argv[3]) if l.strip()))
def one(query):
    return db.execute(query).fetchone()[0]
ok = "answer LIKE '2__'"
figures = {
    "sent": one("SELECT count(*) FROM answers"),
    "accepted": one(f"SELECT count(*) FROM answers WHERE {ok}"),
    "refused_5xx": one("SELECT count(*) FROM answers WHERE answer LIKE '5__'"),
    "refused_error": one("SELECT count(*) FROM answers WHERE answer LIKE 'ERR:%'"),
    "other": one(f"SELECT count(*) FROM answers WHERE NOT {ok} AND answer NOT LIKE '5__' AND answer NOT LIKE 'ERR:%'"),
    "errors": one("SELECT coalesce(group_concat(answer || ' x' || n, ', '), 'none') FROM "
                  "(SELECT answer, count(*) AS n FROM answers WHERE answer NOT LIKE '2__' GROUP BY answer)"),
    "kept_refused": one(f"SELECT count(*) FROM answers a JOIN deliveries d ON d.id = a.delivery "
                        f"AND d.verified = 1 WHERE NOT {ok}"),
    "deliveries": one("SELECT count(*) FROM deliveries WHERE verified = 1"),
    "queued": one("SELECT count(*) FROM builds WHERE delivery_id IS NOT NULL"),
    "ended": one("SELECT count(*) FROM builds WHERE delivery_id IS NOT NULL AND status NOT IN ('QUEUED', 'WORKING')"),
    "statuses": one("SELECT coalesce(group_concat(status || ' ' || n, ', '), 'none') FROM (SELECT status, count(*) AS n "
                    "FROM builds WHERE delivery_id IS NOT NULL GROUP BY status ORDER BY n DESC)"),
    "dup_deliveries": one("SELECT count(*) FROM (SELECT delivery_id FROM builds WHERE delivery_id IS NOT NULL "
                          "GROUP BY delivery_id HAVING count(*) > 1)"),
    "dup_runs": one("SELECT count(*) FROM (SELECT s.build FROM starts s JOIN builds b ON b.id = s.build "
                    "GROUP BY s.build HAVING count(*) > 1)"),
    "started": one("SELECT count(DISTINCT s.build) FROM starts s JOIN builds b ON b.id = s.build"),
    "lost_accepted": one(f"SELECT count(*) FROM answers a WHERE {ok} AND NOT EXISTS "
                         "(SELECT 1 FROM builds b WHERE b.delivery_id = a.delivery)"),
    "lost_open": one("SELECT count(*) FROM builds WHERE delivery_id IS NOT NULL AND status IN ('QUEUED', 'WORKING')"),
    "lost_pending": one("SELECT count(*) FROM deliveries WHERE state = 'PENDING'"),
    "unbuilt": one("SELECT count(*) FROM deliveries d WHERE d.verified = 1 AND NOT EXISTS "
                   "(SELECT 1 FROM builds b WHERE b.delivery_id = d.id)"),
}
for key, value in figures.items():
    print(f"{key}={value}")
PY
declare -A f
while IFS='=' read -r key value; do f[$key]="$value"; done <"$tmp/figures"
duplicates=$((f[dup_deliveries] + f[dup_runs]))
losses=$((f[lost_accepted] + f[lost_open] + f[lost_pending]))

echo
printf 'builder chaos, %s, %s cores, load %s -> %s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$load_before" "$load_after"
printf '%s; SQLite store; %s deliveries/s for %s s (took %s s), SIGKILL every %s-%s s: %s kills;\n' \
  "$(describe_binary)" "$RATE" "$D" "$sent_for" "$KILL_MIN" "$KILL_MAX" "$kills"
printf 'one trigger, one-step builds (%s true), --max-concurrent-builds %s; drained in %s s after the last delivery\n' \
  "$IMAGE" "$BUILDS" "$drained_in"
echo
row() { printf '%-66s %8s\n' "$1" "$2"; }
row "figure" "value"
row "deliveries sent" "${f[sent]}"
row "accepted (2xx)" "${f[accepted]}"
row "refused: 5xx" "${f[refused_5xx]}"
row "refused: connection error or timeout" "${f[refused_error]}"
[ "${f[other]}" -eq 0 ] || row "other answers (4xx: a bug of this benchmark or the server)" "${f[other]}"
row "  refused but kept by the store (built; GitHub shows them failed)" "${f[kept_refused]}"
row "verified deliveries in the store" "${f[deliveries]}"
row "builds queued" "${f[queued]}"
row "builds run to an end" "${f[ended]}"
row "builds whose step container started" "${f[started]}"
row "duplicates: deliveries with more than one build" "${f[dup_deliveries]}"
row "duplicates: builds whose step started more than once" "${f[dup_runs]}"
row "losses: accepted deliveries without a build" "${f[lost_accepted]}"
row "losses: builds never ended (QUEUED or WORKING after the drain)" "${f[lost_open]}"
row "losses: deliveries still PENDING" "${f[lost_pending]}"
row "(stored deliveries without a build, accepted or not)" "${f[unbuilt]}"
echo "answers other than 2xx: ${f[errors]}"
echo "build statuses: ${f[statuses]}  (INTERNAL_ERROR: running when the server was killed)"
echo
status=0
if [ "$duplicates" -eq 0 ] && [ "$losses" -eq 0 ] && [ "${f[other]}" -eq 0 ]; then
  echo "goal met: no duplicates, no losses over $kills kills"
else
  echo "GOAL MISSED: $duplicates duplicate(s), $losses loss(es), ${f[other]} unexpected answer(s); KEEP=1 keeps the store and the log"
  status=1
fi
exit "$status"
