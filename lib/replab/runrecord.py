"""The one reader of a run's metric histories, and the record a replay starts from.

Every part of replab that reads a run (the replay's original, the verdict's two runs, the
report, bundles) reads metric histories through :func:`metric_history`, so the points of
the original and of the replay are paired in the same order: the order they were logged.
That order is step, then timestamp, then the order MLflow returns within equal timestamps
(a stable sort of MLflow's answer). A metric logged several times at one step (MLflow
autologging logs every fit at step 0) keeps its logged sequence; sorting by value, as
replab did before bundle version 2, pairs the wrong points.

Bundles: version 2 stores metric histories in logged order. A version-1 bundle (written
sorted by step, then value) is exact for every metric logged at most once per step; a
version-1 bundle holding a metric with several values at one step cannot be repaired
(the logged order is lost) and is refused with the way out: export it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BUNDLE_VERSION = 2
READABLE_BUNDLE_VERSIONS = (1, 2)

Points = list[tuple[int, float]]


def metric_history(client: Any, run_id: str, key: str) -> Points:
    """Every value of metric ``key`` of run ``run_id`` as ``(step, value)`` in logged
    order: step, then timestamp, then MLflow's own order within equal timestamps."""
    history = list(client.get_metric_history(run_id, key))
    history.sort(key=lambda m: (int(m.step), int(m.timestamp or 0)))  # stable
    return [(int(m.step), float(m.value)) for m in history]


def metric_histories(client: Any, run_id: str, keys: Any) -> dict[str, Points]:
    """:func:`metric_history` of each key, keys sorted."""
    return {key: metric_history(client, run_id, key) for key in sorted(keys)}


def repeated_steps(metrics: dict[str, Points]) -> list[str]:
    """The metrics that hold several values at one step (their order matters)."""
    out = []
    for key, points in metrics.items():
        steps = [int(s) for s, _ in points]
        if len(set(steps)) != len(steps):
            out.append(key)
    return sorted(out)


@dataclass
class Source:
    """Everything a replay needs about the original run."""

    run_id: str
    experiment: str | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, Points]
    manifest: dict[str, Any]
    lock: str | None
    origin: str  # "tracking server <uri>" or "bundle <path>"

    @property
    def captures(self) -> dict[str, Any]:
        return self.manifest.get("captures") or {}

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_version": BUNDLE_VERSION, "run_id": self.run_id,
                "experiment": self.experiment, "params": self.params, "tags": self.tags,
                "metrics": {k: [list(p) for p in v] for k, v in self.metrics.items()},
                "manifest": self.manifest, "lock": self.lock}
