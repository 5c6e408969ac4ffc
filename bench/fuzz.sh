#!/usr/bin/env bash
# Fuzzes every parser of untrusted input for a set time each and reports, per target, the
# executions reached, the rate, the coverage and the crashes (a report, not a test; CI replays the
# saved corpus as a test instead: tests/fuzz_corpus.rs).
#
# Targets (fuzz/targets.rs): config (load, decode, validate, resolve), substitute (scanning, bash
# expansions, dynamic values), webhook (payload parsing, signature header), gcloudignore (rules
# judging paths at several depths), archive (unpacking an upload), trigger (trigger and schedule files),
# access (a request's Host against the allowlist, a console session cookie), logs (step output
# into masked lines), github_report (what GitHub is told of a build), framing (a step's request
# bodies as a build's engine endpoint follows them), context_scan (a `docker build` context
# scanned for its Dockerfile, what it passes over skipped unread).
#
# Each target starts from its saved corpus (fuzz/corpus/T, read only) and writes what it finds
# to a scratch directory, so a run leaves the repository as it was. A crash is written to
# fuzz/artifacts/T/ by libFuzzer; after fixing it, copy the input into fuzz/corpus/T so that the
# replay test keeps it fixed.
#
# Usage:  bench/fuzz.sh [TARGET…]     (all targets when none is named)
# Env:    S=60        seconds per target
#         RUNS=N      run each target for N executions instead (e.g. RUNS=10000000, the issue's goal)
#         TIMEOUT=10  seconds one input may take before it counts as a crash (libFuzzer's -timeout;
#                     larger for a long run that may be paused with SIGSTOP)
#         SANITIZER=none   cargo fuzz's -s: `none` keeps libFuzzer's coverage guidance without
#                          AddressSanitizer, which made the slow targets 6-8x slower (config: ~580
#                          against ~4,500 executions a second). builder's parsers are safe Rust;
#                          ASan watches only their dependencies' unsafe code (serde_yaml's
#                          translated libyaml among them): SANITIZER=address for such a run.
#         TRACE_COMPARES=0  builds without tracing comparisons (cargo fuzz --no-trace-compares):
#                          libFuzzer then guesses fewer magic values, but the substitute and
#                          gcloudignore targets ran their corpora 2x faster (measured here). A
#                          change of it rebuilds every dependency once (~15 min here).
#         TMPDIR           where the archive target unpacks each input (default /dev/shm when
#                          there is one: 4x faster than a disk's /tmp, measured here)
# Needs the nightly toolchain and cargo-fuzz (installed here with `cargo install cargo-fuzz` when
# missing).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
S=${S:-60}
SANITIZER=${SANITIZER:-none}
if [ -n "${RUNS:-}" ]; then budget=(-runs="$RUNS"); else budget=(-max_total_time="$S"); fi
flags=(-O -s "$SANITIZER")
[ "${TRACE_COMPARES:-1}" != 0 ] || flags+=(--no-trace-compares)
if [ -z "${TMPDIR:-}" ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config substitute webhook gcloudignore archive trigger access logs github_report framing context_scan)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
cargo +nightly fuzz build "${flags[@]}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
printf '%-14s %12s %10s %8s %8s %8s\n' target executions exec/s cov corpus crashes
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  before=$(ls "artifacts/$t" | wc -l)
  log="$scratch/$t.log"
  set +e
  cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    "${budget[@]}" -rss_limit_mb=2048 -timeout="${TIMEOUT:-10}" -print_final_stats=1 >"$log" 2>&1
  set -e
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  corpus=$(ls "$scratch/$t" | wc -l)
  crashes=$(( $(ls "artifacts/$t" | wc -l) - before ))
  printf '%-14s %12s %10s %8s %8s %8s\n' "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$crashes"
  if [ "$crashes" -gt 0 ]; then
    grep -m3 -E 'ERROR|panicked' "$log" | sed 's/^/    /'
  fi
done
