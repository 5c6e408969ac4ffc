#!/usr/bin/env bash
# The webhook ingest path of `builder serve` against Debian's `webhook` package (adnanh/webhook),
# in figures (a benchmark, not a test).
#
# `wrk` drives, on loopback, a real GitHub push delivery (webhooks/github/push/branch-update.json,
# Codertocat/Hello-World, refs/heads/master), signed with X-Hub-Signature-256, each request with a
# new X-GitHub-Delivery id and a body of its own (a repeated id is a redelivery, and a repeated
# body a replay, which builder answers 200 and queues nothing: the payload gets a nonce as its
# first field), at two servers loaded with N triggers or hooks:
#
#   builder, no trigger matches   `builder serve` with N triggers that all miss the push (other
#                                 repositories, and other branches of the pushed one): the
#                                 delivery is verified, parsed, matched and recorded; 202.
#   builder, queues a build       the same N triggers with the last one matching the push: the
#                                 delivery and its QUEUED build recorded in one SQLite transaction
#                                 before the 202 (--max-concurrent-builds 0: builds never start).
#   webhook, rule not satisfied   `webhook` with N hooks, each `and` of payload-hmac-sha256 over
#                                 X-Hub-Signature-256 and a `value` match on the payload's `ref`,
#                                 posted to a hook whose ref does not match; 200.
#   builder on PostgreSQL, queues with --store postgres://…: the queueing case on a fresh database
#                                 of that server (made and dropped by the script), so the ingest
#                                 into the store several machines share is measured in the same
#                                 run, against SQLite's and webhook's.
#   webhook, rule satisfied       posted to the hook matching refs/heads/master: it answers 202
#                                 (success-http-response-code) and runs `/bin/true` in the
#                                 background (without include-command-output-in-response it does
#                                 not wait for it). Nothing is recorded anywhere.
#
# Each case runs R times for D seconds, interleaved (one run of each case per round, the order
# rotating each round) after a W-second warm-up of each. Only the intended answer counts toward a
# rate (202, 202, 200, 202 above); anything else is shown. Latencies are wrk's (whole requests,
# --timeout 30s so that slow answers are measured, not dropped). Afterwards the servers are
# stopped and the SQLite store of the queueing server is checked: every build id answered with a
# 202 must be there, QUEUED, one build per delivery, and nothing but the requests in flight when
# wrk stopped counting may be there besides.
#
# Usage:  bench/webhooks.sh [--store postgres://USER:PASSWORD@HOST:PORT/DATABASE]
#         (after scripts/dev-env.sh and `cargo build --release`); with --store, DATABASE is where
#         the script may CREATE and DROP a database of its own (the dev-env's server:
#         postgres://builder:builder@127.0.0.1:5432/postgres).
#         As root if wrk, webhook, sqlite3, openssl, curl, ss or pgrep are missing: they are
#         installed from Debian's packages (apt-get) first. Docker must be reachable: `builder serve`
#         connects to the engine at start, though no build runs here.
# Env:    D=5 R=3 W=2            seconds per run, rounds, warm-up seconds per case
#         C=16 T=2               wrk connections and threads
#         N=1000                 triggers (builder) and hooks (webhook) loaded
#         K=60000                signed bodies a run may send (each request's body is its own)
#         BUILDER=target/release/builder   the binary to measure
#         KEEP=1                 keep the temp dir (triggers, hooks, stores, logs, wrk outputs)
# Exit status 0 unless a server failed, an unexpected answer came, or the store check failed;
# missing the goals (rates x2 and x1 webhook's) is reported, not an error.
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")/.." && pwd)"
D="${D:-5}" R="${R:-3}" W="${W:-2}" C="${C:-16}" T="${T:-2}" N="${N:-1000}" K="${K:-60000}"
BUILDER="${BUILDER:-$here/target/release/builder}"
PAYLOAD="$here/webhooks/github/push/branch-update.json"
SECRET="builder-bench-webhook-secret"
bench=webhooks.sh
# shellcheck source=bench/lib.sh
. "$here/bench/lib.sh"

postgres=""
if [ "${1:-}" = --store ]; then
  [[ "${2:-}" == postgres://* ]] || die "--store takes a postgres:// URL"
  postgres="$2"
  shift 2
fi
only_help "D, R, W, C, T, N" "$@"
positive_integers D R C T N
[[ "$W" =~ ^[0-9]+$ ]] || die "W must be a whole number of seconds, not '$W'"
[ "$N" -ge 2 ] || die "N must be at least 2 (one trigger matches in the queueing case)"
[ "$N" -le 9999 ] || die "N must be at most 9999"
[ "$C" -ge "$T" ] || die "C ($C connections) must be at least T ($T wrk threads)"
[ -f "$PAYLOAD" ] || die "no payload at $PAYLOAD"

# --- tools: Debian's packages, installed if missing (as scripts/dev-env.sh does) -----------------
need_tools wrk=wrk webhook=webhook sqlite3=sqlite3 openssl=openssl curl=curl ss=iproute2 pgrep=procps
[ -z "$postgres" ] || need_tools psql=postgresql-client
# No build runs here, but `builder serve` connects to the engine at start.
need_engine

tmp="$(mktemp -d "${TMPDIR:-/tmp}/builder-bench-webhooks.XXXXXX")"
# The PostgreSQL case's database: made fresh, dropped at the end.
pg_db="builder_bench_webhooks_$$"
pg_url="${postgres%/*}/$pg_db"
pids=()
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -z "$postgres" ] || psql -q "$postgres" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# --- triggers and hooks --------------------------------------------------------------------------
# Trigger i misses the push: one in ten names the pushed repository with another branch (its RE2
# pattern is searched), the others other repositories. In the queueing set, the last one matches.
shape='name: t%04d\nfilename: cloudbuild.yaml\ngithub: {owner: %s, name: %s, push: {branch: "%s"}}\n' # I OWNER NAME BRANCH_PATTERN
mkdir -p "$tmp/triggers-nomatch" "$tmp/triggers-queue"
# shellcheck disable=SC2059 # the shape is the format
for ((i = 1; i <= N; i++)); do
  printf -v f "t%04d.yaml" "$i"
  if ((i % 10 == 0)); then
    printf -v branch "^release-%04d\$" "$i"
    printf -v text "$shape" "$i" Codertocat Hello-World "$branch"
  else
    printf -v repo "repo-%04d" "$i"
    printf -v text "$shape" "$i" org "$repo" "^master\$"
  fi
  printf "%s" "$text" >"$tmp/triggers-nomatch/$f"
  printf "%s" "$text" >"$tmp/triggers-queue/$f"
done
match_trigger="$(printf 't%04d' "$N")"
# shellcheck disable=SC2059 # the shape is the format
printf "$shape" "$N" Codertocat Hello-World "^master\$" >"$tmp/triggers-queue/$match_trigger.yaml"

# N hooks: `nomatch` (first) and `match` (last) are the ones posted to; the rest only load.
hook() { # hook ID REF
  printf '  {"id": "%s", "execute-command": "/bin/true", "include-command-output-in-response": false,\n' "$1"
  printf '   "success-http-response-code": 202,\n'
  printf '   "trigger-rule": {"and": [\n'
  printf '     {"match": {"type": "payload-hmac-sha256", "secret": "%s",\n' "$SECRET"
  printf '                "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}},\n'
  printf '     {"match": {"type": "value", "value": "%s", "parameter": {"source": "payload", "name": "ref"}}}]}}' "$2"
}
{
  echo "["
  hook nomatch refs/heads/release-0001
  for ((i = 2; i < N; i++)); do
    printf -v id "h%04d" "$i"; printf -v ref "refs/heads/release-%04d" "$i"
    echo ","; hook "$id" "$ref"
  done
  echo ","; hook match refs/heads/master
  echo; echo "]"
} >"$tmp/hooks.json"

signature="$(openssl dgst -sha256 -hmac "$SECRET" -r <"$PAYLOAD" | cut -d' ' -f1)"
[[ "$signature" =~ ^[0-9a-f]{64}$ ]] || die "openssl gave no HMAC-SHA256 ('$signature')"

# --- bodies: each request a push of its own ------------------------------------------------------
# builder takes a signed body once whatever its delivery id (a replay under a new id queues
# nothing), so every request carries the payload with a nonce of its own as its first field,
# {"bench_nonce":"<12 hex>", …}, signed ahead: wrk's Lua has no HMAC. A run takes its nonces from
# a range of its own; one that would need more than K stops with an error instead of replaying.
signatures() { # signatures FIRST COUNT FILE: the signatures of nonces FIRST… one a line
  python3 - "$PAYLOAD" "$SECRET" "$1" "$2" >"$3" <<'PY'
import hashlib, hmac, sys
payload, secret = open(sys.argv[1], "rb").read(), sys.argv[2].encode()
first, count = int(sys.argv[3]), int(sys.argv[4])
rest = payload[1:]
for nonce in range(first, first + count):
    body = b'{"bench_nonce":"%012x",' % nonce + rest
    print(hmac.new(secret, body, hashlib.sha256).hexdigest())
PY
}

# --- wrk's script: a new delivery id per request; answers counted by status ----------------------
# Arguments: PAYLOAD SIGNATURES_FILE ID_PREFIX EXPECTED_STATUS IDS_FILE ("-": don't keep build
# ids) FIRST_NONCE THREADS.
# Delivery ids are shaped like GitHub's (UUIDs): PREFIX-THREAD-4000-8000-COUNTER, in hex.
cat >"$tmp/deliver.lua" <<'LUA'
local threads = {}
local counter, prefix = 0, ""
-- Globals, read by done() (in the main Lua state) through thread:get.
statuses, ids, nids, nobuild, expected, idsfile = {}, {}, 0, 0, 0, "-"

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local rest, signatures, first, nthreads = "", {}, 0, 1

function init(args)
  local f = assert(io.open(args[1], "rb"))
  rest = f:read("*a"):sub(2)
  f:close()
  for line in io.lines(args[2]) do signatures[#signatures + 1] = line end
  first = tonumber(args[6])
  nthreads = tonumber(args[7])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
  wrk.headers["X-GitHub-Event"] = "push"
  prefix = string.format("%s-%04x-4000-8000-", args[3], tid)
  expected = tonumber(args[4])
  idsfile = args[5] or "-"
end

-- Thread t of T takes the run's nonces t-1, t-1+T, t-1+2T, …
function request()
  local k = (tid - 1) + counter * nthreads
  counter = counter + 1
  local signature = signatures[k + 1]
  if not signature then error("more requests than signed bodies: raise K") end
  wrk.headers["X-GitHub-Delivery"] = string.format("%s%012x", prefix, counter)
  wrk.headers["X-Hub-Signature-256"] = "sha256=" .. signature
  return wrk.format(nil, nil, nil, string.format('{"bench_nonce":"%012x",', first + k) .. rest)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 202 then
    local id = body:match('"builds":%["([^"]+)"')
    if id then nids = nids + 1; ids[nids] = id else nobuild = nobuild + 1 end
  end
end

function done(summary, latency, requests)
  local want, path = threads[1]:get("expected"), threads[1]:get("idsfile")
  local all, good, other, queued, empty, codes = {}, 0, 0, 0, 0, ""
  local out = path ~= "-" and assert(io.open(path, "w")) or nil
  for _, t in ipairs(threads) do
    for code, n in pairs(t:get("statuses")) do all[code] = (all[code] or 0) + n end
    local tids = t:get("ids")
    queued = queued + t:get("nids")
    empty = empty + t:get("nobuild")
    if out then for _, id in ipairs(tids) do out:write(id, "\n") end end
  end
  if out then out:close() end
  for code, n in pairs(all) do
    if code == want then good = good + n else other = other + n end
    codes = codes .. string.format("%s%d:%d", codes == "" and "" or ",", code, n)
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d expected=%d other=%d queued=%d nobuild=%d "
      .. "p50_us=%d p90_us=%d p99_us=%d max_us=%d sockerr=%d timeout=%d codes=%s\n",
    summary.requests, summary.duration, good, other, queued, empty,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(90)),
    math.floor(latency:percentile(99)), math.floor(latency.max),
    e.connect + e.read + e.write, e.timeout, codes == "" and "none" or codes))
end
LUA

# --- servers -------------------------------------------------------------------------------------
declare -A url pid expect label
start_builder() { # start_builder CASE TRIGGERS_DIR [SERVE_ARGS...]
  local log="$tmp/serve-$1.log" c="$1" triggers="$2"
  shift 2
  start_serve "$log" "$tmp/data-$c" --listen 127.0.0.1:0 --triggers "$triggers" --max-concurrent-builds 0 "$@"
  pids+=("$serve_pid"); pid[$c]=$serve_pid
  grep -q "($N triggers, " "$log" || { cat "$log" >&2; die "builder serve ($c) did not load $N triggers"; }
  url[$c]="http://$serve_addr/webhooks/github"
}
start_webhook() {
  local log="$tmp/webhook.log" p port=""
  webhook -hooks "$tmp/hooks.json" -ip 127.0.0.1 -port 0 >"$log" 2>&1 &
  p=$!; pids+=("$p"); pid[webhook]=$p
  for _ in $(seq 1 300); do
    port="$(ss -ltnpH 2>/dev/null | awk -v p="pid=$p," 'index($0, p) { n = split($4, a, ":"); print a[n]; exit }')"
    [ -n "$port" ] && break
    kill -0 "$p" 2>/dev/null || { cat "$log" >&2; die "webhook exited at start"; }
    sleep 0.1
  done
  [ -n "$port" ] || { cat "$log" >&2; die "webhook did not listen within 30 s"; }
  url[webhook_nomatch]="http://127.0.0.1:$port/hooks/nomatch"
  url[webhook_match]="http://127.0.0.1:$port/hooks/match"
}

echo "builder webhook ingest benchmark: $N triggers/hooks, wrk -t$T -c$C, $R rounds x ${D}s per case, ${W}s warm-up" >&2
start_builder builder_nomatch "$tmp/triggers-nomatch"
start_builder builder_queue "$tmp/triggers-queue"
cases=(builder_nomatch webhook_nomatch builder_queue webhook_match)
if [ -n "$postgres" ]; then
  psql -q "$postgres" -c "CREATE DATABASE $pg_db" >/dev/null || die "cannot create a database on $postgres"
  start_builder builder_pg_queue "$tmp/triggers-queue" --store "$pg_url"
  cases+=(builder_pg_queue)
fi
start_webhook
pid[webhook_nomatch]=${pid[webhook]} pid[webhook_match]=${pid[webhook]}
expect=([builder_nomatch]=202 [builder_queue]=202 [webhook_nomatch]=200 [webhook_match]=202 [builder_pg_queue]=202)
label=(
  [builder_nomatch]="builder, matches no trigger"
  [webhook_nomatch]="webhook, rule not satisfied"
  [builder_queue]="builder, queues a build (durably)"
  [webhook_match]="webhook, rule satisfied (runs /bin/true)"
  [builder_pg_queue]="builder on PostgreSQL, queues a build"
)

# --- one signed delivery each, and a forged one: both servers verify ------------------------------
post() { # post URL DELIVERY_ID SIGNATURE: prints "STATUS BODY"
  curl -sS -o "$tmp/post.out" -w '%{http_code}' -X POST "$1" \
    -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' -H "X-GitHub-Delivery: $2" \
    -H "X-Hub-Signature-256: sha256=$3" --data-binary "@$PAYLOAD" || echo " (curl failed)"
  echo " $(head -c 200 "$tmp/post.out")"
}
forged="$(printf '%s' "$signature" | tr '0-9a-f' '1-9a-f0')"
smoke=""
for c in "${cases[@]}"; do
  got="$(post "${url[$c]}" "00000000-smoke-4000-8000-$c" "$signature")"
  case "$c:$got" in
    builder_nomatch:'202 {"result":"accepted","builds":[],'*) ;;
    builder_queue:'202 {"result":"accepted","builds":["'*|builder_pg_queue:'202 {"result":"accepted","builds":["'*) ;;
    webhook_nomatch:'200 Hook rules were not satisfied.'*) ;;
    webhook_match:'202 '*) ;;
    *) die "$c: a signed delivery got '$got', not the answer this benchmark counts" ;;
  esac
  # The smoke test's build counts among the answered ones in the store check.
  case "$c" in builder_queue|builder_pg_queue) sed -n 's/.*"builds":\["\([^"]*\)".*/\1/p' "$tmp/post.out" >"$tmp/ids.$c.smoke" ;; esac
  bad="$(post "${url[$c]}" "00000000-forged-4000-8000-$c" "$forged")"
  case "$c:$bad" in builder_*:401*|webhook_*:500*) ;; *) die "$c: a forged signature got '$bad'" ;; esac
  smoke+="${bad%% *}/"
done
smoke="${smoke%/}"

# --- runs ----------------------------------------------------------------------------------------
clk_tck="$(getconf CLK_TCK)"
cpu_ticks() { # user + system time of a process and its waited-for children, in clock ticks
  sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 + $14 + $15 }'
}
settle() { # waits (at most 30 s) until every server has been idle for 0.4 s
  local busy quiet=0 total
  total() { local p t=0; for p in "${pids[@]}"; do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
  for _ in $(seq 1 150); do
    busy="$(total)"; sleep 0.2
    if [ $(( $(total) - busy )) -le 1 ]; then quiet=$((quiet + 1)); else quiet=0; fi
    [ "$quiet" -ge 2 ] && return 0
  done
  echo "webhooks.sh: the servers were still busy 30 s after a run" >&2
}
: >"$tmp/results"
run_seq=0
run() { # run CASE ROUND SECONDS: appends "CASE ROUND key=value..." to results unless ROUND is 0
  local c="$1" round="$2" secs="$3" out ids="-" before after
  run_seq=$((run_seq + 1))
  out="$tmp/wrk.$c.$round"
  case "$c" in builder_queue|builder_pg_queue) ids="$tmp/ids.$c.$round" ;; esac
  before="$(cpu_ticks "${pid[$c]}")"
  signatures $((run_seq * K)) "$K" "$tmp/signatures"
  wrk -t"$T" -c"$C" -d"${secs}s" --timeout 30s -s "$tmp/deliver.lua" "${url[$c]}" -- \
    "$PAYLOAD" "$tmp/signatures" "$(printf '%08x' "$((0xbe000000 + run_seq))")" "${expect[$c]}" \
    "$ids" $((run_seq * K)) "$T" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($c)"; }
  grep -q '^RESULT ' "$out" || { cat "$out" >&2; die "wrk printed no result ($c)"; }
  kill -0 "${pid[$c]}" 2>/dev/null || die "the server of $c died during the run; see $tmp (KEEP=1 keeps it)"
  # Work a server deferred past its answers (webhook's commands still starting, builder's records
  # of non-matching deliveries still being written) is its own: counted in its CPU, and finished
  # before the next case starts, so that it never runs on another case's time.
  settle
  after="$(cpu_ticks "${pid[$c]}")"
  [ "$round" -eq 0 ] && return 0
  echo "$c $round $(sed -n 's/^RESULT //p' "$out") cpu_ticks=$((after - before))" >>"$tmp/results"
}

load_before="$(load_average)"
bench_start="$(date +%s)"
if [ "$W" -gt 0 ]; then
  echo "warm-up..." >&2
  for c in "${cases[@]}"; do run "$c" 0 "$W"; done
fi
for ((round = 1; round <= R; round++)); do
  echo "round $round/$R..." >&2
  for ((k = 0; k < ${#cases[@]}; k++)); do
    run "${cases[$(((k + round - 1) % ${#cases[@]}))]}" "$round" "$D"
  done
done
bench_end="$(date +%s)"
load_after="$(load_average)"

# --- the store: every 202 durably queued ---------------------------------------------------------
# The servers are stopped first (SIGTERM: builder finishes the requests in flight).
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
pids=()
db="$tmp/data-builder_queue/builds.db" db0="$tmp/data-builder_nomatch/builds.db"
{ [ -f "$db" ] && [ -f "$db0" ]; } || die "no store at $db or $db0"
cat "$tmp"/ids.builder_queue.* | sort >"$tmp/answered"
sql "$db" "SELECT id FROM builds WHERE status = 'QUEUED' AND trigger_name = '$match_trigger' AND delivery_id IS NOT NULL" |
  sort >"$tmp/stored"
answered="$(grep -c . "$tmp/answered" || true)"
stored="$(grep -c . "$tmp/stored" || true)"
lost="$(comm -23 "$tmp/answered" "$tmp/stored" | grep -c . || true)"
extra="$(comm -13 "$tmp/answered" "$tmp/stored" | grep -c . || true)"
builds_all="$(sql "$db" "SELECT count(*) FROM builds")"
deliveries="$(sql "$db" "SELECT count(*) FROM deliveries WHERE verified = 1")"
not_one="$(sql "$db" "SELECT count(*) FROM deliveries d LEFT JOIN (SELECT delivery_id, count(*) AS n FROM builds GROUP BY delivery_id) b ON b.delivery_id = d.id WHERE d.verified = 1 AND coalesce(b.n, 0) != 1")"
builds0="$(sql "$db0" "SELECT count(*) FROM builds")"
deliveries0="$(sql "$db0" "SELECT count(*) FROM deliveries WHERE verified = 1")"
journal="$(sql "$db" "PRAGMA journal_mode")"
runs_queue=$((R + (W > 0 ? 1 : 0)))
in_flight_max=$((C * runs_queue))
# Over all runs: 202s of the queueing server without a build id, and of the other one with one.
sum_field() { awk -v c="$1" -v f="$2=" '$1 == c { for (i = 3; i <= NF; i++) if (index($i, f) == 1) s += substr($i, length(f) + 1) } END { print s + 0 }' "$tmp/results"; }
without_build="$(sum_field builder_queue nobuild)"
with_build0="$(sum_field builder_nomatch queued)"

# --- figures -------------------------------------------------------------------------------------
# Per case over its R runs: the rate of intended answers (median, min, max), the medians of the
# runs' p50 and p99, the worst p99 and the slowest request, and the server's CPU.
figures() { # figures CASE: prints "rate min max p50 p99 p99max max good other cpu_pct cpu_us codes"
  awk -v c="$1" -v tck="$clk_tck" '
    function med(a, n,   i, j, x) {
      for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j] < a[j - 1]; j--) { x = a[j]; a[j] = a[j - 1]; a[j - 1] = x }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    $1 == c {
      delete kv
      for (i = 3; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
      n++
      rate[n] = kv["expected"] / (kv["duration_us"] / 1e6); r2[n] = rate[n]
      p50[n] = kv["p50_us"]; p99[n] = kv["p99_us"]
      if (kv["p99_us"] > p99max) p99max = kv["p99_us"]
      if (kv["max_us"] > mx) mx = kv["max_us"]
      good += kv["expected"]; other += kv["other"] + kv["sockerr"] + kv["timeout"]
      req += kv["requests"]; dur += kv["duration_us"] / 1e6; cpu += kv["cpu_ticks"] / tck
      codes = codes (codes == "" ? "" : " ") kv["codes"]
      if (min == "" || rate[n] < min) min = rate[n]
      if (rate[n] > max) max = rate[n]
    }
    END {
      if (n == 0) { print "nan"; exit }
      printf "%.1f %.1f %.1f %.3f %.3f %.3f %.3f %d %d %.0f %.0f %s\n", med(rate, n), min, max,
        med(p50, n) / 1000, med(p99, n) / 1000, p99max / 1000, mx / 1000, good, other,
        100 * cpu / dur, 1e6 * cpu / (req ? req : 1), codes
    }' "$tmp/results"
}
declare -A rate rmin rmax p50 p99 p99max lmax good other cpu_pct cpu_us codes
for c in "${cases[@]}"; do
  read -r "rate[$c]" "rmin[$c]" "rmax[$c]" "p50[$c]" "p99[$c]" "p99max[$c]" "lmax[$c]" "good[$c]" \
    "other[$c]" "cpu_pct[$c]" "cpu_us[$c]" "codes[$c]" < <(figures "$c")
done
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

what="$(describe_binary)"
echo
printf 'builder webhook ingest vs webhook %s, %s, %s cores, load %s -> %s\n' \
  "$(webhook -version | awk '{ print $3 }')" "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$load_before" "$load_after"
printf '%s: %s triggers / hooks loaded; wrk %s, %s threads, %s connections; %s rounds x %s s per case, interleaved, after %s s warm-up\n' \
  "$what" "$N" \
  "$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')" "$T" "$C" "$R" "$D" "$W"
pg_note=""
[ -z "$postgres" ] || pg_note=", and PostgreSQL $(psql -tAq "$postgres" -c 'SHOW server_version' | cut -d' ' -f1) at ${postgres#*@}"
printf 'store: SQLite (%s journal) on %s%s; payload %s (%s bytes); wrong signature answered %s (%s)\n' \
  "$journal" "$(df -T "$tmp" | awk 'NR == 2 { print $2 }')" "$pg_note" "${PAYLOAD#"$here"/}" "$(wc -c <"$PAYLOAD")" "$smoke" "${cases[*]}"
echo
line() { printf '%-42s %8s %15s %8s %8s %8s %8s %9s %6s %6s %8s\n' "$@"; }
line "case" "req/s" "(min-max)" "p50 ms" "p99 ms" "p99 max" "max ms" "answers" "other" "CPU %" "CPU/req"
for c in "${cases[@]}"; do
  line "${label[$c]}" "$(calc '%.0f' "${rate[$c]}")" "($(calc '%.0f' "${rmin[$c]}")-$(calc '%.0f' "${rmax[$c]}"))" \
    "$(calc '%.1f' "${p50[$c]}")" "$(calc '%.1f' "${p99[$c]}")" "$(calc '%.1f' "${p99max[$c]}")" \
    "$(calc '%.0f' "${lmax[$c]}")" "${expect[$c]}x${good[$c]}" "${other[$c]}" "${cpu_pct[$c]}" "${cpu_us[$c]} us"
done
echo "req/s: intended answers per second, median of the $R runs (min-max); p50, p99: medians of the"
echo "runs' percentiles; p99 max, max: the worst run's p99 and the slowest request; other: any other"
echo "answer or socket error; CPU: the server's user+system time (webhook's with its /bin/true"
echo "children), including work left after the run's last answer, per second of run (100 % = one core) and per request. wrk shares the $(nproc) cores."

echo
ok_rate() { awk -v a="$1" -v g="$2" 'BEGIN { print (a >= g ? "met" : "MISSED") }'; }
r_nomatch="$(calc '%.2f' "${rate[builder_nomatch]} / ${rate[webhook_nomatch]}")"
r_queue="$(calc '%.2f' "${rate[builder_queue]} / ${rate[webhook_match]}")"
printf '%-64s %8s %8s %8s\n' "figure" "value" "goal" ""
printf '%-64s %8s %8s %8s\n' "ratio builder / webhook, matching nothing (req/s)" "$r_nomatch" ">= 2.00" "$(ok_rate "$r_nomatch" 2)"
printf '%-64s %8s %8s %8s\n' "ratio builder (durably queued) / webhook (command run), req/s" "$r_queue" ">= 1.00" "$(ok_rate "$r_queue" 1)"
printf '%-64s %8s\n' "ratio of p99, builder / webhook, matching nothing" "$(calc '%.2f' "${p99[builder_nomatch]} / ${p99[webhook_nomatch]}")"
printf '%-64s %8s\n' "ratio of p99, builder / webhook, queued / run" "$(calc '%.2f' "${p99[builder_queue]} / ${p99[webhook_match]}")"
if [ -n "$postgres" ]; then
  printf '%-64s %8s\n' "ratio builder on PostgreSQL / on SQLite, queued (req/s)" "$(calc '%.2f' "${rate[builder_pg_queue]} / ${rate[builder_queue]}")"
  printf '%-64s %8s\n' "ratio builder on PostgreSQL (queued) / webhook (command run)" "$(calc '%.2f' "${rate[builder_pg_queue]} / ${rate[webhook_match]}")"
fi

echo
status=0
echo "store check (builder, queueing server, after SIGTERM; $runs_queue run(s) incl. warm-up):"
printf '  %-76s %s\n' "202 answers carrying a build id (wrk counted them; and the smoke test's)" "$answered"
printf '  %-76s %s\n' "of these, QUEUED in builds.db with trigger $match_trigger and its delivery" "$((answered - lost))"
printf '  %-76s %s\n' "builds in builds.db / verified deliveries" "$builds_all / $deliveries"
printf '  %-76s %s\n' "deliveries without exactly one build" "$not_one"
printf '  %-76s %s\n' "queued but not counted by wrk: in flight when it stopped (<= $C x $runs_queue)" "$extra"
printf '  %-76s %s\n' "202 answers without a build id (queueing) / with one (non-matching)" "$without_build / $with_build0"
printf '  %-76s %s\n' "non-matching server: builds / verified deliveries" "$builds0 / $deliveries0"
if [ "$lost" -ne 0 ] || [ "$not_one" -ne 0 ] || [ "$extra" -gt "$in_flight_max" ] || [ "$builds0" -ne 0 ] ||
  [ "$stored" -ne "$builds_all" ] || [ "$without_build" -ne 0 ] || [ "$with_build0" -ne 0 ]; then
  echo "  FAILED: not every accepted delivery is durably queued exactly once (see above)"; status=1
else
  echo "  ok: every 202 that carried a build is a QUEUED build in the store, one per delivery"
fi
if [ -n "$postgres" ]; then
  pg() { psql -tAq "$pg_url" -c "$1"; }
  cat "$tmp"/ids.builder_pg_queue.* | sort >"$tmp/answered.pg"
  pg "SELECT id FROM builds WHERE status = 'QUEUED' AND trigger_name = '$match_trigger' AND delivery_id IS NOT NULL" |
    sort >"$tmp/stored.pg"
  pg_answered="$(grep -c . "$tmp/answered.pg" || true)"
  pg_lost="$(comm -23 "$tmp/answered.pg" "$tmp/stored.pg" | grep -c . || true)"
  pg_extra="$(comm -13 "$tmp/answered.pg" "$tmp/stored.pg" | grep -c . || true)"
  pg_not_one="$(pg "SELECT count(*) FROM deliveries d LEFT JOIN (SELECT delivery_id, count(*) AS n FROM builds GROUP BY delivery_id) b ON b.delivery_id = d.id WHERE d.verified AND coalesce(b.n, 0) != 1")"
  echo "store check (builder on PostgreSQL, $(psql -tAq "$pg_url" -c 'SHOW server_version'), after SIGTERM):"
  printf '  %-76s %s\n' "202 answers carrying a build id" "$pg_answered"
  printf '  %-76s %s\n' "of these, QUEUED in the database with trigger $match_trigger and its delivery" "$((pg_answered - pg_lost))"
  printf '  %-76s %s\n' "deliveries without exactly one build" "$pg_not_one"
  printf '  %-76s %s\n' "queued but not counted by wrk: in flight when it stopped (<= $C x $runs_queue)" "$pg_extra"
  if [ "$pg_lost" -ne 0 ] || [ "$pg_not_one" -ne 0 ] || [ "$pg_extra" -gt "$in_flight_max" ]; then
    echo "  FAILED: not every accepted delivery is durably queued exactly once (see above)"; status=1
  else
    echo "  ok: every 202 that carried a build is a QUEUED build in the store, one per delivery"
  fi
fi
for c in "${cases[@]}"; do
  if [ "${other[$c]}" -ne 0 ]; then
    echo "UNEXPECTED answers for ${label[$c]}: ${other[$c]} (status:count per run: ${codes[$c]})"; status=1
  fi
done
# The log's routine lines: start, stop, and the refusal of the one forged delivery above.
routine=" INFO (builder::edges::cli::serve: (listening on|shutting down)|delivery\\{.*\\}: builder::pipeline::service::intake: delivery refused)"
for c in "${cases[@]}"; do
  [[ "$c" == builder_* ]] || continue
  extra_lines="$(grep -Evc "$routine" "$tmp/serve-$c.log" || true)"
  if [ "$extra_lines" -gt 0 ]; then
    echo "builder serve ($c) wrote $extra_lines line(s) on stderr, e.g.:"; grep -Ev "$routine" "$tmp/serve-$c.log" | head -5 | sed 's/^/    /'
  fi
done
echo "total benchmark time: $((bench_end - bench_start)) s (+ setup)"
exit "$status"
