#!/usr/bin/env bash
# Starts a second Docker engine on this machine, idempotently, so that tests and benchmarks can run
# `builder worker`s as if on two machines: each worker on an engine of its own, whose containers,
# volumes and networks the other engine cannot see. It has its own --data-root, --exec-root,
# --pidfile, socket and bridge (a bridge it makes, `builder1`, on a subnet of its own, and its
# builds' networks from a pool of their own), so nothing it does clashes with the first engine's
# docker0 or networks; it loads the base image builder/busybox from the first engine.
# Usage: scripts/second-engine.sh         (as root, after scripts/dev-env.sh; safe to run again)
# Prints the engine's DOCKER_HOST (unix:///run/builder-engine2.sock) on stdout, nothing else.
# Env:   BUILDER_DATA_DIR  where the engine keeps its images and containers (default
#        ~/.local/share/builder, in engine2/)
set -euo pipefail
export PATH="/usr/bin:$PATH"

data_dir="${BUILDER_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/builder}"
# The exec root holds containerd's sockets, whose paths must stay short: /run, not the data dir.
exec_root="/run/builder-engine2"
socket="/run/builder-engine2.sock"
host="unix://$socket"
bridge="builder1"
# Outside docker0's 172.17.0.0/16 and the 172.x/192.168.x pools the first engine gives networks.
bridge_address="10.231.0.1/24"
network_pool="10.232.0.0/16"
base_image="builder/busybox:latest"

log() { echo "second-engine: $*" >&2; }

engine() { docker -H "$host" "$@"; }

start_engine() {
  if engine info >/dev/null 2>&1; then return; fi
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$bridge_address" dev "$bridge"
  fi
  ip link set "$bridge" up
  # A dockerd starting deletes the default bridge network its store kept from its last run, and
  # that deletion takes the first engine's docker0 off the machine (seen with 20.10: every plain
  # `docker run` there then fails, "could not find bridge docker0"). A fresh network store keeps
  # nothing to delete; the networks it held belonged to containers of that last run.
  rm -rf "$data_dir/engine2/network"
  # A pid file left by a dockerd the machine no longer runs (it restarted) makes the next one
  # refuse to start ("pid file found"); the pid may name some other process by now.
  local pid_file="$exec_root.pid"
  if [[ -f $pid_file && "$(cat "/proc/$(cat "$pid_file")/comm" 2>/dev/null)" != dockerd ]]; then
    rm -f "$pid_file"
  fi
  mkdir -p "$data_dir/engine2"
  log "starting dockerd on $socket (log: $data_dir/engine2.log)"
  # --bridge: docker uses an existing bridge of that name and its address; it never makes one.
  # --iptables=false: two dockerds on one machine share its iptables, and each network either
  # creates moves the same jump to DOCKER-ISOLATION-STAGE-1 in FORWARD (delete, insert): at once,
  # one's delete finds the rule gone and its network is refused ("iptables failed: … RULE_DELETE
  # failed"), as a build of tests/workers.rs was. This engine's containers need no NAT: the
  # tests' steps reach nothing beyond the machine, and the engine itself pulls and pushes.
  nohup dockerd \
    --host "$host" \
    --data-root "$data_dir/engine2" \
    --exec-root "$exec_root" \
    --pidfile "$pid_file" \
    --bridge "$bridge" \
    --iptables=false \
    --default-address-pool "base=$network_pool,size=24" \
    >"$data_dir/engine2.log" 2>&1 &
  for _ in $(seq 1 60); do
    if engine info >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  log "dockerd on $socket did not come up; see $data_dir/engine2.log"
  return 1
}

load_base_image() {
  if engine image inspect "$base_image" >/dev/null 2>&1; then return; fi
  if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    log "the first engine has no $base_image: run scripts/dev-env.sh first"
    return 1
  fi
  log "loading $base_image into the engine on $socket"
  docker save "$base_image" | engine load >/dev/null
}

start_engine
load_base_image
echo "$host"
