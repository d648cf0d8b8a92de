"""The lab's own secrets store: tokens for the lab's tools come from the caller's environment."""

from replab.credentials import ensure_lab_secrets
from replab.secretsstore import SecretsStore


def test_github_token_is_taken_when_gh_token_is_unset(tmp_path):
    store = SecretsStore(tmp_path)
    out = ensure_lab_secrets(store, env={"GITHUB_TOKEN": "ghp_fromactions"})
    assert "GH_TOKEN" in out.detail
    assert store.credentials()["lab"]["gh_token"] == "ghp_fromactions"


def test_gh_token_wins_over_github_token(tmp_path):
    store = SecretsStore(tmp_path)
    ensure_lab_secrets(store, env={"GH_TOKEN": "ghp_gh", "GITHUB_TOKEN": "ghp_actions"})
    assert store.credentials()["lab"]["gh_token"] == "ghp_gh"


def test_no_token_in_the_environment_stores_none(tmp_path):
    store = SecretsStore(tmp_path)
    ensure_lab_secrets(store, env={})
    assert "gh_token" not in store.credentials()["lab"]
