#!/usr/bin/env bash
# A real Docker engine on a machine without one, and the sandbox's worker image built without a registry.
#
#   bash scripts/docker_engine.sh start   # dockerd as these machines run it (no iptables, no bridge, cgroupfs)
#   bash scripts/docker_engine.sh image   # a Debian minbase image (debootstrap from apt's own mirror); the
#                                         # sandbox binds the host's Python and harness into it read-only
#   bash scripts/docker_engine.sh stop
#
# The image is what `sandbox: {backend: docker, docker_image: unlearning-harness-minbase:latest,
# docker_host_python: true}` runs (configs/ci-docker.yaml). Machines with a registry can build the
# organizers' image from the Dockerfile instead.
set -euo pipefail
IMAGE=${HARNESS_DOCKER_IMAGE:-unlearning-harness-minbase:latest}
LOG=${DOCKERD_LOG:-/tmp/unlearning-harness-dockerd.log}
PIDFILE=/tmp/unlearning-harness-dockerd.pid

start() {
  if docker info >/dev/null 2>&1; then echo "docker engine already running"; return 0; fi
  command -v dockerd >/dev/null || { apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; }
  dockerd --iptables=false --ip6tables=false --bridge=none --exec-opt native.cgroupdriver=cgroupfs \
          --storage-driver overlay2 >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    docker info >/dev/null 2>&1 && { echo "docker engine ready"; return 0; }
    sleep 0.2
  done
  echo "dockerd did not become ready; see $LOG" >&2
  tail -20 "$LOG" >&2
  return 1
}

image() {
  if docker image inspect "$IMAGE" >/dev/null 2>&1; then echo "$IMAGE exists"; return 0; fi
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
  # the same mirror and release apt uses here: no registry and no other host is needed
  mirror=$(grep -h -m1 -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | head -1)
  [ -n "$mirror" ] || mirror=$(grep -h -m1 -E '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1)
  suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
  rootfs=$(mktemp -d /tmp/unlearning-harness-rootfs.XXXXXX)
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >/tmp/unlearning-harness-debootstrap.log 2>&1 \
    || { tail -20 /tmp/unlearning-harness-debootstrap.log >&2; return 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  chmod 0755 "$rootfs"/root  # the host Python may live under /root: runs (nobody) must traverse it
  mkdir -p "$rootfs"/sandbox/inbox "$rootfs"/sandbox/outbox "$rootfs"/sandbox/control "$rootfs"/kaggle/tmp "$rootfs"/kaggle/working
  tar -C "$rootfs" -c . | docker import -c 'WORKDIR /kaggle/working' - "$IMAGE" >/dev/null
  rm -rf "$rootfs"
  echo "$IMAGE built"
}

stop() {
  if [ -f "$PIDFILE" ]; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.2; done
    rm -f "$PIDFILE"
  fi
}

case "${1:-}" in
  start) start ;;
  image) image ;;
  stop) stop ;;
  *) echo "usage: $0 start|image|stop" >&2; exit 2 ;;
esac
