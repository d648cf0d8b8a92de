"""1_create_credentials executed by papermill against the local Keystone + Swift."""

import json

import pytest

from replab import config, keystonecredentials, keystonelogin, secretsstore
from tests.fixtures_openstack import clouds_yaml, removed_afterwards, unique_name
from tests.notebooks import execute, outputs_text

pytestmark = pytest.mark.services


@pytest.fixture
def experiment(local_openstack, tmp_path):
    """An experiment name of its own (its credentials and buckets are new: a clean state);
    the credentials and buckets it names are deleted afterwards, whatever the test left."""
    name = unique_name("nbcred")
    cfg = config.build({"experiment": name, "frameworks": ["sklearn"], "site": "CHI@UC"})
    with removed_afterwards(
            local_openstack, app_credentials=(cfg.names["application_credential"],),
            stores=(secretsstore.SecretsStore(tmp_path / "wd"),),
            containers=(cfg.buckets.data, cfg.buckets.artifacts, cfg.buckets.backups)):
        yield name


def test_notebook_creates_credentials_and_leaks_no_secret(local_openstack, experiment,
                                                          tmp_path):
    d = local_openstack.demo
    clouds = tmp_path / "clouds.yaml"
    clouds_yaml(local_openstack, clouds, name="chi")
    wd = tmp_path / "wd"
    execute("0_configure.ipynb", tmp_path / "0.ipynb", experiment=experiment, site="CHI@UC",
            frameworks="sklearn", workdir=str(wd), auth_url=local_openstack.auth_url,
            storage_auth_url=local_openstack.auth_url, s3_endpoint=local_openstack.s3_endpoint,
            region=local_openstack.region)
    out1 = tmp_path / "1.ipynb"
    execute("1_create_credentials.ipynb", out1, workdir=str(wd), cloud="chi",
            clouds_file=str(clouds))
    shown = outputs_text(out1)
    assert "application credential: created" in shown and "replaced" not in shown
    assert "EC2 credential: created" in shown and "verified" in shown
    out2 = tmp_path / "1-again.ipynb"
    execute("1_create_credentials.ipynb", out2, workdir=str(wd), cloud="chi",
            clouds_file=str(clouds))
    again = outputs_text(out2)
    assert "application credential: reused" in again and "EC2 credential: reused" in again

    store = secretsstore.SecretsStore(wd)
    data = store.credentials()
    planted = [data["application_credential"]["secret"], data["ec2"]["secret"],
               data["lab"]["jupyter_token"], data["lab"]["mlflow_password"], d.password]
    scanned = 0
    for path in [*tmp_path.rglob("*")]:
        if path.is_file() and store.dir not in path.parents and path != clouds:
            text = path.read_bytes().decode("utf-8", "replace")
            scanned += 1
            for secret in planted:
                assert secret not in text, f"secret found in {path}"
    assert scanned >= 5  # config, params, README, 3 executed notebooks
    assert json.loads(out1.read_text())["cells"]  # the executed notebook is kept

    auth = keystonelogin.authenticate(local_openstack.auth_url, env={}, cloud="chi",
                                      clouds_file=str(clouds))
    keystonecredentials.delete_credentials(auth, store)
