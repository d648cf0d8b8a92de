"""The processes of the local control plane (tests/services/cloud.py): how each service is
started (MariaDB, RabbitMQ, the uwsgi APIs, Nova's and Blazar's daemons), whether it answers,
and how much memory the whole stack takes. Standard library only."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cloud_conf as conf

BASE = conf.base()
StackError = BASE.StackError
HERE = Path(__file__).resolve().parent
NOVA_DBS = ("nova_api", "nova_cell0", "nova_cell1")


def venv() -> Path:
    return Path(os.environ.get("REPLAB_CLOUD_VENV") or HERE / ".state" / "cloud-venv")


def epmd_binary() -> str | None:
    return shutil.which("epmd") or next(iter(sorted(glob.glob(
        "/usr/lib/erlang/erts-*/bin/epmd"))), None)


def run(argv: list[str], d: Path, logname: str, env: dict | None = None,
        stdin: Any = subprocess.DEVNULL) -> None:
    with open(d / "logs" / f"{logname}.log", "ab") as out:
        rc = subprocess.run(argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                            env=env, cwd="/").returncode
    if rc != 0:
        raise StackError(f"{' '.join(argv[:3])} ... failed ({rc}); see {d}/logs/{logname}.log")


def mariadb_client(d: Path) -> list[str]:
    return ["mariadb", "--no-defaults", "-S", str(d / "mysql" / "mysql.sock"), "-uroot"]


def mariadb_start(d: Path, processes: dict, fresh: bool) -> None:
    m = d / "mysql"
    if fresh:
        m.mkdir()
        argv = ["mariadb-install-db", "--no-defaults", f"--datadir={m / 'data'}",
                "--auth-root-authentication-method=normal", "--skip-test-db"]
        run(argv + (["--user=root"] if os.geteuid() == 0 else []), d, "mariadb-install")
    argv = ["/usr/sbin/mariadbd", "--no-defaults", f"--datadir={m / 'data'}",
            f"--bind-address={conf.HOST}", f"--port={conf.PORTS['mariadb']}",
            f"--socket={m / 'mysql.sock'}", f"--pid-file={m / 'mysqld.pid'}",
            "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M", "--max-connections=500",
            "--innodb-flush-log-at-trx-commit=0"]
    processes["mariadb"] = BASE.spawn("mariadb", argv + (["--user=root"] if os.geteuid() == 0
                                                         else []), d / "logs")
    ok = lambda: subprocess.run(mariadb_client(d) + ["-e", "select 1"],  # noqa: E731
                                capture_output=True).returncode == 0
    BASE.wait_until("mariadb", ok, 60, processes["mariadb"]["log"])
    dbs = "".join(f"CREATE DATABASE IF NOT EXISTS {db}; " for db in NOVA_DBS)
    sql = (f"{dbs}CREATE USER IF NOT EXISTS '{conf.DB_USER}'@'{conf.HOST}' IDENTIFIED BY "
           f"'{conf.DB_PASSWORD}'; GRANT ALL ON *.* TO '{conf.DB_USER}'@'{conf.HOST}';")
    run(mariadb_client(d) + ["-e", sql], d, "mariadb-setup")


def rabbit_env(d: Path) -> dict[str, str]:
    r = d / "rabbit"
    return dict(os.environ, HOME=str(r / "home"), RABBITMQ_NODENAME="replab@localhost",
                RABBITMQ_NODE_IP_ADDRESS=conf.HOST,
                RABBITMQ_NODE_PORT=str(conf.PORTS["rabbitmq"]),
                RABBITMQ_DIST_PORT=str(conf.PORTS["rabbitmq_dist"]),
                ERL_EPMD_PORT=str(conf.PORTS["epmd"]), ERL_EPMD_ADDRESS=conf.HOST,
                RABBITMQ_MNESIA_BASE=str(r / "mnesia"), RABBITMQ_LOG_BASE=str(r / "log"),
                RABBITMQ_CONFIG_FILE=str(r / "rabbitmq"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(r / "enabled_plugins"),
                RABBITMQ_PID_FILE=str(r / "rabbit.pid"),
                RABBITMQ_CTL_DIST_PORT_MIN=str(conf.RABBITMQ_CTL_PORTS[0]),
                RABBITMQ_CTL_DIST_PORT_MAX=str(conf.RABBITMQ_CTL_PORTS[1]),
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface "
                                                    "{127,0,0,1}")


def rabbit_start(d: Path, processes: dict) -> None:
    r = d / "rabbit"
    (r / "home").mkdir(parents=True)
    (r / "enabled_plugins").write_text("[].\n")
    (r / "rabbitmq.conf").write_text("loopback_users = none\n")
    env = rabbit_env(d)
    # our own epmd, so that Erlang does not start a daemon outside our process groups
    processes["epmd"] = BASE.spawn("epmd", [epmd_binary() or "epmd", "-address", conf.HOST,
                                            "-port", str(conf.PORTS["epmd"])], d / "logs",
                                   env=env)
    BASE.wait_until("epmd", lambda: BASE.tcp_ok(conf.PORTS["epmd"]), 20)
    processes["rabbitmq"] = BASE.spawn("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"],
                                       d / "logs", env=env)


def uwsgi(name: str, port: int, app: list[str], d: Path, env_var: str, conf_dir: Path,
          extra: tuple[str, ...] = ()) -> dict:
    argv = [str(venv() / "bin" / "uwsgi"), "--http-socket", f"{conf.HOST}:{port}",
            "--master", "--processes", "1", "--lazy-apps", "--die-on-term", "--need-app",
            "--buffer-size", "65535", "--add-header", "Connection: close", *extra, *app]
    return BASE.spawn(name, argv, d / "logs", env=dict(os.environ, **{env_var: str(conf_dir)}))


def services_start(d: Path, dirs: dict[str, Path], processes: dict) -> None:
    """Every OpenStack service but Keystone (which `up` starts earlier)."""
    p, b = conf.PORTS, venv() / "bin"
    processes["placement"] = uwsgi("placement", p["placement"], [
        "--module", "placement.wsgi.api:application"], d, "OS_PLACEMENT_CONFIG_DIR",
        dirs["placement"])
    processes["neutron"] = uwsgi("neutron", p["neutron"], [
        "--module", "neutron.wsgi.api:application"], d, "OS_NEUTRON_CONFIG_DIR",
        dirs["neutron"])
    processes["glance"] = uwsgi("glance", p["glance"], [
        "--module", "glance.wsgi.api:application"], d, "OS_GLANCE_CONFIG_DIR", dirs["glance"],
        ("--enable-threads", "--http-auto-chunked", "--http-raw-body",
         "--chunked-input-limit", "20971520"))
    processes["nova-api"] = uwsgi("nova-api", p["nova"], [
        "--module", "nova.wsgi.osapi_compute:application"], d, "OS_NOVA_CONFIG_DIR",
        dirs["nova"])
    nova_conf = ["--config-file", str(dirs["nova"] / "nova.conf")]
    for name in ("nova-conductor", "nova-scheduler"):
        processes[name] = BASE.spawn(name, [str(b / name), *nova_conf], d / "logs")
    for i, host in enumerate(conf.COMPUTE_HOSTS, 1):
        processes[f"nova-compute-{i}"] = BASE.spawn(f"nova-compute-{i}", [
            str(b / "nova-compute"), *nova_conf, "--config-file",
            str(dirs["nova"] / f"{host}.conf")], d / "logs")
    processes["blazar-manager"] = BASE.spawn("blazar-manager", [
        str(b / "blazar-manager"), "--config-file", str(dirs["blazar"] / "blazar.conf")],
        d / "logs")
    processes["blazar-api"] = uwsgi("blazar-api", p["blazar"], [
        "--wsgi-file", str(dirs["blazar"] / "wsgi.py")], d, "OS_BLAZAR_CONFIG_DIR",
        dirs["blazar"])


def answers(url: str) -> bool:
    """The server at url answers HTTP at all (version documents are 200 or 300)."""
    try:
        status, _, _ = BASE.http("GET", url, timeout=3)
    except OSError:
        return False
    return status < 500


def checks(state: dict) -> dict[str, Any]:
    p, u = conf.PORTS, state["endpoints"]
    return {
        "mariadb": lambda: BASE.tcp_ok(p["mariadb"]),
        "epmd": lambda: BASE.tcp_ok(p["epmd"]),
        "rabbitmq": lambda: BASE.tcp_ok(p["rabbitmq"]),
        "keystone": lambda: BASE.http_ok(state["auth_url"]),
        "placement": lambda: answers(u["placement"]),
        "neutron": lambda: answers(u["network"]),
        "glance": lambda: answers(u["image"]),
        "nova-api": lambda: answers(u["compute"].rsplit("/", 1)[0]),
        "blazar-api": lambda: answers(u["reservation"].rsplit("/", 1)[0]),
    }


def health(state: dict) -> dict[str, str]:
    table, result = checks(state), {}
    for name, entry in state["processes"].items():
        if not BASE.is_ours(entry):
            result[name] = f"not running (pid {entry['pid']})"
        elif name in table and not table[name]():
            result[name] = "running but not answering"
        else:
            result[name] = "ok"
    return result


def wait_apis(state: dict, timeout: float = 180) -> None:
    for name, check in checks(state).items():
        BASE.wait_until(name, check, timeout, state["processes"][name]["log"])


def rss_mb(processes: dict) -> int:
    total = 0
    for entry in processes.values():
        for pid in BASE.group_members(entry["pgid"], entry["starttime"]):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total // 1024
