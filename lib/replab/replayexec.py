"""Re-executing a replayed run's entrypoint (step four of :mod:`replab.replay`): the
command for each entrypoint kind (a script, a module, a ``replab run`` command with its
recorded options, a notebook through papermill), into an MLflow run created for it
beforehand and handed to the program as ``MLFLOW_RUN_ID``, with the recorded determinism
settings. replab's own files of a replay (``replay.log``, an executed notebook) go beside
the rebuilt workspace, never into it: the replay measures the program, not replab.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import outputs, termination, tracking
from .difference import is_python
from .errors import ReplayError
from .runrecord import Source, mlflow_client

log = logging.getLogger(__name__)

Say = Callable[[str], None]


# -- re-execution ----------------------------------------------------------------------------
@dataclass
class Execution:
    command: list[str]
    cwd: str
    returncode: int
    seconds: float
    new_run_id: str | None
    log_tail: str = ""
    env: dict[str, str] = field(default_factory=dict)


def determinism_env(source: Source) -> dict[str, str]:
    """The recorded settings that must hold before the interpreter starts."""
    flags = ((source.captures.get("determinism") or {}).get("env")) or {}
    env_cap = source.captures.get("env") or {}
    out = {}
    for key in ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "TF_DETERMINISTIC_OPS",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = flags.get(key) or env_cap.get(key)
        if isinstance(value, str) and value and not _redacted(value):
            out[key] = value
    return out


def _redacted(value: str) -> bool:
    from .redact import ELLIPSIS  # masked values end with it

    return ELLIPSIS in value


def _run_command_options(source: Source) -> list[str]:
    """The options of the original's ``replab run``, to run it the same way again: autolog,
    log-models, seed, ``-p`` params (tag ``replab.run.options``) and the output-evidence
    options (its ``replab/outputs.json``)."""
    from .faithfulness import run_options

    opts = run_options(source.tags)
    args: list[str] = []
    if opts.get("autolog") is False:
        args.append("--no-autolog")
    if opts.get("log_models"):
        args.append("--log-models")
    if opts.get("seed") is not None:
        args += ["--seed", str(opts["seed"])]
    for key, value in (opts.get("params") or {}).items():
        args += ["-p", f"{key}={value}"]
    return args + outputs.run_options(source.outputs)


def command_for(source: Source, workspace: Path, python: str,
                scratch: Path | None = None) -> tuple[list[str], Path]:
    """The command re-executing the recorded entrypoint, and its working directory.
    ``scratch``: where replab's own files of this replay go (the executed notebook), never
    inside the workspace; default: beside it. Raises ReplayError for an entrypoint that
    cannot be re-executed."""
    entry = source.captures.get("entrypoint") or {}
    kind = entry.get("kind")
    cwd = workspace / (entry.get("cwd") or ".")
    scratch = scratch or workspace.parent
    if kind == "script":
        return [python, str(workspace / entry["path"]), *entry.get("argv", [])], cwd
    if kind == "module":
        return [python, "-m", entry["module"], *entry.get("argv", [])], cwd
    if kind == "command":
        cmd = list(entry.get("command") or [])
        if not cmd:
            raise ReplayError("the recorded command is empty")
        if is_python(cmd[0]):
            cmd[0] = python
        return [python, "-m", "replab.cli", "run", *_run_command_options(source), "--",
                *cmd], cwd
    if kind == "notebook":
        if not entry.get("path"):
            raise ReplayError("the run came from a notebook whose path was not recorded "
                              "(run it with papermill --inject-paths next time)")
        nb = workspace / entry["path"]
        out = scratch / f"replay-{nb.name}"
        args = [python, "-m", "papermill", str(nb), str(out), "--cwd", str(nb.parent),
                "--no-progress-bar", "-p", "PAPERMILL_INPUT_PATH", str(nb)]
        for k, v in (entry.get("parameters") or {}).items():
            args += ["-y", json.dumps({k: v})]
        return args, nb.parent
    what = "an interactive session" if kind in ("interactive", "inline") else "unknown"
    raise ReplayError(f"cannot re-execute an entrypoint of kind {kind!r} ({what}: no program "
                      "to run again)")


def _create_replay_run(client, source: Source) -> str | None:
    """The replay's MLflow run, made before the program starts (its id goes to the program
    as MLFLOW_RUN_ID, so the run is known, not searched for afterwards). None when the
    server refuses: the program then makes its own and it is found by its tags."""
    name = source.experiment or "Default"
    try:
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name)
        run = client.create_run(exp_id, tags={tracking.TAG_REPLAY_OF: source.run_id},
                                run_name=f"replay of {source.run_id[:12]}")
        return run.info.run_id
    except Exception as exc:
        log.warning("could not create the replay's run on %s (%s): the program makes its own",
                    client.tracking_uri, exc)
        return None


def _end_replay_run(client, run_id: str, rc: int) -> None:
    """End the pre-created run if the program left it RUNNING (it never started a run, or
    died): FINISHED for exit 0, KILLED for a signal, FAILED otherwise."""
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FINISHED" if rc == 0 else
                                  "KILLED" if rc < 0 else "FAILED")
    except Exception as exc:
        log.warning("could not end the replay run %s: %s", run_id, exc)


def execute(source: Source, workspace: Path, python: str, *,
            tracking_uri: str | None = None, progress: Say | None = None,
            timeout: float | None = None, scratch: Path | None = None) -> Execution:
    """Re-execute the entrypoint in ``workspace`` with the recorded determinism settings,
    into a run made for it beforehand (MLFLOW_RUN_ID), tagged as a replay of the original.
    replab's own files (the program's output log ``replay.log``, an executed notebook) go
    to ``scratch`` (default: beside the workspace), never into it."""
    from . import trackingserver

    say = progress or (lambda _m: None)
    # Never MLflow's default store: it is a stray mlflow.db in the replayed workspace.
    uri = trackingserver.resolve(tracking_uri)
    scratch = Path(scratch or workspace.parent)
    scratch.mkdir(parents=True, exist_ok=True)
    cmd, cwd = command_for(source, workspace, python, scratch)
    client = mlflow_client(uri)
    new = _create_replay_run(client, source)
    env = dict(os.environ)
    extra = {**determinism_env(source), "MLFLOW_TRACKING_URI": uri,
             "REPLAB_REPLAY_OF": source.run_id}
    if source.experiment:
        extra["REPLAB_REPLAY_EXPERIMENT"] = source.experiment
    env.update(extra)
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    if new:
        env["MLFLOW_RUN_ID"] = new
    say(f"re-executing: {' '.join(cmd[1:] if cmd[0] == python else cmd)}")
    t0 = time.time()
    log_path = scratch / "replay.log"
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        # SIGTERM to the replay goes on to the program (which saves its metrics and ends its
        # run); Ctrl-C stops it too: no replayed program outlives its replay.
        try:
            with termination.forwarded(proc.send_signal):
                rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if new:
                _end_replay_run(client, new, -2)
            raise
    seconds = time.time() - t0
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    if new:
        _end_replay_run(client, new, rc)
    else:
        new = _find_replay(uri, source.run_id, since_ms=int(t0 * 1000) - 1000)
    say(f"replay exited with {rc} after {seconds:.1f}s; new run: {new or 'none'}")
    return Execution(cmd, str(cwd), rc, seconds, new, tail, extra)


def _find_replay(uri: str, original: str, since_ms: int) -> str | None:
    client = mlflow_client(uri)
    try:
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`{tracking.TAG_REPLAY_OF}` = '{original}' and "
                          f"attributes.start_time >= {since_ms}",
            order_by=["attributes.start_time DESC"], max_results=50)
    except Exception as exc:
        log.warning("cannot look up the replay run: %s", exc)
        return None
    # runs the program nests inside its own run carry the tag too: the replay is the top one
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return (top or runs)[0].info.run_id if runs else None


