"""replab.storage, s3client, bucketnames, transfers, progressbar and rclone: pure builders
against golden files; buckets, transfers, rclone remotes and FUSE mounts against the real
local Keystone + Swift (S3 API)."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from replab import bucketnames, progressbar, rclone, s3client, storage, transfers
from replab.errors import CloudError, ConfigError, ResourceTimeout
from tests.fixtures_openstack import LocalOpenStack, ec2_credential, removed_afterwards
from tests.goldens import checker

MiB = 1024 * 1024

FAKE_ACCESS = "0123456789abcdef0123456789abcdef"
FAKE_SECRET = "fedcba9876543210fedcba9876543210"
FAKE_AC_ID = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
FAKE_AC_SECRET = "app-cred-secret-not-real-0123456789"


golden = checker("storage")


def unique(stem: str = "t") -> str:
    return f"replab-{stem}-{uuid.uuid4().hex[:8]}"


# -- pure builders ---------------------------------------------------------------------------
def fake_remotes() -> dict[str, dict]:
    return {
        "chi-swift": rclone.swift_remote("https://chi.tacc.chameleoncloud.org:5000/v3",
                                         FAKE_AC_ID, FAKE_AC_SECRET, "CHI@TACC"),
        "chi-s3": rclone.s3_remote("https://chi.tacc.chameleoncloud.org:7480", FAKE_ACCESS,
                                   FAKE_SECRET),
    }


def test_rclone_conf_golden():
    text = rclone.render_rclone_conf(fake_remotes())
    golden("rclone.conf.golden", text)
    assert text.index("[chi-s3]") < text.index("[chi-swift]")  # names sorted
    assert rclone.render_rclone_conf(dict(reversed(fake_remotes().items()))) == text


def test_remote_configs_are_dicts_whose_repr_hides_secrets():
    remotes = fake_remotes()
    s3 = remotes["chi-s3"]
    assert isinstance(s3, dict)
    assert s3["type"] == "s3" and s3["provider"] == "Ceph" and s3["env_auth"] == "false"
    assert s3["secret_access_key"] == FAKE_SECRET
    swift = remotes["chi-swift"]
    assert {k: swift[k] for k in ("type", "env_auth", "auth_version", "region")} == {
        "type": "swift", "env_auth": "false", "auth_version": "3", "region": "CHI@TACC"}
    for remote in remotes.values():
        for text in (repr(remote), str(remote), f"{remote}", repr(remotes)):
            assert FAKE_SECRET not in text and FAKE_AC_SECRET not in text


@pytest.mark.parametrize("remotes, what", [
    ({"bad name": {"type": "s3"}}, "remote name"),
    ({"x:y": {"type": "s3"}}, "remote name"),
    ({"ok": {"provider": "Ceph"}}, "no 'type'"),
    ({"ok": {"type": "s3", "endpoint": "http://x\n[evil]\ntype = local"}}, "line break"),
])
def test_render_rclone_conf_refuses_bad_input(remotes, what):
    with pytest.raises(ConfigError, match=what):
        rclone.render_rclone_conf(remotes)


def test_write_rclone_conf_is_private(tmp_path):
    path = rclone.write_rclone_conf(tmp_path / "secrets" / "rclone.conf", fake_remotes())
    assert path.read_text() == rclone.render_rclone_conf(fake_remotes())
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_mount_args_golden():
    args = rclone.mount_args("chi-s3", "exp1-data", "/home/cc/data",
                             config="/home/cc/.config/rclone/rclone.conf",
                             log_file="/home/cc/.cache/replab/rclone-exp1-data.log",
                             cache_dir="/home/cc/.cache/rclone")
    golden("mount_args.json", json.dumps(args, indent=2) + "\n")
    assert args[args.index("--vfs-cache-mode") + 1] == "writes"
    assert args[args.index("--umask") + 1] == "002"
    assert "--allow-other" in args and "--read-only" not in args
    ro = rclone.mount_args("chi-s3", "exp1-data", "/d", config="c", log_file="l",
                           allow_other=False, read_only=True)
    assert "--read-only" in ro and "--allow-other" not in ro and "--cache-dir" not in ro


def test_systemd_unit_golden():
    unit = rclone.systemd_unit("chi-s3", "exp1-artifacts", "/home/cc/artifacts",
                               config="/home/cc/.config/rclone/rclone.conf",
                               log_file="/home/cc/.cache/replab/rclone-exp1-artifacts.log")
    golden("rclone-mount.service", unit)
    assert "Type=notify" in unit and "UnsetEnvironment=AWS_CA_BUNDLE" in unit
    assert "ExecStart=/usr/bin/rclone mount chi-s3:exp1-artifacts /home/cc/artifacts" in unit
    assert "ExecStop=/usr/bin/fusermount3 -uz /home/cc/artifacts" in unit
    assert rclone.systemd_unit_name("chi-s3", "exp1-artifacts") == (
        "replab-rclone-chi-s3-exp1-artifacts.service")


def test_systemd_unit_quotes_odd_paths():
    unit = rclone.systemd_unit("s3", "b-1", "/mnt/my data 100%", config="/c/rclone $x.conf",
                               log_file="/l", user="root")
    start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert '"/mnt/my data 100%%"' in start and '"/c/rclone $$x.conf"' in start
    assert "--cache-dir /root/.cache/rclone" in start


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")
def test_systemd_accepts_the_units(tmp_path):
    for name, kwargs in (("plain", {}), ("odd", {"mountpoint": "/mnt/my data 100%"})):
        unit = rclone.systemd_unit("chi-s3", "exp1-data", kwargs.get("mountpoint", "/mnt/d"),
                                   config="/etc/rclone.conf", log_file="/var/log/r.log",
                                   user="root")
        path = tmp_path / f"replab-{name}.service"
        path.write_text(unit)
        proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_systemd_unit_stop_waits_for_dirty_files(tmp_path):
    unit = rclone.systemd_unit("s3", "bkt", "/mnt/d", config="/c", log_file="/l",
                               cache_dir=tmp_path / "cache", flush_timeout=1)
    wait = next(line for line in unit.splitlines() if line.startswith("ExecStop=-"))
    argv = shlex.split(wait.removeprefix("ExecStop=-"))  # systemd's quoting, as a shell's
    meta = rclone.vfs_meta_dir(tmp_path / "cache", "s3:bkt")
    (meta / "sub").mkdir(parents=True)
    (meta / "sub" / "f").write_text(json.dumps({"Size": 1, "Dirty": True}, indent="\t"))
    assert subprocess.run(argv, timeout=30).returncode == 124  # gave up after 1 s
    (meta / "sub" / "f").write_text(json.dumps({"Size": 1, "Dirty": False}, indent="\t"))
    assert subprocess.run(argv, timeout=30).returncode == 0


def test_rclone_env_drops_aws_ca_bundle():
    env = {"AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt", "PATH": "/usr/bin"}
    assert rclone.rclone_env(env) == {"PATH": "/usr/bin"}
    assert env["AWS_CA_BUNDLE"]  # the input is not changed
    assert "AWS_CA_BUNDLE" not in rclone.rclone_env()
    assert rclone.rclone_env({"PATH": "/bin"}) == {"PATH": "/bin"}


def test_missing_rclone_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"rclone is not installed.*apt-get install"):
        rclone.rclone_binary()
    with pytest.raises(ConfigError, match="rclone is not installed"):
        rclone.mount("s3", "bucket", tmp_path / "m", config="c", log_file=tmp_path / "l")


def test_mounts_parses_mountinfo(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "42 27 0:39 / /tmp/my\\040mount rw,nosuid,nodev,relatime - fuse.rclone s3:exp1-data "
        "rw,user_id=0,group_id=0\n")
    assert rclone.mounts(info) == {"/": ("ext4", "/dev/sda1"),
                                   "/tmp/my mount": ("fuse.rclone", "s3:exp1-data")}


def test_dirty_files_reads_the_vfs_metadata(tmp_path):
    meta = rclone.vfs_meta_dir(tmp_path, "s3:bucket")
    assert meta == tmp_path / "vfsMeta" / "s3" / "bucket"
    (meta / "sub").mkdir(parents=True)
    (meta / "clean").write_text(json.dumps({"Size": 1, "Dirty": False}))
    (meta / "sub" / "dirty").write_text(json.dumps({"Size": 2, "Dirty": True}))
    (meta / "garbage").write_text("{not json")
    assert rclone.dirty_files(meta) == ["sub/dirty"]
    assert rclone.dirty_files(tmp_path / "nothing") == []
    assert rclone.vfs_meta_dir("/c", "/tmp/src") == Path("/c/vfsMeta/local/tmp/src")


@pytest.mark.parametrize("name, rule", [
    ("ab", "3 to 63 characters"),
    ("a" * 64, "3 to 63 characters"),
    ("Exp1-data", "lower-case letters"),
    ("exp_data", "lower-case letters"),
    ("-exp", "begin and end"),
    ("exp-", "begin and end"),
    ("exp..data", "'..'"),
    ("192.168.1.10", "IP address"),
    ("xn--exp", "'xn--'"),
    ("exp-s3alias", "'-s3alias'"),
    (None, "must be a string"),
])
def test_invalid_bucket_names_raise_config_error(name, rule):
    assert bucketnames.bucket_name_problem(name)
    with pytest.raises(ConfigError) as err:
        bucketnames.check_bucket_name(name)
    assert repr(name) in str(err.value) and rule in str(err.value)


def test_valid_bucket_names():
    for name in ("exp1-data", "a.b.c", "abc", "0" * 63):
        assert bucketnames.check_bucket_name(name) == name


def test_local_buckets_are_directories(tmp_path):
    got = storage.local_buckets(tmp_path / "store", ["exp1-data", "exp1-artifacts"])
    assert got == {n: tmp_path / "store" / n for n in ("exp1-data", "exp1-artifacts")}
    assert all(p.is_dir() for p in got.values())
    (got["exp1-data"] / "kept.txt").write_text("x")
    assert storage.local_buckets(tmp_path / "store", ["exp1-data"]) == {
        "exp1-data": got["exp1-data"]}
    assert (got["exp1-data"] / "kept.txt").read_text() == "x"
    with pytest.raises(ConfigError, match="Bad_Name"):
        storage.local_buckets(tmp_path / "store", ["Bad_Name"])


def test_invalid_names_fail_before_any_request():
    dead = s3client.s3_client("http://127.0.0.1:9", "key", "secret", max_attempts=1)
    for call in (lambda: storage.ensure_bucket(dead, "Bad_Name"),
                 lambda: storage.ensure_buckets(dead, ["good-name", "x"]),
                 lambda: storage.delete_bucket(dead, "a..b"),
                 lambda: transfers.upload(dead, "UP", "/etc/hostname")):
        with pytest.raises(ConfigError, match="invalid bucket name"):
            call()


def test_s3_client_refuses_bad_input():
    with pytest.raises(ConfigError, match="not an http"):
        s3client.s3_client("127.0.0.1:8080", "k", "s")
    with pytest.raises(ConfigError, match="must not be empty"):
        s3client.s3_client("http://127.0.0.1:8080", "k", "")


def test_safe_target_refuses_keys_leaving_the_directory(tmp_path):
    assert transfers._safe_target(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"
    assert transfers._safe_target(tmp_path, "a//./b") == tmp_path / "a" / "b"
    for key in ("../x", "a/../../x", "/etc/passwd", "..", ""):
        with pytest.raises(ConfigError, match="outside"):
            transfers._safe_target(tmp_path, key)


def test_terminal_progress_draws_one_bar_per_transfer():
    out = io.StringIO()
    bar = progressbar.terminal_progress("up", file=out, mininterval=0)
    for done in (0, 5, 10):
        bar(done, 10, "a.txt")
    bar(10, 10, "a.txt")  # the final repeat upload() makes for each file: no second bar
    bar(4, 4, "b.txt")
    text = out.getvalue()
    assert text.count("\n") == 2  # two bars, each closed (a new line) when complete
    first, second = (bar.split("\r")[-1] for bar in text.split("\n")[:2])
    assert "up: 100%" in first and "10.0/10.0" in first and "a.txt" in first
    assert "up: 100%" in second and "4.00/4.00" in second and "b.txt" in second


def test_progress_factories_import_without_ipywidgets():
    code = (
        "import sys; sys.modules['ipywidgets'] = None\n"
        "import io\n"
        "from replab import progressbar, s3client, storage, transfers\n"
        "early = {'tqdm', 'boto3', 'botocore'} & set(sys.modules)\n"
        "assert not early, f'imported by replab\\'s storage modules themselves: {early}'\n"
        "out = io.StringIO()\n"
        "bar = progressbar.notebook_progress('dl', file=out)\n"
        "bar(3, 3, 'x')\n"
        "assert '100%' in out.getvalue(), out.getvalue()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


# -- the real object store ------------------------------------------------------------------
@pytest.fixture(scope="module")
def creds(local_openstack: LocalOpenStack) -> Iterator[dict]:
    """demo's unrestricted application credential and an EC2 credential made with it,
    both deleted at the end (as 1_create_credentials makes them)."""
    with ec2_credential(local_openstack) as cred:
        yield cred


@pytest.fixture(scope="module")
def s3(creds):
    return s3client.s3_client(creds["stack"].s3_endpoint, creds["access"], creds["secret"],
                              creds["stack"].s3_region)


@pytest.fixture
def bucket(s3) -> Iterator[str]:
    name = unique()
    assert storage.ensure_bucket(s3, name) is True
    try:
        yield name
    finally:
        storage.delete_bucket(s3, name, force=True)


@pytest.mark.services
def test_ensure_buckets_twice_creates_nothing_the_second_time(s3):
    names = [unique("data"), unique("artifacts"), unique("backups")]
    try:
        assert storage.ensure_buckets(s3, names) == dict.fromkeys(names, True)
        assert storage.ensure_buckets(s3, names) == dict.fromkeys(names, False)
        assert set(names) <= set(storage.list_buckets(s3))
        assert storage.list_buckets(s3) == sorted(storage.list_buckets(s3))
    finally:
        for name in names:
            storage.delete_bucket(s3, name)
    assert not set(names) & set(storage.list_buckets(s3))


@pytest.mark.services
def test_put_get_and_usage(s3, bucket, tmp_path):
    assert storage.bucket_usage(s3, bucket) == (0, 0)
    s3.put_object(Bucket=bucket, Key="dir/hello.txt", Body=b"hello s3")
    assert s3.get_object(Bucket=bucket, Key="dir/hello.txt")["Body"].read() == b"hello s3"
    (tmp_path / "one.txt").write_text("one")
    assert transfers.upload(s3, bucket, tmp_path / "one.txt") == (1, 3)
    assert transfers.upload(s3, bucket, tmp_path / "one.txt", key="x/") == (1, 3)
    assert storage.list_objects(s3, bucket) == {"dir/hello.txt": 8, "one.txt": 3,
                                                "x/one.txt": 3}
    assert storage.bucket_usage(s3, bucket) == (3, 14)
    assert transfers.download(s3, bucket, "dir/hello.txt", tmp_path / "got.txt") == (1, 8)
    assert (tmp_path / "got.txt").read_bytes() == b"hello s3"


@pytest.mark.services
def test_bucket_usage_pages_through_the_listing(s3, bucket):
    for i in range(7):
        s3.put_object(Bucket=bucket, Key=f"k{i}", Body=b"x" * i)
    calls = []

    def count(params, **_kw):
        calls.append(params)

    s3.meta.events.register("before-call.s3.ListObjectsV2", count)
    try:
        assert storage.bucket_usage(s3, bucket, page_size=3) == (7, 21)
    finally:
        s3.meta.events.unregister("before-call.s3.ListObjectsV2", count)
    assert len(calls) == 3  # 3 + 3 + 1 keys


@pytest.mark.services
def test_multipart_upload_round_trips(s3, bucket, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB))
    assert transfers.upload(s3, bucket, big, key="models/big.bin", part_size=5 * MiB) == (
        1, 12 * MiB)
    etag = s3.head_object(Bucket=bucket, Key="models/big.bin")["ETag"]
    assert etag.strip('"').endswith("-3"), etag  # 3 parts: 5 + 5 + 2 MiB
    assert transfers.download(s3, bucket, "models/big.bin", tmp_path / "back.bin",
                              part_size=5 * MiB) == (1, 12 * MiB)
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    with pytest.raises(ConfigError, match="below S3's minimum"):
        transfers.upload(s3, bucket, big, part_size=MiB)


@pytest.mark.services
def test_delete_bucket_refuses_non_empty_and_force_deletes_everything(s3, creds):
    name = unique("del")
    with removed_afterwards(creds["stack"], containers=(name, f"{name}+segments")):
        storage.ensure_bucket(s3, name)
        s3.put_object(Bucket=name, Key="a", Body=b"1")
        s3.put_object(Bucket=name, Key="b/c", Body=b"22")
        upload_id = s3.create_multipart_upload(Bucket=name, Key="half")["UploadId"]
        s3.upload_part(Bucket=name, Key="half", UploadId=upload_id, PartNumber=1,
                       Body=b"x" * 10)
        with pytest.raises(ConfigError) as err:
            storage.delete_bucket(s3, name)
        assert name in str(err.value) and "2 objects" in str(err.value)
        assert "force=True" in str(err.value)
        assert name in storage.list_buckets(s3)

        assert storage.delete_bucket(s3, name, force=True) is True
        assert name not in storage.list_buckets(s3)
        assert storage.delete_bucket(s3, name) is False
        with pytest.raises(CloudError, match="NoSuchBucket") as err:
            storage.delete_bucket(s3, name, ignore_missing=False)
        assert name in str(err.value)


@pytest.mark.services
def test_wrong_secret_is_a_cloud_error_that_hides_the_secret(creds, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "definitely-not-the-secret-4242"
    bad = s3client.s3_client(creds["stack"].s3_endpoint, creds["access"], wrong)
    for call, request in ((lambda: storage.list_buckets(bad), "GET "),
                          (lambda: storage.ensure_bucket(bad, "replab-any"), "/replab-any"),
                          (lambda: storage.bucket_usage(bad, "replab-any"), "/replab-any")):
        with pytest.raises(CloudError) as err:
            call()
        text = str(err.value)
        assert text.startswith("SignatureDoesNotMatch: the EC2 secret is wrong")
        assert "1_create_credentials" in text and request in err.value.request
        assert err.value.code == "SignatureDoesNotMatch" and err.value.status == 403
        for shown in (text, repr(err.value), repr(err.value.args)):
            assert wrong not in shown and creds["secret"] not in shown
        assert err.value.__cause__ is None and err.value.__suppress_context__
    assert wrong not in caplog.text and creds["secret"] not in caplog.text


@pytest.mark.services
def test_unreachable_endpoint_is_a_cloud_error(creds):
    dead = s3client.s3_client("http://127.0.0.1:9", creds["access"], creds["secret"],
                              max_attempts=1, connect_timeout=2)
    with pytest.raises(CloudError, match="cannot reach the object store") as err:
        storage.ensure_bucket(dead, "replab-any")
    assert err.value.request == "GET http://127.0.0.1:9/replab-any"
    assert creds["secret"] not in str(err.value)


@pytest.mark.services
def test_aws_ca_bundle_in_the_environment_is_fine(creds, monkeypatch, caplog):
    stack = creds["stack"]
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # ignored too
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    for bundle in ("/etc/ssl/certs/ca-certificates.crt", "/nonexistent/bundle.pem"):
        monkeypatch.setenv("AWS_CA_BUNDLE", bundle)
        client = s3client.s3_client(stack.s3_endpoint, creds["access"], creds["secret"])
        assert isinstance(storage.list_buckets(client), list)
    assert "AWS_CA_BUNDLE=/nonexistent/bundle.pem is not a readable file" in caplog.text


@pytest.mark.services
def test_upload_and_download_a_directory_with_progress(s3, bucket, tmp_path):
    src = tmp_path / "run"
    (src / "ckpt" / "deep").mkdir(parents=True)
    files = {"metrics.json": b'{"acc": 0.9}', "empty.txt": b"",
             "ckpt/model.bin": os.urandom(9 * MiB), "ckpt/deep/notes.md": b"# notes\n"}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    total = sum(len(d) for d in files.values())

    calls: list[tuple[int, int, str]] = []
    got = transfers.upload(s3, bucket, src, key="runs/1",
                           progress=lambda *a: calls.append(a), part_size=5 * MiB)
    assert got == (4, total)
    assert {c[1] for c in calls} == {total}
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)  # never goes back
    assert calls[-1] == (total, total, "runs/1/metrics.json")
    assert {c[2] for c in calls} == {f"runs/1/{rel}" for rel in files}
    assert storage.list_objects(s3, bucket, "runs/1/") == {
        f"runs/1/{rel}": len(d) for rel, d in files.items()}

    calls.clear()
    dest = tmp_path / "back"
    assert transfers.download(s3, bucket, "runs/1", dest,
                              progress=lambda *a: calls.append(a)) == (4, total)
    assert calls[-1][:2] == (total, total) and {c[1] for c in calls} == {total}
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data

    # one object into an existing directory; the whole bucket; nothing there
    assert transfers.download(s3, bucket, "runs/1/metrics.json", dest / "ckpt") == (1, 12)
    assert (dest / "ckpt" / "metrics.json").read_bytes() == files["metrics.json"]
    assert transfers.download(s3, bucket, "", tmp_path / "all") == (4, total)
    assert (tmp_path / "all" / "runs" / "1" / "ckpt" / "deep" / "notes.md").exists()
    with pytest.raises(CloudError, match="NoSuchKey"):
        transfers.download(s3, bucket, "runs/2", tmp_path / "none")
    with pytest.raises(ConfigError, match="does not exist"):
        transfers.upload(s3, bucket, tmp_path / "missing")


# -- rclone against the real store ----------------------------------------------------------
@pytest.fixture(scope="module")
def rclone_conf(creds, tmp_path_factory) -> Path:
    stack = creds["stack"]
    remotes = {
        "s3": rclone.s3_remote(stack.s3_endpoint, creds["access"], creds["secret"]),
        "swift": rclone.swift_remote(stack.auth_url, creds["ac_id"], creds["ac_secret"],
                                     stack.region),
    }
    return rclone.write_rclone_conf(tmp_path_factory.mktemp("rclone") / "rclone.conf",
                                    remotes)


@pytest.mark.services
def test_rclone_copy_and_ls_through_s3_and_swift_remotes(s3, bucket, rclone_conf, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("via rclone")
    (src / "sub" / "b.txt").write_text("bb")
    rclone.copy(src, f"s3:{bucket}/up", config=rclone_conf)
    expected = {"up/a.txt": 10, "up/sub/b.txt": 2}
    assert rclone.ls(f"s3:{bucket}", config=rclone_conf) == expected
    assert rclone.ls(f"swift:{bucket}", config=rclone_conf) == expected  # app credential
    assert storage.list_objects(s3, bucket) == expected
    assert s3.get_object(Bucket=bucket, Key="up/a.txt")["Body"].read() == b"via rclone"


@pytest.mark.services
def test_rclone_s3_remote_fails_with_aws_ca_bundle_set(bucket, rclone_conf):
    """Why rclone_env exists: rclone 1.60's S3 backend cannot load AWS_CA_BUNDLE."""
    env = {**os.environ, "AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}
    raw = subprocess.run([rclone.rclone_binary(), "lsd", "s3:", "--config", str(rclone_conf)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert raw.returncode != 0 and "CA bundle" in raw.stderr
    assert rclone.ls(f"s3:{bucket}", config=rclone_conf, env=env) == {}


@pytest.mark.services
def test_rclone_failure_is_a_cloud_error_without_secrets(creds, tmp_path):
    conf = rclone.write_rclone_conf(tmp_path / "rclone.conf", {
        "s3": rclone.s3_remote(creds["stack"].s3_endpoint, creds["access"], "wrong-secret-77")})
    with pytest.raises(CloudError, match="SignatureDoesNotMatch") as err:
        rclone.ls("s3:replab-any", config=conf, timeout=60)
    assert "wrong-secret-77" not in str(err.value)
    assert err.value.request == "rclone lsjson --recursive --files-only s3:replab-any"


def fuse_unavailable() -> str | None:
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing: FUSE mounts are impossible in this sandbox"
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    return None


@pytest.mark.services
def test_rclone_mount_write_append_unmount_read_back(s3, bucket, rclone_conf, tmp_path):
    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)
    s3.put_object(Bucket=bucket, Key="log.txt", Body=b"line 1\n")
    mp, logs, cache = tmp_path / "mnt", tmp_path / "rclone.log", tmp_path / "cache"
    kwargs = {"config": rclone_conf, "log_file": logs, "cache_dir": cache}
    assert rclone.mount("s3", bucket, mp, **kwargs) is True
    held = None
    try:
        assert rclone.mount_source(mp) == f"s3:{bucket}"
        assert rclone.mount("s3", bucket, mp, **kwargs) is False  # idempotent
        with pytest.raises(ConfigError, match="already has"):
            rclone.mount("s3", unique(), mp, **kwargs)

        assert (mp / "log.txt").read_text() == "line 1\n"
        with open(mp / "log.txt", "a") as f:  # MLflow-style append: needs the VFS cache
            f.write("line 2\n")
        (mp / "runs" / "1").mkdir(parents=True)
        (mp / "runs" / "1" / "new.txt").write_text("written through the mount")
        assert (mp / "runs" / "1" / "new.txt").stat().st_mode & 0o777 == 0o664  # umask 002

        held = open(mp / "open.txt", "w")  # kept open: rclone must wait for it
        held.write("still being written")
        held.flush()
        with pytest.raises(ResourceTimeout, match="still uploading"):
            rclone.unmount(mp, flush_timeout=0.5)
        assert rclone.is_mounted(mp)
    finally:
        if held is not None:
            held.close()
        assert rclone.unmount(mp) is True  # waits for the uploads, then unmounts
    assert not rclone.is_mounted(mp)
    assert rclone.dirty_files(rclone.vfs_meta_dir(cache, f"s3:{bucket}")) == []

    body = s3.get_object(Bucket=bucket, Key="log.txt")["Body"].read()
    assert body == b"line 1\nline 2\n"
    assert s3.get_object(Bucket=bucket, Key="runs/1/new.txt")["Body"].read() == (
        b"written through the mount")
    assert s3.get_object(Bucket=bucket, Key="open.txt")["Body"].read() == b"still being written"
    assert "vfs cache: upload succeeded" in logs.read_text()
    assert rclone.unmount(mp) is False
    with pytest.raises(ConfigError, match="nothing is mounted"):
        rclone.unmount(mp, ignore_missing=False)


@pytest.mark.services
def test_rclone_mount_replaces_a_dead_mount(bucket, rclone_conf, tmp_path):
    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)
    mp = tmp_path / "mnt"
    kwargs = {"config": rclone_conf, "log_file": tmp_path / "rclone.log",
              "cache_dir": tmp_path / "cache"}
    assert rclone.mount("s3", bucket, mp, **kwargs) is True
    try:
        pid = rclone.mount_pid(mp)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the rclone this test started
        deadline = time.monotonic() + 10
        while rclone.mount_pid(mp) == pid and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(OSError) as err:
            os.listdir(mp)
        # "Transport endpoint is not connected", or "connection abort" while the kernel
        # is still noticing that rclone died
        assert err.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        assert rclone.is_mounted(mp)
        assert rclone.mount("s3", bucket, mp, **kwargs) is True  # cleared and mounted again
        assert os.listdir(mp) == [] and rclone.mount_pid(mp) not in (None, pid)
    finally:
        rclone.unmount(mp)
    assert not rclone.is_mounted(mp)


@pytest.mark.services
def test_rclone_mount_failure_shows_the_log(rclone_conf, tmp_path):
    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)
    logs = tmp_path / "rclone.log"
    with pytest.raises(CloudError, match="rclone mount failed") as err:
        rclone.mount("nosuchremote", "bucket", tmp_path / "mnt", config=rclone_conf,
                     log_file=logs, timeout=10)
    assert "nosuchremote" in str(err.value) and str(logs) in str(err.value)
    assert not rclone.is_mounted(tmp_path / "mnt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        rclone.mount("s3", "bucket", tmp_path / "full", config=rclone_conf, log_file=logs)
