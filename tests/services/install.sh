#!/usr/bin/env bash
# Install what the local OpenStack for tests needs (tests/services/openstack.py), from nothing.
#
#   bash tests/services/install.sh
#
# Idempotent: every step is skipped when its result is already there.
#   1. Debian packages: Swift (proxy, account, container, object), memcached, rclone, fuse3,
#      openssh-server (a real sshd for replab.remote tests),
#      curl; `apt-get update` runs only when the package lists are missing or an install
#      from the current lists fails.
#   2. A venv for Keystone, apart from the project's venv (Keystone pins its own
#      dependencies): tests/services/.state/keystone-venv with keystone==29.1.0 and uwsgi.
#      Keystone 30 refuses EC2-credential creation from an application-credential token,
#      which is the flow the project relies on, hence the pin.
#
# Environment:
#   REPLAB_KEYSTONE_VENV    where the Keystone venv goes (default tests/services/.state/keystone-venv)
#   REPLAB_KEYSTONE_PYTHON  the interpreter that creates it (default python3)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${REPLAB_KEYSTONE_VENV:-$HERE/.state/keystone-venv}"
PY="${REPLAB_KEYSTONE_PYTHON:-python3}"
KEYSTONE_VERSION="29.1.0"
MARKER="$VENV/.replab-keystone-$KEYSTONE_VERSION"
CONSTRAINTS="$HERE/keystone-constraints.txt"

APT_PACKAGES=(swift swift-proxy swift-account swift-container swift-object memcached rclone
    fuse3 curl openssh-server postgresql)
# The command each package provides; a package is installed only when its command is missing.
APT_COMMANDS=(swift-ring-builder swift-proxy-server swift-account-server swift-container-server
    swift-object-server memcached rclone fusermount3 curl /usr/sbin/sshd
    /usr/lib/postgresql/15/bin/initdb)

log() { printf 'install.sh: %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        log "not root and no sudo: cannot install Debian packages"
    fi
fi

# Wait until no process holds apt's or dpkg's lock files (another install may be running).
apt_locks_held() {
    local fd target
    for fd in /proc/[0-9]*/fd/*; do
        target="$(readlink "$fd" 2>/dev/null)" || continue
        case "$target" in
            /var/lib/dpkg/lock | /var/lib/dpkg/lock-frontend | /var/lib/apt/lists/lock | \
                /var/cache/apt/archives/lock)
                return 0
                ;;
        esac
    done
    return 1
}

wait_for_apt() {
    local waited=0
    while apt_locks_held; do
        if [ "$waited" -eq 0 ]; then log "waiting for another apt/dpkg to finish"; fi
        if [ "$waited" -ge 900 ]; then
            log "apt/dpkg still locked after ${waited}s"
            return 1
        fi
        sleep 2
        waited=$((waited + 2))
    done
}

apt_get() {
    wait_for_apt
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 "$@"
}

have_package_lists() {
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

install_debian_packages() {
    local missing=() i
    for i in "${!APT_COMMANDS[@]}"; do
        if ! command -v "${APT_COMMANDS[$i]}" >/dev/null 2>&1; then
            missing+=("${APT_PACKAGES[$i]}")
        fi
    done
    # Swift's proxy loads keystonemiddleware (authtoken) from Debian's python3.
    if command -v swift-proxy-server >/dev/null 2>&1 &&
        ! /usr/bin/python3 -c 'import keystonemiddleware.auth_token' >/dev/null 2>&1; then
        missing+=(python3-keystonemiddleware)
    fi
    if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    # uwsgi is built from source by pip: it needs a C compiler and the interpreter's headers.
    if [ ! -f "$MARKER" ]; then
        if ! command -v gcc >/dev/null 2>&1; then missing+=(gcc); fi
        if ! "$PY" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
            missing+=(python3-dev)
        fi
    fi
    if [ "${#missing[@]}" -eq 0 ]; then
        log "Debian packages: already installed"
        return 0
    fi
    log "Debian packages to install: ${missing[*]}"
    if ! have_package_lists; then
        apt_get update
    fi
    if ! apt_get install -y "${missing[@]}"; then
        log "install from the current package lists failed; updating them and trying again"
        apt_get update
        apt_get install -y "${missing[@]}"
    fi
}

install_keystone_venv() {
    # The marker is written only once both programs have run (below).
    if [ -f "$MARKER" ] && [ -x "$VENV/bin/keystone-manage" ] && [ -x "$VENV/bin/uwsgi" ]; then
        log "Keystone venv: already installed ($VENV)"
        return 0
    fi
    log "Keystone venv: creating $VENV (keystone==$KEYSTONE_VERSION, uwsgi; uwsgi compiles)"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    local constraint_args=()
    if [ -f "$CONSTRAINTS" ]; then constraint_args=(-c "$CONSTRAINTS"); fi
    "$VENV/bin/python" -m pip install --quiet "${constraint_args[@]}" \
        "keystone==$KEYSTONE_VERSION" uwsgi
    local out
    if ! out="$("$VENV/bin/keystone-manage" --version 2>&1)"; then
        log "keystone-manage does not run:"
        printf '%s\n' "$out" >&2
        return 1
    fi
    "$VENV/bin/uwsgi" --version >/dev/null
    touch "$MARKER"
    log "Keystone venv: ready"
}

start=$SECONDS
install_debian_packages
install_keystone_venv
log "done in $((SECONDS - start))s"
