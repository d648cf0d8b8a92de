"""replab.credentials against the real local Keystone + Swift (S3)."""

import datetime as dt
import json
import stat
import uuid

import pytest
import yaml

from replab import config, credentials, keystonecredentials, keystonelogin
from replab.errors import CloudError, ConfigError
from replab.secretsstore import SecretsStore
from tests.fixtures_openstack import clouds_yaml, removed_afterwards, unique_name

pytestmark = pytest.mark.services


def _cfg(stack, tmp_path, **extra):
    """A CHI@UC config at the local stack, under an experiment name of its own (its
    credentials and buckets are new: a clean state)."""
    return config.build({
        "experiment": unique_name("credtest"), "frameworks": ["sklearn"],
        "site": "CHI@UC", "workdir": str(tmp_path / "wd"),
        "endpoints": {"auth_url": stack.auth_url, "storage_auth_url": stack.auth_url,
                      "s3_endpoint": stack.s3_endpoint, "region": stack.region},
        **extra})


@pytest.fixture
def clouds(local_openstack, tmp_path):
    return clouds_yaml(local_openstack, tmp_path / "clouds.yaml")


@pytest.fixture
def demo_auth(local_openstack, clouds):
    return keystonelogin.authenticate(local_openstack.auth_url, env={}, clouds_file=clouds)


@pytest.fixture
def store(local_openstack, tmp_path):
    """The test's secrets store; what it holds at the end is deleted at Keystone."""
    s = SecretsStore(tmp_path / "wd")
    with removed_afterwards(local_openstack, stores=(s,)):
        yield s


@pytest.fixture
def chi_cfg(local_openstack, tmp_path):
    """A CHI@UC config at the local stack (:func:`_cfg`); the credentials and buckets it
    names are deleted afterwards, whatever the test left."""
    cfg = _cfg(local_openstack, tmp_path)
    with removed_afterwards(
            local_openstack, app_credentials=(cfg.names["application_credential"],),
            stores=(SecretsStore(cfg.workdir),),
            containers=(cfg.buckets.data, cfg.buckets.artifacts, cfg.buckets.backups)):
        yield cfg


def _modes(store: SecretsStore):
    assert stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    for f in store.dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_sources_are_tried_in_order_and_failures_are_explained(local_openstack, clouds):
    env = {"OS_ACCESS_TOKEN": "not-a-real-oidc-token", "OS_PROJECT_NAME": "demo",
           "OS_APPLICATION_CREDENTIAL_ID": "abc", "OS_APPLICATION_CREDENTIAL_SECRET": "x",
           "OS_AUTH_URL": "https://chi.tacc.chameleoncloud.org:5000/v3"}
    auth = keystonelogin.authenticate(local_openstack.auth_url, env=env, clouds_file=clouds)
    assert auth.source == "clouds.yaml" and auth.user_id == local_openstack.demo.user_id
    with pytest.raises(CloudError) as err:
        keystonelogin.authenticate(local_openstack.auth_url, env=env,
                                   clouds_file=str(clouds) + ".missing")
    text = str(err.value)
    assert "jupyterhub: JupyterHub OIDC token" in text and "did not authenticate" in text
    assert "belong to one site" in text and "clouds.yaml" in text
    assert "not-a-real-oidc-token" not in text and "OS_CLOUD" in text


def test_jupyterhub_source_builds_the_oidc_plugin():
    plugin, desc = keystonelogin._jupyterhub_plugin(
        "https://chi.uc.chameleoncloud.org:5000/v3",
        {"OS_ACCESS_TOKEN": "tok", "OS_PROJECT_NAME": "CHI-123"})
    assert type(plugin).__name__ == "OidcAccessToken"
    assert plugin.identity_provider == "chameleon" and plugin.protocol == "openid"
    assert "CHI-123" in desc
    assert keystonelogin._jupyterhub_plugin("u", {})[0] is None


def test_application_and_ec2_credentials_are_created_once_then_reused(
        local_openstack, demo_auth, store):
    name = unique_name("replab-t1")
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    first = keystonecredentials.ensure_application_credential(demo_auth, name, expires, store)
    saved = store.credentials()["application_credential"]
    assert first.action == "created" and saved["roles"] == ["member"]
    assert saved["unrestricted"] is False and saved["expires_at"].startswith(
        expires.strftime("%Y-%m-%dT%H:%M"))
    second = keystonecredentials.ensure_application_credential(demo_auth, name, expires, store)
    assert second.action == "reused" and store.credentials()["application_credential"][
        "id"] == saved["id"]
    e1 = keystonecredentials.ensure_ec2_credential(demo_auth, store)
    e2 = keystonecredentials.ensure_ec2_credential(demo_auth, store)
    assert (e1.action, e2.action) == ("created", "reused")
    assert saved["secret"] not in e1.detail + first.detail + second.detail
    _modes(store)
    # Keystone agrees: exactly one application credential of that name, expiring as asked
    listed = demo_auth.session.get(
        f"{local_openstack.auth_url}/users/{demo_auth.user_id}/application_credentials"
        f"?name={name}").json()["application_credentials"]
    assert [c["id"] for c in listed] == [saved["id"]] and listed[0]["unrestricted"] is False
    keystonecredentials.delete_credentials(demo_auth, store)


def test_deleted_or_tampered_credentials_are_rotated(local_openstack, demo_auth, store):
    name = unique_name("replab-t2")
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    keystonecredentials.ensure_application_credential(demo_auth, name, expires, store)
    keystonecredentials.ensure_ec2_credential(demo_auth, store)
    old = store.credentials()
    # deleted behind our back (e.g. in Horizon)
    demo_auth.session.delete(f"{local_openstack.auth_url}/users/{demo_auth.user_id}/"
                             f"application_credentials/{old['application_credential']['id']}")
    demo_auth.session.delete(f"{local_openstack.auth_url}/users/{demo_auth.user_id}/"
                             f"credentials/OS-EC2/{old['ec2']['access']}")
    a = keystonecredentials.ensure_application_credential(demo_auth, name, expires, store)
    e = keystonecredentials.ensure_ec2_credential(demo_auth, store)
    new = store.credentials()
    assert a.action == "created" and e.action == "created"
    assert new["application_credential"]["id"] != old["application_credential"]["id"]
    assert keystonecredentials.app_credential_works(local_openstack.auth_url,
                                                    new["application_credential"]["id"],
                                                    new["application_credential"]["secret"])
    # a wrong stored secret: the credential of that name is replaced, not duplicated
    new["application_credential"]["secret"] = "wrong-secret-value"
    store.save_credentials(new)
    r = keystonecredentials.ensure_application_credential(demo_auth, name, expires, store)
    assert r.action == "replaced"
    # a longer lease than the stored credential covers: replaced too
    r = keystonecredentials.ensure_application_credential(
        demo_auth, name, expires + dt.timedelta(days=3), store)
    assert r.action == "replaced"
    listed = demo_auth.session.get(
        f"{local_openstack.auth_url}/users/{demo_auth.user_id}/application_credentials"
        f"?name={name}").json()["application_credentials"]
    assert len(listed) == 1
    out = keystonecredentials.delete_credentials(demo_auth, store)
    assert [o.action for o in out] == ["deleted", "deleted"]
    assert keystonecredentials.delete_credentials(demo_auth, store)[0].action == "none"


def test_without_the_member_role_the_credential_warns_it_has_every_role(
        local_openstack, tmp_path):
    """A user holding only ``reader`` in the project: least privilege is not available, so
    the credential carries the login's roles, and the outcome says so (it was silent)."""
    admin = local_openstack.connection("admin")
    demo = local_openstack.demo
    password = uuid.uuid4().hex
    user = admin.identity.create_user(name=unique_name("reader"), password=password,
                                      domain_id="default", default_project_id=demo.project_id)
    store = SecretsStore(tmp_path / "wd")
    try:
        admin.identity.assign_project_role_to_user(demo.project_id, user,
                                                   admin.identity.find_role("reader"))
        login = tmp_path / "clouds.yaml"
        login.write_text(yaml.safe_dump({"clouds": {"reader": {"auth": {
            "auth_url": local_openstack.auth_url, "username": user.name,
            "password": password, "project_name": demo.project,
            "user_domain_name": "Default", "project_domain_name": "Default"}}}}))
        auth = keystonelogin.authenticate(local_openstack.auth_url, env={},
                                          clouds_file=str(login))
        assert "member" not in auth.roles
        out = keystonecredentials.ensure_application_credential(
            auth, unique_name("replab-reader"), dt.datetime.now(dt.timezone.utc)
            + dt.timedelta(days=1), store)
        saved = store.credentials()["application_credential"]
        assert out.action == "created" and sorted(saved["roles"]) == sorted(auth.roles)
        assert "WARNING" in out.detail and "'member' role" in out.detail
        assert "reader" in out.detail and saved["secret"] not in out.detail
        keystonecredentials.delete_credentials(auth, store)
    finally:
        admin.identity.delete_user(user, ignore_missing=True)


def test_a_restricted_application_credential_cannot_mint_more_and_says_why(
        local_openstack, demo_auth, store, tmp_path):
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    keystonecredentials.ensure_application_credential(demo_auth, unique_name("replab-t3"), expires,
                                                      store)
    app = store.credentials()["application_credential"]
    env = {"OS_APPLICATION_CREDENTIAL_ID": app["id"],
           "OS_APPLICATION_CREDENTIAL_SECRET": app["secret"],
           "OS_AUTH_URL": local_openstack.auth_url}
    restricted = keystonelogin.authenticate(local_openstack.auth_url, env=env)
    assert restricted.source == "environment" and restricted.is_application_credential
    with pytest.raises(CloudError, match="unrestricted") as err:
        keystonecredentials.ensure_ec2_credential(restricted, SecretsStore(tmp_path / "other"))
    assert app["secret"] not in str(err.value)
    keystonecredentials.delete_credentials(demo_auth, store)


def test_setup_twice_creates_nothing_new_and_verifies(local_openstack, clouds, chi_cfg):
    cfg = chi_cfg
    lines = []
    r1 = credentials.setup(cfg, clouds_file=clouds, env={}, progress=lines.append)
    actions = {o.what: o.action for o in r1.outcomes if o.action != "verified"}
    assert actions == {"lab secrets": "created", "application credential": "created",
                       "EC2 credential": "created", "buckets": "created"}
    assert any(o.action == "verified" for o in r1.outcomes)
    r2 = credentials.setup(cfg, clouds_file=clouds, env={})
    assert {o.what: o.action for o in r2.outcomes if o.action != "verified"} == {
        "lab secrets": "reused", "application credential": "reused",
        "EC2 credential": "reused", "buckets": "reused"}
    store = SecretsStore(cfg.workdir)
    _modes(store)
    data = store.credentials()
    conf = store.read(store.RCLONE)
    assert f"[{cfg.experiment}-s3]" in conf and f"[{cfg.experiment}-swift]" in conf
    env = store.lab_env()
    assert env["AWS_ACCESS_KEY_ID"] == data["ec2"]["access"]
    assert env["MLFLOW_S3_ENDPOINT_URL"] == local_openstack.s3_endpoint
    clouds_entry = yaml.safe_load(store.read(store.CLOUDS))["clouds"][f"replab-{cfg.experiment}"]
    assert clouds_entry["auth_type"] == "v3applicationcredential"
    shown = json.dumps(credentials.describe(store)) + "\n".join(lines)
    for secret in (data["ec2"]["secret"], data["application_credential"]["secret"],
                   data["lab"]["jupyter_token"], data["lab"]["mlflow_password"]):
        assert secret not in shown
    auth = keystonelogin.authenticate(local_openstack.auth_url, env={}, clouds_file=clouds)
    keystonecredentials.delete_credentials(auth, store)
    with pytest.raises(CloudError, match="does not authenticate"):
        store.save_credentials({**data, "ec2": None})
        credentials.verify(cfg, store)


def test_verify_reports_a_wrong_ec2_secret(local_openstack, clouds, chi_cfg):
    cfg = chi_cfg
    credentials.setup(cfg, clouds_file=clouds, env={}, do_verify=False)
    store = SecretsStore(cfg.workdir)
    data = store.credentials()
    real = data["ec2"]["secret"]
    data["ec2"]["secret"] = "0" * len(real)
    store.save_credentials(data)
    with pytest.raises(CloudError, match="SignatureDoesNotMatch") as err:
        credentials.verify(cfg, store)
    assert real not in str(err.value)
    data["ec2"]["secret"] = real
    store.save_credentials(data)
    auth = keystonelogin.authenticate(local_openstack.auth_url, env={}, clouds_file=clouds)
    keystonecredentials.delete_credentials(auth, store)


def test_local_site_makes_lab_secrets_and_bucket_directories(tmp_path):
    cfg = config.build({"experiment": "loc", "frameworks": ["sklearn"], "site": "local",
                        "workdir": str(tmp_path / "wd")})
    r = credentials.setup(cfg, env={"HF_TOKEN": "hf_secretvalue123456"})
    assert [o.what for o in r.outcomes] == ["lab secrets", "buckets"]
    for b in ("loc-data", "loc-artifacts", "loc-backups"):
        assert (tmp_path / "wd" / "buckets" / b).is_dir()
    store = SecretsStore(cfg.workdir)
    _modes(store)
    assert len(store.lab_env()["JUPYTER_TOKEN"]) >= 32
    assert "HF_TOKEN" not in store.lab_env()  # huggingface is off in this config
    token = store.lab_env()["JUPYTER_TOKEN"]
    credentials.setup(cfg, env={})
    assert store.lab_env()["JUPYTER_TOKEN"] == token  # kept across re-runs


def test_corrupt_store_is_a_clear_error(tmp_path):
    store = SecretsStore(tmp_path)
    store.write(store.CREDENTIALS, "{not json")
    with pytest.raises(ConfigError, match="corrupt"):
        store.credentials()
