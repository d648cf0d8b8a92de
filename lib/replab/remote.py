"""Running commands and uploading files on the server over SSH (fabric).

Commands are argument lists, quoted with :func:`shlex.join`, never a shell string built from
user input. Uploads of secrets are written with mode 0600 from the start and renamed into
place, so a half-written or world-readable file never exists on the server.
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import socket
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import CloudError, ResourceTimeout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Host:
    """How to reach the server. ``key_filename`` None: the agent and default keys."""

    address: str
    user: str = "cc"  # Chameleon images' default user
    port: int = 22
    key_filename: str | None = None
    forward_agent: bool = False
    known_hosts: str | None = None  # None: accept the new server's key (it was just booted)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}"

    def ssh_command(self, *extra: str) -> list[str]:
        cmd = ["ssh", "-p", str(self.port)]
        if self.key_filename:
            cmd += ["-i", self.key_filename]
        return [*cmd, *extra, self.target]


@dataclass
class Result:
    argv: list[str]
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0


@dataclass
class Step:
    """One idempotent host-setup step's outcome: ``changed`` False means it did nothing."""

    name: str
    changed: bool
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def connect(host: Host, timeout: float = 30):
    """A fabric Connection to ``host`` (opened lazily by the first command)."""
    from fabric import Config, Connection

    kwargs: dict[str, Any] = {"timeout": timeout, "banner_timeout": timeout,
                              "auth_timeout": timeout}
    if host.key_filename:
        kwargs["key_filename"] = host.key_filename
        kwargs["look_for_keys"] = False
    config = Config(overrides={"load_ssh_configs": False,
                               "forward_agent": host.forward_agent})
    conn = Connection(host.address, user=host.user, port=host.port, connect_kwargs=kwargs,
                      forward_agent=host.forward_agent, config=config)
    if host.known_hosts is None:
        import paramiko

        conn.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    else:
        conn.client.load_host_keys(host.known_hosts)
    return conn


def run(conn, argv: Sequence[str], *, check: bool = True, env: Mapping[str, str] | None = None,
        sudo: bool = False, timeout: float | None = None, stdin: str | None = None) -> Result:
    """Run ``argv`` on the server. Raises CloudError (with stderr's tail) when ``check`` and
    the command fails, or when the server cannot be reached."""
    argv = [str(a) for a in argv]
    command = shlex.join(argv)
    if env:
        command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *argv])
    if sudo:
        command = "sudo -n " + command
    try:
        r = conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=(
            io.StringIO(stdin) if stdin is not None else False))
    except Exception as exc:
        raise CloudError(f"cannot run on {conn.user}@{conn.host}: {exc}",
                         f"ssh {argv[0]}") from exc
    result = Result(argv, r.exited, r.stdout, r.stderr)
    if check and not result.ok:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-12:])
        raise CloudError(f"{argv[0]} exited with {r.exited} on {conn.host}:\n{tail}",
                         f"ssh {' '.join(argv[:3])}")
    return result


def put_text(conn, text: str | bytes, remote_path: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``remote_path`` atomically with ``mode`` (0600: secrets)."""
    data = text.encode() if isinstance(text, str) else text
    path = PurePosixPath(remote_path)
    tmp = str(path.with_name(f".{path.name}.tmp"))
    run(conn, ["mkdir", "-p", str(path.parent)])
    sftp = conn.sftp()
    with sftp.open(tmp, "wb") as fh:
        sftp.chmod(tmp, mode)
        fh.write(data)
    sftp.chmod(tmp, mode)
    sftp.posix_rename(tmp, str(path))


def read_text(conn, remote_path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    sftp = conn.sftp()
    try:
        with sftp.open(remote_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def put_tree(conn, sources: Iterable[tuple[str | os.PathLike, str]], remote_dir: str,
             exclude: Iterable[str] = ("__pycache__", ".venv", "work", ".git")) -> int:
    """Upload local files/directories (``(local, name_in_archive)``) into ``remote_dir``
    as one tar stream; returns the bytes sent. Replaces the files it carries."""
    skip = set(exclude)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for local, arcname in sources:
            tar.add(str(local), arcname=arcname,
                    filter=lambda ti: None if set(Path(ti.name).parts) & skip else ti)
    data = buf.getvalue()
    archive = f"{remote_dir.rstrip('/')}.upload.tar.gz"
    put_text(conn, data, archive, mode=0o600)
    run(conn, ["mkdir", "-p", remote_dir])
    run(conn, ["tar", "-xzf", archive, "-C", remote_dir])
    run(conn, ["rm", "-f", archive])
    return len(data)


def wait_for_ssh(host: Host, *, timeout: float = 600, interval: float = 5,
                 progress: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until the server's SSH port answers with an SSH banner; returns the seconds
    waited. Raises ResourceTimeout naming the host and how long it waited."""
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            with socket.create_connection((host.address, host.port), timeout=5) as s:
                s.settimeout(5)
                if s.recv(4).startswith(b"SSH-"):
                    return clock() - start
        except OSError as exc:
            reason = str(exc)
        else:
            reason = "no SSH banner"
        waited = clock() - start
        if waited >= timeout:
            raise ResourceTimeout(f"{host.address}:{host.port} did not answer SSH within "
                                  f"{timeout:.0f}s (last: {reason})")
        if progress:
            progress(f"waiting for SSH on {host.address} ({waited:.0f}s, attempt {attempt})")
        sleep(interval)
