#!/usr/bin/env bash
# A Docker engine of the tests' own, for the lab's compose stack (tests/test_lab_docker.py).
#
#   bash tests/services/docker.sh install          # Debian docker.io, docker-compose, debootstrap
#   bash tests/services/docker.sh up     [STATE]   # start dockerd (or reuse it); prints DOCKER_HOST=...
#   bash tests/services/docker.sh status [STATE]   # exit 0 when our dockerd answers
#   bash tests/services/docker.sh base   [STATE]   # build the base image (debootstrap), once
#   bash tests/services/docker.sh down   [STATE]   # stop the dockerd `up` started, by its PID
#
# `up` runs dockerd with its own data root, socket and PID file under STATE (default
# tests/services/.state/docker), output to STATE/dockerd.log, in its own session; `down`
# stops exactly that PID (dockerd stops its containerd and its containers with it). The
# system's dockerd, if any, is left alone; on a machine whose own dockerd must be used
# instead, point the tests at it with REPLAB_DOCKER_HOST=unix:///var/run/docker.sock.
#
# No registry is reachable from the tests' machines, so `base` makes the image the lab's
# Dockerfiles build FROM in the tests: Debian 12 (debootstrap --variant=minbase, with python3,
# pip, passwd, ca-certificates), tagged replab-test/bookworm:1. TLS to package registries is
# intercepted on these machines, so the host's CA bundle is copied into the image and PIP_CERT
# points at it. The root file system is kept as STATE/bookworm-rootfs.tar: later runs import
# it again in seconds.
#
# Environment: REPLAB_DOCKER_STATE_DIR (or the STATE argument), REPLAB_DEBIAN_MIRROR
# (default http://deb.debian.org/debian).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VERB="${1:-}"
STATE="${2:-${REPLAB_DOCKER_STATE_DIR:-$HERE/.state/docker}}"
MIRROR="${REPLAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_IMAGE="replab-test/bookworm:1"
HOST_CA="/etc/ssl/certs/ca-certificates.crt"
IMAGE_CA="/usr/local/share/replab-host-ca.pem"

log() { printf 'docker.sh: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi

# The Debian client talks to the Debian engine (a newer docker CLI elsewhere on PATH may not).
docker_cli() {
    if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

apt_install() {
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update
    fi
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 \
        install -y --no-install-recommends "$@"; then
        log "install from the current package lists failed; updating them and trying again"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 \
            install -y --no-install-recommends "$@"
    fi
}

cmd_install() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [ -x /usr/bin/docker ] || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "docker.io, docker-compose, debootstrap: already installed"
        return 0
    fi
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    log "installing: ${missing[*]}"
    apt_install "${missing[@]}"
}

pid_alive() {
    local pid
    [ -f "$STATE/dockerd.pid" ] || return 1
    pid="$(cat "$STATE/dockerd.pid")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

answers() {
    DOCKER_HOST="unix://$STATE/docker.sock" "$(docker_cli)" info >/dev/null 2>&1
}

cmd_status() {
    if pid_alive && answers; then
        echo "DOCKER_HOST=unix://$STATE/docker.sock"
        return 0
    fi
    return 1
}

cmd_up() {
    command -v dockerd >/dev/null 2>&1 || die "dockerd is missing: bash $0 install"
    if cmd_status; then
        log "dockerd already running (pid $(cat "$STATE/dockerd.pid"))"
        return 0
    fi
    if pid_alive; then cmd_down; fi
    mkdir -p "$STATE/data"
    # dockerd's exec root holds containerd's socket: keep its path short (108-byte limit).
    local exec_root
    exec_root="/run/replab-docker-$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)"
    rm -f "$STATE/docker.sock"
    local start=$SECONDS
    setsid "${SUDO[@]}" dockerd --data-root "$STATE/data" --exec-root "$exec_root" \
        --pidfile "$STATE/dockerd.pid" --host "unix://$STATE/docker.sock" \
        >"$STATE/dockerd.log" 2>&1 </dev/null 9>&- &
    local waited=0
    until answers; do
        if [ "$waited" -ge 300 ]; then
            tail -20 "$STATE/dockerd.log" >&2
            die "dockerd did not answer within 30 s (log: $STATE/dockerd.log)"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    log "dockerd up in $((SECONDS - start))s (pid $(cat "$STATE/dockerd.pid"), log $STATE/dockerd.log)"
    echo "DOCKER_HOST=unix://$STATE/docker.sock"
}

cmd_down() {
    if ! [ -f "$STATE/dockerd.pid" ]; then
        log "no dockerd recorded in $STATE"
        return 0
    fi
    local pid
    pid="$(cat "$STATE/dockerd.pid")"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        "${SUDO[@]}" kill -TERM "$pid"
        local waited=0
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$waited" -ge 300 ]; then
                log "dockerd $pid still running after 30 s: SIGKILL"
                "${SUDO[@]}" kill -KILL "$pid"
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        log "dockerd $pid stopped"
    fi
    rm -f "$STATE/dockerd.pid" "$STATE/docker.sock"
}

cmd_base() {
    cmd_status >/dev/null || die "dockerd is not running: bash $0 up"
    local docker
    docker="$(docker_cli)"
    export DOCKER_HOST="unix://$STATE/docker.sock"
    if "$docker" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "$BASE_IMAGE: already built"
        return 0
    fi
    local tarball="$STATE/bookworm-rootfs.tar"
    if [ ! -f "$tarball" ]; then
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing: bash $0 install"
        local rootfs="$STATE/rootfs" start=$SECONDS
        "${SUDO[@]}" rm -rf "$rootfs"
        log "debootstrap bookworm into $rootfs (about a minute)"
        "${SUDO[@]}" debootstrap --variant=minbase \
            --include=python3,python3-pip,passwd,ca-certificates \
            bookworm "$rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 ||
            die "debootstrap failed; see $STATE/debootstrap.log"
        "${SUDO[@]}" rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        "${SUDO[@]}" cp "$HOST_CA" "$rootfs$IMAGE_CA"
        "${SUDO[@]}" tar -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        "${SUDO[@]}" rm -rf "$rootfs"
        log "root file system ready in $((SECONDS - start))s: $tarball"
    fi
    "$docker" import \
        --change "ENV PIP_CERT=$IMAGE_CA" \
        --change "ENV REQUESTS_CA_BUNDLE=$IMAGE_CA" \
        --change 'CMD ["/bin/bash"]' \
        "$tarball" "$BASE_IMAGE" >/dev/null
    log "$BASE_IMAGE imported"
}

# One docker.sh at a time per STATE (two test sessions may share it).
lock() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock 9
}

case "$VERB" in
up | base | down) lock ;;
esac

case "$VERB" in
install) cmd_install ;;
up) cmd_up ;;
status) cmd_status ;;
down) cmd_down ;;
base) cmd_base ;;
*)
    echo "usage: $0 install|up|status|base|down [STATE_DIR]" >&2
    exit 2
    ;;
esac
