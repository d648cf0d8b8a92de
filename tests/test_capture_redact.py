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
from replab.secretmask import (
    is_code,
    literal_value,
    mask_added_lines,
    mask_text,
    secret_key,
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


# -- secret-looking assignments (replab.secretmask) -------------------------------------------
PLANTED = "Planted-Pw-93xq"


@pytest.mark.parametrize("path, line", [
    ("train.py", f'password = "{PLANTED}"'),
    ("train.py", f"DB_PASSWORD='{PLANTED}'"),
    ("train.py", f'cfg = {{"user": "bob", "api_key": "{PLANTED}"}}'),
    ("train.py", f'os.environ["HF_TOKEN"] = "{PLANTED}"'),
    ("train.py", f'password: str = "{PLANTED}"'),
    ("train.py", f'db = connect(host="h", password="{PLANTED}")'),
    ("train.py", f'self.clientSecret = "{PLANTED}"'),
    ("train.py", f'cmd = "train --token {PLANTED} --epochs 3"'),
    ("nb.ipynb", f'    "    password = \\"{PLANTED}\\"\\n",'),
    ("config.yaml", f"password: {PLANTED}"),
    ("config.yaml", f"  db.password: '{PLANTED}'  # the staging one"),
    ("config.yaml", f"secret_key_base: {PLANTED}"),
    ("settings.json", f'{{"name": "x", "access_key": "{PLANTED}"}}'),
    ("app.ini", f"Password = {PLANTED} and more words"),
    ("pyproject.toml", f'token = "{PLANTED}"'),
    (".env", f"export AWS_SECRET_ACCESS_KEY={PLANTED}"),
    ("run.sh", f"python train.py --api-key={PLANTED}"),
    ("run.sh", f'python train.py --password "{PLANTED}" --lr 0.1'),
    ("notes.md", f"Authorization: Bearer {PLANTED}"),
    ("Makefile", f"CREDENTIALS ?= {PLANTED}"),
])
def test_secret_assignments_are_masked_in_place(path, line):
    masked, count = mask_text(line + "\n", path)
    assert PLANTED not in masked and count == 1, masked
    assert masked.endswith("\n") and "…" in masked
    # only the value changes: the key and what is around the value stay
    head = line[:line.index(PLANTED)].removesuffix("Bearer ")  # a value of two words
    assert masked.startswith(head), masked
    assert mask_text(masked, path) == (masked, 0)  # masking twice changes nothing more


@pytest.mark.parametrize("path, line", [
    ("train.py", 'password = os.environ["DB_PASSWORD"]'),
    ("train.py", 'token = os.getenv("HF_TOKEN")'),
    ("train.py", "token = None"),
    ("train.py", 'password = ""'),
    ("train.py", "password = pw  # a variable"),
    ("train.py", "password = getpass.getpass()"),
    ("train.py", 'password = f"{prefix}-x"'),
    ("train.py", 'if password == "hunter2":'),
    ("train.py", "token = tokenizer.encode(text)"),
    ("train.py", 'pad_token = "<pad>"; eos_token = "</s>"; cls = "[CLS]"'),
    ("train.py", 'token = "[MASK]"'),
    ("train.py", "max_tokens = 512"),
    ("train.py", "token_count = 5"),
    ("train.py", 'password_file = "/run/secrets/db"'),
    ("train.py", 'auth_url = "https://keystone.example.org/v3"'),
    ("train.py", 'sort_key = "val_loss"'),
    ("train.py", 'print("Password: " + user + "!")'),
    ("train.py", 'parser.add_argument("--token", default=None)'),
    ("train.py", 'url = "postgres://{user}:{password}@db"'),
    ("train.py", 'password = "{password}"'),
    ("train.py", 'password = "%(password)s"'),
    ("config.yaml", "password: ${DB_PASSWORD}"),
    ("config.yaml", "token: null"),
    ("config.yaml", "auth: true"),
    ("config.yaml", "password:"),
    ("config.yaml", "password: !vault db/pw"),
    ("config.yaml", "password: <your password here>"),
    ("config.yaml", 'password: "$(pass show db)"'),
    ("config.yaml", "tokenizer: bert-base-uncased"),
    (".env", "API_KEY="),
    ("run.sh", "python train.py --password $DB_PASSWORD"),
    ("run.sh", "python train.py --token --lr 0.1"),
    ("config.yaml", f"password: {PLANTED}  # replab: no-mask"),
    ("config.yaml", "password: h…"),
])
def test_non_values_are_left_alone(path, line):
    assert mask_text(line + "\n", path) == (line + "\n", 0)


@pytest.mark.parametrize("key, secret", [
    ("password", True), ("DB_PASSWORD", True), ("dbPassword", True), ("passwd", True),
    ("PASSPHRASE", True), ("client_secret", True), ("SECRETS", True), ("api-key", True),
    ("apiKey", True), ("APIKEY", True), ("access.key", True), ("private_key", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("ENCRYPTION_KEY_B64", True), ("credentials", True),
    ("creds", True), ("basic_auth", True), ("Authorization", True), ("HF_TOKEN", True),
    ("authToken", True), ("token", True),
    ("key", False), ("sort_key", False), ("primary_key", False), ("password_file", False),
    ("token_count", False), ("max_tokens", False), ("tokenizer", False), ("pad_token", False),
    ("eos_token", False), ("auth_url", False), ("author", False), ("secret_name", False),
])
def test_secret_key_rule(key, secret):
    assert secret_key(key) is secret


@given(value=st.text(alphabet=string.ascii_letters + string.digits + "!#%+-./=?@^_~", min_size=1,
                     max_size=40),
       key=st.sampled_from(["password", "API_KEY", "db.secret", "authToken"]),
       form=st.sampled_from(['{k} = "{v}"', "{k}='{v}'", '"{k}": "{v}",', "{k}: {v}",
                             "{k}={v}", "--{k} {v}"]))
def test_any_planted_value_is_masked(value, key, form):
    assume(literal_value(value, quoted=True) and literal_value(value, quoted=False))
    assume(value not in key and value.lower() not in {"none", "null", "true", "false"})
    if form.startswith("--"):
        assume(not value.startswith("-"))  # the next flag
    if form == "{k}={v}":
        assume(value[0] not in "=~>")  # ==, =~, => compare or map: not an assignment
    if "'" not in form and '"' not in form:
        assume(not value.startswith("#"))  # a bare value starting with # is a comment
    line = form.format(k=key, v=value)
    masked, count = mask_text(f"a = 1\n{line}\nb = 2\n", "config.yaml")
    assert count == 1 and masked.startswith("a = 1\n") and masked.endswith("\nb = 2\n")
    assert value not in masked.split("\n")[1] or len(value) < 2, masked


DIFF_HEAD = "diff --git a/{p} b/{p}\nindex 1111111..2222222 100644\n--- a/{p}\n+++ b/{p}\n"


def test_diff_masks_added_lines_only_and_keeps_the_headers():
    diff = (DIFF_HEAD.format(p="conf/password = x.yaml")
            + "@@ -1,3 +1,3 @@\n"
            + f" token: {PLANTED}-context\n"
            + f"-password: {PLANTED}-removed\n"
            + f"+password: {PLANTED}\n"
            + "++++ header-like added line, password: abcdefgh\n"
            + DIFF_HEAD.format(p="train.py")
            + "@@ -1 +1,2 @@\n lr = 0.1\n"
            + f'+API_KEY = "{PLANTED}"\n'
            + "+api_key = os.environ['API_KEY']\n")
    out = mask_added_lines(diff)
    assert out.lines == 3 and out.paths == ("conf/password = x.yaml", "train.py")
    lines = out.diff.split("\n")
    assert f" token: {PLANTED}-context" in lines and f"-password: {PLANTED}-removed" in lines
    assert "+password: Pla…" in lines and '+API_KEY = "Pla…"' in lines
    assert "++++ header-like added line, password: ab…" in lines
    assert "+++ b/conf/password = x.yaml" in lines and "+api_key = os.environ['API_KEY']" in lines
    assert mask_added_lines(out.diff).lines == 0
    keep = mask_added_lines(diff, keep={"train.py"})
    assert f'+API_KEY = "{PLANTED}"' in keep.diff and keep.paths == ("conf/password = x.yaml",)


def test_diff_of_quoted_and_blank_paths_tells_code_from_config():
    # git C-quotes unusual names and ends a name holding a blank with a tab
    diff = ('diff --git "a/t\\303\\244st.py" "b/t\\303\\244st.py"\n--- "a/t\\303\\244st.py"\n'
            '+++ "b/t\\303\\244st.py"\n@@ -0,0 +1 @@\n+password = pw\n'
            "diff --git a/my conf.env b/my conf.env\n--- a/my conf.env\t\n+++ b/my conf.env\t\n"
            "@@ -0,0 +1 @@\n+password = pw\n")
    out = mask_added_lines(diff)
    assert out.paths == ("my conf.env",) and "+password = pw\n" in out.diff
    assert out.diff.endswith("+password = …\n")
    assert mask_added_lines(diff, keep={"my conf.env"}).lines == 0
    assert is_code("täst.py") and not is_code("my conf.env")
