# Injected by `replab run` through PYTHONPATH into the tracked program (and only there):
# attach to the run the parent created, switch on MLflow autologging, and make the
# program's own top-level mlflow.start_run()/end_run() reuse that run instead of failing
# ("run already active") or opening a second one. Never breaks the program.
#
# Autologging options (_autolog_options), chosen for cost: params and metrics (training
# metrics per fit, post-training metrics such as model.score) are autologged; what costs
# time and is not evidence a verdict compares is off unless asked for:
# - log_models: off unless `replab run --log-models` (REPLAB_LOG_MODELS=1): serializing and
#   uploading every fitted model.
# - log_model_signatures / log_input_examples: only with models (MLflow infers a signature
#   by predicting on an input example; without a model nothing uses them).
# - log_datasets: off: a digest of the training data and one more request per fit; replab's
#   own inputs capture records the data (replab.capture.inputs).
# - log_traces: off: GenAI tracing hooks, nothing a training script needs.
# - scikit-learn's per-fit plots (confusion matrix, ROC and PR curves) and estimator.html:
#   off unless --log-models. MLflow has no option for them, so mlflow.sklearn.utils' artifact
#   step is stopped when sklearn is imported (_no_sklearn_plots); drawing and uploading them
#   (and importing matplotlib for them) was most of autologging's time (bench/bench_run.py).
#   The metrics stay.
# - exclusive stays False: autologging lands in the program's own (reused) run too.
# REPLAB_AUTOLOG_DEFAULTS=1 gives MLflow's defaults instead (for bench/bench_run.py --options).
import os
import sys


def _replab_gate():
    """Started before its run existed (replab.runchild): import MLflow while the parent
    creates the run, then wait until it hands over the run's variables. An empty gate (the
    parent failed or was interrupted) ends this interpreter before the program runs."""
    fd = os.environ.pop("REPLAB_GATE_FD", None)
    if not fd:
        return
    try:
        if os.environ.get("REPLAB_AUTOLOG", "1") == "1":
            try:
                import mlflow  # noqa: F401  (the seconds the gate exists to overlap)
            except Exception:
                pass  # _replab_attach says so
        chunks = []
        while True:
            chunk = os.read(int(fd), 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(int(fd))
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group: the parent cancels
        os._exit(130)
    if not chunks:
        os._exit(0)
    import json

    os.environ.update(json.loads(b"".join(chunks)))


def _replab_attach():
    run_id = os.environ.pop("REPLAB_RUN_ID", None)
    if not run_id:
        return
    if os.environ.get("REPLAB_AUTOLOG", "1") != "1":
        # --no-autolog: MLflow is loaded only if the program imports it (seconds saved for
        # one that does not); the attach happens then.
        sys.meta_path.insert(0, _AttachOnImport(run_id))
    else:
        try:
            import mlflow
        except Exception as exc:  # mlflow missing in this interpreter: run untracked inside
            print(f"replab: no autologging in the child ({exc})", file=sys.stderr)
        else:
            _attach(mlflow, run_id, autolog=True)
    _report_seeded(_seed(os.environ.get("REPLAB_SEED")))


def _attach(mlflow, run_id, autolog):
    """Make ``run_id`` MLflow's active run in this process, the program's own top-level
    start_run()/end_run() reuse it, and (``autolog``) switch autologging on."""
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
        _replab_snapshot(run_id)
        # ActiveRun.__exit__ (``with mlflow.start_run():``) calls fluent.end_run directly.
        fluent = sys.modules["mlflow.tracking.fluent"]
        mlflow.start_run, mlflow.end_run = start_run, end_run
        fluent.start_run, fluent.end_run = start_run, end_run
        if autolog:
            mlflow.autolog(**_autolog_options(os.environ))
            if not _plots_wanted(os.environ):
                from mlflow.utils.import_hooks import register_post_import_hook

                register_post_import_hook(_no_sklearn_plots, "sklearn")
    except Exception as exc:
        print(f"replab: could not attach to run {run_id}: {exc}", file=sys.stderr)


class _AttachOnImport:
    """A finder that steps aside at the program's first ``import mlflow`` and attaches to
    the run once the package has loaded."""

    def __init__(self, run_id):
        self.run_id = run_id

    def find_spec(self, name, path=None, target=None):
        if name != "mlflow":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module, run_id = loader.exec_module, self.run_id

        def exec_then_attach(module):
            exec_module(module)
            _attach(module, run_id, autolog=False)

        loader.exec_module = exec_then_attach
        return spec


def _report_seeded(seeded):
    """Tell replab run which generators this interpreter seeded (observed, not assumed):
    it tags the run with them (replab.seeds.seeded)."""
    path = os.environ.pop("REPLAB_SEEDED_FILE", None)
    if seeded is None or not path:
        return
    try:
        with open(path, "w") as fh:
            fh.write(",".join(seeded))
    except OSError as exc:
        print(f"replab: could not report the seeded generators: {exc}", file=sys.stderr)


def _replab_snapshot(run_id):
    """Record every metric point this process logs to the run and upload the metrics
    snapshot at exit (replab.metricsnapshot; loaded by path where this interpreter has no
    replab). Only warns."""
    try:
        try:
            from replab import metricsnapshot
        except ImportError:
            import importlib.util

            path = os.path.join(os.path.dirname(_here_dir()), "metricsnapshot.py")
            spec = importlib.util.spec_from_file_location("_replab_metricsnapshot", path)
            metricsnapshot = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(metricsnapshot)
        metricsnapshot.start_for_process(run_id, os.environ.pop("REPLAB_SNAPSHOT_FILE", None))
    except Exception as exc:
        print(f"replab: no metrics snapshot for run {run_id}: {exc}", file=sys.stderr)


def _here_dir():
    return os.path.dirname(os.path.abspath(__file__))


def _seed(value):
    """`replab run --seed N`: seed Python's and NumPy's global generators before the program
    runs; returns the ones seeded (None without a seed). torch and TensorFlow are not
    imported here (seconds of start-up): a program using them must seed them itself, and
    the verdict says they were not seeded by replab."""
    if not value:
        return None
    import random

    seed = int(value)
    random.seed(seed)
    seeded = ["random"]
    try:
        import numpy
    except Exception:
        return seeded
    numpy.random.seed(seed % 2**32)
    return [*seeded, "numpy"]


def _autolog_options(env):
    """The arguments replab gives ``mlflow.autolog`` (see the top of this file)."""
    models = env.get("REPLAB_LOG_MODELS") == "1"
    if env.get("REPLAB_AUTOLOG_DEFAULTS") == "1":  # bench/bench_run.py --options
        return {"silent": True, "log_models": models}
    return {"silent": True, "log_models": models, "log_datasets": False,
            "log_traces": False, "log_input_examples": False,
            "log_model_signatures": models}


def _plots_wanted(env):
    return env.get("REPLAB_LOG_MODELS") == "1" or env.get("REPLAB_AUTOLOG_DEFAULTS") == "1"


def _no_sklearn_plots(_module):
    """No confusion-matrix/ROC/PR plots and no estimator.html per classifier fit (no MLflow
    option turns them off; drawing and uploading them was most of autologging's cost).
    Metrics stay."""
    try:
        from mlflow.sklearn import utils
    except Exception:
        return
    if callable(getattr(utils, "_get_classifier_artifacts", None)):
        # Raising (not returning []) also skips what follows it in MLflow: importing
        # matplotlib.pyplot (about 0.7 s) and uploading an empty folder. MLflow catches it
        # (``silent``: no warning) and keeps the metrics it computed before.
        utils._get_classifier_artifacts = _plots_off
    if callable(getattr(utils, "_log_estimator_html", None)):
        utils._log_estimator_html = lambda *args, **kwargs: None  # an upload per fit


class _PlotsOff(Exception):
    pass


def _plots_off(*_args, **_kwargs):
    raise _PlotsOff("replab run: per-fit plots are off (--log-models brings them back)")


def _quick_teardown():
    """Registered before anything else, so it runs after every other exit handler (the
    program's, logging's, MLflow's, the snapshot's): garbage cycles are collected now (their
    finalizers run: files flushed), then what is left is frozen, so the interpreter's
    teardown does not walk every object of MLflow, scikit-learn and SciPy once more (about
    1 s of a short tracked script's run, bench/bench_run.py). REPLAB_FULL_TEARDOWN=1 turns it
    off."""
    import gc

    gc.collect()
    gc.freeze()


_RUN_ID = []
if (os.environ.get("REPLAB_RUN_ID") or os.environ.get("REPLAB_GATE_FD")) \
        and os.environ.get("REPLAB_FULL_TEARDOWN") != "1":
    import atexit

    atexit.register(_quick_teardown)
_replab_gate()
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
