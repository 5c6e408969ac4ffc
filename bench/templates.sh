#!/usr/bin/env bash
# Pushing a 1 MB pipeline template to the local registry (scripts/dev-env.sh starts it), as
# `builder templates push` does it for a user: a new version (with `latest` moved to it), then the
# same file again, which must change nothing. Beside them, the registry's floor for the same bytes
# in the same run: one blob upload with curl (POST, then PUT with the digest), no manifest.
# Usage: bench/templates.sh [RUNS]   (median and min of RUNS, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
registry=127.0.0.1:5000
cargo build --release -q
builder=target/release/builder
repo="$registry/bench/template-$(date +%s)"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

now() { date +%s%N; }
push=() repush=() floor=()
for i in $(seq 1 "$runs"); do
  file="$dir/training-pipeline_v1.0.$i.yaml"
  head -c 786432 /dev/urandom | base64 -w 0 >"$file" # 1,048,576 bytes
  t0=$(now)
  "$builder" templates push "$file" --repository "$repo" --tag latest >/dev/null
  t1=$(now)
  "$builder" templates push "$file" --repository "$repo" --tag latest | grep unchanged >/dev/null
  t2=$(now)
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  # A blob the registry has not seen: the floor pays the whole upload too.
  printf '\n' >>"$file"
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  t3=$(now)
  location=$(curl -sf -X POST -D - -o /dev/null "http://$registry/v2/bench/floor/blobs/uploads/" |
    tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
  case "$location" in http*) ;; *) location="http://$registry$location" ;; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$file" \
    "$location&digest=$digest" -o /dev/null
  t4=$(now)
  push+=($(((t1 - t0) / 1000))) repush+=($(((t2 - t1) / 1000))) floor+=($(((t4 - t3) / 1000)))
done

stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "median %6.1f ms  min %6.1f ms", a[int((NR+1)/2)]/1000, a[1]/1000}'; }
echo "1 MB template, $runs runs, registry $registry"
echo "  push, new version + latest : $(stats "${push[@]}")"
echo "  re-push, unchanged         : $(stats "${repush[@]}")"
echo "  floor, curl blob upload    : $(stats "${floor[@]}")"
