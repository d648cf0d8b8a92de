"""The python, platform, container, determinism and inputs captures."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import types

from replab.capture import collect
from replab.capture.container import cgroup_hints, parse_containerenv
from replab.capture.inputs import tree_hash
from replab.capture.system import cpu_model, memory_total, os_release
from tests.capture_support import make_repo


def test_python_capture():
    info = collect(["python"])["captures"]["python"]
    assert info["version"] == platform.python_version()
    assert info["implementation"] == platform.python_implementation()
    assert info["executable"] == sys.executable and info["prefix"] == sys.prefix
    if sys.prefix != sys.base_prefix:
        assert info["virtualenv"] == sys.prefix
    assert "conda" in info


def test_platform_fields_present():
    info = collect(["platform"])["captures"]["platform"]
    for key in ("system", "distribution", "kernel", "hostname", "machine", "cpu_model",
                "cpu_count", "memory_total"):
        assert key in info, key
    assert info["system"] == platform.system() and info["machine"] == platform.machine()
    assert info["cpu_count"] == os.cpu_count()
    if info["system"] == "Linux":
        assert info["cpu_model"] and info["memory_total"] > 0
        if os.path.exists("/etc/os-release"):
            assert info["distribution"]["ID"]


def test_platform_parsers():
    assert os_release('NAME="Ubuntu"\nVERSION_ID="24.04"\n# c\nID=ubuntu\n') == {
        "NAME": "Ubuntu", "VERSION_ID": "24.04", "ID": "ubuntu"}
    cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7763 64-Core\n"
    assert cpu_model(cpuinfo) == "AMD EPYC 7763 64-Core"
    assert memory_total("MemTotal:       263846316 kB\nMemFree: 1 kB\n") == 263846316 * 1024


def test_container_parsers():
    assert parse_containerenv('engine="podman-4.9.3"\nname="lab"\nimage="quay.io/x:1"\n') == {
        "engine": "podman-4.9.3", "name": "lab", "image": "quay.io/x:1"}
    assert cgroup_hints("0::/system.slice/docker-abc.scope\n") == ["docker"]
    assert cgroup_hints("12:pids:/kubepods/burstable/pod1/abc\n") == ["kubernetes"]
    assert cgroup_hints("0::/\n") == []


def test_container_capture(monkeypatch):
    monkeypatch.setenv("REPLAB_IMAGE", "ghcr.io/acme/lab-nvidia:1.2")
    monkeypatch.setenv("REPLAB_IMAGE_DIGEST", "sha256:" + "a" * 64)
    info = collect(["container"])["captures"]["container"]
    assert info["image"] == "ghcr.io/acme/lab-nvidia:1.2"
    assert info["image_digest"] == "sha256:" + "a" * 64
    assert isinstance(info["in_container"], bool) and isinstance(info["hints"], list)
    assert info["in_container"] == bool(info["hints"])
    if os.path.exists("/.dockerenv"):
        assert info["in_container"] and info["runtime"] == "docker"


def test_determinism_without_frameworks(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    info = collect(["determinism"], seeds={"python": 1, "numpy": 2})["captures"]["determinism"]
    assert info["seeds"] == {"python": 1, "numpy": 2}
    assert info["env"]["PYTHONHASHSEED"] == "0"
    assert info["env"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "torch" not in info and "tensorflow" not in info


def test_determinism_reads_imported_torch_and_tensorflow(monkeypatch):
    torch = types.SimpleNamespace(
        are_deterministic_algorithms_enabled=lambda: True,
        is_deterministic_algorithms_warn_only_enabled=lambda: False,
        backends=types.SimpleNamespace(
            cudnn=types.SimpleNamespace(deterministic=True, benchmark=False, allow_tf32=True),
            cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=False))),
        get_float32_matmul_precision=lambda: "highest",
        initial_seed=lambda: 42,
    )
    experimental = types.SimpleNamespace(is_op_determinism_enabled=lambda: True)  # no tf32 fn
    tf = types.SimpleNamespace(config=types.SimpleNamespace(experimental=experimental))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    info = collect(["determinism"])["captures"]["determinism"]
    assert info["torch"] == {
        "deterministic_algorithms": True, "deterministic_warn_only": False,
        "cudnn_deterministic": True, "cudnn_benchmark": False, "cudnn_allow_tf32": True,
        "matmul_allow_tf32": False, "float32_matmul_precision": "highest", "initial_seed": 42}
    assert info["tensorflow"] == {"op_determinism": True, "tensor_float_32": None}


def test_inputs_files_dirs_and_uris(tmp_path):
    repo = make_repo(tmp_path / "repo")
    data = repo / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("x,y\n1,2\n")
    (data / "sub" / "b.bin").write_bytes(b"\x00\x01")
    single = tmp_path / "outside.txt"
    single.write_text("hello")
    manifest = collect(["inputs"], repo=str(repo), inputs=[
        str(data), str(single), "s3://bucket/key?x=1",
        "https://user:pw1234567@data.example/set.tar", str(tmp_path / "missing"),
        single.as_uri()])
    assert not manifest["errors"]
    d, f, s3, https, missing, file_uri = manifest["captures"]["inputs"]
    a_sum = hashlib.sha256(b"x,y\n1,2\n").hexdigest()
    b_sum = hashlib.sha256(b"\x00\x01").hexdigest()
    expected = hashlib.sha256(f"{a_sum}  a.csv\n{b_sum}  sub/b.bin\n".encode()).hexdigest()
    assert d == {"path": "data", "kind": "dir", "files": 2, "size": 10, "sha256": expected,
                 "hash": "content"}
    assert f == {"path": str(single.resolve()), "kind": "file", "size": 5, "hash": "content",
                 "sha256": hashlib.sha256(b"hello").hexdigest()}
    assert s3 == {"kind": "uri", "uri": "s3://bucket/key?x=1"}
    assert https == {"kind": "uri", "uri": "https://data.example/set.tar"}
    assert missing["kind"] == "missing"
    assert file_uri == f


def test_tree_hash_is_stable_and_content_sensitive(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("1")
    first = tree_hash(str(tmp_path / "d"))
    assert tree_hash(str(tmp_path / "d")) == first
    (tmp_path / "d" / "x").write_text("2")
    assert tree_hash(str(tmp_path / "d"))["sha256"] != first["sha256"]
    stat_hash = tree_hash(str(tmp_path / "d"), max_bytes=0)
    assert stat_hash["hash"] == "stat" and stat_hash["sha256"] != first["sha256"]


def test_named_inputs_and_skip_when_none(tmp_path):
    (tmp_path / "f").write_text("z")
    manifest = collect(["inputs"], inputs={"train": str(tmp_path / "f")})
    assert manifest["captures"]["inputs"][0]["name"] == "train"
    assert "no inputs" in collect(["inputs"])["skipped"]["inputs"]
