"""The run API used inside training code.

``with replab.tracking.start_run(experiment="mnist", params={...}, seed=0) as run:`` starts an
MLflow run, seeds the random generators, and records the manifest (``replab/manifest.json``),
the pip lock, the git diff and the untracked-files bundle, plus a few searchable tags.
``run.log_metrics({...}, step=i)`` buffers points and sends them in batches of 1000 and at
least every second (:mod:`replab.metricbuffer`), so a program killed without warning loses at
most about a second of points; everything is flushed at exit, on an exception (the run is then
FAILED, with the traceback attached) and on SIGTERM (the run is then KILLED; see
:mod:`replab.termination`). Experiments replab creates or uses are marked as classic ML
experiments (tag ``mlflow.experimentKind``), so MLflow's UI opens on their runs table.

Tracking never breaks training: capture problems are logged and recorded, not raised. Errors
that mean no run can be recorded at all (the tracking server is unreachable) are raised
before training starts, as :class:`~replab.errors.CloudError`, naming the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from . import datasets, envsummary, metricsnapshot, termination
from .errors import CloudError
from .metricbuffer import FLUSH_INTERVAL, MetricBuffer

log = logging.getLogger(__name__)

# Tag keys, declared once (as mlflow's own utils/mlflow_tags.py does).
TAG_COMMIT = "replab.git.commit"
TAG_DIRTY = "replab.git.dirty"
TAG_PYTHON = "replab.python"
TAG_GPU = "replab.gpu"
TAG_LOCK_HASH = "replab.lock_hash"
TAG_MANIFEST_VERSION = "replab.manifest_version"
TAG_ENTRYPOINT = "replab.entrypoint"
TAG_ENTRY_KIND = "replab.entrypoint.kind"
TAG_REPLAY_OF = "replab.replay_of"
TAG_SEED = "replab.seed"
TAG_SEEDED = "replab.seeds.seeded"  # `replab run --seed`: the generators the program's
#                                    interpreter seeded at start, comma-separated
TAG_CAPTURE_ERRORS = "replab.capture.errors"
TAG_SIGNAL = "replab.signal"  # the signal that ended the run: SIGTERM, SIGKILL...
TAG_EXIT_CODE = "replab.exit_code"  # set by `replab run`: the program's exit status
TAG_OPEN = "replab.run.open"  # set while a program under `replab run` is inside start_run()
# MLflow 3's experiment kind (mlflow/server/js: ExperimentKind); unset, the UI may guess GenAI
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
ENV_PARENT_RUN = "REPLAB_PARENT_RUN_ID"  # set by `replab run`: the run it created and ends

ARTIFACT_DIR = "replab"
MANIFEST = "replab/manifest.json"
LOCK = "replab/requirements.lock"
DIFF = "replab/diff.patch"  # the uncommitted diff, any size, stored once (not in the manifest)
UNTRACKED = "replab/untracked.json"
TRACEBACK = "replab/traceback.txt"

BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch


class Run:
    """An active tracked run. Obtain it from :func:`start_run`; use it as MLflow's client."""

    def __init__(self, client, run_id: str, experiment_id: str, batch_size: int = BATCH,
                 flush_interval: float = FLUSH_INTERVAL, info: Any = None):
        self.client = client
        self.run_id = run_id
        self.info = info  # MLflow's RunInfo as the run started (no server call to read it)
        self.experiment_id = experiment_id
        self.batch_size = min(batch_size, BATCH)
        self.manifest: dict[str, Any] | None = None
        self.end_status: str | None = None  # set to end the run as FAILED/KILLED without raising
        self.signal: str | None = None  # the signal received during the run, e.g. "SIGTERM"
        self._buffer = MetricBuffer(self._send, self.batch_size, flush_interval,
                                    name=f"replab-metrics-{run_id[:8]}")
        self._steps: dict[str, int] = {}
        self._snapshot: metricsnapshot.Hold | None = None  # recording its metrics snapshot

    # -- metrics ---------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None,
                    timestamp: int | None = None) -> None:
        """Buffer one point per metric; sent in batches of up to 1000, and within about a
        second (``flush_interval``) by a background thread.

        ``step`` defaults to one past the last step logged for each metric.
        """
        from mlflow.entities import Metric

        ts = timestamp if timestamp is not None else int(time.time() * 1000)
        points = []
        for key, value in metrics.items():
            s = step if step is not None else self._steps.get(key, -1) + 1
            self._steps[key] = s
            points.append(Metric(key, float(value), ts, s))
        self._buffer.add(points)

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def flush(self) -> None:
        """Send every buffered metric point now."""
        self._buffer.flush()

    def _send(self, points: list) -> None:
        self.client.log_batch(self.run_id, metrics=points, synchronous=True)

    def _on_signal(self, signum: int, fatal: bool) -> None:
        """SIGTERM arrived: send the buffered points; when the process is about to die by the
        signal (``fatal``), end the run as KILLED with the signal recorded."""
        import signal as signal_mod

        self.signal = signal_mod.Signals(signum).name
        log.warning("%s: sending the buffered metrics of run %s", self.signal, self.run_id)
        self._buffer.flush_before_exit()
        if fatal:
            self.set_tags({TAG_SIGNAL: self.signal})
            _end_run(self, "KILLED")

    # -- the rest, sent at once ---------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow: at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items, synchronous=True)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.log_text(json.dumps(data, indent=1, sort_keys=True, default=str), artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def fetch_info(self):
        """MLflow's RunInfo as the server has it now (one request)."""
        return self.client.get_run(self.run_id).info


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's limit for a param value


# -- seeding ---------------------------------------------------------------------------------
def seed_everything(seed: int) -> dict[str, bool]:
    """Seed random, numpy and torch (when installed) and TensorFlow (when imported).

    Returns {library: seeded}. PYTHONHASHSEED cannot change inside a running interpreter; it
    is recorded by the determinism capture, and ``replab run`` sets it for the child.
    """
    import importlib.util

    done = {"random": True}
    random.seed(seed)
    if importlib.util.find_spec("numpy") is not None:
        import numpy

        numpy.random.seed(seed)
        done["numpy"] = True
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        done["torch"] = True
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(seed)
        done["tensorflow"] = True
    return done


# -- the manifest into the run ---------------------------------------------------------------
def record_manifest(run: Run, manifest: Mapping[str, Any], attachments_dir: str | None = None
                    ) -> None:
    """Log ``manifest`` and its parts (lock, diff, untracked bundle, the files in
    ``attachments_dir``) and the searchable tags.

    The uncommitted diff is stored once, as :data:`DIFF`: the capture puts it in
    ``attachments_dir``; a manifest that holds it inline (collected without one) is logged
    with the diff moved out to :data:`DIFF`. Logging problems are logged, never raised (the
    manifest is evidence, not the run).
    """
    from .capture import manifest_json

    manifest, diff = _diff_out_of_manifest(manifest)
    caps = manifest.get("captures", {})
    git = caps.get("git") or {}
    pkgs = caps.get("packages") or {}
    gpu = caps.get("gpu") or {}
    py = caps.get("python") or {}
    entry = caps.get("entrypoint") or {}
    tags = {
        TAG_MANIFEST_VERSION: manifest.get("schema_version"),
        TAG_PYTHON: py.get("version", ""),
        TAG_GPU: _gpu_name(gpu),
    }
    if git.get("commit"):
        tags[TAG_COMMIT] = git["commit"]
        tags["mlflow.source.git.commit"] = git["commit"]
        tags[TAG_DIRTY] = str(bool(git.get("dirty"))).lower()
        if git.get("remote_url"):
            tags["mlflow.source.git.repoURL"] = git["remote_url"]
    if pkgs.get("lock_hash"):
        tags[TAG_LOCK_HASH] = pkgs["lock_hash"]
    if entry:
        kind = entry.get("kind", "")
        name = (entry.get("path") or entry.get("module")
                or " ".join(entry.get("command") or []))
        if kind == "notebook" and not name:
            name = "notebook (path unknown: papermill --inject-paths, or REPLAB_NOTEBOOK)"
        if name:
            tags[TAG_ENTRYPOINT] = name
            tags["mlflow.source.name"] = name  # MLflow records ipykernel_launcher in notebooks
        tags[TAG_ENTRY_KIND] = kind
    if manifest.get("errors"):
        tags[TAG_CAPTURE_ERRORS] = ",".join(sorted(manifest["errors"]))
    steps = [
        ("tags", lambda: run.set_tags({k: v for k, v in tags.items() if v not in (None, "")})),
        ("manifest", lambda: run.log_text(manifest_json(manifest, indent=1), MANIFEST)),
        ("environment summary", lambda: [run.log_text(text, path) for path, text
                                         in envsummary.artifacts(manifest).items()]),
    ]
    if pkgs.get("lock"):
        steps.append(("lock", lambda: run.log_text(pkgs["lock"], LOCK)))
    if diff is not None:
        steps.append(("diff", lambda: _log_bytes(run, diff, DIFF)))
    if git.get("untracked"):
        steps.append(("untracked", lambda: run.log_dict(
            {"files": git.get("untracked"), "repo_root": git.get("root")}, UNTRACKED)))
    if attachments_dir and os.path.isdir(attachments_dir) and os.listdir(attachments_dir):
        steps.append(("attachments", lambda: run.client.log_artifacts(
            run.run_id, attachments_dir, ARTIFACT_DIR)))
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # evidence must not kill the run
            log.warning("could not log the %s of run %s: %s", what, run.run_id, exc)


def _diff_out_of_manifest(manifest: Mapping[str, Any]
                          ) -> tuple[Mapping[str, Any], bytes | None]:
    """``manifest`` as it is logged, and the diff to log beside it as :data:`DIFF` (None:
    none, or already an attachment): an inline diff leaves the manifest for the artifact."""
    from .capture.git import detach_diff

    caps = manifest.get("captures") or {}
    detached = detach_diff(caps.get("git") or {})
    if detached is None:
        return manifest, None
    git, raw = detached
    attachments = {**(manifest.get("attachments") or {}), git["diff_attachment"]: {
        "capture": "git", "bytes": len(raw), "sha256": git["diff_sha256"]}}
    return {**manifest, "captures": {**caps, "git": git}, "attachments": attachments}, raw


def _log_bytes(run: Run, data: bytes, artifact_file: str) -> None:
    folder, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="replab-artifact-") as tmp:
        path = os.path.join(tmp, name)
        with open(path, "wb") as fh:
            fh.write(data)
        run.log_artifact(path, folder or None)


def _gpu_name(gpu: Mapping[str, Any]) -> str:
    devices = gpu.get("devices") or []
    if not devices:
        return "none"
    names = [d.get("name", "?") for d in devices]
    return f"{len(names)}x {names[0]}" if len(set(names)) == 1 else ", ".join(names)


# -- start_run -------------------------------------------------------------------------------
def _client(tracking_uri: str | None):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=mlflow.get_tracking_uri())


def _experiment_id(client, experiment: str | None) -> str:
    from mlflow.exceptions import MlflowException

    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
    try:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return client.create_experiment(name, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        _mark_classic(client, exp)
        return exp.experiment_id
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" in str(exc):  # created concurrently
            return client.get_experiment_by_name(name).experiment_id
        raise CloudError(f"the tracking server {client._tracking_client.tracking_uri} refused "
                         f"experiment {name!r}: {exc}") from exc
    except Exception as exc:
        raise CloudError(f"cannot reach the tracking server "
                         f"{client._tracking_client.tracking_uri}: {exc}. Start the lab "
                         "(3_launch_lab) or set MLFLOW_TRACKING_URI.") from exc


def _mark_classic(client, exp) -> None:
    """Tag an experiment without a kind as classic ML, so MLflow 3's UI opens on its runs
    table and not its GenAI traces view. A kind already set is left alone; a refusal (a
    reader's account) is logged."""
    if (exp.tags or {}).get(TAG_EXPERIMENT_KIND):
        return
    try:
        client.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    except Exception as exc:
        log.info("could not set the kind of experiment %s: %s", exp.name, exc)


def _end_run(run: Run, status: str) -> None:
    """End ``run`` as ``status`` (MLflow's active run through mlflow.end_run; under
    `replab run` that leaves it to the parent, which records the exit status)."""
    import mlflow

    metricsnapshot.release(run._snapshot, run.client)  # after the last points are sent
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run.run_id:
        mlflow.end_run(status=status)
    else:
        run.client.set_terminated(run.run_id, status)


@contextlib.contextmanager
def start_run(
    experiment: str | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    inputs: Sequence[str] | None = None,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    capture: bool = True,
    repo: str | os.PathLike | None = None,
    system_metrics: bool = False,
    replay_of: str | None = None,
    run_id: str | None = None,
    entrypoint: Mapping[str, Any] | None = None,
    batch_size: int = BATCH,
    flush_interval: float = FLUSH_INTERVAL,
    ready: Callable[[Run], None] | None = None,
) -> Iterator[Run]:
    """Start (or, with ``run_id``, resume) a tracked MLflow run; yields a :class:`Run`.

    The run is MLflow's active run too, so ``mlflow.log_*`` and autologging land in it. On
    an exception the buffered metrics are flushed, the traceback attached, the run marked
    FAILED and the exception re-raised; on KeyboardInterrupt the run is KILLED; on SIGTERM
    (handled only when started from the main thread, in front of any handler already there,
    and put back at the end) the metrics are flushed and the run KILLED. ``sys.exit(0)``
    inside the block ends it FINISHED. Metrics are sent at least every ``flush_interval``
    seconds (0: only in batches and at the end). ``ready(run)`` is called once the run has
    its params, tags and capture, before the capture is uploaded (``replab run`` lets its
    program start there). Raises CloudError when the tracking server cannot be reached.
    """
    import mlflow

    client = _client(tracking_uri)
    # A replay re-executes the original program unchanged: the link and the experiment
    # come through the environment (set by replab.replay).
    replay_of = replay_of or os.environ.get("REPLAB_REPLAY_OF") or None
    experiment = os.environ.get("REPLAB_REPLAY_EXPERIMENT") or experiment
    exp_id = _experiment_id(client, experiment)
    extra_tags = dict(tags or {})
    if replay_of:
        extra_tags[TAG_REPLAY_OF] = replay_of
    if seed is not None:
        extra_tags[TAG_SEED] = seed
    if mlflow.active_run() and run_id is None:
        mlflow.end_run()  # a leftover run from an interrupted cell must not swallow this one
    active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp_id,
                              run_name=run_name, log_system_metrics=system_metrics or None)
    run = Run(client, active.info.run_id, active.info.experiment_id, batch_size,
              flush_interval, info=active.info)
    under_parent = os.environ.get(ENV_PARENT_RUN) == run.run_id  # `replab run` ends it
    # every point this process logs to a run it started (a resumed one has others' points)
    run._snapshot = metricsnapshot.hold(run.run_id) if run_id is None else None
    installed = termination.install(run._on_signal)
    seeded: dict[str, bool] = {}
    if seed is not None:
        try:
            seeded = seed_everything(seed)
        except Exception as exc:
            log.warning("seeding failed: %s", exc)
    status = "FINISHED"
    try:
        if under_parent:
            extra_tags[TAG_OPEN] = "true"
        if params:
            run.log_params(params)
        if extra_tags:
            run.set_tags(extra_tags)
        if capture:
            _capture_into(run, repo=repo, seed=seed, seeded=seeded, inputs=inputs,
                          entrypoint=entrypoint, params=params, ready=ready)
        elif ready is not None:
            ready(run)
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except SystemExit as exc:
        if run.signal:  # sys.exit() from the program's own SIGTERM handler
            status = "KILLED"
        elif exc.code not in (None, 0):
            status = "FAILED"
        raise
    except BaseException:
        status = "KILLED" if run.signal else "FAILED"
        with contextlib.suppress(Exception):
            run.flush()
        with contextlib.suppress(Exception):
            run.log_text(traceback.format_exc(), TRACEBACK)
        raise
    finally:
        termination.restore(installed)
        run._buffer.close()
        try:
            run.flush()
        except Exception as exc:
            log.error("could not send the last metrics of run %s: %s", run.run_id, exc)
            status = "FAILED" if status == "FINISHED" else status
        if status == "FINISHED" and run.end_status:
            status = run.end_status
        if run.signal:  # KILLED, or a program that handled the signal and finished
            with contextlib.suppress(Exception):
                run.set_tags({TAG_SIGNAL: run.signal})
        if under_parent:
            with contextlib.suppress(Exception):
                client.delete_tag(run.run_id, TAG_OPEN)
        metricsnapshot.release(run._snapshot, client)
        mlflow.end_run(status=status)


def _capture_into(run: Run, *, repo, seed, seeded, inputs, entrypoint, params,
                  ready: Callable[[Run], None] | None = None) -> None:
    from . import capture as capture_mod

    with tempfile.TemporaryDirectory(prefix="replab-capture-") as tmp:
        options: dict[str, Any] = {"repo": str(repo) if repo else None, "artifacts_dir": tmp,
                                   "inputs": list(inputs or [])}
        if seed is not None:
            options["seeds"] = {"seed": seed, "seeded": sorted(k for k, v in seeded.items()
                                                               if v)}
        if entrypoint:
            options.update(entrypoint)
        try:
            manifest = capture_mod.collect(**options)
        except Exception as exc:  # collect never raises; belt and braces for a training run
            log.warning("capture failed: %s", exc)
            manifest = None
        run.manifest = manifest
        if ready is not None:
            ready(run)
        if manifest is None:
            return
        record_manifest(run, manifest, tmp)
        # relative input paths are relative to the repository root the capture used
        root = ((manifest.get("captures") or {}).get("git") or {}).get("root")
        datasets.log_inputs(manifest, root or (str(repo) if repo else None))


# -- ReproGen compatibility ------------------------------------------------------------------
def _log_capture(name: str, flatten: Sequence[str]) -> dict[str, Any]:
    import mlflow

    from . import capture as capture_mod

    active = mlflow.active_run()
    if active is None:
        raise RuntimeError(f"log_{name}() needs an active run: call it inside "
                           "replab.tracking.start_run() or mlflow.start_run()")
    manifest = capture_mod.collect([name])
    data = manifest["captures"].get(name) or {}
    client = _client(None)
    run = Run(client, active.info.run_id, active.info.experiment_id)
    tags = {f"replab.{name}.{k}": data[k] for k in flatten
            if isinstance(data.get(k), (str, int, float, bool))}
    run.set_tags(tags)
    run.log_dict(manifest, f"replab/{name}.json")
    return data


def log_git() -> dict[str, Any]:
    """Log the git state (commit, branch, dirty, remote) into the active run."""
    return _log_capture("git", ["commit", "branch", "dirty", "remote_url"])


def log_python() -> dict[str, Any]:
    """Log the Python version, implementation and executable into the active run."""
    return _log_capture("python", ["version", "implementation", "executable"])


def log_gpu() -> dict[str, Any]:
    """Log the GPUs (or none) into the active run."""
    return _log_capture("gpu", ["vendor", "count", "driver_version"])
