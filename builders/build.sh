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

# A minimal Debian (the machine's release) from debootstrap: the base of the service's own image.
build_debian() {
  if ! $rebuild && docker image inspect builder/debian:latest >/dev/null 2>&1; then return; fi
  local release; release="$(. /etc/os-release && echo "$VERSION_CODENAME")"
  log "building builder/debian ($release, debootstrap --variant=minbase; about a minute)"
  local root; root="$(mktemp -d)"
  debootstrap --variant=minbase "$release" "$root" http://deb.debian.org/debian >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "builder/debian:$release" >/dev/null
  docker tag "builder/debian:$release" builder/debian:latest
  rm -rf "$root"
}

build_docker
build_debian
