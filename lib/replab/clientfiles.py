"""The client files the lab reads, rendered from the stored credentials and lab secrets:
``clouds.yaml`` (openstacksdk, the openstack CLI), ``rclone.conf`` (S3 and Swift remotes) and
``lab.env`` (the lab's environment), each written 0600 into the secrets store."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from . import rclone
from .errors import ConfigError
from .s3client import S3_REGION
from .secretsstore import SecretsStore


def write_client_files(cfg, store: SecretsStore) -> list[Path]:
    """clouds.yaml, rclone.conf and lab.env from the stored credentials and lab secrets."""
    import yaml

    data = store.credentials()
    app, ec2, lab = data.get("application_credential"), data.get("ec2"), data.get("lab", {})
    written = []
    if app:
        entry = {"clouds": {cfg.names["application_credential"]: {
            "auth_type": "v3applicationcredential",
            "auth": {"auth_url": app["auth_url"], "application_credential_id": app["id"],
                     "application_credential_secret": app["secret"]},
            "region_name": cfg.storage_region, "interface": "public",
            "identity_api_version": 3}}}
        written.append(store.write(store.CLOUDS, yaml.safe_dump(entry, sort_keys=False)))
    remotes = {}
    if ec2 and cfg.s3_endpoint:
        remotes[f"{cfg.experiment}-s3"] = rclone.s3_remote(cfg.s3_endpoint, ec2["access"],
                                                           ec2["secret"])
    if app:
        remotes[f"{cfg.experiment}-swift"] = rclone.swift_remote(
            app["auth_url"], app["id"], app["secret"], cfg.storage_region)
    if remotes:
        written.append(store.write(store.RCLONE, rclone.render_rclone_conf(remotes)))
    env = {"JUPYTER_TOKEN": lab.get("jupyter_token", ""),
           "MLFLOW_TRACKING_USERNAME": lab.get("mlflow_user", ""),
           "MLFLOW_TRACKING_PASSWORD": lab.get("mlflow_password", "")}
    if ec2:
        env.update({"AWS_ACCESS_KEY_ID": ec2["access"], "AWS_SECRET_ACCESS_KEY": ec2["secret"],
                    "AWS_DEFAULT_REGION": S3_REGION})
        if cfg.s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = cfg.s3_endpoint
    for key, flag in (("HF_TOKEN", cfg.lab.huggingface), ("GH_TOKEN", cfg.lab.github_cli)):
        if flag and lab.get(key.lower()):
            env[key] = lab[key.lower()]
    written.append(store.write(store.LAB_ENV, _env_file(env)))
    return written


def _env_file(values: Mapping[str, str]) -> str:
    lines = ["# replab lab environment: secrets. Mode 0600; never commit or share."]
    for k, v in values.items():
        if "\n" in str(v):
            raise ConfigError([(k, "a lab environment value cannot span lines")])
        lines.append(f"{k}={v}")
    return "\n".join(lines) + "\n"


__all__ = ["write_client_files"]
