#!/usr/bin/env bash
# What a build's log costs (issue 22), in figures (a benchmark, not a test): steps that print a lot
# run by `builder submit`, by `builder serve` with a follower, and by plain `docker run` of the
# same container writing to a file (the peer), one case after the other:
#
#   short  `seq 1 3000000`: 3 million short lines (22.9 MB)
#   kb     100,000 lines of 1 KB (base64 of random bytes: it compresses as badly as real output)
#   line   one 50 MB line without a newline (base64 of random bytes; cut at 256 KiB)
#
# For each case: wall time against docker's (ratio), bytes stored ÷ bytes printed (the store's
# builds.db + WAL after the build, less the same store after an empty build), peak RSS of `submit`
# and of `serve`, and for a follower of the served build (the console's batched SSE): the time to
# its first line after the submit, and its lag at the end (its last line's arrival after the step's
# recorded end). Goals: wall ≤ 1.5× docker's, store ≤ 1.2×, RSS ≤ 64 MB, lag ≤ 1 s. Beside them,
# `docker run --log-driver none` (nolog_s: the engine's limit, its own log off as builder's steps
# have it) and submit's ratio to that.
#
# Usage:  bench/logs.sh [CASE...]     (after scripts/dev-env.sh and `cargo build --release`)
# Env:    BUILDER=target/release/builder   the binary to measure
#         ROUNDS=3                         rounds of each case; then a `CASE~med` row: the median
#                                          of each time and ratio, the worst RSS and lag
#         KEEP=1                           keep the temp dir (configs, outputs, stores) for a look
# Needs:  bash >= 5 ($EPOCHREALTIME), docker, /usr/bin/time, python3, jq, curl.
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")/.." && pwd)"
BUILDER="${BUILDER:-$here/target/release/builder}"
ROUNDS="${ROUNDS:-3}"
IMAGE="builder/busybox"
TOKEN="bench-token"

die() { echo "logs.sh: $*" >&2; exit 1; }
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
esac
if [ $# -gt 0 ]; then cases=("$@"); else cases=(short kb line); fi
for c in "${cases[@]}"; do [[ "$c" =~ ^(short|kb|line)$ ]] || die "unknown case '$c' (short, kb, line)"; done
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a count of rounds, not '$ROUNDS'"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash 5 (EPOCHREALTIME)"
[ -x "$BUILDER" ] || die "no binary at $BUILDER; run \`cargo build --release\` in $here"
for tool in docker /usr/bin/time python3 jq curl; do command -v "$tool" >/dev/null || die "needs $tool"; done
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no local $IMAGE; run scripts/dev-env.sh"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/builder-bench-logs.XXXXXX")"
serve_pid=""
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; wait "$serve_pid" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

command_of() { # command_of CASE: the step's shell command
  case "$1" in
    short) echo 'seq 1 3000000' ;;
    kb) echo 'head -c 76800000 /dev/urandom | base64 -w 1023 | head -n 100000' ;;
    line) echo 'head -c 39321600 /dev/urandom | base64 -w 0' ;;
  esac
}

config() { # config FILE COMMAND
  printf "steps:\n- name: %s\n  args: ['sh', '-c', '%s']\n" "$IMAGE" "$2" >"$1"
}

now() { echo "$EPOCHREALTIME"; }
store_bytes() { # store_bytes DATA_DIR: builds.db and its WAL
  local total=0 f
  for f in "$1/builds.db" "$1/builds.db-wal"; do [ -f "$f" ] && total=$((total + $(stat -c %s "$f"))); done
  echo "$total"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# The follower: reads the served build's log as the console does (batched SSE), checks that every
# line came once and in order (each batch's count, and its first and last numbers, against the
# lines before it), and prints the times of its first line, its last line and the end. It reads
# the numbers without decoding the JSON: decoding 3 million lines took Python longer than the
# server took to send them, and the lag measured was then Python's.
cat >"$tmp/follow.py" <<'PY'
import json, re, sys, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
number = re.compile(rb'"seq":(\d+)')
first = last = end = None
seq = 0
event = b""
with urllib.request.urlopen(request) as response:
    for raw in response:
        if raw.startswith(b"event: "):
            event = raw[7:].rstrip(b"\r\n")
        elif raw.startswith(b"data: ") and event in (b"lines", b"line", b"end"):
            if event == b"end":
                end = time.time()
                status = json.loads(raw[6:])["status"]
                break
            # A `line` event's number is its id; a `lines` batch has one per line.
            count = raw.count(b'"seq":') or 1
            if event == b"lines":
                head, tail = number.search(raw), number.match(raw, raw.rfind(b'"seq":'))
                if (int(head[1]), int(tail[1])) != (seq + 1, seq + count):
                    sys.exit(f"lines {head[1]}..{tail[1]} ({count}) after line {seq}")
            seq += count
            last = time.time()
            first = first or last
print(f"{first or 0} {last or 0} {end or 0} {seq} {status}")
PY

# --- the server ----------------------------------------------------------------------------------
export BUILDER_API_TOKEN="$TOKEN" BUILDER_WEBHOOK_SECRET=bench
mkdir -p "$tmp/serve" "$tmp/triggers"
BUILDER_DATA_DIR="$tmp/serve" "$BUILDER" serve --listen 127.0.0.1:0 --triggers "$tmp/triggers" \
  2>"$tmp/serve.log" &
serve_pid=$!
url=""
for _ in $(seq 1 100); do
  url="$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$tmp/serve.log" | head -n 1)"
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$tmp/serve.log" >&2; die "the server did not start"; }

# measure CASE: one round of the case, printed as a row of the table below.
measure() {
  local c="$1" cmd t0 docker_s nolog_s printed data before submit_s submit_kb stored id \
    printed_lines logged_lines first last end lines status step_end serve_s first_s lag_s
  cmd="$(command_of "$c")"
  config "$tmp/$c.yaml" "$cmd"
  config "$tmp/empty.yaml" "true"

  # docker run of the same container, its output to a file; and with the engine's log off.
  t0="$(now)"
  docker run --rm "$IMAGE" sh -c "$cmd" >"$tmp/$c.docker" 2>&1 || die "docker run failed ($c)"
  docker_s="$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
  printed="$(stat -c %s "$tmp/$c.docker")"
  t0="$(now)"
  docker run --rm --log-driver none "$IMAGE" sh -c "$cmd" >/dev/null 2>&1 || die "docker run failed ($c)"
  nolog_s="$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"

  # builder submit, in a store of its own: an empty build first, so only the log's cost counts.
  data="$tmp/data-$c"
  rm -rf "$data"
  BUILDER_DATA_DIR="$data" "$BUILDER" submit --no-source --config "$tmp/empty.yaml" >/dev/null 2>&1 \
    || die "the empty build failed"
  before="$(store_bytes "$data")"
  BUILDER_DATA_DIR="$data" /usr/bin/time -f "%e %M" -o "$tmp/$c.time" \
    "$BUILDER" submit --no-source --config "$tmp/$c.yaml" >"$tmp/$c.submit" 2>"$tmp/$c.submit.err" \
    || { tail -n 5 "$tmp/$c.submit" "$tmp/$c.submit.err" >&2; die "builder submit failed ($c)"; }
  read -r submit_s submit_kb <"$tmp/$c.time"
  stored=$(($(store_bytes "$data") - before))
  # The log read back whole: as many lines as the submit printed.
  id="$(sed -n 's/^ID: //p' "$tmp/$c.submit")"
  printed_lines="$(grep -c '^Step #0: ' "$tmp/$c.submit" || true)"
  logged_lines="$(BUILDER_DATA_DIR="$data" "$BUILDER" builds log "$id" | grep -c '^Step #0: ' || true)"
  [ "$printed_lines" = "$logged_lines" ] || die "$c: submit printed $printed_lines lines, the log has $logged_lines"

  # builder serve, the build followed from its submit.
  t0="$(now)"
  id="$("$BUILDER" submit --server "$url" --async --no-source --config "$tmp/$c.yaml" 2>/dev/null)"
  read -r first last end lines status < <(python3 "$tmp/follow.py" \
    "$url/v1/builds/$id/log?follow=true&batched=true" "$TOKEN")
  [ "$status" = SUCCESS ] || die "$c: the served build ended $status"
  [ "$lines" = "$logged_lines" ] || die "$c: the follower saw $lines lines, not $logged_lines"
  step_end="$(curl -s -H "Authorization: Bearer $TOKEN" "$url/v1/builds/$id" | jq -r '.steps[0].endTime')"
  step_end="$(date -d "$step_end" +%s.%N)"
  read -r serve_s first_s lag_s < <(awk -v t0="$t0" -v f="$first" -v l="$last" -v e="$end" -v s="$step_end" \
    'BEGIN { lag = l - s; printf "%.2f %.2f %.2f\n", e - t0, f - t0, (lag > 0 ? lag : 0) }')

  printf "%-9s %9d %8s %8s %6s %8s %6s %8s %6d %8s %6s %7s %6s\n" "$c" "$printed" "$docker_s" \
    "$submit_s" "$(ratio "$submit_s" "$docker_s")" "$nolog_s" "$(ratio "$submit_s" "$nolog_s")" \
    "$(ratio "$stored" "$printed")" $((submit_kb / 1024)) "$serve_s" "$(ratio "$serve_s" "$docker_s")" \
    "$first_s" "$lag_s"
}

printf "%-9s %9s %8s %8s %6s %8s %6s %8s %6s %8s %6s %7s %6s\n" case printed docker_s submit_s ratio \
  nolog_s ratio stored_x rss_MB serve_s ratio first_s lag_s
for c in "${cases[@]}"; do
  for _ in $(seq 1 "$ROUNDS"); do measure "$c"; done | tee "$tmp/$c.rounds"
  # Over the rounds: the median of each time and ratio (a round's ratios pair its own runs), the
  # worst of the memory and the lag.
  [ "$ROUNDS" -gt 1 ] || continue
  awk -v c="$c" '
    { for (i = 2; i <= NF; i++) v[i, NR] = $i }
    function median(i,   n, k, a, t, j) {
      n = NR; for (k = 1; k <= n; k++) a[k] = v[i, k]
      for (k = 2; k <= n; k++) { t = a[k]; for (j = k - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function worst(i,   k, m) { m = v[i, 1]; for (k = 2; k <= NR; k++) if (v[i, k] > m) m = v[i, k]; return m }
    END {
      printf "%-9s %9d %8.2f %8.2f %6.2f %8.2f %6.2f %8.2f %6d %8.2f %6.2f %7.2f %6.2f\n", c "~med", median(2),
        median(3), median(4), median(5), median(6), median(7), median(8), worst(9), median(10), median(11),
        median(12), worst(13)
    }' "$tmp/$c.rounds"
done
serve_kb="$(awk '/^VmHWM/ { print $2 }' "/proc/$serve_pid/status")"
echo "serve peak RSS: $((serve_kb / 1024)) MB"
