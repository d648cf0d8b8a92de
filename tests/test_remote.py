"""replab.remote over a real SSH server."""

import stat

import pytest

from replab import remote
from replab.errors import CloudError, ResourceTimeout

pytestmark = pytest.mark.services


@pytest.fixture
def conn(ssh_server):
    c = remote.connect(ssh_server)
    yield c
    c.close()


def test_run_quotes_arguments_and_reports_failures(conn, tmp_path):
    weird = tmp_path / "a dir; rm -rf nothing"
    r = remote.run(conn, ["mkdir", "-p", str(weird)])
    assert r.ok and weird.is_dir()  # one argument, not a shell command
    out = remote.run(conn, ["printf", "%s|", "x y", "$HOME", "`id`"])
    assert out.stdout == "x y|$HOME|`id`|"
    assert remote.run(conn, ["sh", "-c", "echo $FOO"], env={"FOO": "bar"}).stdout == "bar\n"
    with pytest.raises(CloudError, match="exited with 3") as err:
        remote.run(conn, ["sh", "-c", "echo broken >&2; exit 3"])
    assert "broken" in str(err.value)
    assert remote.run(conn, ["false"], check=False).exited == 1


def test_put_text_is_atomic_and_private(conn, tmp_path):
    target = tmp_path / "secrets" / "lab.env"
    remote.put_text(conn, "TOKEN=abc\n", str(target))
    assert target.read_text() == "TOKEN=abc\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    remote.put_text(conn, "TOKEN=def\n", str(target))
    assert target.read_text() == "TOKEN=def\n" and len(list(target.parent.iterdir())) == 1
    assert remote.read_text(conn, str(target)) == "TOKEN=def\n"
    assert remote.read_text(conn, str(tmp_path / "missing")) is None


def test_put_tree_uploads_directories(conn, tmp_path):
    src = tmp_path / "src"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "m.py").write_text("x = 1\n")
    (src / "pkg" / "__pycache__" / "m.pyc").write_text("junk")
    sent = remote.put_tree(conn, [(src / "pkg", "pkg")], str(tmp_path / "dest"))
    assert sent > 0 and (tmp_path / "dest" / "pkg" / "m.py").read_text() == "x = 1\n"
    assert not (tmp_path / "dest" / "pkg" / "__pycache__").exists()


def test_wait_for_ssh(ssh_server):
    now = [0.0]
    msgs = []

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s although SSH answered")

    # a server that answers: the first attempt returns, without waiting or a progress line
    assert remote.wait_for_ssh(ssh_server, timeout=10, progress=msgs.append,
                               clock=lambda: now[0], sleep=no_sleep) == 0.0
    assert msgs == []
    closed = remote.Host("127.0.0.1", port=1)
    with pytest.raises(ResourceTimeout, match="did not answer SSH within 30s"):
        remote.wait_for_ssh(closed, timeout=30, interval=10, progress=msgs.append,
                            clock=lambda: now[0],
                            sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert len(msgs) == 3 and "attempt 1" in msgs[0]
    assert now[0] == 30.0  # it gave up once the timeout had passed, not later
    # the real clock and sleep (the defaults) give up too
    with pytest.raises(ResourceTimeout, match="127.0.0.1:1 did not answer SSH"):
        remote.wait_for_ssh(closed, timeout=0.2, interval=0.1)


def test_unreachable_host_is_a_cloud_error():
    c = remote.connect(remote.Host("127.0.0.1", port=1, user="nobody"), timeout=3)
    with pytest.raises(CloudError, match="cannot run on nobody@127.0.0.1"):
        remote.run(c, ["true"])
