"""What 4_replay displays: a run's record (params, final metrics, environment), how this
machine differs from the run's environment, and the notebook's parameters resolved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import tracking
from .runrecord import Source


def record_markdown(source: Source) -> str:
    """The record of a run, for display: where it comes from, params, final metrics, and
    the environment it ran in."""
    c = source.captures
    git, py = c.get("git") or {}, c.get("python") or {}
    gpu, entry = c.get("gpu") or {}, c.get("entrypoint") or {}
    plat = c.get("platform") or {}
    env_rows = [
        ("code", f"{(git.get('commit') or '?')[:12]}"
                 f"{' + uncommitted changes' if git.get('dirty') else ''}"
                 f" ({git.get('remote_url') or 'no remote'})"),
        ("entrypoint", f"{entry.get('kind', '?')}: {entry.get('path') or entry.get('module') or ' '.join(entry.get('command') or [])} {' '.join(entry.get('argv') or [])}"),  # noqa: E501
        ("python", f"{py.get('version', '?')} ({py.get('implementation', '?')})"),
        ("packages", f"{len((c.get('packages') or {}).get('versions') or {})} installed, "
                     f"lock {((c.get('packages') or {}).get('lock_hash') or '?')[:12]}"),
        ("platform", f"{(plat.get('distribution') or {}).get('PRETTY_NAME', '?')}, "
                     f"{plat.get('cpu_model', '?')} x{plat.get('cpu_count', '?')}"),
        ("GPU", ", ".join(d.get("name", "?") for d in gpu.get("devices") or []) or "none"),
        ("seed", source.tags.get(tracking.TAG_SEED, "not recorded")),
    ]
    lines = [f"### Run `{source.run_id}`", "", f"From {source.origin}; experiment "
             f"`{source.experiment}`.", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(source.params.items())] or ["| (none) | |"]
    lines += ["", "| metric | points | final |", "|---|---|---|"]
    lines += [f"| {k} | {len(v)} | {v[-1][1]:.6g} |" for k, v in sorted(source.metrics.items())
              if v]
    lines += ["", "| environment | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env_rows]
    return "\n".join(lines) + "\n"


def diff_here_markdown(source: Source, limit: int = 15) -> str:
    """How this machine differs from the run's environment, heaviest first."""
    from . import capture
    from .envdiff import env_diff
    from .verdict import describe

    here = capture.collect()
    diffs = env_diff(source.manifest, here)
    if not diffs:
        return "This machine's environment matches the run's.\n"
    rows = [f"- {describe(d)}" for d in diffs[:limit]]
    more = f"\n- ... and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return (f"**{len(diffs)} difference(s) between the run's environment and this "
            "machine**, most likely to matter first:\n\n" + "\n".join(rows) + more + "\n")


@dataclass
class Target:
    run: str
    experiment: str | None
    uri: str | None


def notebook_target(workdir: str, run: str, experiment: str = "",
                    tracking_uri: str = "") -> Target:
    """4_replay's parameters resolved: the experiment defaults to the configured one and
    the tracking server to the lab's (``lab.json``). Bundles need neither."""
    wd = Path(workdir)
    if run.endswith((".tar.gz", ".tgz")):
        return Target(run, None, tracking_uri or None)
    if not experiment and (wd / "config.yaml").exists():
        from . import config

        experiment = config.load(wd).experiment
    if not tracking_uri and (wd / "lab.json").exists():
        tracking_uri = json.loads((wd / "lab.json").read_text()).get("mlflow_url") or ""
    return Target(run, experiment or None, tracking_uri or None)
