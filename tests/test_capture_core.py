"""The capture registry, the manifest, its JSON, and the command line."""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys

import pytest

import replab
from replab.capture import (
    SCHEMA_VERSION,
    DuplicateCaptureError,
    Skip,
    capture,
    collect,
    lock_hash,
    manifest_json,
    names,
    unregister,
)
from replab.capture.__main__ import main
from replab.errors import ReplabError
from tests.conftest import ROOT

BUILTINS = ["git", "python", "packages", "platform", "gpu", "container", "determinism", "env",
            "entrypoint", "inputs"]


@pytest.fixture
def registered():
    """Names registered by a test, removed afterwards."""
    added: list[str] = []
    yield added
    for name in added:
        unregister(name)


def test_builtins_are_registered_in_order():
    assert names()[: len(BUILTINS)] == BUILTINS


def test_manifest_shape(tmp_path):
    manifest = collect(["python", "platform"], repo=str(tmp_path))
    assert manifest["schema_version"] == SCHEMA_VERSION == 1
    assert manifest["replab_version"] == replab.__version__
    created = dt.datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and created.utcoffset() == dt.timedelta(0)
    assert set(manifest["captures"]) == {"python", "platform"}
    assert manifest["skipped"] == {} and manifest["errors"] == {}
    assert set(manifest["timings_ms"]) == {"python", "platform"}
    assert all(isinstance(v, float) and v >= 0 for v in manifest["timings_ms"].values())
    assert json.loads(manifest_json(manifest)) == manifest


def test_failing_capture_is_recorded_and_logged_not_raised(registered, caplog):
    @capture("test-boom")
    def boom():
        raise RuntimeError("disk on fire")

    registered.append("test-boom")
    with caplog.at_level(logging.WARNING, logger="replab.capture"):
        manifest = collect(["python", "test-boom"])
    assert manifest["errors"] == {"test-boom": "RuntimeError: disk on fire"}
    assert "python" in manifest["captures"] and "test-boom" in manifest["timings_ms"]
    assert any("test-boom" in r.getMessage() and "disk on fire" in r.getMessage()
               for r in caplog.records)


def test_skip_is_recorded_with_its_reason(registered):
    @capture("test-skip")
    def skipper(ctx):
        raise Skip("not on this machine")

    registered.append("test-skip")
    manifest = collect(["test-skip"])
    assert manifest["skipped"] == {"test-skip": "not on this machine"}
    assert manifest["errors"] == {} and manifest["captures"] == {}


def test_duplicate_registration_raises(registered):
    @capture("test-dup")
    def first():
        return 1

    registered.append("test-dup")
    with pytest.raises(DuplicateCaptureError, match="test-dup"):
        @capture("test-dup")
        def second():
            return 2

    with pytest.raises(DuplicateCaptureError):
        capture("git")(lambda: None)
    assert issubclass(DuplicateCaptureError, ReplabError)
    assert issubclass(DuplicateCaptureError, ValueError)

    @capture("test-dup", replace=True)
    def third():
        return 3

    assert collect(["test-dup"])["captures"] == {"test-dup": 3}


def test_options_reach_captures_and_tuples_become_lists(registered):
    @capture("test-opts")
    def opts(ctx):
        return {"seen": ctx.option("color"), "default": ctx.option("absent", "d"),
                "pair": (1, 2)}

    registered.append("test-opts")
    manifest = collect(["test-opts"], color="blue")
    assert manifest["captures"]["test-opts"] == {"seen": "blue", "default": "d", "pair": [1, 2]}


def test_non_json_data_is_an_error(registered):
    @capture("test-object")
    def obj():
        return {"x": object()}

    @capture("test-nan")
    def nan():
        return float("nan")

    registered.extend(["test-object", "test-nan"])
    manifest = collect(["test-object", "test-nan"])
    assert manifest["errors"]["test-object"].startswith("TypeError")
    assert manifest["errors"]["test-nan"].startswith("ValueError")
    manifest_json(manifest)  # the manifest itself stays serializable


def test_unknown_name_is_an_error_entry():
    manifest = collect(["no-such-capture"])
    assert manifest["errors"]["no-such-capture"].startswith("LookupError")


def test_keyboard_interrupt_is_not_swallowed(registered):
    @capture("test-interrupt")
    def interrupt():
        raise KeyboardInterrupt

    registered.append("test-interrupt")
    with pytest.raises(KeyboardInterrupt):
        collect(["test-interrupt"])


def test_attachments_are_written_and_recorded(registered, tmp_path):
    @capture("test-attach")
    def attach(ctx):
        return {"file": ctx.attach("big.txt", "x" * 1000)}

    registered.append("test-attach")
    manifest = collect(["test-attach"], artifacts_dir=str(tmp_path / "a"))
    assert manifest["captures"]["test-attach"] == {"file": "big.txt"}
    assert (tmp_path / "a" / "big.txt").read_text() == "x" * 1000
    assert manifest["attachments"]["big.txt"]["bytes"] == 1000
    assert manifest["attachments"]["big.txt"]["capture"] == "test-attach"
    assert collect(["test-attach"])["captures"]["test-attach"] == {"file": None}


def test_manifest_json_is_stable():
    a = {"b": 1, "a": {"y": [1, 2], "x": "é"}}
    b = {"a": {"x": "é", "y": [1, 2]}, "b": 1}
    assert manifest_json(a) == manifest_json(b) == '{"a":{"x":"é","y":[1,2]},"b":1}'
    assert manifest_json(a, indent=2).startswith('{\n  "a": {')


def test_full_collect_never_raises_and_covers_every_builtin(tmp_path):
    manifest = collect(repo=str(tmp_path / "does-not-exist"), inputs=[object()], seeds={"x": 1})
    assert set(manifest["timings_ms"]) >= set(BUILTINS)
    done = set(manifest["captures"]) | set(manifest["skipped"]) | set(manifest["errors"])
    assert done >= set(BUILTINS)
    manifest_json(manifest)


def test_lock_hash_accepts_manifest_capture_or_text():
    manifest = collect(["packages"])
    lock = manifest["captures"]["packages"]["lock"]
    assert lock_hash(manifest) == lock_hash(manifest["captures"]["packages"]) == lock_hash(lock)
    assert lock_hash(manifest) == manifest["captures"]["packages"]["lock_hash"]
    with pytest.raises(ValueError, match="no package lock"):
        lock_hash(collect(["python"]))


def test_import_is_light():
    code = ("import sys, json, replab.capture\n"
            "heavy = ['mlflow', 'torch', 'numpy', 'tensorflow', 'pynvml', 'IPython', 'yaml',"
            " 'importlib.metadata', 'pandas', 'jax']\n"
            "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
            "replab.capture.collect()\n"
            "print(json.dumps([m for m in heavy[:4] if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert json.loads(out[0]) == [] and json.loads(out[1]) == []


def test_main_prints_the_manifest(capsys, tmp_path):
    assert main(["--only", "python,platform", "--repo", str(tmp_path)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert set(manifest["captures"]) == {"python", "platform"}
    assert main(["--only", "python", "--pretty"]) == 0
    assert capsys.readouterr().out.startswith("{\n  ")


def test_main_rejects_unknown_names(capsys):
    assert main(["--only", "python,nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "replab.capture", "--only", "python,entrypoint"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    manifest = json.loads(out)
    assert manifest["captures"]["python"]["executable"] == sys.executable
    entry = manifest["captures"]["entrypoint"]
    assert entry["kind"] == "module" and entry["module"] == "replab.capture"
    assert entry["argv"] == ["--only", "python,entrypoint"]


def test_capture_start_up_leaves_heavy_stdlib_modules_alone(tmp_path):
    """``replab capture`` (and every ``replab run`` child) starts fast: its captures import
    none of these (importlib.metadata and email alone were a third of its start-up). The gpu
    capture is left out: it imports the vendor's library when one is installed."""
    avoided = ["importlib.metadata", "email", "zipfile", "csv", "dataclasses", "inspect", "ast",
               "typing", "datetime", "socket", "base64", "tempfile"]
    only = ",".join(n for n in BUILTINS if n != "gpu")
    code = ("import sys, json\n"
            "from replab.capture.__main__ import main\n"
            f"main(['--repo', {str(ROOT)!r}, '--only', {only!r}])\n"
            f"print(json.dumps([m for m in {avoided!r} if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert json.loads(out[-1]) == []
