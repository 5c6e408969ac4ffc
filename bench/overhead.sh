#!/usr/bin/env bash
# What builder adds on top of the containers it runs, in figures (a benchmark, not a test).
#
#   (a) an N-step build of trivial serial steps against the same N containers run by plain
#       `docker run --rm` one after the other (the physical limit), as a ratio;
#   (b) a build of M independent steps (`waitFor: ['-']`) that each `sleep S` against a build of
#       that slowest single step alone, against one plain `docker run ... sleep S`, and against
#       M such `docker run`s at once (what the engine itself makes of M simultaneous starts).
#
# Every case runs R times, interleaved (one run of each case per round, the order rotating each
# round) so that drift on a shared machine spreads over all cases alike. `docker events` is
# recorded meanwhile, and each container's create/start/die/destroy times are used to split the
# wall time into phases (where the overhead goes).
#
# Usage:  bench/overhead.sh            (after scripts/dev-env.sh and `cargo build --release`)
# Env:    N=10 R=5 M=5 S=2             the sizes above
#         BUILDER=target/release/builder   the binary to measure
#         KEEP=1                        keep the temp dir (configs, outputs, events) for a look
# Needs:  bash >= 5 ($EPOCHREALTIME), docker, awk, sort. Exit status 0 unless a run failed or a
#         build of this benchmark left a labelled container, volume or network behind.
set -euo pipefail
export LC_ALL=C

here="$(cd "$(dirname "$0")/.." && pwd)"
N="${N:-10}" R="${R:-5}" M="${M:-5}" S="${S:-2}"
BUILDER="${BUILDER:-$here/target/release/builder}"
IMAGE="builder/busybox"
LABEL="builder.build"

die() { echo "overhead.sh: $*" >&2; exit 1; }
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) die "no arguments (sizes come from N, R, M, S; see --help)" ;;
esac
for v in N R M; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, not '${!v}'"
done
[[ "$S" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "S must be a number of seconds, not '$S'"
[ "$N" -ge 2 ] || die "N must be at least 2 (the per-step figure compares N steps with 1)"
[ -n "${EPOCHREALTIME:-}" ] || die "needs bash 5 (EPOCHREALTIME)"
[ -x "$BUILDER" ] || die "no binary at $BUILDER; run \`cargo build --release\` in $here"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable; run scripts/dev-env.sh (as root)"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "no local $IMAGE; run scripts/dev-env.sh"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/builder-bench.XXXXXX")"
events_pid=""
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  if [ -n "$events_pid" ]; then kill "$events_pid" 2>/dev/null || true; wait "$events_pid" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# --- configs -------------------------------------------------------------------------------------
serial="$tmp/serial.yaml" one="$tmp/one.yaml" parallel="$tmp/parallel.yaml" slowest="$tmp/slowest.yaml"
{
  echo "# $N serial trivial steps"
  echo "steps:"
  for ((i = 0; i < N; i++)); do printf -- "- name: %s\n  args: ['true']\n" "$IMAGE"; done
} >"$serial"
printf "steps:\n- name: %s\n  args: ['true']\n" "$IMAGE" >"$one"
{
  echo "# $M independent steps"
  echo "steps:"
  for ((i = 0; i < M; i++)); do
    printf -- "- id: s%d\n  name: %s\n  waitFor: ['-']\n  args: ['sleep', '%s']\n" "$i" "$IMAGE" "$S"
  done
} >"$parallel"
printf "steps:\n- id: s0\n  name: %s\n  args: ['sleep', '%s']\n" "$IMAGE" "$S" >"$slowest"

# --- running and timing --------------------------------------------------------------------------
# Builds are recorded in the temp dir, not in the user's data dir.
export BUILDER_DATA_DIR="$tmp/data"
: >"$tmp/ids"; : >"$tmp/windows"; : >"$tmp/times"

now_us() { local t="${EPOCHREALTIME/[.,]/}"; echo "$t"; }

tag="" # what the containers of the last run are labelled with: its build id, or bench.<case>.<round>

# These return non-zero on failure, with what went wrong in $tmp/failure.
submit() { # submit CONFIG
  local out="$tmp/out" id ok=0
  "$BUILDER" submit --no-source --config "$1" >"$out" 2>&1 || ok=1
  id="$(sed -n 's/^ID: //p' "$out" | tail -n 1)"
  if [ -n "$id" ]; then echo "$id" >>"$tmp/ids"; tag="$id"; fi
  grep -q '^STATUS: SUCCESS' "$out" || ok=1
  [ "$ok" -eq 0 ] || { cp "$out" "$tmp/failure"; return 1; }
}

# The label only lets the events of these containers be told from those of anything else running
# on the engine; it costs nothing measurable.
docker_run() { # docker_run COMMAND...
  docker run --rm --label "builder.bench=$tag" "$IMAGE" "$@" >/dev/null 2>>"$tmp/failure.docker" || {
    { echo "docker run --rm $IMAGE $* failed:"; cat "$tmp/failure.docker"; } >"$tmp/failure"
    return 1
  }
}

run_case() { # run_case NAME ROUND
  tag="bench.$1.$2"
  : >"$tmp/failure.docker"
  local i p pids=() ok=0
  case "$1" in
    a_builder) submit "$serial" || return 1 ;;
    a_docker) for ((i = 0; i < N; i++)); do docker_run true || return 1; done ;;
    a_builder1) submit "$one" || return 1 ;;
    b_parallel) submit "$parallel" || return 1 ;;
    b_slowest) submit "$slowest" || return 1 ;;
    b_docker) docker_run sleep "$S" || return 1 ;;
    b_docker_par)
      for ((i = 0; i < M; i++)); do docker_run sleep "$S" & pids+=($!); done
      for p in "${pids[@]}"; do wait "$p" || ok=1; done
      return "$ok"
      ;;
  esac
}

# On a shared engine another process may remove or kill a container of a run (seen here: a step
# SIGKILLed by someone's `docker rm -f`), so a failed run is reported and retried once.
retried=0
timed() { # timed NAME ROUND: runs one case, appends "NAME seconds" and its time window
  local start end attempt
  for attempt in 1 2; do
    start="$(now_us)"
    if run_case "$1" "$2"; then
      end="$(now_us)"
      echo "$1 $2 $start $end $tag" >>"$tmp/windows"
      awk -v s="$start" -v e="$end" -v c="$1" 'BEGIN { printf "%s %.6f\n", c, (e - s) / 1e6 }' >>"$tmp/times"
      return 0
    fi
    echo "overhead.sh: a run of $1 failed (attempt $attempt):" >&2
    sed 's/^/    /' "$tmp/failure" >&2
    retried=$((retried + 1))
  done
  die "$1 failed twice; giving up"
}

cases=(a_builder a_docker a_builder1 b_parallel b_slowest b_docker b_docker_par)
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "builder overhead benchmark: N=$N serial steps, M=$M parallel 'sleep $S' steps, R=$R rounds" >&2
echo "binary: $BUILDER; engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null); $(nproc) cores; load $load_before" >&2

docker events --filter type=container --format \
  '{{.TimeNano}} {{.Action}} {{.Actor.ID}} {{index .Actor.Attributes "builder.build"}}{{index .Actor.Attributes "builder.bench"}}' \
  >"$tmp/events" 2>/dev/null &
events_pid=$!
sleep 0.3

# Warm-up, not timed: page cache, the shared `cloudbuild` network, the engine's image lookup.
echo "warm-up..." >&2
tag="bench.warmup"
submit "$one" || { cat "$tmp/failure" >&2; die "the warm-up build failed"; }
docker_run true || { cat "$tmp/failure" >&2; die "the warm-up docker run failed"; }

bench_start="$(now_us)"
for ((round = 1; round <= R; round++)); do
  echo "round $round/$R..." >&2
  count=${#cases[@]}
  for ((k = 0; k < count; k++)); do
    timed "${cases[$(((k + round - 1) % count))]}" "$round"
  done
done
bench_end="$(now_us)"
sleep 0.5 # let the last events arrive
kill "$events_pid" 2>/dev/null || true
wait "$events_pid" 2>/dev/null || true
events_pid=""
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- figures -------------------------------------------------------------------------------------
stat() { # stat CASE FIELD: FIELD is median or min, in seconds
  awk -v c="$1" '$1 == c { print $2 }' "$tmp/times" | sort -g | awk -v f="$2" '
    { v[NR] = $1 }
    END {
      if (NR == 0) { print "nan"; exit }
      if (f == "min") print v[1]
      else print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)
    }'
}
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

declare -A med mn
for c in "${cases[@]}"; do med[$c]="$(stat "$c" median)"; mn[$c]="$(stat "$c" min)"; done

echo
printf 'builder overhead, %s, %s cores, load %s -> %s, %s rounds interleaved\n' \
  "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$load_before" "$load_after" "$R"
echo
printf '%-44s %8s %8s %10s\n' "case" "median" "min" "per step"
row() { # row LABEL CASE STEPS_OR_EMPTY
  local per=""
  [ -n "$3" ] && per="$(calc '%.0f ms' "${med[$2]} * 1000 / $3")"
  printf '%-44s %7.2fs %7.2fs %10s\n' "$1" "${med[$2]}" "${mn[$2]}" "$per"
}
row "(a) builder: $N serial \`true\` steps" a_builder "$N"
row "(a) docker run --rm ... true, x$N sequential" a_docker "$N"
row "(a) builder: 1 \`true\` step" a_builder1 1
row "(b) builder: $M parallel \`sleep $S\` steps" b_parallel ""
row "(b) builder: 1 \`sleep $S\` step (the slowest)" b_slowest ""
row "(b) docker run --rm ... sleep $S" b_docker ""
row "(b) docker run --rm ... sleep $S, x$M at once" b_docker_par ""

echo
printf '%-64s %8s\n' "figure" "value"
fig() { printf '%-64s %8s\n' "$1" "$2"; }
fig "(a) ratio builder / docker run, $N steps (goal <= 1.00)" "$(calc '%.2f' "${med[a_builder]} / ${med[a_docker]}")"
fig "(a) ratio of the minima" "$(calc '%.2f' "${mn[a_builder]} / ${mn[a_docker]}")"
marginal="$(calc '%.6f' "(${med[a_builder]} - ${med[a_builder1]}) / ($N - 1)")"
per_docker="$(calc '%.6f' "${med[a_docker]} / $N")"
fig "(a) builder, each further step: (T[$N] - T[1]) / $((N - 1))" "$(calc '%.0f ms' "$marginal * 1000")"
fig "(a) docker run, each container: T / $N" "$(calc '%.0f ms' "$per_docker * 1000")"
fig "(a) per-step overhead of builder over docker run" "$(calc '%+.0f ms' "($marginal - $per_docker) * 1000")"
fig "(a) fixed cost of a build: T[1] - one docker run" "$(calc '%.0f ms' "(${med[a_builder1]} - $per_docker) * 1000")"
fig "(b) ratio parallel build / slowest step's build (goal ~ 1.00)" "$(calc '%.2f' "${med[b_parallel]} / ${med[b_slowest]}")"
fig "(b) ratio parallel build / docker run sleep $S" "$(calc '%.2f' "${med[b_parallel]} / ${med[b_docker]}")"
fig "(b) ratio parallel build / $M parallel docker runs" "$(calc '%.2f' "${med[b_parallel]} / ${med[b_docker_par]}")"
fig "(b) ratio $M parallel docker runs / one docker run (engine limit)" "$(calc '%.2f' "${med[b_docker_par]} / ${med[b_docker]}")"
fig "(b) time not sleeping: parallel build - $S s" "$(calc '%.0f ms' "(${med[b_parallel]} - $S) * 1000")"
fig "(b) time not sleeping: slowest step's build - $S s" "$(calc '%.0f ms' "(${med[b_slowest]} - $S) * 1000")"
fig "(b) time not sleeping: docker run - $S s" "$(calc '%.0f ms' "(${med[b_docker]} - $S) * 1000")"

# --- where the time goes, from the engine's events -----------------------------------------------
# For each timed run, the containers labelled with its tag, in order of creation
# (builder's never-started `seed` container, which fills /workspace, counts as setup). Samples are
# "CASE PHASE ms"; the table shows medians over all runs (and over all steps for per-step phases).
awk '
  FNR == NR { n++; wc[n] = $1; ws[n] = $3 * 1000; we[n] = $4 * 1000; window[$5] = n; next }
  NF == 4 && ($4 in window) {
    t = $1 + 0; w = window[$4]
    key = w SUBSEP $3
    if (!(key in seen)) { seen[key] = 1; ids[w] = ids[w] " " $3 }
    if ($2 ~ /^(create|extract-to-dir|start|die|destroy)$/) ev[key, $2] = t
  }
  END {
    for (w = 1; w <= n; w++) {
      c = wc[w]; k = split(ids[w], list, " "); m = 0
      for (i = 1; i <= k; i++) {
        key = w SUBSEP list[i]
        if (!((key, "start") in ev) || !((key, "create") in ev)) continue
        m++; cr[m] = ev[key, "create"]; st[m] = ev[key, "start"]
        di[m] = ((key, "die") in ev) ? ev[key, "die"] : -1
        de[m] = ((key, "destroy") in ev) ? ev[key, "destroy"] : -1
        up[m] = ((key, "extract-to-dir") in ev) ? ev[key, "extract-to-dir"] : -1
      }
      if (m == 0) continue
      # sort by creation (insertion sort; a handful of containers)
      for (i = 2; i <= m; i++) for (j = i; j > 1 && cr[j] < cr[j - 1]; j--) {
        x = cr[j]; cr[j] = cr[j - 1]; cr[j - 1] = x; x = st[j]; st[j] = st[j - 1]; st[j - 1] = x
        x = di[j]; di[j] = di[j - 1]; di[j - 1] = x; x = de[j]; de[j] = de[j - 1]; de[j - 1] = x
        x = up[j]; up[j] = up[j - 1]; up[j - 1] = x
      }
      ms = 1e6; serial = c ~ /^a_/
      printf "%s setup %.1f\n", c, (cr[1] - ws[w]) / ms
      last = 0; fs = st[1]; ls = st[1]
      for (i = 1; i <= m; i++) {
        if (serial && i > 1 && de[i - 1] > 0) printf "%s gap %.1f\n", c, (cr[i] - de[i - 1]) / ms
        if (serial && i > 1 && de[i - 1] > 0) printf "%s gap_start %.1f\n", c, (st[i] - de[i - 1]) / ms
        printf "%s create_start %.1f\n", c, (st[i] - cr[i]) / ms
        if (up[i] > 0) {
          printf "%s create_upload %.1f\n", c, (up[i] - cr[i]) / ms
          printf "%s upload_start %.1f\n", c, (st[i] - up[i]) / ms
        }
        if (di[i] > 0) printf "%s start_die %.1f\n", c, (di[i] - st[i]) / ms
        if (di[i] > 0 && de[i] > 0) printf "%s die_destroy %.1f\n", c, (de[i] - di[i]) / ms
        if (de[i] > last) last = de[i]
        if (st[i] < fs) fs = st[i]; if (st[i] > ls) ls = st[i]
      }
      if (last > 0) printf "%s teardown %.1f\n", c, (we[w] - last) / ms
      if (!serial) printf "%s start_spread %.1f\n", c, (ls - fs) / ms
      printf "%s containers %d\n", c, m
    }
  }' "$tmp/windows" "$tmp/events" >"$tmp/phases"

phase() { # phase CASE PHASE: median over samples, or "-"
  awk -v c="$1" -v p="$2" '$1 == c && $2 == p { print $3 }' "$tmp/phases" | sort -g | awk '
    { v[NR] = $1 }
    END { if (NR == 0) print "-"; else printf "%.0f\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

if [ -s "$tmp/phases" ]; then
  echo
  echo "where the time goes (ms, medians; from \`docker events\` recorded during the runs)"
  line() { printf '%-56s %8s %8s %8s %8s %8s\n' "$@"; }
  line "" "(a)" "(a)" "(b)" "(b)" "(b)"
  line "phase" "builder" "docker" "builder" "builder" "docker"
  line "" "serial" "run" "parallel" "1 step" "run x$M"
  prow() {
    line "$1" "$(phase a_builder "$2")" "$(phase a_docker "$2")" \
      "$(phase b_parallel "$2")" "$(phase b_slowest "$2")" "$(phase b_docker_par "$2")"
  }
  prow "run start -> first step's container created (per run)" setup
  prow "previous container destroyed -> next created (per step)" gap
  prow "previous container destroyed -> next started (per step)" gap_start
  prow "created -> started (per step)" create_start
  prow "  of which created -> files uploaded (builder)" create_upload
  prow "  of which files uploaded -> started (builder)" upload_start
  prow "started -> died: the step itself (per step)" start_die
  prow "died -> destroyed (per step)" die_destroy
  prow "last container destroyed -> run end (per run)" teardown
  prow "first start -> last start (per run)" start_spread
  echo "setup: builder = process start, engine connect, build network + volumes, seed container;"
  echo "       docker run = CLI start + create request. gap: builder = next step scheduled, image"
  echo "       inspect, create (negative: builder creates the next container while the previous"
  echo "       step runs); docker run = CLI exit + next CLI start. created -> started: builder's upload"
  echo "       of a script step's file, then (serial: after waiting for the previous step) the engine's"
  echo "       start: network attach, volume mounts, runc. died -> destroyed: builder = engine cleanup,"
  echo "       wait, log drain, remove; docker run = engine cleanup and auto-remove."
fi

# --- leftovers -----------------------------------------------------------------------------------
status=0
leftovers=""
while read -r id; do
  [ -n "$id" ] || continue
  c="$(docker ps -aq --filter "label=$LABEL=$id")"
  v="$(docker volume ls -q --filter "label=$LABEL=$id")"
  n="$(docker network ls -q --filter "label=$LABEL=$id")"
  [ -z "$c$v$n" ] || leftovers+="build $id: containers [$c] volumes [$v] networks [$n]"$'\n'
done <"$tmp/ids"
builds="$(sort -u "$tmp/ids" | grep -c . || true)"
echo
if [ -n "$leftovers" ]; then
  echo "LEFTOVERS after $builds builds of this benchmark:"; printf '%s' "$leftovers"; status=1
else
  echo "cleanup: none of the $builds builds of this benchmark left a labelled container, volume or network"
fi
others="$(docker ps -aq --filter "label=$LABEL" | grep -c . || true)"
[ "$others" -eq 0 ] || echo "(note: $others builder-labelled container(s) of other builds exist on this engine, e.g. from concurrent tests; not checked)"
[ "$retried" -eq 0 ] || echo "note: $retried failed run(s) were retried (see stderr); their times are not counted"
echo "total benchmark time: $(calc '%.0f s' "($bench_end - $bench_start) / 1e6") (+ warm-up)"
exit "$status"
