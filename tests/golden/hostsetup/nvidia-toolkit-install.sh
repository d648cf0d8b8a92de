#!/usr/bin/env bash
# NVIDIA container toolkit from nvidia.github.io
# Written by replab (replab.hostsetup); run as root. Idempotent: safe to run again.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

apt_get update
apt_get install -y --no-install-recommends ca-certificates curl gnupg2
install -m 0755 -d /usr/share/keyrings
curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey \
    | gpg --batch --yes --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
chmod a+r /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
    | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' \
    > /etc/apt/sources.list.d/nvidia-container-toolkit.list
apt_get update
apt_get install -y nvidia-container-toolkit
nvidia-ctk runtime configure --runtime=docker
