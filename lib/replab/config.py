"""The experiment config: typed, validated as a whole, frozen.

Pipeline (as jupytext's config module): ``normalize`` raw input (a YAML mapping or notebook
parameters) -> ``validate`` collecting every problem -> a frozen :class:`Config`. Bad input
raises :class:`~replab.errors.ConfigError` naming each field, the value and what is allowed.
Each field's rules and parser are in :mod:`replab.configfields`; this module runs them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import sites
from .configfields import (
    FIELD_HINTS,
    Buckets,
    Endpoints,
    LabOptions,
    parse_buckets,
    parse_cuda,
    parse_endpoints,
    parse_frameworks,
    parse_image,
    parse_lab,
    parse_lease,
    parse_machine,
    parse_storage_site,
    repository_ok,
    slug,
)
from .errors import ConfigError

SCHEMA_VERSION = 1
EXPERIMENT_MAX_LEN = 32
DEFAULT_WORKDIR = "work"
CONFIG_FILE = "config.yaml"

_EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Config:
    """A validated experiment configuration. Build it with :func:`build`, never directly."""

    experiment: str
    repository: str | None
    frameworks: tuple[str, ...]
    site: str
    storage_site: str
    gpu_vendor: str
    node_type: str | None
    flavor: str | None
    image: str | None
    cuda_major: int | None
    lease_hours: int | None
    lease_start: str | None
    buckets: Buckets
    lab: LabOptions
    endpoints: Endpoints
    workdir: str
    schema_version: int = SCHEMA_VERSION

    # -- derived, never stored ----------------------------------------------------------
    @property
    def site_info(self) -> sites.Site:
        return sites.get_site(self.site)

    @property
    def storage_info(self) -> sites.Site:
        return sites.get_site(self.storage_site)

    @property
    def is_local(self) -> bool:
        return self.site == "local"

    @property
    def machine(self) -> str | None:
        """The node type (bare metal) or flavor (KVM) to reserve."""
        return self.node_type or self.flavor

    @property
    def auth_url(self) -> str | None:
        return self.endpoints.auth_url or self.site_info.auth_url

    @property
    def storage_auth_url(self) -> str | None:
        return self.endpoints.storage_auth_url or self.storage_info.auth_url

    @property
    def s3_endpoint(self) -> str | None:
        return self.endpoints.s3_endpoint or self.storage_info.s3_endpoint

    @property
    def region(self) -> str | None:
        return self.endpoints.region or self.site_info.region

    @property
    def storage_region(self) -> str | None:
        return self.endpoints.region or self.storage_info.region

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser()

    @property
    def names(self) -> dict[str, str]:
        """Names of the resources the notebooks create, derived from the experiment."""
        e = self.experiment
        return {
            "application_credential": f"replab-{e}",
            "lease": f"{e}-lease",
            "server": f"{e}-server",
            "security_group": f"{e}-lab",
            "lab": f"replab-{slug(e)}",
        }

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping, in field order, that :func:`build` turns back into this config."""
        d = dataclasses.asdict(self)
        d["frameworks"] = list(self.frameworks)
        out = {"schema_version": d.pop("schema_version")}
        out.update(d)
        return out


# -- the schema: field -> (python types accepted, basic?) --------------------------------
_TOP = {
    "schema_version": int,
    "experiment": str,
    "repository": (str, type(None)),
    "frameworks": (list, tuple, str),
    "site": str,
    "storage_site": str,
    "gpu_vendor": (str, type(None)),
    "node_type": (str, type(None)),
    "flavor": (str, type(None)),
    "image": (str, type(None)),
    "cuda_major": (int, type(None)),
    "lease_hours": (int, type(None)),
    "lease_start": (str, type(None)),
    "buckets": (dict, type(None)),
    "lab": (dict, type(None)),
    "endpoints": (dict, type(None)),
    "workdir": (str, type(None)),
}
_SECTIONS = {
    "buckets": {"data": (str, type(None)), "artifacts": (str, type(None)),
                "backups": (str, type(None))},
    "lab": {"mlflow_backend": str, "huggingface": bool, "github_cli": bool},
    "endpoints": {"auth_url": (str, type(None)), "storage_auth_url": (str, type(None)),
                  "s3_endpoint": (str, type(None)), "region": (str, type(None))},
}
REQUIRED = ("experiment", "frameworks", "site")
BASIC_FIELDS = ("experiment", "repository", "frameworks", "site")


def _type_name(t) -> str:
    ts = t if isinstance(t, tuple) else (t,)
    names = {str: "a string", int: "an integer", bool: "true/false", dict: "a mapping",
             list: "a list", tuple: "a list", type(None): "empty"}
    return " or ".join(dict.fromkeys(names.get(x, x.__name__) for x in ts))


def _is_type(value, t) -> bool:
    ts = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in ts:
        return False  # True is an int in Python; not in a config
    return isinstance(value, ts)


def build(raw: Mapping[str, Any], source: str | None = None) -> Config:
    """Validate ``raw`` (a mapping as in config.yaml) and return a frozen :class:`Config`.

    Raises ConfigError listing every problem found (unknown keys, wrong types, values not
    allowed, inconsistent choices), each naming the field, the value and what is allowed.
    """
    problems: list[tuple[str, str]] = []
    if not isinstance(raw, Mapping):
        raise ConfigError([("", f"expected a mapping of fields, got {type(raw).__name__}")],
                          source)
    raw = dict(raw)

    # 1. keys and types
    for key in raw:
        if key not in _TOP:
            problems.append((str(key), f"unknown field; known fields: {', '.join(_TOP)}"))
    for key, t in _TOP.items():
        if key in raw and not _is_type(raw[key], t):
            problems.append((key, f"{raw[key]!r} is {type(raw[key]).__name__}; "
                                  f"expected {_type_name(t)}"))
    sections: dict[str, dict] = {}
    for sec, schema in _SECTIONS.items():
        value = raw.get(sec)
        sections[sec] = {}
        if not isinstance(value, dict):
            continue
        for key, v in value.items():
            if key not in schema:
                problems.append((f"{sec}.{key}",
                                 f"unknown field; known fields: {', '.join(schema)}"))
            elif not _is_type(v, schema[key]):
                problems.append((f"{sec}.{key}", f"{v!r} is {type(v).__name__}; "
                                                 f"expected {_type_name(schema[key])}"))
            else:
                sections[sec][key] = v
    bad = {p[0] for p in problems}

    def get(key, default=None):
        if key in bad:
            return default
        v = raw.get(key, default)
        return default if v is None or v == "" else v

    if "schema_version" in raw and "schema_version" not in bad:
        if raw["schema_version"] != SCHEMA_VERSION:
            problems.append(("schema_version", f"{raw['schema_version']!r} is not supported; "
                                               f"this replab reads version {SCHEMA_VERSION}"))
    for key in REQUIRED:
        if key not in bad and get(key) is None:
            problems.append((key, "required; " + FIELD_HINTS[key]))

    # 2. basic fields
    experiment = get("experiment")
    if isinstance(experiment, str):
        if not _EXPERIMENT_RE.match(experiment):
            problems.append(("experiment", f"{experiment!r} may use only letters, digits, "
                                           "'_' and '-'"))
        elif len(experiment) > EXPERIMENT_MAX_LEN:
            problems.append(("experiment", f"{experiment!r} is {len(experiment)} characters; "
                                           f"at most {EXPERIMENT_MAX_LEN} allowed"))

    site_name = get("site")
    site = None
    if isinstance(site_name, str):
        if site_name in sites.SITES:
            site = sites.SITES[site_name]
        else:
            problems.append(("site", f"{site_name!r} is not a known site; "
                                     f"allowed: {', '.join(sites.SITE_NAMES)}"))

    repository = get("repository")
    if isinstance(repository, str):
        repository = repository.strip()
        if not repository_ok(repository, site_name):
            allowed = "https://host/group[/subgroup]/repo[.git], ssh://git@host/group/repo.git "
            allowed += "or git@host:group/repo.git"
            if site_name == "local":
                allowed += ", or a local path / file:// URL"
            problems.append(("repository", f"{repository!r} is not a repository URL; "
                                           f"allowed: {allowed}"))

    frameworks = parse_frameworks(get("frameworks"), problems)

    # 3. advanced fields, with defaults per site
    gpu_vendor = get("gpu_vendor")
    if gpu_vendor is not None and gpu_vendor not in sites.GPU_VENDORS:
        problems.append(("gpu_vendor", f"{gpu_vendor!r} is not allowed; "
                                       f"allowed: {', '.join(sites.GPU_VENDORS)}"))
        gpu_vendor = None
    node_type, flavor = get("node_type"), get("flavor")
    image, cuda_major = get("image"), get("cuda_major")
    lease_hours, lease_start = get("lease_hours"), get("lease_start")
    storage_site = get("storage_site", "auto")

    if site is not None:
        gpu_vendor, node_type, flavor = parse_machine(site, gpu_vendor, node_type, flavor, problems)
        image = parse_image(site, gpu_vendor, image, problems)
        cuda_major = parse_cuda(gpu_vendor, cuda_major, problems)
        lease_hours, lease_start = parse_lease(site, lease_hours, lease_start, problems)
        storage_site = parse_storage_site(site, storage_site, problems)

    experiment_ok = not any(f == "experiment" for f, _ in problems)
    buckets = parse_buckets(experiment if experiment_ok else None, sections["buckets"], problems)
    lab = parse_lab(sections["lab"], problems)
    endpoints = parse_endpoints(sections["endpoints"], problems)
    workdir = get("workdir", DEFAULT_WORKDIR)

    if problems:
        raise ConfigError(problems, source)
    return Config(
        experiment=experiment, repository=repository, frameworks=frameworks, site=site_name,
        storage_site=storage_site, gpu_vendor=gpu_vendor, node_type=node_type, flavor=flavor,
        image=image, cuda_major=cuda_major, lease_hours=lease_hours, lease_start=lease_start,
        buckets=buckets, lab=lab, endpoints=endpoints, workdir=str(workdir),
    )


# -- notebook parameters <-> config ------------------------------------------------------
#: Flat parameter names (as in the notebooks' parameters cells) -> config path.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "experiment": ("experiment",), "repository": ("repository",),
    "frameworks": ("frameworks",), "site": ("site",),
    "storage_site": ("storage_site",), "gpu_vendor": ("gpu_vendor",),
    "node_type": ("node_type",), "flavor": ("flavor",), "image": ("image",),
    "cuda_major": ("cuda_major",), "lease_hours": ("lease_hours",),
    "lease_start": ("lease_start",),
    "bucket_data": ("buckets", "data"), "bucket_artifacts": ("buckets", "artifacts"),
    "bucket_backups": ("buckets", "backups"),
    "mlflow_backend": ("lab", "mlflow_backend"), "huggingface": ("lab", "huggingface"),
    "github_cli": ("lab", "github_cli"),
    "auth_url": ("endpoints", "auth_url"), "storage_auth_url": ("endpoints", "storage_auth_url"),
    "s3_endpoint": ("endpoints", "s3_endpoint"), "region": ("endpoints", "region"),
    "workdir": ("workdir",),
}


def parameters_from(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Pick the config parameters out of a notebook's namespace (``globals()``)."""
    return {k: namespace[k] for k in PARAMETERS if k in namespace}


def from_parameters(params: Mapping[str, Any], source: str | None = None) -> Config:
    """Build a config from flat notebook parameters; empty values mean "the default".

    Raises ConfigError for unknown parameters and every invalid value.
    """
    raw: dict[str, Any] = {}
    problems = [(k, f"unknown parameter; known: {', '.join(PARAMETERS)}")
                for k in params if k not in PARAMETERS]
    if problems:
        raise ConfigError(problems, source)
    for key, value in params.items():
        if value is None or value == "":
            continue
        if key in ("cuda_major", "lease_hours") and value == 0:
            continue  # 0 in a typed parameters cell means "the default"
        path = PARAMETERS[key]
        if len(path) == 1:
            raw[path[0]] = value
        else:
            raw.setdefault(path[0], {})[path[1]] = value
    return build(raw, source)


def to_parameters(cfg: Config) -> dict[str, Any]:
    """The flat parameters that :func:`from_parameters` turns back into ``cfg``."""
    d = cfg.to_dict()
    out = {}
    for key, path in PARAMETERS.items():
        value = d[path[0]] if len(path) == 1 else d[path[0]][path[1]]
        if value is not None:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


# -- files -------------------------------------------------------------------------------
def config_path(workdir: str | os.PathLike) -> Path:
    return Path(workdir).expanduser() / CONFIG_FILE


def dump(cfg: Config) -> str:
    """The YAML text of ``cfg`` (with its schema version), stable key order."""
    header = ("# replab experiment config, written by 0_configure; every notebook reads it.\n"
              "# Edit it and re-run 0_configure (or `replab config check`) to validate.\n")
    return header + yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)


def save(cfg: Config, path: str | os.PathLike | None = None) -> Path:
    """Write ``cfg`` to ``path`` (default ``<workdir>/config.yaml``) atomically."""
    target = Path(path) if path else config_path(cfg.workdir)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(dump(cfg))
    os.replace(tmp, target)
    return target


def load(path: str | os.PathLike) -> Config:
    """Read and validate a config file (or ``<dir>/config.yaml`` when given a directory).

    Raises ConfigError when the file is missing, is not YAML, lacks ``schema_version`` or
    holds invalid values; the message names the file.
    """
    p = Path(path).expanduser()
    if p.is_dir() or not p.suffix:
        p = p / CONFIG_FILE
    if not p.exists():
        raise ConfigError(f"no config at {p}: run 0_configure first (or pass the right "
                          "workdir)")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([("", f"not valid YAML: {exc}")], str(p)) from None
    if not isinstance(raw, dict):
        raise ConfigError([("", "expected a mapping of fields")], str(p))
    if "schema_version" not in raw:
        raise ConfigError([("schema_version", f"missing; add 'schema_version: "
                                              f"{SCHEMA_VERSION}'")], str(p))
    return build(raw, str(p))


__all__ = [
    "Buckets", "Config", "ConfigError", "Endpoints", "LabOptions",
    "SCHEMA_VERSION", "PARAMETERS", "build", "dump", "from_parameters", "load",
    "parameters_from", "save", "to_parameters", "config_path", "slug",
]
