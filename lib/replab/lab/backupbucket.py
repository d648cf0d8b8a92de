"""The backups bucket: the S3 bucket ``<experiment>-backups`` when the config has an S3
endpoint and the secrets store EC2 keys, else (site ``local``) the directory
``<workdir>/buckets/<backups>`` standing in for one. Puts, gets, deletes and lists keys."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..s3client import S3Error, s3_client
from ..secretsstore import SecretsStore
from ..storage import delete_object, list_objects
from ..transfers import download, upload


class Bucket:
    """The backups bucket: an S3 bucket, or a local directory standing in for one."""

    def __init__(self, cfg):
        self.name = cfg.buckets.backups
        ec2 = SecretsStore(cfg.workdir).credentials().get("ec2") or {}
        self.s3 = None
        if cfg.s3_endpoint and ec2.get("access") and ec2.get("secret"):
            self.s3 = s3_client(cfg.s3_endpoint, ec2["access"], ec2["secret"])
            self.location = f"s3://{self.name}"
        elif cfg.is_local:
            self.root = cfg.workdir_path.absolute() / "buckets" / self.name
            self.location = str(self.root)
        else:
            raise ConfigError(f"no EC2 credential in {SecretsStore(cfg.workdir).dir} for the "
                              f"backups bucket {self.name}: run 1_create_credentials")

    def url(self, key: str) -> str:
        return f"{self.location}/{key}"

    def put(self, path: Path, key: str) -> None:
        if self.s3 is not None:
            upload(self.s3, self.name, path, key)
            return
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def get(self, key: str, path: Path) -> None:
        if self.s3 is not None:
            download(self.s3, self.name, key, path)
            return
        source = self.root / key
        if not source.is_file():
            raise ConfigError(f"backup {key} is not in {self.root}")
        shutil.copyfile(source, path)

    def delete(self, key: str) -> None:
        if self.s3 is not None:
            delete_object(self.s3, self.name, key)
            return
        (self.root / key).unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        if self.s3 is not None:
            try:
                return sorted(list_objects(self.s3, self.name, prefix))
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return []
                raise
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(f"{prefix}{p.relative_to(base).as_posix()}" for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))


def bucket_location(cfg) -> str:
    """Where backups go: ``s3://<backups>`` or the local bucket directory."""
    return Bucket(cfg).location


__all__ = ["Bucket", "bucket_location"]
