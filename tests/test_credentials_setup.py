"""replab.credentials.setup: a config it cannot finish with is refused before anything is
created at the storage site."""

from __future__ import annotations

import dataclasses
import json

import pytest

from replab import config, credentials, secretsstore
from replab.errors import ConfigError

NOWHERE = "http://127.0.0.1:9/v3"  # the discard port: nothing answers, nothing is created
ENV: dict[str, str] = {}  # no credential in the environment: authenticating would fail


def test_a_storage_site_without_s3_is_refused_before_any_credential(tmp_path):
    """Without an S3 endpoint the buckets cannot be made: setup says so (naming
    s3_endpoint) before it authenticates, so no application or EC2 credential is left
    behind at the storage site."""
    cfg = config.build({"experiment": "exp1", "frameworks": ["pytorch"], "site": "CHI@UC",
                        "workdir": str(tmp_path / "wd"),
                        "endpoints": {"storage_auth_url": NOWHERE}})
    cfg = dataclasses.replace(cfg, storage_site="KVM@TACC")  # a site with no object store
    assert cfg.s3_endpoint is None and cfg.storage_auth_url == NOWHERE
    with pytest.raises(ConfigError, match="s3_endpoint") as err:
        credentials.setup(cfg, env=ENV, do_verify=False)
    assert "KVM@TACC" in str(err.value)
    store = secretsstore.SecretsStore(cfg.workdir)
    held = json.loads(store.path(store.CREDENTIALS).read_text()) if store.path(
        store.CREDENTIALS).exists() else {}
    assert "application_credential" not in held and "ec2" not in held
