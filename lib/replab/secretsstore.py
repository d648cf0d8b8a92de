"""The secrets store: ``<workdir>/secrets/`` (directory 0700, files 0600, written
atomically), which holds the lab's credentials and the client files made from them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._files import write_private
from .errors import ConfigError


class SecretsStore:
    """``<workdir>/secrets/``: 0700 directory, 0600 files, written atomically."""

    CREDENTIALS = "credentials.json"  # the source of truth: ids, secrets, expiry
    CLOUDS = "clouds.yaml"  # an entry for openstacksdk / the openstack CLI
    RCLONE = "rclone.conf"  # remotes for the object store (S3 and Swift)
    LAB_ENV = "lab.env"  # the lab's environment (compose .env, local launcher)

    def __init__(self, workdir: str | os.PathLike):
        self.dir = Path(workdir).expanduser() / "secrets"

    def ensure(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        return self.dir

    def path(self, name: str) -> Path:
        return self.dir / name

    def write(self, name: str, text: str) -> Path:
        """Write ``name`` with mode 0600 (created so, never world-readable in between)."""
        self.ensure()
        return write_private(self.path(name), text)

    def read(self, name: str) -> str | None:
        p = self.path(name)
        return p.read_text() if p.exists() else None

    def credentials(self) -> dict[str, Any]:
        """The stored credentials; {} when none. Raises ConfigError when the file is corrupt."""
        text = self.read(self.CREDENTIALS)
        if not text:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            raise ConfigError(f"{self.path(self.CREDENTIALS)} is corrupt (not JSON); delete "
                              "it and re-run 1_create_credentials") from None
        return data if isinstance(data, dict) else {}

    def save_credentials(self, data: Mapping[str, Any]) -> Path:
        return self.write(self.CREDENTIALS, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def lab_env(self) -> dict[str, str]:
        """The lab environment as a mapping (from ``lab.env``)."""
        out = {}
        for line in (self.read(self.LAB_ENV) or "").splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, _, v = line.partition("=")
                out[k.strip()] = v.strip()
        return out


__all__ = ["SecretsStore"]
