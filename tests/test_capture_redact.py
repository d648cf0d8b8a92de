"""The shared secret detector and redactor."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from replab.redact import (
    looks_secret,
    mask,
    redact,
    redact_argv,
    redact_credentials,
    redact_env,
    redact_params,
    redact_text,
    scrub_text,
    secret_file,
    secret_name,
    strip_url_credentials,
)

TOKENS = st.text(alphabet=string.ascii_letters + string.digits + "-_.~", min_size=8,
                 max_size=64)


@pytest.mark.parametrize("url, expected", [
    ("https://user:token@github.com/x/y.git", "https://github.com/x/y.git"),
    ("https://oauth2:glpat-abc123@gitlab.com/x", "https://gitlab.com/x"),
    ("https://ghp_abcdefghijklmnop@github.com/x", "https://github.com/x"),
    ("http://u:p%40ss@host:8080/path?q=1", "http://host:8080/path?q=1"),
    ("https://github.com/x/y.git", "https://github.com/x/y.git"),
    ("ssh://git@github.com/x/y.git", "ssh://git@github.com/x/y.git"),
    ("ssh://git:secret@github.com/x/y.git", "ssh://git@github.com/x/y.git"),
    ("git@github.com:x/y.git", "git@github.com:x/y.git"),
    ("/local/path", "/local/path"),
    ("", ""),
])
def test_strip_url_credentials(url, expected):
    assert strip_url_credentials(url) == expected


@given(user=TOKENS, token=TOKENS)
def test_stripped_url_never_holds_the_token(user, token):
    url = f"https://{user}:{token}@example.org/repo.git"
    out = strip_url_credentials(url)
    assert out == "https://example.org/repo.git"
    assert strip_url_credentials(out) == out


@given(st.text(alphabet=string.printable, min_size=1, max_size=200))
def test_mask_never_reveals_the_value(value):
    masked = mask(value)
    assert value not in masked
    assert masked.endswith("…") and len(masked) <= 5


def test_mask_shows_a_short_prefix():
    assert mask("ghp_abcdefghijklmnopqrstuvwxyz") == "ghp_…"
    assert mask("abc") == "…"
    assert mask(None) == "…"


@pytest.mark.parametrize("name, value", [
    ("HF_TOKEN", "x"), ("AWS_SECRET_ACCESS_KEY", "x"), ("DB_PASSWORD", "x"),
    ("MYSQL_PASSWD", "x"), ("GOOGLE_APPLICATION_CREDENTIALS", "x"), ("OS_AUTH_TOKEN", "x"),
    ("api_key", "x"),
    ("MLFLOW_TRACKING_URI", "https://bob:hunter22@mlflow.example.org"),
    ("NOTE", "token=abcdef0123456789abcdef"), ("X", "ghp_" + "a" * 36),
    ("X", "AKIAIOSFODNN7EXAMPLE"), ("X", "-----BEGIN RSA PRIVATE KEY-----\nMIIE..."),
    ("X", "hf_" + "b" * 34), ("X", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl"),
])
def test_looks_secret(name, value):
    assert looks_secret(name, value)


@pytest.mark.parametrize("name, value", [
    ("OMP_NUM_THREADS", "8"), ("CUDA_VISIBLE_DEVICES", "0,1"), ("PATH", "/usr/bin:/bin"),
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"), ("PWD", "/home/me/project"),
    ("LANG", "C.UTF-8"), ("XLA_FLAGS", "--xla_gpu_autotune_level=0"),
])
def test_not_secret(name, value):
    assert not looks_secret(name, value)
    assert redact(name, value) == value


def test_redact_keeps_what_is_safe():
    assert redact("HF_TOKEN", "hf_" + "b" * 34) == "hf_b…"
    assert redact("MLFLOW_TRACKING_URI", "https://bob:pw@h.example/x") == "https://h.example/x"
    assert redact("NCCL_DEBUG", "INFO token=abcdef0123456789") == "INFO token=abcd…"
    assert redact("HF_TOKEN", "") == ""
    assert redact("SECRET_NUMBER", 1234567890123) == "123…"


@given(secret=TOKENS)
def test_redact_env_hides_planted_secrets(secret):
    # A "secret" that is part of the surrounding literal text (e.g. "access_t" inside
    # "access_token=") cannot be told apart from it: such draws test nothing.
    assume(not any(secret in text for text in (
        "INFO access_token=", "https://user:", "@mlflow.example.org/")))
    env = {
        "HF_TOKEN": secret,
        "WANDB_API_KEY": secret,
        "MLFLOW_TRACKING_URI": f"https://user:{secret}@mlflow.example.org/",
        "NCCL_DEBUG": f"INFO access_token={secret}",
        "OMP_NUM_THREADS": "4",
    }
    out = redact_env(env)
    assert out["OMP_NUM_THREADS"] == "4"
    assert out["MLFLOW_TRACKING_URI"] == "https://mlflow.example.org/"
    for key in env:
        assert secret not in str(out[key]), key


def test_redact_text_finds_secrets_inside_text():
    text = "clone https://u:SECRETVALUE1@h/x then use ghp_" + "Z" * 36
    out = redact_text(text)
    assert "SECRETVALUE1" not in out and "Z" * 36 not in out
    assert "https://h/x" in out


def test_redact_argv():
    argv = ["--lr", "0.1", "--token", "s3cr3t-value-123", "--api-key=abcdefgh12345",
            "--data", "https://u:pw123456@h.example/d", "--keyboard-layout", "us",
            "--epochs", "3"]
    out = redact_argv(argv)
    assert out[:3] == ["--lr", "0.1", "--token"]
    assert out[3] == "s3cr…" and out[4] == "--api-key=abc…"
    assert out[6] == "https://h.example/d"
    assert out[-2:] == ["--epochs", "3"]
    joined = " ".join(out)
    assert "s3cr3t-value-123" not in joined and "abcdefgh12345" not in joined
    assert "pw123456" not in joined


def test_redact_params_nested():
    params = {"lr": 0.1, "api_token": "tok-1234567890", "nested": {"password": "pw-very-long"},
              "urls": ["https://a:b123456@h/x"], "client_secret": 12345678, "n_keys": 3}
    out = redact_params(params)
    assert out["lr"] == 0.1 and out["urls"] == ["https://h/x"]
    assert out["api_token"] == "tok…" and out["nested"]["password"] == "pw-…"
    assert out["client_secret"] == "12…"  # a secret name is masked whatever the value's type
    assert out["n_keys"] == 3


@pytest.mark.parametrize("name, secret", [
    ("HF_TOKEN", True), ("apiKey", True), ("OPENAI_API_KEY", True), ("clientSecret", True),
    ("BASIC_AUTH", True), ("DB_PASSWORD", True), ("ENCRYPTION_KEY_B64", True),
    ("tokenizer", False), ("max_tokens", False), ("KEY_DIM", False), ("OS_AUTH_URL", False),
    ("keyboard", False), ("author", False), ("num_keys", False),
])
def test_secret_names_spare_common_ml_words(name, secret):
    assert secret_name(name) is secret


def test_tokenizer_flag_stays_readable():
    assert redact_argv(["--tokenizer", "bert-base-uncased", "--max-tokens", "512"]) == [
        "--tokenizer", "bert-base-uncased", "--max-tokens", "512"]


@pytest.mark.parametrize("path, text, secret", [
    (".env", None, True), ("conf/.env.local", None, True), ("id_ed25519", None, True),
    ("clouds.yaml", None, True), ("CHI-1234-openrc.sh", None, True), ("api_token.txt", None, True),
    ("notes.txt", "mirror: https://me:hunter2hunter2@git.example/x", True),
    ("tokenizer.py", "token = tokenizer.encode(text)", False), ("auth.py", "pass", False),
    ("notes.txt", "lr 0.1 was best", False),
])
def test_secret_file(path, text, secret):
    assert secret_file(path, text) is secret


def test_redact_credentials_leaves_code_alone():
    code = "token = tokenizer.encode(x)\nurl = 'https://u:pw123456@h/x'\n"
    assert redact_credentials(code) == "token = tokenizer.encode(x)\nurl = 'https://h/x'\n"


def test_scrub_text_hides_known_secret_values():
    env = {"HF_TOKEN": "plainvalue123", "OMP_NUM_THREADS": "4", "SHORT_TOKEN": "abc"}
    out = scrub_text("loaded plainvalue123 with 4 threads, abc\nhttps://u:pw123456@h/x", env)
    assert "plainvalue123" not in out and "pw123456" not in out
    assert "4 threads, abc" in out and "https://h/x" in out
