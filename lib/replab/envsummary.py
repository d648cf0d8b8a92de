"""A readable summary of a run manifest, logged beside the raw ``replab/manifest.json``:
``replab/environment.md`` and ``replab/environment.html`` (the MLflow UI shows the HTML
page in its artifact viewer).

One model, two renderers: :func:`sections` turns a manifest into titled sections (key/value
rows and tables); :func:`render_markdown` and :func:`render_html` draw them. What the summary
shows: the code (commit, dirty state, remote), the entrypoint, Python, the key packages, the
platform and GPUs, the container, seeds and determinism settings, the declared inputs with
their digests, and what the capture skipped or failed. Environment variables other than the
determinism flags are not shown (the raw manifest has them, redacted).

Pure functions of the manifest (and :func:`log_missing`, which logs them through the client
it is given): no other replab module is imported, so :mod:`replab.tracking` can import this.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ARTIFACT_MD = "replab/environment.md"
ARTIFACT_HTML = "replab/environment.html"

# The packages whose versions most often explain a change in results, in display order.
KEY_PACKAGES = (
    "torch", "torchvision", "torchaudio", "tensorflow", "keras", "jax", "jaxlib", "flax",
    "numpy", "scipy", "scikit-learn", "pandas", "polars", "xgboost", "lightgbm", "catboost",
    "transformers", "datasets", "tokenizers", "accelerate", "lightning", "pytorch-lightning",
    "triton", "nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-nccl-cu12", "cupy",
    "onnxruntime", "matplotlib", "mlflow", "replab",
)

Rows = list[tuple[str, str]]


@dataclass
class Section:
    """One part of the summary: key/value ``rows``, then an optional table."""

    title: str
    rows: Rows = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)


def _s(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _gib(n: Any) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, (int, float)) and n > 0 else "-"


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"  # pragma: no cover


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _code(caps: Mapping[str, Any], skipped: Mapping[str, str]) -> Section:
    git = caps.get("git")
    sec = Section("Code")
    if not git:
        sec.rows.append(("git", f"not captured ({skipped.get('git', 'no git capture')})"))
        return sec
    changes = git.get("changes") or {}
    if git.get("dirty"):
        parts = [f"{changes[k]} {k}" for k in ("staged", "unstaged", "untracked")
                 if changes.get(k)]
        dirty = "yes: " + (", ".join(parts) or "uncommitted changes")
        if git.get("diff_bytes"):
            dirty += f"; diff {_size(git['diff_bytes'])}, sha256 {git.get('diff_sha256', '-')}"
    else:
        dirty = "no (clean working tree)"
    branch = "detached HEAD" if git.get("detached") else git.get("branch")
    sec.rows += [("commit", _s(git.get("commit"))), ("branch", _s(branch)),
                 ("uncommitted changes", dirty), ("remote", _s(git.get("remote_url")))]
    untracked = git.get("untracked") or []
    if untracked:
        kept = sum(1 for f in untracked if "content" in f or "symlink" in f)
        sec.rows.append(("untracked files", f"{len(untracked)} ({kept} captured for replay)"))
    return sec


def _entrypoint(caps: Mapping[str, Any]) -> Section:
    entry = caps.get("entrypoint") or {}
    sec = Section("Entrypoint")
    if not entry:
        sec.rows.append(("entrypoint", "not captured"))
        return sec
    what = entry.get("path") or entry.get("module") or " ".join(entry.get("command") or [])
    argv = " ".join(str(a) for a in entry.get("argv") or [])
    sec.rows += [("kind", _s(entry.get("kind"))), ("runs", _s(f"{what} {argv}".strip())),
                 ("working directory", _s(entry.get("cwd")))]
    params = entry.get("parameters")
    if isinstance(params, Mapping) and params:
        sec.rows.append(("notebook parameters",
                         ", ".join(f"{k}={v}" for k, v in sorted(params.items()))))
    return sec


def _python_and_packages(caps: Mapping[str, Any]) -> Section:
    py = caps.get("python") or {}
    pkgs = caps.get("packages") or {}
    sec = Section("Python and packages")
    env = py.get("virtualenv") or py.get("conda")
    sec.rows += [("python", f"{_s(py.get('version'))} ({_s(py.get('implementation'))})"),
                 ("executable", _s(py.get("executable"))),
                 ("environment", _s(env) if env else "system interpreter")]
    versions = {_norm(k): v for k, v in (pkgs.get("versions") or {}).items()}
    if pkgs:
        sec.rows.append(("packages", f"{pkgs.get('count', len(versions))} installed; lock "
                                     f"sha256 {_s(pkgs.get('lock_hash'))}"))
    frameworks = (caps.get("gpu") or {}).get("frameworks") or {}
    torch = frameworks.get("torch") or {}
    if torch:
        sec.rows.append(("torch build", f"CUDA {_s(torch.get('cuda'))}, cuDNN "
                                        f"{_s(torch.get('cudnn'))}, NCCL {_s(torch.get('nccl'))}"
                         + (f", HIP {torch['hip']}" if torch.get("hip") else "")))
    key = [[name, versions[name]] for name in KEY_PACKAGES if name in versions]
    if key:
        sec.head, sec.table = ["key package", "version"], key
    elif pkgs:
        sec.rows.append(("key packages", "none of the usual ML packages is installed"))
    return sec


def _hardware(caps: Mapping[str, Any]) -> Section:
    plat = caps.get("platform") or {}
    gpu = caps.get("gpu") or {}
    cont = caps.get("container") or {}
    sec = Section("Hardware and system")
    dist = (plat.get("distribution") or {}).get("PRETTY_NAME") or plat.get("system")
    cpus = plat.get("cpu_count")
    usable = plat.get("cpu_usable")
    cpu = f"{_s(plat.get('cpu_model'))} x{_s(cpus)}" + (
        f" ({usable} usable)" if usable and usable != cpus else "")
    sec.rows += [("OS", f"{_s(dist)}, kernel {_s(plat.get('kernel'))}, "
                        f"{_s(plat.get('machine'))}"),
                 ("CPU", cpu), ("memory", _gib(plat.get("memory_total")))]
    if cont.get("in_container"):
        image = cont.get("image") or "image not recorded"
        digest = f" ({cont['image_digest']})" if cont.get("image_digest") else ""
        sec.rows.append(("container", f"{_s(cont.get('runtime'))}: {image}{digest}"))
    elif cont:
        sec.rows.append(("container", "no (bare host)"))
    devices = gpu.get("devices") or []
    if not devices:
        sec.rows.append(("GPU", "none (CPU only)"))
        return sec
    driver = [f"driver {gpu['driver_version']}"] if gpu.get("driver_version") else []
    if gpu.get("cuda_driver_version"):
        driver.append(f"CUDA driver {gpu['cuda_driver_version']}")
    sec.rows.append(("GPU", f"{len(devices)}x {gpu.get('vendor', '?')}"
                            + (f" ({', '.join(driver)})" if driver else "")))
    sec.head = ["GPU", "name", "memory", "compute capability", "MIG"]
    for d in devices:
        mig = d.get("mig_mode") or {}
        sec.table.append([_s(d.get("index")), _s(d.get("name")), _gib(d.get("memory_total")),
                          _s(d.get("compute_capability") or d.get("gfx_version")),
                          _s(mig.get("current")) if mig else "-"])
    return sec


def _determinism(caps: Mapping[str, Any]) -> Section:
    det = caps.get("determinism") or {}
    sec = Section("Seeds and determinism")
    seeds = det.get("seeds") or {}
    if isinstance(seeds, Mapping) and seeds:
        seeded = seeds.get("seeded")
        rest = {k: v for k, v in seeds.items() if k not in ("seed", "seeded")}
        text = _s(seeds.get("seed"))
        if seeded:
            text += f" (seeded: {', '.join(map(str, seeded))})"
        if rest:
            text += "; " + ", ".join(f"{k}={v}" for k, v in sorted(rest.items()))
        sec.rows.append(("seed", text))
    else:
        sec.rows.append(("seed", "not recorded (the run did not pass seed=...)"))
    env = det.get("env") or {}
    hashseed = env.get("PYTHONHASHSEED")
    if hashseed:
        sec.rows.append(("hash seeding", f"PYTHONHASHSEED={hashseed}"))
    elif det:
        sec.rows.append(("hash seeding", "randomized (PYTHONHASHSEED not set)"
                         if det.get("hash_randomization", True) else "disabled"))
    flags = {k: v for k, v in env.items() if v not in (None, "") and k != "PYTHONHASHSEED"}
    if det:
        sec.rows.append(("determinism flags", ", ".join(f"{k}={v}" for k, v in
                                                        sorted(flags.items())) or "none set"))
    for fw in ("torch", "tensorflow"):
        view = det.get(fw)
        if isinstance(view, Mapping) and view:
            sec.rows.append((f"{fw} settings", ", ".join(f"{k}={_s(v)}" for k, v in
                                                         sorted(view.items()))))
    return sec


def _inputs(caps: Mapping[str, Any]) -> Section | None:
    data = caps.get("inputs")
    items = data.get("items", data) if isinstance(data, Mapping) else data
    if not isinstance(items, list) or not items:
        return None
    sec = Section("Inputs", head=["input", "kind", "size", "sha256"])
    for it in items:
        if not isinstance(it, Mapping):
            continue
        where = it.get("path") or it.get("uri") or "?"
        name = f"{it['name']}: {where}" if it.get("name") else where
        size = _size(it.get("size"))
        if it.get("kind") == "dir":
            size += f" in {it.get('files', '?')} files"
        digest = it.get("sha256") or it.get("error") or "-"
        if it.get("hash") == "stat":
            digest += " (of size and mtime: too big to hash)"
        sec.table.append([str(name), _s(it.get("kind")), size, str(digest)])
    return sec


def _capture(manifest: Mapping[str, Any]) -> Section:
    sec = Section("Capture")
    sec.rows += [("captured at", _s(manifest.get("created_at"))),
                 ("replab", _s(manifest.get("replab_version"))),
                 ("manifest schema", _s(manifest.get("schema_version")))]
    for name, why in sorted((manifest.get("skipped") or {}).items()):
        sec.rows.append((f"skipped: {name}", str(why)))
    for name, why in sorted((manifest.get("errors") or {}).items()):
        sec.rows.append((f"FAILED: {name}", str(why)))
    return sec


def sections(manifest: Mapping[str, Any]) -> list[Section]:
    """The summary of ``manifest`` as sections, in display order. Raises TypeError when
    ``manifest`` is not a mapping."""
    if not isinstance(manifest, Mapping):
        raise TypeError(f"a manifest is a mapping, not {type(manifest).__name__}")
    caps = manifest.get("captures") or {}
    skipped = manifest.get("skipped") or {}
    out = [_code(caps, skipped), _entrypoint(caps), _python_and_packages(caps),
           _hardware(caps), _determinism(caps), _inputs(caps), _capture(manifest)]
    return [s for s in out if s is not None]


# -- renderers ---------------------------------------------------------------------------------
def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_rows(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(map(_md, head)) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]


def render_markdown(manifest: Mapping[str, Any], title: str = "Environment") -> str:
    """The summary as markdown: a heading, then per section a key/value table and the
    section's own table."""
    parts = [f"# {title}", "",
             "Summary of `replab/manifest.json` (the complete record beside it).", ""]
    for sec in sections(manifest):
        parts += [f"## {sec.title}", ""]
        if sec.rows:
            parts += _md_rows(["", ""], ([k, v] for k, v in sec.rows)) + [""]
        if sec.table:
            parts += _md_rows(sec.head, sec.table) + [""]
    return "\n".join(parts)


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1000px;color:#222}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:13px}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.k{font-weight:600;white-space:nowrap;background:#fafafa}td{word-break:break-word}
h2{margin:1.1em 0 .3em;font-size:1.15em}.fail{color:#c62828;font-weight:600}"""


def render_html(manifest: Mapping[str, Any], title: str = "Environment") -> str:
    """The summary as one self-contained HTML page (everything escaped)."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1><p>Summary of <code>replab/manifest.json</code> (the "
            "complete record beside it).</p>"]
    for sec in sections(manifest):
        body.append(f"<h2>{e(sec.title)}</h2>")
        if sec.rows:
            body.append("<table>" + "".join(
                f"<tr><td class='k{' fail' if k.startswith('FAILED') else ''}'>{e(k)}</td>"
                f"<td>{e(v)}</td></tr>" for k, v in sec.rows) + "</table>")
        if sec.table:
            body.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in sec.head)
                        + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r)
                                            + "</tr>" for r in sec.table) + "</table>")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{e(title)}"
            f"</title><style>{_CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def artifacts(manifest: Mapping[str, Any]) -> dict[str, str]:
    """``{artifact path: text}`` of both renderings, ready for ``log_text``."""
    return {ARTIFACT_MD: render_markdown(manifest), ARTIFACT_HTML: render_html(manifest)}


def log_missing(client: Any, run_id: str, manifest: Mapping[str, Any]) -> list[str]:
    """Log both renderings onto run ``run_id`` (through an ``MlflowClient``) unless the run
    has them already; returns the paths logged. Raises what the client raises."""
    try:
        have = {f.path for f in client.list_artifacts(run_id, ARTIFACT_MD.rpartition("/")[0])}
    except Exception:  # no replab/ folder yet
        have = set()
    todo = {path: text for path, text in artifacts(manifest).items() if path not in have}
    for path, text in todo.items():
        client.log_text(run_id, text, path)
    return list(todo)
