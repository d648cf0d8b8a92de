"""replab.provisioning: what the local lab's prerequisites say, and what teardown records.

The OpenStack calls go to the recorded-exchange API of test_cloud_audit (expected in order,
real openstacksdk/python-chi clients); the PostgreSQL checks run against real files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from replab import cloud as rc
from replab import config, provisioning
from tests.test_cloud_audit import ME, _on_demand_ip, api, clients  # noqa: F401  (fixtures)


def _local_cfg(tmp_path, backend: str = "postgresql") -> config.Config:
    return config.build({"experiment": "exp1", "frameworks": ["pytorch"], "site": "local",
                         "workdir": str(tmp_path / "wd"), "lab": {"mlflow_backend": backend}})


def _postgres_check(checks) -> provisioning.Check:
    return next(c for c in checks if c.name == "postgresql")


def _fake_initdb(directory) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "initdb").write_text("#!/bin/sh\nexit 0\n")
    (directory / "initdb").chmod(0o755)


def test_postgresql_check_agrees_with_the_launcher_on_replab_pg_bin(tmp_path, monkeypatch):
    """The check looks where the launcher looks: a ``REPLAB_PG_BIN`` without initdb is
    missing PostgreSQL (even when /usr/lib/postgresql has one), one with initdb has it."""
    cfg = _local_cfg(tmp_path)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("REPLAB_PG_BIN", str(empty))
    check = _postgres_check(provisioning.local_prerequisites(cfg))
    assert not check.ok
    assert str(empty) in check.detail and "REPLAB_PG_BIN" in check.detail
    _fake_initdb(empty)
    assert _postgres_check(provisioning.local_prerequisites(cfg)).ok


def test_sqlite_lab_needs_no_postgresql(tmp_path):
    checks = provisioning.local_prerequisites(_local_cfg(tmp_path, "sqlite"))
    assert "postgresql" not in [c.name for c in checks]


_IN_NAMESPACE = """
import json, sys
from replab import config, provisioning
cfg = config.build({"experiment": "exp1", "frameworks": ["pytorch"], "site": "local",
                    "workdir": sys.argv[1], "lab": {"mlflow_backend": "postgresql"}})
check = next(c for c in provisioning.local_prerequisites(cfg) if c.name == "postgresql")
print(json.dumps({"ok": check.ok, "detail": check.detail}))
"""


def test_an_initdb_on_the_path_counts_without_debians_postgresql(tmp_path):
    """A machine whose PostgreSQL is only on the PATH (none in /usr/lib/postgresql/*/bin:
    Homebrew, conda, a source build) has it. Run in a private mount namespace where an
    empty tmpfs hides what /usr/lib/postgresql holds here."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) to hide /usr/lib/postgresql")
    bin_dir = tmp_path / "pg" / "bin"
    _fake_initdb(bin_dir)
    hide = ("mkdir -p /usr/lib/postgresql && mount -t tmpfs none /usr/lib/postgresql && "
            'exec "$@"')
    env = {k: v for k, v in os.environ.items() if k != "REPLAB_PG_BIN"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", hide, "sh", sys.executable, "-c",
                            _IN_NAMESPACE, str(tmp_path / "wd")], env=env,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0 and "mount" in probe.stderr and "Traceback" not in probe.stderr:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()[-200:]}")
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got["ok"], got


def test_a_floating_ip_whose_release_failed_is_not_recorded_as_deleted(api, clients,  # noqa: F811
                                                                      tmp_path):
    """Neutron refuses the DELETE: the teardown reports the problem, does not say the IP
    was deleted, and state.json keeps it live, so the next teardown releases it."""
    cfg = config.build({"experiment": "exp1", "frameworks": ["pytorch"], "site": "CHI@UC",
                        "workdir": str(tmp_path / "wd")})
    ip = _on_demand_ip()
    state = rc.State.load(cfg.workdir)
    state.record("floating_ip", id=ip["id"], name=ip["floating_ip_address"],
                 site="CHI@UC", address=ip["floating_ip_address"], created=True,
                 owned_by_lease=False, user_id=ME)
    failure = {"NeutronError": {"type": "HTTPInternalServerError", "message": "boom",
                                "detail": ""}}
    api.expect("GET", "network", f"/v2.0/floatingips/{ip['id']}", json={"floatingip": ip})
    api.expect("DELETE", "network", f"/v2.0/floatingips/{ip['id']}", status=500, json=failure)
    out = provisioning.teardown(cfg, clients=clients, keep_credentials=True)
    api.assert_calls()
    assert any(p.startswith(f"delete floating_ip {ip['floating_ip_address']}")
               for p in out.problems), out.problems
    assert not any("floating_ip" in d for d in out.deleted), out.deleted
    saved = json.loads((tmp_path / "wd" / "state.json").read_text())
    assert not saved["floating_ip"].get("deleted_at"), saved["floating_ip"]
    assert "floating_ip" in rc.State.load(cfg.workdir).live()

    # the next teardown, with Neutron answering, releases it and records that
    api.mock.reset_mock()
    api.expected.clear()
    api._replies.clear()
    api.expect("GET", "network", f"/v2.0/floatingips/{ip['id']}", json={"floatingip": ip})
    api.expect("DELETE", "network", f"/v2.0/floatingips/{ip['id']}", status=204)
    again = provisioning.teardown(cfg, clients=clients, keep_credentials=True)
    api.assert_calls()
    assert not again.problems, again.problems
    assert f"floating_ip {ip['floating_ip_address']} ({ip['id']})" in again.deleted
