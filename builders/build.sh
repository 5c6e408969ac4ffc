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

# Builds builders/NAME/Dockerfile as builder/NAME:latest (and any extra tags), with the files
# a builder needs from this machine staged into its context by stage_NAME, if defined.
build_image() { # build_image NAME [EXTRA_TAG...]
  local name="$1"; shift
  if ! $rebuild && docker image inspect "builder/$name:latest" >/dev/null 2>&1; then return; fi
  log "building builder/$name"
  local context; context="$(mktemp -d)"
  cp "$name"/Dockerfile "$context/"
  if declare -F "stage_$name" >/dev/null; then "stage_$name" "$context"; fi
  local tags=(-t "builder/$name:latest")
  for tag in "$@"; do tags+=(-t "$tag"); done
  if ! docker build -q --force-rm "${tags[@]}" "$context" >"$context/build.log" 2>&1; then
    cat "$context/build.log" >&2
    # The engine numbers the failing instruction (`Step N/M : …`); find the line it starts on.
    local step line
    step="$(sed -n 's|^Step \([0-9]*\)/.*|\1|p' "$context/build.log" | tail -n 1)"
    line="$(awk -v n="${step:-0}" 'continued { continued = /\\$/; next }
      /^[[:space:]]*(#|$)/ { next }
      ++i == n { print NR; exit }
      { continued = /\\$/ }' "$name/Dockerfile")"
    log "builder/$name failed to build: builders/$name/Dockerfile:${line:-?}: $(sed -n "${line:-0}p" "$name/Dockerfile")"
    rm -rf "$context"
    return 1
  fi
  rm -rf "$context"
}

# Debian's CLI (from docker.io, matching the engine), not any other docker on PATH.
stage_docker() { stage_binary /usr/bin/docker "$1/rootfs"; }
# The machine's CA bundle, so that the image reaches PyPI wherever this machine does.
stage_python() { cp /etc/ssl/certs/ca-certificates.crt "$1/host-ca.crt"; }

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

build_image docker gcr.io/cloud-builders/docker:latest
build_debian
for name in shell git curl python; do build_image "$name"; done
