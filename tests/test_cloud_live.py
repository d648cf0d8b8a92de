"""The whole series against a real Chameleon project, at CHI@UC and KVM@TACC:
``pytest -m chameleon tests/test_cloud_live.py`` (README: "The live suite").

One test per site (``REPLAB_LIVE_SITES``, default ``CHI@UC,KVM@TACC``), each skipped, naming
what is missing, unless this machine can authenticate at the site's Keystone and at its
storage site's (KVM@TACC keeps its objects at CHI@TACC): Chameleon's JupyterHub (OIDC token
and ``OS_PROJECT_NAME``/``OS_PROJECT_ID``), an application credential of that site
(``OS_APPLICATION_CREDENTIAL_ID``/``_SECRET`` with ``OS_AUTH_URL``), or a ``clouds.yaml``
entry for that site's Keystone (``OS_CLOUD`` names one; unset, any entry whose ``auth_url``
is the site's is used, so one clouds.yaml with an entry per site runs both).

Each test reserves the smallest machine free now for ``REPLAB_LIVE_HOURS`` (default 2;
the teardown ends the lease as soon as the test is done) (CPU-only first: CHI@UC
``compute_skylake``, KVM@TACC ``m1.large``; a GPU one only when none is free), then goes
1 -> 5 as a researcher would: credentials and buckets, lease + server + floating IP + host
setup (run twice: the second run creates and changes nothing), the lab (docker compose on the
server), a run logged through an SSH tunnel to the lab's MLflow, its replay to a verdict, the
server's backup command, and the teardown, which runs in ``finally`` whatever failed and must
leave nothing: no server, no lease, nothing live in state.json, buckets and credentials
deleted. Costs: see the README (at most 4 SUs per site: a CPU node and a floating IP, 1 SU
each per hour reserved). Takes 30-60 minutes per site. ``REPLAB_LIVE_REPOSITORY`` (an
https URL) is cloned on the server; default none.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replab import cloud as rc
from replab import config, credentials, keystonelogin, lab, provisioning, remote, replay, sites
from replab.errors import CloudError
from replab.lab import schedule, server

pytestmark = [pytest.mark.chameleon, pytest.mark.slow, pytest.mark.timeout(4 * 3600)]

log = logging.getLogger(__name__)
LIVE_SITES = tuple(s.strip() for s in (os.environ.get("REPLAB_LIVE_SITES")
                                       or "CHI@UC,KVM@TACC").split(",") if s.strip())
ROOT = Path(__file__).resolve().parents[1]
#: the lease's length: the series takes 30-60 minutes; teardown ends the lease when done
HOURS = int(os.environ.get("REPLAB_LIVE_HOURS") or 2)


def credentials_problem(site: sites.Site) -> str | None:
    """Why this machine cannot authenticate at ``site`` and its storage site (no network
    call: the sources replab.credentials.authenticate would try, as configured), or None."""
    problems = []
    for name in dict.fromkeys([site.name, site.storage_site]):
        keystone = sites.get_site(name).auth_url
        tried = [(source, *make()) for source, make in keystonelogin.sources(keystone)]
        if not any(plugin is not None for _source, plugin, _why in tried):
            problems.append(f"{name} ({keystone}): " + "; ".join(
                f"{source}: {why}" for source, _plugin, why in tried))
    if not problems:
        return None
    return ("no credentials for " + " and ".join(problems) + ". Run in Chameleon's JupyterHub, "
            "or give a clouds.yaml entry per site (README: The live suite)")


@pytest.fixture(params=LIVE_SITES)
def live_site(request) -> sites.Site:
    try:
        site = sites.get_site(request.param)
    except KeyError as exc:
        pytest.fail(f"REPLAB_LIVE_SITES: {exc}", pytrace=False)
    if site.kind == sites.LOCAL:
        pytest.fail("REPLAB_LIVE_SITES names 'local': nothing to reserve there", pytrace=False)
    problem = credentials_problem(site)
    if problem:
        pytest.skip(problem)
    return site


def _keypair(directory: Path) -> tuple[Path, Path]:
    """A fresh ed25519 key pair (private key file, public key file) for the server."""
    private = directory / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "replab-live", "-f",
                    str(private)], check=True)
    return private, private.with_suffix(".pub")


def _smallest_first(site: sites.Site) -> list[sites.Machine]:
    """CPU-only machines before GPU ones; within them the shorter (smaller) names first."""
    return sorted(site.machines, key=lambda m: (m.gpu_vendor != "none", len(m.name), m.name))


def _cfg(site: sites.Site, machine: sites.Machine, workdir: str, experiment: str):
    key = "node_type" if site.kind == sites.BARE_METAL else "flavor"
    return config.build({"experiment": experiment, "frameworks": ["sklearn"],
                         "site": site.name, key: machine.name,
                         "gpu_vendor": machine.gpu_vendor, "lease_hours": HOURS,
                         "repository": os.environ.get("REPLAB_LIVE_REPOSITORY") or None,
                         "workdir": workdir})


def _free_machine(site: sites.Site, workdir: str, experiment: str):
    """The config of the smallest machine free for HOURS from now, or None (read-only:
    Blazar's host or flavor availability, replab.cloud.availability.summary)."""
    clients = rc.connect(_cfg(site, site.machines[0], workdir, experiment))
    now = _dt.datetime.now(_dt.timezone.utc)
    for machine in _smallest_first(site):
        candidate = _cfg(site, machine, workdir, experiment)
        try:
            flavor = (rc.flavor_id(clients.conn, machine.name) if site.kind == sites.KVM
                      else None)
        except CloudError as exc:  # a flavor of the catalog this project does not see
            log.info("%s at %s: %s", machine.name, site.name, exc)
            continue
        found = rc.availability.summary(clients.blazar, candidate, hours=HOURS,
                                        flavor_id=flavor, now=now)
        log.info("%s", found.markdown())
        if found.can_start_now:
            return candidate
    return None


@contextlib.contextmanager
def _tunnel(host: remote.Host, remote_port: int) -> Iterator[str]:
    """``ssh -N -L`` to the server's 127.0.0.1:``remote_port``; yields the local URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(host.ssh_command(
        "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-L", f"{port}:127.0.0.1:{remote_port}"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None, "the SSH tunnel exited"
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_whole_series_on_the_smallest_free_machine(live_site, tmp_path):
    site = live_site
    workdir = str(tmp_path / "work")
    cfg = _free_machine(site, workdir, f"replab-live-{secrets.token_hex(3)}")
    if cfg is None:
        pytest.skip(f"no machine at {site.name} is free for {HOURS} h now")
    config.save(cfg)
    private, public = _keypair(tmp_path)
    try:
        # 1_create_credentials
        made = credentials.setup(cfg, progress=log.info)
        assert {o.what for o in made.outcomes} >= {"application credential", "EC2 credential"}
        # 2_provision, then again: the re-run resumes and creates or changes nothing
        first = provisioning.provision_all(cfg, public_key=str(public),
                                           private_key=str(private), progress=log.info)
        assert first.address and first.pending_until is None
        assert [s.name for s in first.steps][-3:] == ["replab", "workdir", "backup-timer"]
        state = rc.State.load(cfg.workdir)
        assert {"lease", "server", "floating_ip", "keypair"} <= set(state.live())
        again = provisioning.provision_all(cfg, public_key=str(public),
                                           private_key=str(private), progress=log.info)
        assert again.address == first.address
        assert not [s for s in again.steps if s.changed], again.steps
        # 3_launch_lab
        info = lab.launch(cfg, progress=log.info)
        assert set(info["services"]) == {"mlflow", "jupyter"}
        host = lab.server_host(cfg)
        # a run logged through the tunnel, replayed here to a verdict
        with _tunnel(host, 5000) as url:
            run_id = lab.example_run(cfg, {**info, "mlflow_url": url})
            result = replay.replay_run(run_id, tracking_uri=url, repo=ROOT,
                                       workdir=workdir, progress=log.info)
            assert result.verdict.reproduced, result.verdict.to_dict()
        # what the hourly timer runs, run now
        conn = remote.connect(host)
        try:
            paths = server.host_paths(cfg, conn)
            made_backup = schedule.backup_on_server(cfg, conn, paths, reason="live")
            assert made_backup.runs >= 2  # the run and its replay
            assert remote.run(conn, ["systemctl", "is-enabled", f"{schedule.UNIT}.timer"]).ok
        finally:
            conn.close()
    finally:
        # 5_teardown, whatever happened
        done = provisioning.teardown(cfg, delete_buckets=True, progress=log.info)
        log.info("teardown:\n%s", done.markdown())
    assert not done.problems, done.problems
    assert rc.State.load(cfg.workdir).live() == {}
    clients = rc.connect(cfg)
    assert rc.find_server(clients.conn, cfg.names["server"]) is None
    assert rc.find_lease(clients.blazar, cfg.names["lease"]) is None
