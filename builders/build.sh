#!/usr/bin/env bash
# Builds the standard builder images from local sources (nothing is pulled from the internet).
# Idempotent: an image that exists is kept unless --rebuild is given.
# Needs the engine and the base image from scripts/dev-env.sh.
set -euo pipefail
# Debian's docker CLI (from docker.io) matches its engine.
export PATH="/usr/bin:$PATH"
cd "$(dirname "$0")"
rebuild=false
[ "${1:-}" = "--rebuild" ] && rebuild=true

log() { echo "builders: $*" >&2; }

# Copies a host binary and the shared libraries it links into a rootfs directory.
stage_binary() { # stage_binary BINARY ROOTFS
  local binary="$1" rootfs="$2"
  mkdir -p "$rootfs$(dirname "$binary")"
  cp "$binary" "$rootfs$binary"
  for lib in $(ldd "$binary" 2>/dev/null | grep -o '/[^ ]*' || true); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
}

build_docker() {
  if ! $rebuild && docker image inspect builder/docker:latest >/dev/null 2>&1; then return; fi
  log "building builder/docker"
  local context; context="$(mktemp -d)"
  cp docker/Dockerfile "$context/"
  # Debian's CLI (from docker.io, matching the engine), not any other docker on PATH.
  stage_binary /usr/bin/docker "$context/rootfs"
  docker build -q -t builder/docker:latest -t gcr.io/cloud-builders/docker:latest "$context" >/dev/null
  rm -rf "$context"
}

build_docker
