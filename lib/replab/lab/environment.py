"""The environment each local lab service gets: an allow-list, never the caller's whole one.

A user's shell holds whatever they exported (cloud keys, tokens of other projects); a
service's environment is readable in ``/proc/<pid>/environ`` and every Jupyter kernel
inherits Jupyter's. So each service starts from nothing and gets:

- from the caller, only :data:`COMMON` (``PATH``, ``HOME``, locale, ``TZ``, ``TMPDIR``, user
  names, proxies and CA bundles, ``PYTHONPATH``), the ``LC_*`` variables, and per service
  :data:`PASSED` (MLflow: ``MLFLOW_*`` settings and ``AWS_CA_BUNDLE``, never
  ``MLFLOW_TRACKING_*`` credentials; Jupyter: ``JUPYTER_*`` settings and the GPU/CUDA
  selection variables; PostgreSQL: nothing more);
- what replab sets: ``REPLAB_LAB_DIR`` (the lab's mark, see :mod:`.supervisor`) and
  ``REPLAB_LAB_SERVICE``; for MLflow the artifact store's keys (from the secrets store) and
  the database password; for Jupyter ``JUPYTER_TOKEN``, ``MLFLOW_TRACKING_URI``,
  ``MLFLOW_EXPERIMENT_NAME``, ``JUPYTER_RUNTIME_DIR``, ``REPLAB_WORKDIR`` and, only when
  the config enables them, ``HF_TOKEN`` (``lab.huggingface``) and ``GH_TOKEN``
  (``lab.github_cli``; from ``GH_TOKEN`` or else ``GITHUB_TOKEN`` in the secrets' lab.env).
"""

from __future__ import annotations

from collections.abc import Mapping

from .supervisor import MARK

COMMON = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
          "PYTHONPATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
          "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
PREFIXES = ("LC_",)
#: Per service: more names (a trailing ``*`` is a prefix) passed from the caller.
PASSED: dict[str, tuple[str, ...]] = {
    "postgres": (),
    "mlflow": ("MLFLOW_*", "AWS_CA_BUNDLE"),
    "jupyter": ("JUPYTER_*", "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "HIP_VISIBLE_DEVICES",
                "ROCR_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "HF_HOME", "XDG_CACHE_HOME"),
}
#: Never passed from the caller, whatever the lists above say: replab sets these itself
#: (or they are credentials the service must not hold).
NEVER = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
         "MLFLOW_TRACKING_TOKEN", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_EXPERIMENT_NAME",
         "JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_PASSWORD", "JUPYTER_RUNTIME_DIR",
         "PGPASSWORD")
NO_PROXY = ("127.0.0.1", "localhost")


def _allowed(name: str, key: str) -> bool:
    if key in NEVER:
        return False
    if key in COMMON or key.startswith(PREFIXES):
        return True
    for pattern in PASSED[name]:
        if key == pattern or (pattern.endswith("*") and key.startswith(pattern[:-1])):
            return True
    return False


def service_env(name: str, parent: Mapping[str, str], lab_dir: str,
                extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of service ``name`` (postgres, mlflow, jupyter): the allowed part of
    ``parent``, the lab's mark, loopback kept off any proxy, then ``extra`` (replab's own
    values, which win)."""
    if name not in PASSED:
        raise ValueError(f"unknown lab service {name!r}")
    env = {k: v for k, v in parent.items() if _allowed(name, k)}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    no_proxy = [x for x in (*NO_PROXY, parent.get("NO_PROXY") or parent.get("no_proxy")) if x]
    env["NO_PROXY"] = env["no_proxy"] = ",".join(dict.fromkeys(no_proxy))
    env[MARK] = lab_dir
    env["REPLAB_LAB_SERVICE"] = name
    if name == "mlflow":
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        # MLflow's job runner (GenAI evaluation jobs) is 8 more processes replab never uses.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if name == "jupyter":
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.update(extra or {})
    return env


def jupyter_secrets(lab_env: Mapping[str, str], *, huggingface: bool,
                    github_cli: bool) -> dict[str, str]:
    """The secrets Jupyter (and so every kernel) gets from the secrets' lab.env: the token,
    and the Hugging Face / GitHub tokens only when enabled. GitHub's CLI reads ``GH_TOKEN``;
    a ``GITHUB_TOKEN`` is passed under that name when there is no ``GH_TOKEN``."""
    out = {"JUPYTER_TOKEN": lab_env.get("JUPYTER_TOKEN", "")}
    if huggingface and lab_env.get("HF_TOKEN"):
        out["HF_TOKEN"] = lab_env["HF_TOKEN"]
    gh = lab_env.get("GH_TOKEN") or lab_env.get("GITHUB_TOKEN")
    if github_cli and gh:
        out["GH_TOKEN"] = gh
    return out


__all__ = ["COMMON", "NEVER", "PASSED", "jupyter_secrets", "service_env"]
