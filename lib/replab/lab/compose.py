"""The lab's compose spec, built as data from the experiment config, and its ``.env``.

:func:`build_compose` is pure (config in, a compose-spec mapping out, no I/O; golden-file
tested); :func:`write_compose` writes ``compose.yaml`` and ``.env`` into a directory.

Services:

- **mlflow**: our tracking-server image (``docker/mlflow``). Its backend store is a database on
  the node's disk: a sqlite file in ``<lab>/mlflow/`` (a bind mount, so the backup job reads it
  from the host), or PostgreSQL (``lab.mlflow_backend: postgresql``) in the named volume
  ``postgres``. Artifacts go to the ``-artifacts`` bucket through the object store's S3 API,
  with the EC2 credential, and the server proxies them (``--serve-artifacts``): clients need
  the tracking URI only, never S3 keys.
- **jupyter**: the framework image for (frameworks, GPU vendor) (:func:`image_for`), with the
  user's repository at ``/home/jovyan/work``, the data bucket's rclone mount at
  ``/home/jovyan/data`` and ``MLFLOW_TRACKING_URI=http://mlflow:5000``. The data mount is
  reached through its parent: the node's ``<root>/mnt`` (holding the mountpoint ``data``) is
  bound at ``/home/jovyan/mnt`` with ``rslave`` propagation, and the image's
  ``/home/jovyan/data`` is a symlink to ``mnt/data``. Binding the mountpoint itself would pin
  the FUSE mount the container saw at start: after rclone restarts (systemd does on failure)
  the container would keep the dead mount ("Transport endpoint is not connected") until
  restarted. Through the parent, unmounts and new mounts on the host show up in the running
  container (tests/test_lab_docker.py remounts and checks).
- **postgres** (only with ``mlflow_backend: postgresql``): pinned image, ``pg_isready``
  healthcheck; mlflow starts once it is healthy, jupyter once mlflow is.

Security:

- **Nothing listens on a public address.** Every published port is bound to 127.0.0.1 on the
  node (``127.0.0.1:8888`` Jupyter, ``127.0.0.1:5000`` MLflow, and with the PostgreSQL
  backend ``127.0.0.1:5432``, which only the node's own backup timer and restore use:
  ``pg_dump`` / ``pg_restore`` run on the host, password-protected). Users reach the lab
  through an SSH tunnel (``ssh -L 8888:127.0.0.1:8888 -L 5000:127.0.0.1:5000
  cc@<floating ip>``), so the security group needs only port 22. Docker's
  own iptables rules bypass host firewalls (ufw) for published ports, which is why binding to
  loopback, not a firewall rule, is the control.
- **Jupyter always requires its token**: ``JUPYTER_TOKEN`` comes from ``.env`` and compose
  refuses to start without it (``${JUPYTER_TOKEN:?...}``): an empty token would disable
  authentication.
- **Secrets never appear in compose.yaml** and never on a command line: the file references
  ``${VAR}``, and the values sit in ``.env`` (mode 0600) next to it, which compose reads for
  interpolation. Each service receives only the secrets it uses: the S3 keys go to mlflow
  alone, ``HF_TOKEN`` / ``GH_TOKEN`` to jupyter alone and only when enabled in the config
  (GitHub's CLI reads ``GH_TOKEN``; a lab.env holding ``GITHUB_TOKEN`` instead is passed
  under that name).
- **No service gains privileges**: every service runs with ``no-new-privileges:true`` (setuid
  programs cannot raise a process's privileges) and Docker's default seccomp profile; the
  one exception is the ROCm images, which run with ``seccomp=unconfined`` as AMD's ROCm
  documentation asks (a host with an AMD GPU running the small ``cpu`` image gets neither
  the GPU devices nor the exception).
- MLflow has no login of its own here: it is reachable only through the tunnel (or from the
  jupyter container). Its allowed ``Host`` headers are the service name and loopback, which
  also blocks DNS-rebinding attacks from a browser.
- Image tags are pinned everywhere (bases in :data:`VARIANTS`, :data:`POSTGRES_IMAGE`); our
  images are built on the node from ``docker/`` and tagged with replab's version.

GPU access: NVIDIA through ``deploy.resources.reservations.devices`` (driver ``nvidia``, all
GPUs; needs the NVIDIA container toolkit on the node). AMD (ROCm images only) as ROCm's
documentation advises: ``/dev/kfd`` and ``/dev/dri``, ``seccomp=unconfined``, and the groups
owning those devices.
The group ids differ between hosts (``render`` is a dynamic system group), so ``group_add``
reads ``REPLAB_VIDEO_GID`` / ``REPLAB_RENDER_GID`` from ``.env``, which the launcher sets
from ``getent group video render`` on the node; without them the names ``video`` /
``render`` are used, which only work when the image's groups have the host's ids.

``HF_HOME`` is ``/home/jovyan/.cache/huggingface``, bound to ``<root>/cache/huggingface`` on
the node's disk, not to the data bucket: the Hugging Face cache relies on symlinks and file
locks, which an S3-backed rclone mount does not provide, and it is re-downloadable, so it
need not outlive the lease. It does survive container restarts and image rebuilds.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .. import __version__
from ..errors import ConfigError
from ..serverlayout import HostPaths  # where things live on the node (re-exported)

log = logging.getLogger(__name__)

IMAGE_TAG = __version__
COMPOSE_FILE = "compose.yaml"
ENV_FILE = ".env"
BIND_ADDRESS = "127.0.0.1"
JUPYTER_PORT = 8888
MLFLOW_PORT = 5000
POSTGRES_IMAGE = "postgres:16.9-bookworm"
POSTGRES_PORT = 5432
MLFLOW_BASE = "python:3.11.13-slim-bookworm"
JUPYTER_DOCKERFILE = "docker/jupyter/Dockerfile"
MLFLOW_DOCKERFILE = "docker/mlflow/Dockerfile"
LIGHTNING = "lightning==2.5.5"
TENSORFLOW_CPU = "tensorflow==2.20.0"  # beside PyTorch in one image: TensorFlow on CPU

NO_NEW_PRIVILEGES = "no-new-privileges:true"  # on every service
HOME = "/home/jovyan"  # the Jupyter user's home in every image
WORK_DIR = f"{HOME}/work"  # the user's repository
MOUNTS_DIR = f"{HOME}/mnt"  # the node's mount directory (rslave): mnt/data is the data bucket
DATA_DIR = f"{HOME}/data"  # a symlink to mnt/data in every image
HF_HOME = f"{HOME}/.cache/huggingface"
MLFLOW_DATA = "/mlflow"  # the sqlite database's directory in the mlflow container
MLFLOW_URI = f"http://mlflow:{MLFLOW_PORT}"

#: Secrets compose.yaml references (values come from the secrets store's lab.env).
SECRET_ENV = ("JUPYTER_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "POSTGRES_PASSWORD", "HF_TOKEN", "GH_TOKEN")
#: Other variables compose.yaml references; the launcher may set them in ``.env``.
HOST_ENV = {
    "AWS_DEFAULT_REGION": "us-east-1",
    "MLFLOW_S3_ENDPOINT_URL": "",
    "REPLAB_IMAGE_DIGEST": "",  # the jupyter image's id, once built (the capture reads it)
    "REPLAB_VIDEO_GID": "",  # AMD: gids of the groups owning /dev/kfd and /dev/dri/*
    "REPLAB_RENDER_GID": "",
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(?::?[-?])[^}]*)?\}")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:/@+=,~%-]*$")


# -- images ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One Jupyter image variant: ``docker/jupyter/Dockerfile`` built ``FROM base`` with
    ``extra_pip`` installed on top of the common set (``docker/jupyter/requirements.txt``).

    ``versions`` records what the base provides (from its tag and upstream's notes), for
    docs/compatibility.md; ``gpu`` is the GPU stack inside the base (``cuda``, ``rocm`` or
    ``none``)."""

    name: str
    base: str
    extra_pip: tuple[str, ...] = ()
    gpu: str = "none"
    versions: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    @property
    def build_args(self) -> dict[str, str]:
        return {"BASE": self.base, "VARIANT": self.name, "EXTRA_PIP": " ".join(self.extra_pip)}


_PYTORCH_CU12 = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
_PYTORCH_CU11 = "pytorch/pytorch:2.7.1-cuda11.8-cudnn9-runtime"
_PYTORCH_ROCM = "rocm/pytorch:rocm6.4.1_ubuntu24.04_py3.12_pytorch_release_2.6.0"
_V_PT12 = {"python": "3.11", "cuda": "12.8", "cudnn": "9", "torch": "2.8.0"}
_V_PT11 = {"python": "3.11", "cuda": "11.8", "cudnn": "9", "torch": "2.7.1"}
_V_PTROCM = {"python": "3.12", "rocm": "6.4.1", "torch": "2.6.0", "os": "Ubuntu 24.04"}
_TF_ON_CPU = "TensorFlow is the CPU build beside PyTorch; choose tensorflow alone for its GPU"

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("cpu", "python:3.11.13-slim-bookworm",
            versions={"python": "3.11.13", "os": "Debian 12"},
            note="scikit-learn / data science; no GPU stack"),
    Variant("pytorch", _PYTORCH_CU12, (LIGHTNING,), "cuda", _V_PT12,
            "NVIDIA GPUs, and CPU-only machines (the CUDA runtime is unused there)"),
    Variant("tensorflow", "tensorflow/tensorflow:2.20.0-gpu", (), "cuda",
            {"python": "3.11", "cuda": "12.5", "cudnn": "9.3", "tensorflow": "2.20.0"},
            "NVIDIA GPUs, and CPU-only machines"),
    Variant("pytorch-tensorflow", _PYTORCH_CU12, (LIGHTNING, TENSORFLOW_CPU), "cuda",
            {**_V_PT12, "tensorflow": "2.20.0 (CPU)"}, _TF_ON_CPU),
    Variant("pytorch-cu11", _PYTORCH_CU11, (LIGHTNING,), "cuda", _V_PT11,
            "NVIDIA hosts whose driver is CUDA 11 only (cuda_major: 11)"),
    Variant("tensorflow-cu11", "tensorflow/tensorflow:2.14.0-gpu", (), "cuda",
            {"python": "3.11", "cuda": "11.8", "cudnn": "8.6", "tensorflow": "2.14.0"},
            "NVIDIA hosts whose driver is CUDA 11 only (cuda_major: 11)"),
    Variant("pytorch-tensorflow-cu11", _PYTORCH_CU11, (LIGHTNING, TENSORFLOW_CPU), "cuda",
            {**_V_PT11, "tensorflow": "2.20.0 (CPU)"}, _TF_ON_CPU),
    Variant("rocm-pytorch", _PYTORCH_ROCM, (LIGHTNING,), "rocm", _V_PTROCM, "AMD GPUs"),
    Variant("rocm-tensorflow", "rocm/tensorflow:rocm6.4.1-py3.12-tf2.18-dev", (), "rocm",
            {"python": "3.12", "rocm": "6.4.1", "tensorflow": "2.18.1", "os": "Ubuntu 24.04"},
            "AMD GPUs"),
    Variant("rocm-pytorch-tensorflow", _PYTORCH_ROCM, (LIGHTNING, TENSORFLOW_CPU), "rocm",
            {**_V_PTROCM, "tensorflow": "2.20.0 (CPU)"}, _TF_ON_CPU),
)}


@dataclass(frozen=True)
class Image:
    """An image of the lab: its name with tag, the Dockerfile (relative to the repository
    root, the build context) and the build arguments."""

    name: str
    dockerfile: str
    build_args: Mapping[str, str]
    variant: str

    def build_argv(self, context: str = ".") -> list[str]:
        """``docker build`` arguments (after ``docker``) that build this image."""
        argv = ["build", "--tag", self.name, "--file",
                str(PurePosixPath(context) / self.dockerfile)]
        for key, value in self.build_args.items():
            argv += ["--build-arg", f"{key}={value}"]
        return [*argv, context]


def variant_name(frameworks: Iterable[str], gpu_vendor: str | None,
                 cuda_major: int | None = None) -> str:
    """The Jupyter image variant for a framework set and GPU vendor.

    PyTorch or Lightning selects a PyTorch image (Lightning is in every one), TensorFlow a
    TensorFlow image, both a PyTorch image with TensorFlow's CPU build; scikit-learn alone the
    small ``cpu`` image (scikit-learn is in every image). AMD gets the ROCm images; NVIDIA and
    no GPU the CUDA images (they run on CPUs too, so a run replays in the same image with or
    without a GPU); ``cuda_major`` 11 the CUDA 11.8 ones (13 uses the CUDA 12 images: the
    driver runs them). Raises ConfigError for an unknown framework or vendor.
    """
    names = set(frameworks)
    unknown = names - {"pytorch", "lightning", "tensorflow", "sklearn"}
    if unknown or not names:
        raise ConfigError([("frameworks", f"{sorted(unknown) or 'none'}: not a framework "
                                          "the lab images provide")])
    vendor = gpu_vendor or "none"
    if vendor not in ("nvidia", "amd", "none"):
        raise ConfigError([("gpu_vendor", f"{vendor!r} has no lab image; allowed: nvidia, "
                                          "amd, none")])
    torch = bool(names & {"pytorch", "lightning"})
    tf = "tensorflow" in names
    if not (torch or tf):
        return "cpu"
    stem = "pytorch-tensorflow" if torch and tf else ("pytorch" if torch else "tensorflow")
    if vendor == "amd":
        return f"rocm-{stem}"
    if vendor == "nvidia" and cuda_major == 11:
        return f"{stem}-cu11"
    return stem


def jupyter_image(variant: str, tag: str = IMAGE_TAG) -> Image:
    """The Jupyter image of ``variant`` (a key of :data:`VARIANTS`)."""
    v = VARIANTS[variant]
    return Image(f"replab/jupyter-{v.name}:{tag}", JUPYTER_DOCKERFILE, v.build_args, v.name)


def image_for(cfg, tag: str = IMAGE_TAG) -> Image:
    """The Jupyter image for the config's frameworks, GPU vendor and CUDA major."""
    return jupyter_image(variant_name(cfg.frameworks, cfg.gpu_vendor, cfg.cuda_major), tag)


def mlflow_image(tag: str = IMAGE_TAG) -> Image:
    """Our MLflow tracking-server image."""
    return Image(f"replab/mlflow:{tag}", MLFLOW_DOCKERFILE, {"BASE": MLFLOW_BASE}, "mlflow")


# -- the spec ------------------------------------------------------------------------------
def _allowed_hosts() -> str:
    hosts = ["mlflow", "localhost", "127.0.0.1"]
    return ",".join(h for name in hosts for h in (name, f"{name}:*"))


def _python_health(url: str) -> dict[str, Any]:
    probe = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=5)"
    return {"test": ["CMD", "python3", "-c", probe], "interval": "5s", "timeout": "5s",
            "retries": 24, "start_period": "30s"}


def _mlflow_service(cfg, paths: HostPaths, tag: str, source: str) -> dict[str, Any]:
    image = mlflow_image(tag)
    postgres = cfg.lab.mlflow_backend == "postgresql"
    if postgres:
        backend = "postgresql+psycopg://mlflow:${POSTGRES_PASSWORD}@postgres:5432/mlflow"
    else:
        backend = f"sqlite:///{MLFLOW_DATA}/mlflow.db"
    service: dict[str, Any] = {
        "image": image.name,
        "build": {"context": source, "dockerfile": image.dockerfile,
                  "args": dict(image.build_args)},
        "command": [
            "mlflow", "server", "--host", "0.0.0.0", "--port", str(MLFLOW_PORT),
            "--workers", "2" if postgres else "1",  # sqlite: one writer
            "--serve-artifacts", "--artifacts-destination", f"s3://{cfg.buckets.artifacts}/",
            "--allowed-hosts", _allowed_hosts(),
        ],
        "environment": {
            # in the environment, not on the command line: it holds PostgreSQL's password
            "MLFLOW_BACKEND_STORE_URI": backend,
            "MLFLOW_S3_ENDPOINT_URL": "${MLFLOW_S3_ENDPOINT_URL:?set in .env}",
            "AWS_ACCESS_KEY_ID": "${AWS_ACCESS_KEY_ID:?set in .env}",
            "AWS_SECRET_ACCESS_KEY": "${AWS_SECRET_ACCESS_KEY:?set in .env}",
            "AWS_DEFAULT_REGION": "${AWS_DEFAULT_REGION:-us-east-1}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # MLflow's job runner (GenAI evaluation jobs, 7 huey workers) is unused here
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
    }
    if postgres:
        service["depends_on"] = {"postgres": {"condition": "service_healthy"}}
    else:
        service["volumes"] = [{"type": "bind", "source": paths.mlflow_dir,
                               "target": MLFLOW_DATA}]
    service.update({
        "ports": [f"{BIND_ADDRESS}:{MLFLOW_PORT}:{MLFLOW_PORT}"],
        "healthcheck": _python_health(f"http://127.0.0.1:{MLFLOW_PORT}/health"),
        "security_opt": [NO_NEW_PRIVILEGES],
        "restart": "unless-stopped",
    })
    return service


def _postgres_service() -> dict[str, Any]:
    return {
        "image": POSTGRES_IMAGE,
        "environment": {
            "POSTGRES_USER": "mlflow",
            "POSTGRES_DB": "mlflow",
            "POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:?set in .env}",
        },
        "volumes": [{"type": "volume", "source": "postgres",
                     "target": "/var/lib/postgresql/data"}],
        # the server's backup timer and restore (pg_dump / pg_restore on the host) reach it
        # here; loopback only, like every published port
        "ports": [f"{BIND_ADDRESS}:{POSTGRES_PORT}:{POSTGRES_PORT}"],
        "healthcheck": {"test": ["CMD", "pg_isready", "-U", "mlflow", "-d", "mlflow"],
                        "interval": "5s", "timeout": "5s", "retries": 20,
                        "start_period": "10s"},
        # the entrypoint drops from root to the postgres user (gosu): dropping needs no
        # new privileges
        "security_opt": [NO_NEW_PRIVILEGES],
        "restart": "unless-stopped",
    }


def _jupyter_service(cfg, paths: HostPaths, tag: str, source: str) -> dict[str, Any]:
    image = image_for(cfg, tag)
    env: dict[str, str] = {
        "JUPYTER_TOKEN": "${JUPYTER_TOKEN:?set in .env: Jupyter must not run without a token}",
        "MLFLOW_TRACKING_URI": MLFLOW_URI,
        "MLFLOW_EXPERIMENT_NAME": cfg.experiment,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "REPLAB_IMAGE": image.name,
        "REPLAB_IMAGE_DIGEST": "${REPLAB_IMAGE_DIGEST:-}",
        "HF_HOME": HF_HOME,
    }
    if cfg.lab.huggingface:
        env["HF_TOKEN"] = "${HF_TOKEN:-}"
    if cfg.lab.github_cli:
        env["GH_TOKEN"] = "${GH_TOKEN:-}"
    service: dict[str, Any] = {
        "image": image.name,
        "build": {"context": source, "dockerfile": image.dockerfile,
                  "args": dict(image.build_args)},
        "environment": env,
        "ports": [f"{BIND_ADDRESS}:{JUPYTER_PORT}:{JUPYTER_PORT}"],
        "volumes": [
            {"type": "bind", "source": paths.repo, "target": WORK_DIR},
            {"type": "bind", "source": paths.mounts, "target": MOUNTS_DIR,
             "bind": {"propagation": "rslave"}},
            {"type": "bind", "source": paths.hf_home, "target": HF_HOME},
        ],
        "working_dir": WORK_DIR,
        "depends_on": {"mlflow": {"condition": "service_healthy"}},
        "healthcheck": _python_health(f"http://127.0.0.1:{JUPYTER_PORT}/api"),
        "init": True,  # reaps the kernels' children
        "shm_size": "8gb",  # PyTorch DataLoader workers share batches through /dev/shm
        "restart": "unless-stopped",
    }
    service["security_opt"] = [NO_NEW_PRIVILEGES]
    if cfg.gpu_vendor == "nvidia":
        service["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}}
    elif cfg.gpu_vendor == "amd" and VARIANTS[image.variant].gpu == "rocm":
        service["devices"] = ["/dev/kfd", "/dev/dri"]
        service["group_add"] = ["${REPLAB_VIDEO_GID:-video}", "${REPLAB_RENDER_GID:-render}"]
        service["security_opt"].append("seccomp=unconfined")  # ROCm's documented setting
    return service


def build_compose(cfg, *, image_tag: str = IMAGE_TAG,
                  host_paths: HostPaths | None = None) -> dict[str, Any]:
    """The lab's compose spec (a plain mapping in compose-spec form) for ``cfg``.

    Pure: reads nothing, writes nothing. Secrets appear only as ``${VAR}`` references,
    resolved from ``.env`` by compose. ``host_paths`` defaults to
    ``HostPaths.for_config(cfg)``. Raises ConfigError when the config's frameworks or GPU
    vendor have no image.
    """
    paths = host_paths or HostPaths.for_config(cfg)
    services: dict[str, Any] = {}
    if cfg.lab.mlflow_backend == "postgresql":
        services["postgres"] = _postgres_service()
    services["mlflow"] = _mlflow_service(cfg, paths, image_tag, paths.source)
    services["jupyter"] = _jupyter_service(cfg, paths, image_tag, paths.source)
    spec: dict[str, Any] = {"name": cfg.names["lab"], "services": services}
    if "postgres" in services:
        spec["volumes"] = {"postgres": {}}
    return spec


def variables(spec: Any) -> set[str]:
    """Every variable that ``spec`` references as ``${VAR...}``."""
    if isinstance(spec, str):
        return set(_VAR.findall(spec))
    items = spec.values() if isinstance(spec, Mapping) else (
        spec if isinstance(spec, list) else ())
    return set().union(*map(variables, items))


def render_compose(spec: Mapping[str, Any]) -> str:
    """compose.yaml's text for ``spec``: a header, then the spec in its given key order."""
    header = ("# The replab lab, generated from the experiment config by "
              "replab.lab.compose; do not edit.\n"
              "# Secrets are ${VAR} references resolved from .env (mode 0600) beside this "
              "file.\n"
              "# Ports listen on 127.0.0.1 only: reach them through an SSH tunnel.\n")
    return header + yaml.safe_dump(dict(spec), sort_keys=False, default_flow_style=False,
                                   width=100)


# -- .env ----------------------------------------------------------------------------------
def postgres_password(env: Mapping[str, str]) -> str:
    """PostgreSQL's password: ``POSTGRES_PASSWORD`` from lab.env, else one derived from the
    MLflow password (an HMAC, so it is stable across launches without being stored twice).
    Raises ConfigError when neither is there."""
    if env.get("POSTGRES_PASSWORD"):
        return env["POSTGRES_PASSWORD"]
    seed = env.get("MLFLOW_TRACKING_PASSWORD")
    if not seed:
        raise ConfigError("PostgreSQL needs a password: lab.env has neither POSTGRES_PASSWORD "
                          "nor MLFLOW_TRACKING_PASSWORD; re-run 1_create_credentials")
    return hmac.new(seed.encode(), b"replab-postgres", hashlib.sha256).hexdigest()


def env_values(cfg, env: Mapping[str, str], host_env: Mapping[str, str] | None = None,
               spec: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The ``.env`` mapping: every variable ``spec`` references, from ``host_env``, then
    ``env`` (the secrets store's lab.env), then defaults (:data:`HOST_ENV`, the config's S3
    endpoint). Raises ConfigError when a required secret is missing."""
    spec = build_compose(cfg) if spec is None else spec
    wanted = variables(spec)
    source = {**HOST_ENV, **{k: v for k, v in env.items() if v}, **(host_env or {})}
    if not source.get("GH_TOKEN") and source.get("GITHUB_TOKEN"):
        source["GH_TOKEN"] = source["GITHUB_TOKEN"]  # GitHub's CLI reads GH_TOKEN
    if not source.get("MLFLOW_S3_ENDPOINT_URL") and cfg.s3_endpoint:
        source["MLFLOW_S3_ENDPOINT_URL"] = cfg.s3_endpoint
    if "POSTGRES_PASSWORD" in wanted:
        source["POSTGRES_PASSWORD"] = postgres_password(source)
    missing = [k for k in ("JUPYTER_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                           "MLFLOW_S3_ENDPOINT_URL")
               if k in wanted and not source.get(k)]
    if missing:
        raise ConfigError(f"the lab's environment lacks {', '.join(missing)}: run "
                          "1_create_credentials (it writes secrets/lab.env)")
    for key, flag in (("HF_TOKEN", cfg.lab.huggingface), ("GH_TOKEN", cfg.lab.github_cli)):
        if flag and not source.get(key):
            log.warning("lab.%s is on but lab.env has no %s: the lab starts without it",
                        "huggingface" if key == "HF_TOKEN" else "github_cli", key)
    return {k: source.get(k, "") for k in sorted(wanted)}


def render_env(values: Mapping[str, str]) -> str:
    """``.env``'s text. Raises ConfigError for a value compose could misread (quotes, ``$``,
    spaces, line breaks): the value is never shown, only its name."""
    lines = ["# replab lab environment for compose.yaml: secrets. Mode 0600; never commit, "
             "never share."]
    for key, value in values.items():
        if not _SAFE_VALUE.match(value):
            raise ConfigError([(key, "holds characters compose's .env cannot carry "
                                     "verbatim (quotes, '$', spaces, '#' or line breaks)")])
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def write_compose(cfg, directory: str | os.PathLike, *, env: Mapping[str, str] | None = None,
                  host_env: Mapping[str, str] | None = None, image_tag: str = IMAGE_TAG,
                  host_paths: HostPaths | None = None) -> tuple[Path, Path]:
    """Write ``compose.yaml`` (0644) and ``.env`` (0600) into ``directory``; return both paths.

    ``env`` defaults to the secrets store's ``lab.env`` (``<workdir>/secrets``); ``host_env``
    adds what the launcher learns on the node (``REPLAB_IMAGE_DIGEST``, ``REPLAB_*_GID``).
    Raises ConfigError when a required secret is missing or unusable.
    """
    if env is None:
        from ..secretsstore import SecretsStore

        env = SecretsStore(cfg.workdir).lab_env()
    spec = build_compose(cfg, image_tag=image_tag, host_paths=host_paths)
    values = env_values(cfg, env, host_env, spec)
    target = Path(directory).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    compose_path, env_path = target / COMPOSE_FILE, target / ENV_FILE
    _write(env_path, render_env(values), 0o600)
    _write(compose_path, render_compose(spec), 0o644)
    log.info("wrote %s and %s (project %s, image %s)", compose_path, env_path,
             spec["name"], spec["services"]["jupyter"]["image"])
    return compose_path, env_path


__all__ = [
    "BIND_ADDRESS", "COMPOSE_FILE", "ENV_FILE", "HOST_ENV", "HostPaths", "IMAGE_TAG", "Image",
    "JUPYTER_PORT", "MLFLOW_PORT", "NO_NEW_PRIVILEGES", "POSTGRES_IMAGE", "SECRET_ENV",
    "VARIANTS", "Variant",
    "build_compose", "env_values", "image_for", "jupyter_image", "mlflow_image",
    "postgres_password", "render_compose", "render_env", "variables", "variant_name",
    "write_compose",
]
