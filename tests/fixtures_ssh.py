"""A real SSH server on loopback (OpenSSH's sshd), for replab.remote and host setup."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from replab.remote import Host

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory):
    """sshd on 127.0.0.1 (its own host key and config), accepting one generated key for the
    current user. Yields a replab.remote.Host."""
    if not os.path.exists(SSHD):
        if os.environ.get("REPLAB_SKIP_SERVICES") == "1":
            pytest.skip("REPLAB_SKIP_SERVICES=1")
        pytest.fail("sshd is missing: run `bash tests/services/install.sh`")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o755)
    for name, kind in (("host_key", "ed25519"), ("client_key", "ed25519")):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                    text=True).stdout.strip()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
        f"PidFile {d}/sshd.pid\nAllowAgentForwarding yes\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited: {(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"sshd did not answer: {(d / 'sshd.log').read_text()}")
    yield Host("127.0.0.1", user=user, port=port, key_filename=str(d / "client_key"))
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)
    log.close()
