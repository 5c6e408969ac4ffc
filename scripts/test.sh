#!/usr/bin/env bash
# Runs the whole test suite against real engines: installs and starts them first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/dev-env.sh
cargo test --all-targets --no-fail-fast "$@"
