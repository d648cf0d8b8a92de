#!/usr/bin/env bash
# Install what the tests' local OpenStack control plane needs (tests/services/cloud.py), from nothing.
#
#   bash tests/services/cloud-install.sh
#
# Idempotent: every step is skipped when its result is already there.
#   1. Debian packages: rabbitmq-server, mariadb-server (neither is started here; cloud.py runs
#      its own private instances on 127.0.0.1). `apt-get update` runs only when the package
#      lists are missing or an install from the current lists fails.
#   2. One venv for every service: Keystone 29.1.0, Placement 16, Nova 34, Neutron 29,
#      Glance 33, Blazar 18 + blazar-nova 10, uWSGI, PyMySQL, pinned by
#      tests/services/cloud-constraints.txt, and the ML2 driver tests/services/cloud/alwaysbind.
#      The venv is rebuilt when the constraints file changes (its hash is in the marker).
#
# Environment:
#   REPLAB_CLOUD_VENV    where the venv goes (default tests/services/.state/cloud-venv)
#   REPLAB_CLOUD_PYTHON  the interpreter that creates it (default python3; 3.10-3.12)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${REPLAB_CLOUD_VENV:-$HERE/.state/cloud-venv}"
PY="${REPLAB_CLOUD_PYTHON:-python3}"
CONSTRAINTS="$HERE/cloud-constraints.txt"
DRIVER="$HERE/cloud/alwaysbind"
PACKAGES=(keystone==29.1.0 nova==34.0.0 neutron==29.0.0 openstack-placement==16.0.0
    glance==33.0.0 blazar==18.0.0 blazar-nova==10.0.0 uWSGI PyMySQL pyroute2)
HASH="$({ echo "${PACKAGES[*]}"; cat "$CONSTRAINTS" "$DRIVER/pyproject.toml" "$DRIVER/replab_alwaysbind/__init__.py"; } |
    sha256sum | cut -c1-16)"
MARKER="$VENV/.replab-cloud-$HASH"

log() { printf 'cloud-install.sh: %s\n' "$*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
        log "not root and no sudo: cannot install Debian packages"; fi
fi

apt_locks_held() {
    local fd target
    for fd in /proc/[0-9]*/fd/*; do
        target="$(readlink "$fd" 2>/dev/null)" || continue
        case "$target" in
            /var/lib/dpkg/lock | /var/lib/dpkg/lock-frontend | /var/lib/apt/lists/lock | \
                /var/cache/apt/archives/lock) return 0 ;;
        esac
    done
    return 1
}

apt_get() {
    local waited=0
    while apt_locks_held; do
        if [ "$waited" -ge 900 ]; then log "apt/dpkg still locked after ${waited}s"; return 1; fi
        if [ "$waited" -eq 0 ]; then log "waiting for another apt/dpkg to finish"; fi
        sleep 2; waited=$((waited + 2))
    done
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 "$@"
}

install_debian_packages() {
    local missing=()
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
    { [ -x /usr/sbin/mariadbd ] && command -v mariadb-install-db >/dev/null &&
        command -v mariadb-dump >/dev/null; } || missing+=(mariadb-server)
    "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
    if [ ! -f "$MARKER" ]; then  # uWSGI compiles when pip has no wheel for it
        command -v gcc >/dev/null 2>&1 || missing+=(gcc)
        "$PY" -c 'import os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
            missing+=(python3-dev)
    fi
    if [ "${#missing[@]}" -eq 0 ]; then log "Debian packages: already installed"; return 0; fi
    log "Debian packages to install: ${missing[*]}"
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || apt_get update
    if ! apt_get install -y --no-install-recommends "${missing[@]}"; then
        log "install from the current package lists failed; updating them and trying again"
        apt_get update
        apt_get install -y --no-install-recommends "${missing[@]}"
    fi
}

install_venv() {
    if [ -f "$MARKER" ] && [ -x "$VENV/bin/nova-compute" ] && [ -x "$VENV/bin/uwsgi" ]; then
        log "control-plane venv: already installed ($VENV)"
        return 0
    fi
    if [ -x "$VENV/bin/python" ] && [ -n "$(compgen -G "$VENV/.replab-cloud-*")" ]; then
        log "control-plane venv: updating $VENV to the current package list"
        rm -f "$VENV"/.replab-cloud-*
    else
        log "control-plane venv: creating $VENV (about 3-5 minutes)"
        rm -rf "$VENV"
        mkdir -p "$(dirname "$VENV")"
        "$PY" -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
    fi
    "$VENV/bin/python" -m pip install --quiet -c "$CONSTRAINTS" "${PACKAGES[@]}"
    "$VENV/bin/python" -m pip install --quiet --no-deps "$DRIVER"
    "$VENV/bin/python" -m pip check >&2 || log "pip check reports the conflicts above"
    (cd / && "$VENV/bin/python" -c 'import nova, neutron, placement, glance, blazar, blazarnova, keystone
import neutron.db.migration.models.head  # imports pyroute2 (not a declared dependency)
import importlib.metadata as m
eps = m.entry_points(group="neutron.ml2.mechanism_drivers")
assert any(e.name == "alwaysbind" for e in eps), "alwaysbind ML2 driver not registered"')
    "$VENV/bin/uwsgi" --version >/dev/null
    touch "$MARKER"
    log "control-plane venv: ready"
}

start=$SECONDS
install_debian_packages
install_venv
log "done in $((SECONDS - start))s"
