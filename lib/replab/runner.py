"""``replab run -- COMMAND``: track an unmodified program.

The parent creates the run and records the manifest with the command as its entrypoint; the
child (a Python program) attaches to that run through an injected ``sitecustomize`` that
switches on MLflow autologging, so its own logging and the autologged params/metrics land in
the same run. Output is shown live and kept as artifacts (with known secret values masked);
the run's status follows the exit code.

The parent always ends the run, however the program ends: exit code 0 FINISHED, another
code FAILED, death by a signal (kill -9, the OOM killer, SIGTERM) KILLED, with tags
``replab.exit_code`` (``-9``) and ``replab.signal`` (``SIGKILL``). A program that used
``replab.tracking.start_run`` and left without ending it (``os._exit(0)`` inside the block)
is FAILED too. SIGTERM sent to ``replab run`` itself is passed on to the program, so it can
save its buffered metrics, and the run is then KILLED.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metricsnapshot, tracking
from .errors import ConfigError
from .faithfulness import TAG_RUN_OPTIONS
from .outputs import STREAM_ARTIFACTS
from .runchild import Child

log = logging.getLogger(__name__)
CHILD_DIR = Path(__file__).resolve().parent / "_child"
STDOUT = STREAM_ARTIFACTS["stdout"]
STDERR = STREAM_ARTIFACTS["stderr"]
TAG_EXIT_NOTE = "replab.exit_note"


@dataclass
class CommandResult:
    run_id: str
    experiment_id: str
    returncode: int


def run_command(
    command: Sequence[str],
    *,
    experiment: str | None = None,
    params: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    cwd: str | os.PathLike | None = None,
    seed: int | None = None,
    autolog: bool = True,
    log_models: bool = False,
    replay_of: str | None = None,
    echo: bool = True,
    output_dirs: Sequence[str] = (),
    output_evidence: bool = True,
    compare_stderr: bool = False,
    masks: Sequence[str] = (),
    no_masks: Sequence[str] = (),
) -> CommandResult:
    """Run ``command`` as a tracked MLflow run; returns its run id and exit code.

    Output evidence (unless ``output_evidence`` is False): the files under ``output_dirs``
    (relative to ``cwd``), or without any the files the program created or changed under
    ``cwd``, are hashed and kept (:mod:`replab.outputs_files`), and ``replab/outputs.json``
    records them with the streams to compare (stdout; stderr too with ``compare_stderr``)
    and the masks (``masks``: ``NAME=REGEX`` added, ``no_masks``: default names dropped).

    Raises ConfigError for an empty command or one that cannot start (the run is then
    FAILED, with the reason), or a bad mask; CloudError when the tracking server is
    unreachable.
    """
    if not command:
        raise ConfigError([("command", "nothing to run: give it after '--', e.g. "
                                       "replab run -- python train.py")])
    from . import outputs_files
    from .outputs_printed import resolve_masks
    from .redact import scrub_text

    resolve_masks(masks, no_masks)  # a bad mask stops here, before anything runs
    cwd = Path(cwd or os.getcwd()).resolve()
    before = outputs_files.snapshot(cwd, output_dirs) if output_evidence else {}
    entry = {"command": list(command)}
    # Every option that changes what the program does, so a replay runs it the same way
    # (replab.replay) and the verdict can tell a replay made otherwise (replab.faithfulness).
    options = {"autolog": bool(autolog), "log_models": bool(log_models), "seed": seed,
               "params": {str(k): str(v) for k, v in (params or {}).items()}}
    env = dict(os.environ)
    env.update({
        "REPLAB_AUTOLOG": "1" if autolog else "0",
        "REPLAB_LOG_MODELS": "1" if log_models else "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(CHILD_DIR), env.get("PYTHONPATH")])),
    })
    env.pop("MLFLOW_RUN_ID", None)
    if seed is not None:
        env["PYTHONHASHSEED"] = str(seed)
        env["REPLAB_SEED"] = str(seed)
    with tempfile.TemporaryDirectory(prefix="replab-run-") as tmp:
        seeded_file = Path(tmp, "seeded.txt")  # _child/sitecustomize.py names what it seeded
        env["REPLAB_SEEDED_FILE"] = str(seeded_file)
        # the program's metrics snapshot comes back as a file, merged into the run's own
        snapshot_file = Path(tmp, "metrics.json.gz")
        env["REPLAB_SNAPSHOT_FILE"] = str(snapshot_file)
        child = Child(command, cwd, env, Path(tmp), echo=echo)
        # A Python program starts now and imports MLflow while the run is made; it runs
        # only once released, after the capture (replab.runchild).
        gated = child.start_gated()
        tags = {"replab.run.command": " ".join(command)[:5000],
                TAG_RUN_OPTIONS: json.dumps(options, sort_keys=True)}
        if seed is not None:
            # nothing is seeded until the program's interpreter says so (_child/
            # sitecustomize.py seeds random and numpy, and names them in seeded_file)
            tags.update({tracking.TAG_SEED: seed, tracking.TAG_SEEDED: ""})

        def release(run: tracking.Run) -> None:
            metricsnapshot.expect_handoff(run.run_id, str(snapshot_file))
            try:
                child.release(_run_env(run))
            except ConfigError as exc:
                run.end_status = "FAILED"
                run.log_text(f"could not start {command[0]!r}: {exc}\n", STDERR)
                raise

        try:
            # a held program is let go as soon as the run and its capture exist (the
            # capture's upload overlaps the program); another starts once all is recorded
            with tracking.start_run(experiment, params, seed=None, repo=cwd, entrypoint=entry,
                                    replay_of=replay_of, tracking_uri=tracking_uri, tags=tags,
                                    ready=release if gated else None) as run:
                if not gated:
                    release(run)
                rc = child.wait()
                if child.interrupted:
                    run.end_status = "KILLED"
                if seeded_file.exists():
                    run.set_tags({tracking.TAG_SEEDED: seeded_file.read_text()})
                for name, artifact in (("stdout", STDOUT), ("stderr", STDERR)):
                    try:
                        run.log_text(scrub_text(child.output(name)), artifact)
                    except Exception as exc:
                        log.warning("could not keep %s: %s", artifact, exc)
                if output_evidence:
                    _record_outputs(run, cwd, before, output_dirs, compare_stderr, masks,
                                    no_masks)
                else:
                    _log_spec(run, {"version": 1, "evidence": False})
                run.log_metrics({"replab.exit_code": rc}, step=0)
                _record_exit(run, rc)
        finally:
            # no run (server unreachable, Ctrl-C): a held program never runs; one released
            # but not waited for (the run failed after its capture) is stopped; after
            # wait() this does nothing
            child.cancel()
    return CommandResult(run.run_id, run.experiment_id, rc)


def _run_env(run: tracking.Run) -> dict[str, str]:
    """The variables the program gets once its run exists: the run it attaches to."""
    import mlflow  # imported by tracking.start_run already

    return {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
            "MLFLOW_EXPERIMENT_ID": run.experiment_id,
            "REPLAB_RUN_ID": run.run_id,
            tracking.ENV_PARENT_RUN: run.run_id}


def _log_spec(run: tracking.Run, spec: dict[str, Any]) -> None:
    from .outputs_files import SPEC, spec_text

    try:
        run.log_text(spec_text(spec), SPEC)
    except Exception as exc:
        log.warning("could not record the output evidence (%s): %s", SPEC, exc)


def _record_outputs(run: tracking.Run, cwd: Path, before, output_dirs: Sequence[str],
                    compare_stderr: bool, masks: Sequence[str], no_masks: Sequence[str]
                    ) -> None:
    """Find, hash and keep the run's output files; log replab/outputs.json. Never raises."""
    from . import outputs_files

    def keep(path: Path, artifact_dir: str, text: str | None) -> None:
        if text is None:
            run.log_artifact(path, artifact_dir)
        else:
            run.log_text(text, f"{artifact_dir}/{path.name}")

    spec: dict[str, Any] = {"version": 1, "evidence": True,
                            "streams": ["stdout", "stderr"] if compare_stderr else ["stdout"],
                            "masks": {"add": list(masks), "drop": list(no_masks)},
                            "cwd": str(cwd), "home": str(Path.home()),
                            "output_dirs": list(output_dirs), "files": [], "notes": []}
    try:
        files = outputs_files.written_files(cwd, before, output_dirs)
        spec["files"], spec["notes"] = outputs_files.record_files(files, keep)
    except Exception as exc:
        log.warning("could not record the output files: %s", exc)
        spec["notes"].append(f"output files not recorded: {exc}")
    for d in output_dirs:
        if not (cwd / d).exists():  # a typo, or a program that wrote elsewhere
            note = (f"--outputs {d}: {cwd / d} does not exist after the run; nothing was "
                    "recorded from it")
            print(f"replab: warning: {note}", file=sys.stderr)
            spec["notes"].append(note)
    _log_spec(run, spec)


def _record_exit(run: tracking.Run, rc: int) -> None:
    """Tag how the program ended and choose the run's status from it."""
    tags: dict[str, Any] = {tracking.TAG_EXIT_CODE: rc}
    if rc < 0:
        try:
            tags[tracking.TAG_SIGNAL] = signal.Signals(-rc).name
        except ValueError:
            tags[tracking.TAG_SIGNAL] = f"signal {-rc}"
        run.end_status = run.end_status or "KILLED"
    elif rc != 0:
        run.end_status = run.end_status or "FAILED"
    try:
        left_open = tracking.TAG_OPEN in run.client.get_run(run.run_id).data.tags
        if left_open:
            run.client.delete_tag(run.run_id, tracking.TAG_OPEN)
        if left_open and rc == 0:
            tags[TAG_EXIT_NOTE] = ("the program exited (code 0) inside "
                                   "replab.tracking.start_run() without ending it (os._exit?); "
                                   "its last second of metrics may be missing")
            run.end_status = run.end_status or "FAILED"
        run.set_tags(tags)
    except Exception as exc:
        log.warning("could not record how run %s ended: %s", run.run_id, exc)
    if rc < 0:
        log.warning("the program was killed by %s; run %s is %s", tags[tracking.TAG_SIGNAL],
                    run.run_id, run.end_status)


def output_options(args) -> dict[str, Any]:
    """``run_command``'s output-evidence keywords from ``replab run``'s parsed options."""
    return {"output_dirs": list(getattr(args, "outputs", None) or ()),
            "output_evidence": not getattr(args, "no_output_evidence", False),
            "compare_stderr": bool(getattr(args, "compare_stderr", False)),
            "masks": list(getattr(args, "mask", None) or ()),
            "no_masks": list(getattr(args, "no_mask", None) or ())}
