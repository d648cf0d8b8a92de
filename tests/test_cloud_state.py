"""replab.cloud.State: recording a resource again keeps what it knew of it."""

from __future__ import annotations

import json

from replab import cloud as rc


def test_recording_a_server_again_keeps_its_reservation_image_and_login(tmp_path):
    """2_provision records the server when it boots (reservation, image) and again after
    the SSH login (user, key); a later record of the same id that names only some fields
    keeps the others. Another id starts afresh (the old record goes to history)."""
    state = rc.State.load(tmp_path)
    state.record("server", id="s1", name="exp1-server", site="CHI@UC",
                 reservation_id="r1", image="CC-Ubuntu24.04-CUDA", user_id="u1")
    state.record("server", id="s1", name="exp1-server", site="CHI@UC", user="cc",
                 key_filename="/home/me/.ssh/id_ed25519")
    state.record("server", id="s1", name="exp1-server", site="CHI@UC", user_id="u1")
    saved = json.loads((tmp_path / "state.json").read_text())["server"]
    assert saved["reservation_id"] == "r1" and saved["image"] == "CC-Ubuntu24.04-CUDA"
    assert saved["user"] == "cc" and saved["key_filename"] == "/home/me/.ssh/id_ed25519"
    state.record("server", id="s1", name="exp1-server", site="CHI@UC", image="other")
    assert rc.State.load(tmp_path).get("server")["image"] == "other"  # given values win

    state.record("server", id="s2", name="exp1-server", site="CHI@UC", image="CC-Ubuntu24.04")
    fresh = rc.State.load(tmp_path).get("server")
    assert fresh["id"] == "s2" and "reservation_id" not in fresh and "user" not in fresh
