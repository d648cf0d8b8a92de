# Injected by `replab run` through PYTHONPATH into the tracked program (and only there):
# attach to the run the parent created, switch on MLflow autologging, and make the
# program's own top-level mlflow.start_run()/end_run() reuse that run instead of failing
# ("run already active") or opening a second one. Never breaks the program.
import os
import sys


def _replab_attach():
    run_id = os.environ.pop("REPLAB_RUN_ID", None)
    if not run_id:
        return
    try:
        import mlflow
    except Exception as exc:  # mlflow missing in this interpreter: run untracked inside
        print(f"replab: no autologging in the child ({exc})", file=sys.stderr)
        return
    try:
        mlflow.start_run(run_id=run_id)
        original_start, original_end = mlflow.start_run, mlflow.end_run

        def start_run(run_id=None, *args, nested=False, **kwargs):
            active = mlflow.active_run()
            if active is not None and not nested and run_id in (None, active.info.run_id):
                return active  # the program's own run is the tracked run
            return original_start(run_id, *args, nested=nested, **kwargs)

        def end_run(status="FINISHED"):
            active = mlflow.active_run()
            if active is not None and active.info.run_id == _RUN_ID[0]:
                return None  # the parent ends it, with the exit code's status
            return original_end(status)

        _RUN_ID.append(run_id)
        # ActiveRun.__exit__ (``with mlflow.start_run():``) calls fluent.end_run directly.
        fluent = sys.modules["mlflow.tracking.fluent"]
        mlflow.start_run, mlflow.end_run = start_run, end_run
        fluent.start_run, fluent.end_run = start_run, end_run
        if os.environ.get("REPLAB_AUTOLOG", "1") == "1":
            mlflow.autolog(silent=True, log_models=os.environ.get("REPLAB_LOG_MODELS") == "1")
    except Exception as exc:
        print(f"replab: could not attach to run {run_id}: {exc}", file=sys.stderr)


_RUN_ID = []
_replab_attach()

# Chain to a sitecustomize that ours shadows, if any.
_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if _entry and os.path.abspath(_entry) != _here and os.path.isfile(
            os.path.join(_entry, "sitecustomize.py")):
        _path = os.path.join(_entry, "sitecustomize.py")
        with open(_path) as _fh:
            exec(compile(_fh.read(), _path, "exec"))  # noqa: S102
        break
