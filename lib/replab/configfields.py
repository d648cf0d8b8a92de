"""The config's fields one by one: what each allows, the section types, and a parser per
field that returns the normalized value and appends ``(field, problem)`` for what is wrong
(the pipeline that runs them, and the frozen :class:`~replab.config.Config`, are in
:mod:`replab.config`)."""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

from . import sites
from .bucketnames import bucket_name_problem

FRAMEWORKS = ("pytorch", "lightning", "tensorflow", "sklearn")
MLFLOW_BACKENDS = ("sqlite", "postgresql")
CUDA_MAJORS = (11, 12, 13)
DEFAULT_CUDA_MAJOR = 12
DEFAULT_LEASE_HOURS = 24

_HOST = r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?"
_SEG = r"[A-Za-z0-9_.~-]+"
# https://host[:port]/group[/subgroup...]/repo[.git]   (GitLab subgroups allowed)
_HTTPS_REPO = re.compile(rf"^https://{_HOST}(?::\d+)?(?:/{_SEG}){{2,}}/?$")
# ssh://[user@]host[:port]/group/.../repo[.git]
_SSH_REPO = re.compile(rf"^ssh://(?:{_SEG}@)?{_HOST}(?::\d+)?(?:/{_SEG}){{2,}}/?$")
# user@host:group/.../repo[.git]   (scp-like)
_SCP_REPO = re.compile(rf"^{_SEG}@{_HOST}:{_SEG}(?:/{_SEG})+$")
_URL = re.compile(r"^https?://[^\s/]+(?:/\S*)?$")


@dataclass(frozen=True)
class Buckets:
    data: str
    artifacts: str
    backups: str


@dataclass(frozen=True)
class LabOptions:
    mlflow_backend: str = "sqlite"
    huggingface: bool = False
    github_cli: bool = False


@dataclass(frozen=True)
class Endpoints:
    """Overrides of the catalog's endpoints (another OpenStack cloud, or the test one)."""

    auth_url: str | None = None  # Keystone of the compute site
    storage_auth_url: str | None = None  # Keystone of the storage site
    s3_endpoint: str | None = None  # S3 API of the storage site's object store
    region: str | None = None  # region name at both sites


def slug(experiment: str) -> str:
    """The experiment name as a lower-case, S3-safe stem (``My_Exp`` -> ``my-exp``)."""
    return experiment.lower().replace("_", "-").strip("-") or "x"


def default_buckets(experiment: str) -> Buckets:
    s = slug(experiment)
    return Buckets(data=f"{s}-data", artifacts=f"{s}-artifacts", backups=f"{s}-backups")


FIELD_HINTS = {
    "experiment": "a short name of letters, digits, '_' and '-' (it names every resource)",
    "frameworks": f"one or more of {', '.join(FRAMEWORKS)}",
    "site": f"one of {', '.join(sites.SITE_NAMES)}",
}


def repository_ok(url: str, site_name) -> bool:
    if _HTTPS_REPO.match(url) or _SSH_REPO.match(url) or _SCP_REPO.match(url):
        return True
    if site_name == "local" and (url.startswith("file://") or url.startswith(("/", "~", "."))):
        return True
    return False


def parse_frameworks(value, problems) -> tuple[str, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        name = item.strip().lower() if isinstance(item, str) else item
        if name not in FRAMEWORKS:
            problems.append(("frameworks", f"{item!r} is not supported; "
                                           f"allowed: {', '.join(FRAMEWORKS)}"))
        elif name in out:
            problems.append(("frameworks", f"{item!r} is listed twice"))
        else:
            out.append(name)
    if not out and not any(p[0] == "frameworks" for p in problems):
        problems.append(("frameworks", "required; " + FIELD_HINTS["frameworks"]))
    return tuple(out)


def parse_machine(site, vendor, node_type, flavor, problems):
    """Resolve GPU vendor / node type / flavor for ``site`` consistently."""
    if site.kind == sites.LOCAL:
        for key, value in (("node_type", node_type), ("flavor", flavor)):
            if value is not None:
                problems.append((key, f"{value!r} does not apply to site 'local' "
                                      "(it reserves no machine); leave it empty"))
        return vendor or "none", None, None

    key, other = ("node_type", "flavor") if site.kind == sites.BARE_METAL else (
        "flavor", "node_type")
    given, wrong = (node_type, flavor) if key == "node_type" else (flavor, node_type)
    allowed = ", ".join(m.name for m in site.machines)
    if wrong is not None:
        what = "KVM flavors" if other == "flavor" else "bare-metal node types"
        problems.append((other, f"{wrong!r}: {what} do not apply to {site.name}, a "
                                f"{'bare-metal' if site.kind == sites.BARE_METAL else 'KVM'} "
                                f"site; set {key} instead (one of {allowed})"))
    machine = None
    if given is not None:
        machine = site.machine(given)
        if machine is None:
            elsewhere = sites.find_machine(given)
            hint = (f" ({given!r} exists at {', '.join(s for s, _ in elsewhere)})"
                    if elsewhere else "")
            problems.append((key, f"{given!r} is not offered at {site.name}{hint}; "
                                  f"allowed: {allowed}"))
            return vendor or "none", (given if key == "node_type" else None), (
                given if key == "flavor" else None)
        if vendor is not None and vendor != machine.gpu_vendor:
            problems.append(("gpu_vendor", f"{vendor!r} does not match {key} {given!r}, which "
                                           f"has {machine.gpu_vendor} GPUs; allowed with it: "
                                           f"{machine.gpu_vendor}"))
    elif vendor is not None:
        machine = next((m for m in site.machines if m.gpu_vendor == vendor), None)
        if machine is None:
            vendors = sorted({m.gpu_vendor for m in site.machines})
            problems.append(("gpu_vendor", f"{vendor!r}: {site.name} has no {key} with that "
                                           f"GPU vendor; allowed here: {', '.join(vendors)}"))
            return vendor, None, None
    else:
        machine = site.machine(site.default_machine)
    name = machine.name
    return (vendor or machine.gpu_vendor, name if key == "node_type" else None,
            name if key == "flavor" else None)


def parse_image(site, vendor, image, problems):
    if site.kind == sites.LOCAL:
        if image is not None:
            problems.append(("image", f"{image!r} does not apply to site 'local' "
                                      "(no server is booted); leave it empty"))
        return None
    if image is None:
        return site.image_for(vendor)
    if image not in site.images:
        problems.append(("image", f"{image!r} is not supported at {site.name}; "
                                  f"allowed: {', '.join(site.images)}"))
    elif vendor in sites.GPU_VENDORS and image != site.image_for(vendor):
        # The CPU image has no GPU driver: host setup would fail only after the lease and
        # a bare-metal boot, so refuse here, before any cloud call.
        wanted = site.image_for(vendor)
        what = {sites.IMAGE_CPU: "has no GPU driver",
                sites.IMAGE_CUDA: "carries the NVIDIA driver",
                sites.IMAGE_CUDA_ARM64: "carries the NVIDIA driver for ARM64",
                sites.IMAGE_ROCM: "carries the AMD ROCm driver"}.get(image, "does not fit")
        problems.append(("image", f"{image!r} {what} but gpu_vendor is {vendor!r}; allowed: "
                                  f"{wanted} (set image: {wanted}, or leave image empty to "
                                  "follow gpu_vendor)"))
    return image


def parse_cuda(vendor, cuda_major, problems):
    if vendor != "nvidia":
        if cuda_major is not None:
            problems.append(("cuda_major", f"{cuda_major!r} applies only to NVIDIA GPUs "
                                           f"(gpu_vendor is {vendor!r}); leave it empty"))
        return None
    if cuda_major is None:
        return DEFAULT_CUDA_MAJOR
    if cuda_major not in CUDA_MAJORS:
        problems.append(("cuda_major", f"{cuda_major!r} is not supported; allowed: "
                                       f"{', '.join(map(str, CUDA_MAJORS))}"))
    return cuda_major


def parse_lease(site, hours, start, problems):
    if site.max_lease_hours is None:
        for key, value in (("lease_hours", hours), ("lease_start", start)):
            if value is not None and value != "now":
                problems.append((key, f"{value!r} does not apply to site {site.name!r} "
                                      "(it takes no lease); leave it empty"))
        return None, None
    if hours is None:
        hours = DEFAULT_LEASE_HOURS
    elif hours < 1 or hours > site.max_lease_hours:
        problems.append(("lease_hours", f"{hours} is outside what {site.name} allows: "
                                        f"1 to {site.max_lease_hours} hours "
                                        f"({site.max_lease_hours // 24} days)"))
    if start is None:
        start = "now"
    elif start != "now":
        try:
            _dt.datetime.fromisoformat(start)
        except ValueError:
            problems.append(("lease_start", f"{start!r} is not 'now' or an ISO date-time "
                                            "such as '2026-12-01 09:00'"))
    return hours, start


def parse_storage_site(site, storage, problems):
    if storage == "auto":
        return site.storage_site
    if site.kind == sites.LOCAL:
        if storage != "local":
            problems.append(("storage_site", f"{storage!r}: site 'local' stores on this "
                                             "machine; allowed: auto, local"))
        return storage
    allowed = [s for s in sites.STORAGE_SITES if s != "local"]
    if storage not in allowed:
        problems.append(("storage_site", f"{storage!r} has no object store; allowed: "
                                         f"auto, {', '.join(allowed)}"))
    return storage


def parse_buckets(experiment, given: dict, problems) -> Buckets:
    defaults = default_buckets(experiment) if experiment else Buckets("", "", "")
    values = {}
    for key in ("data", "artifacts", "backups"):
        name = given.get(key) or getattr(defaults, key)
        values[key] = name
        if not name:
            continue
        rule = bucket_name_problem(name)  # the object store's own naming rules
        if rule:
            problems.append((f"buckets.{key}", f"{name!r} is not a valid S3 bucket name: it "
                                               f"{rule}"))
    names = [v for v in values.values() if v]
    if len(set(names)) != len(names):
        problems.append(("buckets", f"bucket names must differ; got {values}"))
    return Buckets(**values)


def parse_lab(given: dict, problems) -> LabOptions:
    lab = LabOptions(**given)
    if lab.mlflow_backend not in MLFLOW_BACKENDS:
        problems.append(("lab.mlflow_backend", f"{lab.mlflow_backend!r} is not supported; "
                                               f"allowed: {', '.join(MLFLOW_BACKENDS)}"))
    return lab


def parse_endpoints(given: dict, problems) -> Endpoints:
    for key, value in given.items():
        if key != "region" and value and not _URL.match(value):
            problems.append((f"endpoints.{key}", f"{value!r} is not an http(s) URL"))
    return Endpoints(**{k: (v or None) for k, v in given.items()})


__all__ = [
    "Buckets", "CUDA_MAJORS", "DEFAULT_CUDA_MAJOR", "DEFAULT_LEASE_HOURS", "Endpoints",
    "FIELD_HINTS", "FRAMEWORKS", "LabOptions", "MLFLOW_BACKENDS", "default_buckets",
    "parse_buckets", "parse_cuda", "parse_endpoints", "parse_frameworks", "parse_image",
    "parse_lab", "parse_lease", "parse_machine", "parse_storage_site", "repository_ok", "slug",
]
