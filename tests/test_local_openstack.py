"""The local OpenStack (tests/services/) is real: Keystone issues tokens and credentials,
Swift stores objects, and its S3 API accepts EC2 credentials that Keystone validates."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import openstack.connection
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.fixtures_openstack import (
    LocalOpenStack,
    demo_connection,
    removed_afterwards,
    run_script,
)

pytestmark = pytest.mark.services


def http() -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # loopback only: no proxies from the environment
    return s


def s3_client(stack: LocalOpenStack, access: str, secret: str):
    return boto3.client(
        "s3",
        endpoint_url=stack.s3_endpoint,
        region_name=stack.s3_region,
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )


def test_demo_password_auth_gives_token_and_object_store_in_catalog(local_openstack):
    stack = local_openstack
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": stack.demo.username,
                        "password": stack.demo.password,
                        "domain": {"name": stack.demo.domain},
                    }
                },
            },
            "scope": {
                "project": {"name": stack.demo.project, "domain": {"name": stack.demo.domain}}
            },
        }
    }
    r = http().post(f"{stack.auth_url}/auth/tokens", json=body, timeout=30)
    assert r.status_code == 201, r.text
    assert r.headers["X-Subject-Token"]
    token = r.json()["token"]
    assert token["user"]["name"] == "demo"
    assert token["project"]["id"] == stack.demo.project_id
    assert {role["name"] for role in token["roles"]} >= {"member"}
    assert "admin" not in {role["name"] for role in token["roles"]}

    stores = [s for s in token["catalog"] if s["type"] == "object-store"]
    assert len(stores) == 1
    public = [e for e in stores[0]["endpoints"] if e["interface"] == "public"]
    assert [(e["url"], e["region_id"]) for e in public] == [(stack.demo_storage_url, stack.region)]

    # The same through openstacksdk, and the endpoint serves Swift for that token.
    conn = demo_connection(stack)
    try:
        assert conn.current_project_id == stack.demo.project_id
        assert conn.object_store.get_endpoint() == stack.demo_storage_url
        name = f"replab-test-{uuid.uuid4().hex[:8]}"
        with removed_afterwards(stack, containers=(name,)):
            conn.object_store.create_container(name=name)
            conn.object_store.upload_object(container=name, name="hello.txt", data=b"hi swift")
            assert conn.object_store.download_object("hello.txt", container=name) == b"hi swift"
            conn.object_store.delete_object("hello.txt", container=name)
            conn.object_store.delete_container(name)
            assert name not in [c.name for c in conn.object_store.containers()]
    finally:
        conn.close()


def test_tempauth_proxy_stores_objects(local_openstack):
    stack = local_openstack
    s = http()
    r = s.get(
        f"{stack.tempauth_url}/auth/v1.0",
        headers={"X-Auth-User": stack.tempauth_user, "X-Auth-Key": stack.tempauth_key},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    url, headers = r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}
    name = f"replab-test-{uuid.uuid4().hex[:8]}"
    assert s.put(f"{url}/{name}", headers=headers, timeout=30).status_code in (201, 202)
    assert s.put(f"{url}/{name}/o", data=b"x", headers=headers, timeout=30).status_code == 201
    assert s.get(f"{url}/{name}/o", headers=headers, timeout=30).content == b"x"
    assert s.delete(f"{url}/{name}/o", headers=headers, timeout=30).status_code == 204
    assert s.delete(f"{url}/{name}", headers=headers, timeout=30).status_code == 204
    assert s.get(f"{url}/{name}", timeout=30).status_code == 401  # no token, no access


@pytest.fixture
def ec2_credential(local_openstack) -> Iterator[dict]:
    """demo: an unrestricted application credential, and with it an EC2 credential.

    Both are deleted afterwards."""
    stack = local_openstack
    conn = demo_connection(stack)
    uid = conn.current_user_id
    app_cred = conn.identity.create_application_credential(
        user=uid, name=f"replab-test-{uuid.uuid4().hex[:8]}", unrestricted=True
    )
    ac_conn = openstack.connection.Connection(
        auth_type="v3applicationcredential",
        auth={
            "auth_url": stack.auth_url,
            "application_credential_id": app_cred.id,
            "application_credential_secret": app_cred.secret,
        },
        region_name=stack.region,
    )
    ec2 = None
    try:
        assert ac_conn.current_user_id == uid
        assert ac_conn.current_project_id == stack.demo.project_id
        r = ac_conn.identity.post(
            f"/users/{uid}/credentials/OS-EC2", json={"tenant_id": stack.demo.project_id}
        )
        assert r.status_code == 201, r.text
        ec2 = r.json()["credential"]
        assert ec2["access"] and ec2["secret"]
        yield ec2
    finally:
        if ec2 is not None:
            r = ac_conn.identity.delete(f"/users/{uid}/credentials/OS-EC2/{ec2['access']}")
            assert r.status_code == 204, r.text
        ac_conn.close()
        conn.identity.delete_application_credential(uid, app_cred.id)
        conn.close()


def test_ec2_credential_from_application_credential_works_with_boto3(
    local_openstack, ec2_credential
):
    stack = local_openstack
    s3 = s3_client(stack, ec2_credential["access"], ec2_credential["secret"])
    bucket = f"replab-test-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello s3")
        got = s3.get_object(Bucket=bucket, Key="dir/hello.txt")
        assert got["Body"].read() == b"hello s3"
        listed = s3.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == ["dir/hello.txt"]
        assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        s3.delete_object(Bucket=bucket, Key="dir/hello.txt")
        s3.delete_bucket(Bucket=bucket)

    # The bucket was a Swift container of the demo project.
    conn = demo_connection(stack)
    try:
        assert bucket not in [c.name for c in conn.object_store.containers()]
    finally:
        conn.close()


def test_wrong_ec2_secret_is_refused(local_openstack, ec2_credential):
    s3 = s3_client(local_openstack, ec2_credential["access"], "not-the-secret")
    with pytest.raises(ClientError) as err:
        s3.list_buckets()
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_up_again_reuses_the_running_stack(local_openstack):
    stack = local_openstack
    result = run_script("up", stack.state_file.parent, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reusing" in result.stdout
    state = json.loads(stack.state_file.read_text())
    assert state["pids"] == stack.state["pids"]
    assert set(state["pids"]) == {
        "memcached",
        "keystone",
        "swift-account",
        "swift-container",
        "swift-object",
        "swift-proxy",
        "swift-tempauth",
    }
    assert run_script("status", stack.state_file.parent, timeout=60).returncode == 0
