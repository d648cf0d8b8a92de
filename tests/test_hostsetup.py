"""replab.hostsetup: rendered install scripts against golden files; the steps over a real
SSH server (sshd on loopback, logged in as this machine's user) with every system path under
a temporary root, so this machine's /etc is never written."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from replab import config, hostsetup, rclone, remote
from replab.errors import CloudError, ConfigError
from replab.lab import backup, schedule, server
from replab.lab.compose import HostPaths
from replab.secretsstore import SecretsStore
from tests.conftest import basic
from tests.gitrepo import git, make_repo
from tests.goldens import checker

services = pytest.mark.services  # the tests that log in to the real sshd


golden = checker("hostsetup")


def _local_ok(*argv: str) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# -- pure renderers ----------------------------------------------------------------------------
def test_docker_script_golden():
    script = hostsetup.docker_script("noble", "cc")
    golden("docker-install.sh", script)
    assert "curl | sh" not in script and "get.docker.com" not in script
    assert "signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/ubuntu " \
           "noble stable" in script
    assert ("apt_get install -y docker-ce docker-ce-cli containerd.io docker-buildx-plugin "
            "docker-compose-plugin") in script
    assert "usermod -aG docker cc" in script
    # the user is quoted for the shell; bad codenames are refused
    assert "usermod -aG docker 'a b'" in hostsetup.docker_script("noble", "a b")
    assert "linux/debian bookworm" in hostsetup.docker_script("bookworm", "cc", distro="debian")
    with pytest.raises(ConfigError, match="codename"):
        hostsetup.docker_script("noble; rm -rf /", "cc")


def test_nvidia_toolkit_script_golden():
    script = hostsetup.nvidia_toolkit_script()
    golden("nvidia-toolkit-install.sh", script)
    assert "signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg" in script
    assert "nvidia-ctk runtime configure --runtime=docker" in script
    pinned = hostsetup.nvidia_toolkit_script("1.17.8-1")
    golden("nvidia-toolkit-install-pinned.sh", pinned)
    assert "nvidia-container-toolkit=1.17.8-1 nvidia-container-toolkit-base=1.17.8-1" in pinned
    with pytest.raises(ConfigError, match="version"):
        hostsetup.nvidia_toolkit_script("1.0; reboot")


@pytest.mark.skipif(not _local_ok("bash", "--version"), reason="no bash")
def test_rendered_scripts_are_valid_bash(tmp_path):
    for name, text in (("d.sh", hostsetup.docker_script("noble", "cc")),
                       ("n.sh", hostsetup.nvidia_toolkit_script("1.17.8-1"))):
        (tmp_path / name).write_text(text)
        proc = subprocess.run(["bash", "-n", str(tmp_path / name)], capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr


def test_merge_daemon_json_keeps_everything_else():
    current = {"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
               "log-driver": "json-file",
               "exec-opts": ["native.cgroupdriver=systemd", "isolation=default"]}
    merged = hostsetup.merge_daemon_json(current)
    assert merged["runtimes"] == current["runtimes"] and merged["log-driver"] == "json-file"
    assert merged["exec-opts"] == ["isolation=default", "native.cgroupdriver=cgroupfs"]
    assert hostsetup.merge_daemon_json(merged) == merged
    assert hostsetup.merge_daemon_json({}) == {"exec-opts": ["native.cgroupdriver=cgroupfs"]}
    assert current["exec-opts"][0] == "native.cgroupdriver=systemd"  # not mutated


def test_source_hash_follows_content_and_exclusions(tmp_path):
    src = tmp_path / "src"
    (src / "lib" / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "lib" / "pkg.egg-info").mkdir()
    (src / "lib" / "pkg" / "m.py").write_text("x = 1\n")
    (src / "lib" / "pkg" / "__pycache__" / "m.pyc").write_text("junk")
    (src / "lib" / "pkg.egg-info" / "PKG-INFO").write_text("junk")
    (src / "pyproject.toml").write_text("[project]\n")
    files = hostsetup.source_files(src, ["lib", "pyproject.toml", "missing"])
    assert [rel for _, rel in files] == ["lib/pkg/m.py", "pyproject.toml"]
    first = hostsetup.source_hash(files)
    (src / "lib" / "pkg" / "__pycache__" / "m.pyc").write_text("other junk")
    assert hostsetup.source_hash(hostsetup.source_files(src, ["lib", "pyproject.toml"])) == first
    (src / "lib" / "pkg" / "m.py").chmod(0o755)
    assert hostsetup.source_hash(hostsetup.source_files(src, ["lib", "pyproject.toml"])) != first


# -- steps over the real sshd ------------------------------------------------------------------
@pytest.fixture
def conn(ssh_server):
    c = remote.connect(ssh_server)
    yield c
    c.close()


@pytest.fixture
def cfg(tmp_path):
    return config.build(basic("CHI@UC", gpu_vendor="none", workdir=str(tmp_path / "work")))


@pytest.fixture
def store(cfg):
    s = SecretsStore(cfg.workdir)
    s.write(s.RCLONE, rclone.render_rclone_conf({
        f"{cfg.experiment}-s3": rclone.s3_remote("https://s3.example.org", "AKID", "SECRET")}))
    s.save_credentials({"ec2": {"access": "AKID", "secret": "SECRET"}})
    return s


@pytest.fixture
def sysroot(tmp_path):
    root = tmp_path / "sysroot"
    (root / "etc").mkdir(parents=True)
    return root


@services
def test_rclone_fuse_twice(conn, cfg, store, sysroot, tmp_path, ssh_server):
    home = tmp_path / "home"
    fuse_conf = sysroot / "etc" / "fuse.conf"
    fuse_conf.write_text("# /etc/fuse.conf\n#user_allow_other\nmount_max = 1000")
    step = hostsetup.rclone_fuse(conn, cfg, store, root=sysroot, home=home)
    assert step.name == "rclone-fuse" and step.changed
    assert "systemctl skipped" in step.detail and "apt-get" not in step.detail
    # the other content is kept; the line is added once
    assert fuse_conf.read_text() == ("# /etc/fuse.conf\n#user_allow_other\nmount_max = 1000\n"
                                     "user_allow_other\n")
    conf = home / ".config" / "rclone" / "rclone.conf"
    assert conf.read_text() == store.read(store.RCLONE)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    name = rclone.systemd_unit_name("exp1-s3", "exp1-data")
    unit = (sysroot / "etc" / "systemd" / "system" / name).read_text()
    data = HostPaths.for_config(cfg, str(home)).data
    assert f"ExecStart=/usr/bin/rclone mount exp1-s3:exp1-data {data} " in unit
    assert f"--config {conf} " in unit and f"User={ssh_server.user}" in unit
    assert "WantedBy=multi-user.target" in unit and Path(data).is_dir()

    again = hostsetup.rclone_fuse(conn, cfg, store, root=sysroot, home=home)
    assert not again.changed, again.detail
    assert fuse_conf.read_text().count("\nuser_allow_other\n") == 1

    # a looser mode on the secrets file, or new credentials, are changes
    conf.chmod(0o644)
    fixed = hostsetup.rclone_fuse(conn, cfg, store, root=sysroot, home=home)
    assert fixed.changed and stat.S_IMODE(conf.stat().st_mode) == 0o600


@services
def test_rclone_fuse_needs_the_credentials(conn, cfg, sysroot, tmp_path):
    empty = SecretsStore(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="1_create_credentials"):
        hostsetup.rclone_fuse(conn, cfg, empty, root=sysroot, home=tmp_path / "home")
    wrong = SecretsStore(tmp_path / "wrong")
    wrong.write(wrong.RCLONE, rclone.render_rclone_conf({"other-s3": {"type": "s3"}}))
    with pytest.raises(ConfigError, match="exp1-s3 or exp1-swift"):
        hostsetup.rclone_fuse(conn, cfg, wrong, root=sysroot, home=tmp_path / "home")


@services
def test_clone_repository_then_fetch(conn, cfg, tmp_path):
    upstream = make_repo(tmp_path / "upstream")
    dest = str(tmp_path / "home" / "exp1" / "repo")
    first = hostsetup.clone_repository(conn, cfg, dest=dest, url=str(upstream))
    assert first.changed and "cloned" in first.detail
    assert (Path(dest) / "train.py").read_text() == "print('hi')\n"
    again = hostsetup.clone_repository(conn, cfg, dest=dest, url=str(upstream) + "/")
    assert not again.changed and "up to date" in again.detail
    (upstream / "more.py").write_text("x = 2\n")
    git(upstream, "add", "-A")
    git(upstream, "commit", "-q", "-m", "more")
    fetched = hostsetup.clone_repository(conn, cfg, dest=dest, url=str(upstream))
    assert fetched.changed and "fetched" in fetched.detail
    assert git(Path(dest), "rev-parse", "origin/main") == git(upstream, "rev-parse", "HEAD")
    assert not (Path(dest) / "more.py").exists()  # fetch only: the working tree is the user's
    assert not hostsetup.clone_repository(conn, cfg, dest=dest, url=str(upstream)).changed


@services
def test_clone_repository_refuses_another_origin(conn, cfg, tmp_path):
    upstream = make_repo(tmp_path / "upstream")
    other = make_repo(tmp_path / "other")
    dest = str(tmp_path / "repo")
    hostsetup.clone_repository(conn, cfg, dest=dest, url=str(upstream))
    with pytest.raises(CloudError) as err:
        hostsetup.clone_repository(conn, cfg, dest=dest, url=str(other))
    assert str(upstream) in str(err.value) and str(other) in str(err.value)


@pytest.fixture
def agent(ssh_server, monkeypatch, tmp_path):
    """An ssh-agent holding the key the sshd accepts; SSH_AUTH_SOCK points at it."""
    sock = str(tmp_path / "agent.sock")
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if Path(sock).exists():
                break
            time.sleep(0.05)
        subprocess.run(["ssh-add", "-q", ssh_server.key_filename], check=True,
                       env={**os.environ, "SSH_AUTH_SOCK": sock}, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)


@services
def test_clone_over_ssh_with_the_forwarded_agent(ssh_server, agent, cfg, tmp_path):
    """An ssh repository URL is cloned on the server with the researcher's agent forwarded
    through the SSH session: the server holds no key of its own (the clone goes back
    through the same sshd, which accepts only the agent's key)."""
    upstream = make_repo(tmp_path / "upstream")
    url = f"ssh://{ssh_server.user}@127.0.0.1:{ssh_server.port}{upstream}"
    host = dataclasses.replace(ssh_server, key_filename=None, forward_agent=True)
    c = remote.connect(host)
    try:
        env = remote.run(c, ["sh", "-c", 'echo "$SSH_AUTH_SOCK"']).stdout.strip()
        assert env, "the agent is not forwarded into the session"
        dest = str(tmp_path / "home" / "exp1" / "repo")
        step = hostsetup.clone_repository(c, cfg, dest=dest, url=url, forward_agent=True)
        assert step.changed and "cloned" in step.detail
        assert (Path(dest) / "train.py").read_text() == "print('hi')\n"
        assert not hostsetup.clone_repository(c, cfg, dest=dest, url=url,
                                              forward_agent=True).changed
    finally:
        c.close()
    # without the agent the same clone fails with git's message, not a hang
    plain = remote.connect(ssh_server)
    try:
        with pytest.raises(CloudError, match="git exited"):
            hostsetup.clone_repository(plain, cfg, dest=str(tmp_path / "r2"), url=url,
                                       forward_agent=True)
    finally:
        plain.close()


@services
def test_clone_repository_ssh_needs_the_agent(conn, cfg, tmp_path):
    with pytest.raises(ConfigError, match="forward"):
        hostsetup.clone_repository(conn, cfg, dest=str(tmp_path / "r"),
                                   url="git@github.com:acme/proj.git")
    assert not hostsetup.clone_repository(
        conn, config.build(basic("CHI@UC", gpu_vendor="none", repository=None)),
        dest=str(tmp_path / "r")).changed


@services
def _checkout_copy(dest: Path) -> Path:
    """A snapshot of this checkout's build context (others may edit the live one meanwhile)."""
    for rel in server.SOURCE_PARTS:
        src = server.ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns(
                *hostsetup.SOURCE_EXCLUDE))
        elif src.is_file():
            shutil.copy2(src, dest / rel)
    return dest


@services
def test_upload_lab_twice(conn, cfg, tmp_path):
    paths = HostPaths.under(str(tmp_path / "home" / "exp1"))
    src = _checkout_copy(tmp_path / "checkout")
    first = hostsetup.upload_lab(conn, cfg, paths=paths, source=src)
    assert first.changed, first.detail
    source = Path(paths.source)
    assert (source / "lib" / "replab" / "hostsetup" / "__init__.py").is_file()
    assert (source / "docker").is_dir() and (source / "pyproject.toml").is_file()
    assert not list(source.rglob("__pycache__"))
    assert (source / hostsetup.SOURCE_HASH_FILE).read_text().strip() == first.extra["sha256"]
    second = hostsetup.upload_lab(conn, cfg, paths=paths, source=src)
    assert not second.changed and "current" in second.detail


@services
def test_upload_lab_replaces_the_tree(conn, cfg, tmp_path):
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "a.py").write_text("a\n")
    (src / "lib" / "gone.py").write_text("gone\n")
    paths = HostPaths.under(str(tmp_path / "server"))
    assert hostsetup.upload_lab(conn, cfg, paths=paths, source=src, parts=["lib"]).changed
    (src / "lib" / "gone.py").unlink()
    (src / "lib" / "a.py").write_text("b\n")
    assert hostsetup.upload_lab(conn, cfg, paths=paths, source=src, parts=["lib"]).changed
    assert (Path(paths.source) / "lib" / "a.py").read_text() == "b\n"
    assert not (Path(paths.source) / "lib" / "gone.py").exists()
    assert not Path(paths.source + ".new").exists() and not Path(paths.source + ".old").exists()
    assert not hostsetup.upload_lab(conn, cfg, paths=paths, source=src, parts=["lib"]).changed


@services
def test_backup_timer_twice(conn, cfg, sysroot, tmp_path, ssh_server):
    home = str(tmp_path / "home")
    first = hostsetup.backup_timer(conn, cfg, root=sysroot, home=home)
    assert first.changed and "systemctl skipped" in first.detail
    units = sysroot / "etc" / "systemd" / "system"
    service = (units / f"{schedule.UNIT}.service").read_text()
    timer = (units / f"{schedule.UNIT}.timer").read_text()
    paths = HostPaths.for_config(cfg, home)
    assert f"--workdir {paths.root}/work" in service and f"User={ssh_server.user}" in service
    assert f"REPLAB_MLFLOW_DB=sqlite:///{paths.mlflow_dir}/mlflow.db" in service
    assert "OnCalendar=hourly" in timer and "Persistent=true" in timer
    assert not hostsetup.backup_timer(conn, cfg, root=sysroot, home=home).changed
    assert hostsetup.backup_timer(conn, cfg, root=sysroot, home=home,
                                  on_calendar="*:0/30").changed
    # a PostgreSQL lab: the database compose publishes on the server's loopback, its
    # password from the lab's .env (never in the unit)
    pg = config.build(basic("CHI@UC", gpu_vendor="none", workdir=str(tmp_path / "work"),
                            lab={"mlflow_backend": "postgresql"}))
    assert hostsetup.backup_timer(conn, pg, root=sysroot, home=home).changed
    service = (units / f"{schedule.UNIT}.service").read_text()
    assert f"REPLAB_MLFLOW_DB={schedule.SERVER_POSTGRES_URI}" in service
    assert f"EnvironmentFile=-{paths.lab}/.env" in service


@services
def test_daemon_json_merges(conn, sysroot):
    path = sysroot / "etc" / "docker" / "daemon.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"runtimes": {"nvidia": {"path": "nvidia-container-runtime",
                                                        "args": []}},
                                "exec-opts": ["native.cgroupdriver=systemd"]}))
    planned = hostsetup.daemon_json(conn, root=sysroot, plan_only=True)
    assert planned.changed and "would set" in planned.detail
    assert "systemd" in path.read_text()  # plan only: untouched
    step = hostsetup.daemon_json(conn, root=sysroot)
    assert step.changed
    data = json.loads(path.read_text())
    assert data["exec-opts"] == ["native.cgroupdriver=cgroupfs"] and "nvidia" in data["runtimes"]
    assert not hostsetup.daemon_json(conn, root=sysroot).changed
    path.write_text("{not json")
    with pytest.raises(CloudError, match="not valid JSON"):
        hostsetup.daemon_json(conn, root=sysroot)


@services
def test_docker_step_checks_before_installing(conn, sysroot):
    if _local_ok("docker", "compose", "version"):
        step = hostsetup.docker(conn, root=sysroot, plan_only=True)
        assert "already installed" in step.detail or "usermod" in step.detail
        return
    step = hostsetup.docker(conn, plan_only=True)  # plan only: runs no apt, even on root /
    assert step.changed and "would run as root (plan only)" in step.detail
    assert "apt_get install -y docker-ce docker-ce-cli containerd.io" in step.detail
    assert step.extra["script"] in step.detail
    not_live = hostsetup.docker(conn, root=sysroot)
    assert not_live.changed and "not touched" in not_live.detail


@services
def test_nvidia_step_plans_without_the_toolkit(conn, sysroot):
    if _local_ok("nvidia-ctk", "--version"):
        pytest.skip("the NVIDIA container toolkit is installed here")
    step = hostsetup.nvidia_toolkit(conn, root=sysroot, plan_only=True)
    assert step.changed and "plan only" in step.detail
    assert "nvidia-ctk runtime configure --runtime=docker" in step.detail
    assert "native.cgroupdriver=cgroupfs" in step.detail and "restart docker" in step.detail
    assert not (sysroot / "etc" / "docker").exists()  # nothing written
    # not the live system: the files are written under root, installs and restarts skipped
    written = hostsetup.nvidia_toolkit(conn, root=sysroot)
    assert written.changed and "not touched" in written.detail
    rule = sysroot / hostsetup.UDEV_RULE.lstrip("/")
    assert "create-dev-char-symlinks --create-all" in rule.read_text()
    daemon = json.loads((sysroot / "etc" / "docker" / "daemon.json").read_text())
    assert daemon == {"exec-opts": ["native.cgroupdriver=cgroupfs"]}


@services
def test_rocm_step_verifies(conn, sysroot, ssh_server):
    with pytest.raises(CloudError, match="dev/kfd"):
        hostsetup.rocm(conn, root=sysroot)
    (sysroot / "dev").mkdir()
    (sysroot / "dev" / "kfd").touch()
    if not (_local_ok("getent", "group", "video") and _local_ok("getent", "group", "render")):
        with pytest.raises(CloudError, match="group"):
            hostsetup.rocm(conn, root=sysroot)
        return
    step = hostsetup.rocm(conn, root=sysroot, plan_only=True)
    groups = subprocess.run(["id", "-nG", ssh_server.user], capture_output=True,
                            text=True).stdout.split()
    assert step.changed == (not {"video", "render"} <= set(groups))


@services
def test_setup_host_twice_changes_nothing_the_second_time(conn, cfg, store, sysroot, tmp_path):
    upstream = make_repo(tmp_path / "upstream")
    skip = () if _local_ok("docker", "compose", "version") else (hostsetup.DOCKER,)
    kwargs = dict(root=sysroot, home=tmp_path / "home", repository=str(upstream), skip=skip,
                  source=_checkout_copy(tmp_path / "checkout"))
    said: list[str] = []
    first = hostsetup.setup_host(conn, cfg, store, progress=said.append, **kwargs)
    names = [s.name for s in first]
    assert names == [n for n in ("docker", "rclone-fuse", "repository", "lab-source",
                                 "replab", "workdir", "backup-timer") if n not in skip]
    assert all(s.changed for s in first if s.name != "docker"), first
    assert any("rclone-fuse: changed" in m for m in said)
    second = hostsetup.setup_host(conn, cfg, store, **kwargs)
    assert [s.name for s in second] == names
    assert not [s for s in second if s.changed], second


@services
def test_server_replab_runs_the_backup_timers_command(conn, ec2, tmp_path, ssh_server):
    """What the hourly timer runs on the server works there: replab installed in the
    server's venv from the uploaded source, the server's work directory (config + EC2 keys
    only), and the unit's ExecStart, run with the unit's environment, puts a backup of the
    server's sqlite database in the backups bucket."""
    import mlflow

    from replab import s3client, storage

    stack = ec2["stack"]
    cfg = config.build({**basic("CHI@UC", gpu_vendor="none", workdir=str(tmp_path / "work")),
                        "endpoints": {"s3_endpoint": stack.s3_endpoint}})
    store = SecretsStore(cfg.workdir)
    store.save_credentials({"ec2": {"access": ec2["access"], "secret": ec2["secret"]},
                            "application_credential": {"id": "ac", "secret": "AC-SECRET"}})
    home = str(tmp_path / "home")
    paths = HostPaths.for_config(cfg, home)
    assert hostsetup.upload_lab(conn, cfg, paths=paths,
                                source=_checkout_copy(tmp_path / "checkout")).changed
    first = hostsetup.replab_cli(conn, cfg, paths=paths)
    assert first.changed and f"created {paths.venv}" in first.detail, first.detail
    assert "replab 0.1.0" in first.detail
    assert not hostsetup.replab_cli(conn, cfg, paths=paths).changed
    made = hostsetup.server_workdir(conn, cfg, store, paths=paths)
    assert made.changed
    assert not hostsetup.server_workdir(conn, cfg, store, paths=paths).changed
    secrets = Path(paths.workdir) / "secrets"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets / "credentials.json").stat().st_mode) == 0o600
    assert json.loads((secrets / "credentials.json").read_text()) == {
        "ec2": {"access": ec2["access"], "secret": ec2["secret"]}}  # never the app credential
    assert config.load(paths.workdir).workdir == paths.workdir
    # the server's MLflow database, with one run
    Path(paths.mlflow_dir).mkdir(parents=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{paths.mlflow_dir}/mlflow.db")
    run = client.create_run(client.create_experiment("on-the-server"))
    client.set_terminated(run.info.run_id)
    sysroot = tmp_path / "sysroot"
    hostsetup.backup_timer(conn, cfg, root=sysroot, home=home)
    service = (sysroot / "etc" / "systemd" / "system" / f"{schedule.UNIT}.service").read_text()
    env = dict(line.partition("=")[2].strip('"').split("=", 1) for line in service.splitlines()
               if line.startswith("Environment="))
    assert env["REPLAB_MLFLOW_VERSION"] == hostsetup.lab_mlflow_version() == "3.17.2"
    argv = next(ln for ln in service.splitlines() if ln.startswith("ExecStart=")).split("=", 1)[
        1].split()
    assert argv[0] == paths.replab and argv[argv.index("--workdir") + 1] == paths.workdir
    s3 = s3client.s3_client(stack.s3_endpoint, ec2["access"], ec2["secret"])
    storage.ensure_buckets(s3, [cfg.buckets.backups])
    try:
        out = remote.run(conn, argv, env=env, check=False)
        assert out.ok, out.stderr
        keys = storage.list_objects(s3, cfg.buckets.backups, "mlflow-db/")
        assert len(keys) == 2 and any(k.endswith("-scheduled.sqlite") for k in keys), keys
        latest = backup.latest_backup(cfg)
        assert latest.runs == 1 and latest.experiments >= 1
        assert latest.mlflow_version == "3.17.2"  # the lab container's, not installed there
        # the teardown's last backup goes the same way, and is read back from the bucket
        said: list[str] = []
        last = schedule.backup_on_server(cfg, conn, paths, reason="teardown",
                                       progress=said.append)
        assert last.key != latest.key and last.key.endswith("-teardown.sqlite")
        assert last.runs == 1 and said and last.location in said[0]
        # the timer prunes old scheduled backups (here: all but the newest, on the real S3)
        assert remote.run(conn, argv, env=env).ok
        gone = schedule.prune(cfg, keep_recent=1, keep_daily=0)
        assert [b.key for b in gone] == [k for k in sorted(keys) if k.endswith(".sqlite")]
        left = storage.list_objects(s3, cfg.buckets.backups, "mlflow-db/")
        assert len(left) == 4 and last.key in left and last.meta_key in left
    finally:
        storage.delete_bucket(s3, cfg.buckets.backups, force=True)
