"""replab.lab.backup: MLflow database backups to the backups bucket and restores, against
real labs (sqlite and PostgreSQL), the local bucket directory and S3 on the local Swift."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from replab import s3client, storage
from replab.errors import ConfigError
from replab.lab import backup, local, schedule
from tests.fixtures_openstack import LocalOpenStack, ec2_credential
from tests.goldens import checker
from tests.lab_support import (
    assert_runs_present,
    lab_workdir,
    local_config,
    log_example_runs,
    need_postgres,
)

golden = checker("lab-backup")


# -- pure parts --------------------------------------------------------------------------------
def test_systemd_units_golden():
    units = schedule.systemd_units("/home/cc/work")
    assert sorted(units) == ["replab-lab-backup.service", "replab-lab-backup.timer"]
    golden("replab-lab-backup.service", units["replab-lab-backup.service"])
    golden("replab-lab-backup.timer", units["replab-lab-backup.timer"])
    service = units["replab-lab-backup.service"]
    assert ("ExecStart=/usr/local/bin/replab lab backup --workdir /home/cc/work "
            "--reason scheduled --prune") in service
    assert "Type=oneshot" in service and "User=cc" in service
    timer = units["replab-lab-backup.timer"]
    assert "OnCalendar=hourly" in timer and "Persistent=true" in timer


def test_systemd_units_with_a_database_and_odd_paths():
    units = schedule.systemd_units("/home/cc/my work 100%", user="root", on_calendar="*:0/30",
                                 environment_file="/home/cc/work/secrets/lab.env",
                                 database_uri="postgresql+psycopg://mlflow@127.0.0.1:5432/mlflow")
    service = units["replab-lab-backup.service"]
    assert '--workdir "/home/cc/my work 100%%"' in service
    assert "EnvironmentFile=-/home/cc/work/secrets/lab.env" in service
    assert ("Environment=REPLAB_MLFLOW_DB=postgresql+psycopg://mlflow@127.0.0.1:5432/mlflow"
            in service)
    assert "OnCalendar=*:0/30" in units["replab-lab-backup.timer"]
    with pytest.raises(ConfigError, match="must not hold a password"):
        schedule.systemd_units("/w", database_uri="postgresql://mlflow:secret@h:5432/mlflow")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")
def test_systemd_accepts_the_units(tmp_path):
    replab = str(Path(sys.executable).with_name("replab"))
    for name, text in schedule.systemd_units("/home/cc/work", replab=replab,
                                           user="root").items():
        (tmp_path / name).write_text(text)
    for name in ("replab-lab-backup.service", "replab-lab-backup.timer"):
        proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr


def test_database_uris(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    db = backup.Database.from_uri("sqlite:////var/lib/replab/mlflow.db")
    assert db.backend == "sqlite" and db.path == Path("/var/lib/replab/mlflow.db")
    assert db.uri == "sqlite:////var/lib/replab/mlflow.db" and db.env() == {}
    pg = backup.Database.from_uri("postgresql://mlflow:s3cret@127.0.0.1:5433/mlflow")
    assert (pg.host, pg.port, pg.user, pg.name) == ("127.0.0.1", 5433, "mlflow", "mlflow")
    assert "s3cret" not in pg.uri and "s3cret" not in repr(pg)
    assert pg.env() == {"PGPASSWORD": "s3cret"}
    monkeypatch.setenv("PGPASSWORD", "fromenv")
    assert backup.Database.from_uri("postgresql+psycopg://u@h/db").env() == {
        "PGPASSWORD": "fromenv"}
    with pytest.raises(ConfigError, match="not a sqlite"):
        backup.Database.from_uri("mysql://u:pw@h/db")


def test_bad_reason_and_nothing_to_back_up(tmp_path):
    cfg = local_config(tmp_path / "work")
    with pytest.raises(ConfigError, match="reason"):
        backup.backup(cfg, reason="Not OK!")
    with pytest.raises(ConfigError, match="nothing to back up"):
        backup.backup(cfg)
    assert backup.latest_backup(cfg) is None and backup.list_backups(cfg) == []
    assert backup.restore_if_new(cfg) is None
    with pytest.raises(ConfigError, match="no backup"):
        backup.restore(cfg)


def _info(stamp: str, reason: str = "scheduled") -> backup.BackupInfo:
    return backup.BackupInfo(key=f"mlflow-db/{stamp}-{reason}.sqlite", bucket="b",
                             location="x", backend="sqlite", created_at=stamp, reason=reason,
                             mlflow_version="3", schema_revision=None, runs=1, experiments=1,
                             size=1, sha256="0")


def test_prune_plan_keeps_recent_daily_and_every_unscheduled_backup():
    hourly = [_info(f"202605{day:02d}T{hour:02d}0000.000Z") for day in (1, 2, 3)
              for hour in range(24)]
    by_hand = [_info("20260501T123000.000Z", "manual"), _info("20260501T000001.000Z",
                                                              "teardown")]
    every = sorted(hourly + by_hand, key=lambda b: b.key)
    doomed = schedule.prune_plan(every, keep_recent=30, keep_daily=2)
    kept = {b.key for b in every} - {b.key for b in doomed}
    # the newest 30 hourly (all of day 3, 6 of day 2), the newest of days 3 and 2, and the
    # manual and teardown ones; day 1's hourly ones all go (only 2 days are kept)
    assert {b.reason for b in doomed} == {"scheduled"}
    assert kept >= {b.key for b in by_hand}
    assert sorted(k for k in kept if "scheduled" in k) == sorted(b.key for b in hourly[-30:])
    assert len(doomed) == 72 - 30
    assert doomed == sorted(doomed, key=lambda b: b.key)  # oldest first
    days = schedule.prune_plan(every, keep_recent=1, keep_daily=3)
    assert {b.key for b in hourly} - {b.key for b in days} == {
        "mlflow-db/20260501T230000.000Z-scheduled.sqlite",
        "mlflow-db/20260502T230000.000Z-scheduled.sqlite",
        "mlflow-db/20260503T230000.000Z-scheduled.sqlite"}
    assert schedule.prune_plan(by_hand, keep_recent=1, keep_daily=0) == []
    with pytest.raises(ConfigError, match="keep_recent"):
        schedule.prune_plan(every, keep_recent=0)


@pytest.mark.services
def test_prune_deletes_old_scheduled_backups_from_the_bucket(tmp_path):
    cfg = local_config(tmp_path / "work")
    db = backup.Database.sqlite(tmp_path / "mlflow.db")
    sqlite3.connect(db.path).close()
    made = [backup.backup(cfg, reason=r, database=db)
            for r in ("scheduled", "manual", "scheduled", "scheduled")]
    said: list[str] = []
    gone = schedule.prune(cfg, keep_recent=1, keep_daily=0, progress=said.append)
    assert [b.key for b in gone] == [made[0].key, made[2].key]
    assert [b.key for b in backup.list_backups(cfg)] == [made[1].key, made[3].key]
    root = cfg.workdir_path / "buckets" / cfg.buckets.backups / "mlflow-db"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        Path(k).name for b in (made[1], made[3]) for k in (b.key, b.meta_key))
    assert said and "pruned 2 scheduled backup(s)" in said[0]
    assert schedule.prune(cfg, keep_recent=1, keep_daily=0) == []


# -- round trips -------------------------------------------------------------------------------
def round_trip(cfg, tmp: Path, forget) -> tuple[dict, backup.BackupInfo]:
    """Launch, log runs, back up, stop, ``forget()`` the database, launch again: the restore
    brings every run, param, metric point and artifact back, read through the lab."""
    info = local.launch(cfg)
    try:
        expected = log_example_runs(info.mlflow_url, cfg.experiment, tmp)
        made = backup.backup(cfg, reason="test")
        assert made.runs == len(expected) and made.backend == cfg.lab.mlflow_backend
        assert backup.latest_backup(cfg) == made
        with pytest.raises(ConfigError, match="MLflow server is running"):
            backup.restore(cfg, made)
    finally:
        local.stop(cfg)
    forget()
    said: list[str] = []
    info = local.launch(cfg, progress=said.append)
    assert info.restored == made and not info.reused
    assert any(s.startswith(f"restored {made.key}") for s in said)
    assert_runs_present(info.mlflow_url, expected, tmp)
    assert backup.restore_if_new(cfg, database=local.database(cfg)) is None  # has runs now
    return expected, made


@pytest.mark.services
def test_sqlite_round_trip_through_the_local_bucket(tmp_path):
    with lab_workdir("bk-sqlite") as workdir:
        cfg = local_config(workdir, "sqlite")
        db_file = local.paths(cfg).sqlite
        try:
            expected, made = round_trip(cfg, tmp_path, lambda: db_file.unlink())
            # the bucket holds the snapshot and its sidecar
            bucket = workdir / "buckets" / cfg.buckets.backups
            data = bucket / made.key
            meta = json.loads((bucket / made.meta_key).read_text())
            assert meta["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
            assert meta["size"] == data.stat().st_size and meta["backend"] == "sqlite"
            assert meta["mlflow_version"] and meta["schema_revision"]
            assert made.key.startswith("mlflow-db/") and made.key.endswith("-test.sqlite")

            # a snapshot taken while writers write is a consistent database
            info = local.launch(cfg)
            assert info.reused
            stop_writing = threading.Event()
            thread = threading.Thread(target=keep_writing, args=(info.mlflow_url,
                                                                 stop_writing))
            thread.start()
            try:
                time.sleep(0.5)
                busy = backup.backup(cfg, reason="busy")
            finally:
                stop_writing.set()
                thread.join(60)
            conn = sqlite3.connect(bucket / busy.key)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
            assert [b.key for b in backup.list_backups(cfg)] == [made.key, busy.key]

            # restore into another database: new is fine, one with runs needs force
            other = backup.Database.sqlite(tmp_path / "other.db")
            assert backup.restore(cfg, made.key, database=other) == made
            assert backup.counts(other)[0] == len(expected)
            with pytest.raises(ConfigError, match="pass force=True"):
                backup.restore(cfg, database=other)
            assert backup.restore(cfg, database=other, force=True) == busy

            # a backup of an empty database never hides the history before it
            empty = tmp_path / "empty.db"
            with sqlite3.connect(empty) as conn:
                conn.executescript("CREATE TABLE runs (id TEXT); CREATE TABLE experiments "
                                   "(id INT); INSERT INTO experiments VALUES (0);")
            conn.close()
            nothing = backup.backup(cfg, reason="empty", database=backup.Database.sqlite(empty))
            assert nothing.runs == 0 and backup.latest_backup(cfg) == nothing
            assert backup.latest_backup(cfg, with_content=True) == busy
            fresh = backup.Database.sqlite(tmp_path / "fresh.db")
            assert backup.restore_if_new(cfg, database=fresh) == busy
        finally:
            local.stop(cfg)


def keep_writing(url: str, stop: threading.Event) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    run_id = client.create_run(client.create_experiment(f"busy-{uuid.uuid4().hex[:6]}")
                               ).info.run_id
    step = 0
    for _ in range(200):  # bounded
        if stop.is_set():
            break
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric("m", float(i), now, step + i)
                                          for i in range(200)])
        step += 200


@pytest.mark.services
def test_postgresql_round_trip_and_explicit_restore(tmp_path):
    need_postgres()
    with lab_workdir("bk-pg") as workdir:
        cfg = local_config(workdir, "postgresql")
        cluster = local.paths(cfg).postgres
        try:
            expected, made = round_trip(cfg, tmp_path, lambda: shutil.rmtree(cluster))
            assert made.key.endswith("-test.pgdump")
            # an explicit restore (the latest) into a fresh cluster, MLflow not running
            local.stop(cfg)
            shutil.rmtree(cluster)
            assert backup.restore(cfg) == made  # starts only PostgreSQL
            assert local.status(cfg)["services"]["postgres"]["running"]
            with pytest.raises(ConfigError, match="pass force=True"):
                backup.restore(cfg)
            info = local.launch(cfg)
            assert info.restored is None
            assert_runs_present(info.mlflow_url, expected, tmp_path)
            # the GPU server's way (its timer, teardown, launch): a URI without a password,
            # the password only in the lab's .env as POSTGRES_PASSWORD, read by --env-file
            db = local.database(cfg)
            env_file = tmp_path / "lab.env"
            env_file.write_text(f"# the lab's .env\nPOSTGRES_PASSWORD={db.password}\n")
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PGPASSWORD", "POSTGRES_PASSWORD")}
            env[backup.DB_ENV] = f"postgresql://{db.user}@{db.host}:{db.port}/{db.name}"
            cli = [str(Path(sys.executable).with_name("replab")), "lab"]
            where = ["--workdir", str(workdir), "--env-file", str(env_file)]
            out = subprocess.run([*cli, "backup", *where, "--reason", "scheduled", "--prune"],
                                 env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stderr
            latest = backup.latest_backup(cfg)
            assert latest.key.endswith("-scheduled.pgdump") and latest.runs == len(expected)
            out = subprocess.run([*cli, "restore", "--if-new", *where], env=env,
                                 capture_output=True, text=True, timeout=300)
            assert out.returncode == 0 and "nothing restored" in out.stdout, out.stderr
        finally:
            local.stop(cfg)


# -- S3 on the local Swift ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def ec2(local_openstack: LocalOpenStack) -> Iterator[dict]:
    """An EC2 credential of the demo user for this module (as 1_create_credentials makes
    it); deleted at the end."""
    with ec2_credential(local_openstack) as cred:
        yield cred


@pytest.mark.services
def test_sqlite_round_trip_through_s3_with_s3_artifacts(ec2, tmp_path):
    stack = ec2["stack"]
    with lab_workdir("bk-s3") as workdir:
        cfg = local_config(workdir, "sqlite", s3_endpoint=stack.s3_endpoint, ec2=ec2)
        s3 = s3client.s3_client(stack.s3_endpoint, ec2["access"], ec2["secret"])
        names = [cfg.buckets.artifacts, cfg.buckets.backups]
        storage.ensure_buckets(s3, names)
        db_file = local.paths(cfg).sqlite
        try:
            expected, made = round_trip(cfg, tmp_path, lambda: db_file.unlink())
            assert made.location == f"s3://{cfg.buckets.backups}/{made.key}"
            keys = storage.list_objects(s3, cfg.buckets.backups, "mlflow-db/")
            assert set(keys) == {made.key, made.meta_key} and keys[made.key] == made.size
            artifacts = storage.list_objects(s3, cfg.buckets.artifacts)
            assert sum(k.endswith(".txt") for k in artifacts) == len(expected)
            lab = json.loads((workdir / "lab.json").read_text())
            assert lab["services"]["mlflow"]["artifacts"] == f"s3://{cfg.buckets.artifacts}/"
            assert ec2["secret"] not in (workdir / "lab.json").read_text()
            assert not (workdir / "buckets" / cfg.buckets.backups / "mlflow-db").exists()
        finally:
            local.stop(cfg)
            for name in names:
                storage.delete_bucket(s3, name, force=True)
