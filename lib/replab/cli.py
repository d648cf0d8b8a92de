"""replab: reproducible ML on Chameleon Cloud. Run the numbered notebooks headless, track
unmodified programs in MLflow, replay a tracked run and get a verdict on whether it
reproduced, and manage the experiment's lab (JupyterLab + MLflow).
"""
# The command is thin: parse arguments, make paths absolute and find the tracking server at
# this edge, call the library, display, map errors to the exit codes in EXIT_CODES.

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_parser import DEMO_PARAMS, EXIT_CODES
from .errors import (
    CloudError,
    ConfigError,
    NotebookFailed,
    ReplabError,
    ReplayError,
    ResourceTimeout,
)

__all__ = ["EXIT_CODES", "build_parser", "main", "status_table"]

def _err(msg: str) -> None:
    print(f"replab: {msg}", file=sys.stderr)


# -- the edge: paths and the tracking server --------------------------------------------------
_RUN_ARGS = ("run", "original", "replay", "run_a", "run_b")  # run ids, or bundle files


def _absolute_args(args: argparse.Namespace) -> None:
    """Every path argument made absolute against the current directory, here, once: the
    library runs replays and kernels in other directories."""
    from . import parampaths

    for name, value in vars(args).items():
        kind = "run" if name in _RUN_ARGS else ("workdir" if name == "path" else name)
        if isinstance(value, list) and name in _RUN_ARGS:  # verify's several replays
            setattr(args, name, [parampaths.absolute(v) if parampaths.is_path(kind, v) else v
                                 for v in value])
        elif parampaths.is_path(kind, value):
            setattr(args, name, parampaths.absolute(value))


def _server(args, *, required: bool = True) -> str | None:
    """The MLflow server of this command: --tracking-uri, $MLFLOW_TRACKING_URI, or
    --workdir's lab.json; ConfigError naming the three ways when none is known."""
    from . import trackingserver

    uri, where = trackingserver.find(args.tracking_uri, args.workdir)
    if not uri and required:
        trackingserver.resolve(None, args.workdir)  # raises, saying how to give one
    args.server = (uri, where)
    return uri


def _bundles_only(*runs: str) -> bool:
    from . import parampaths

    return all(parampaths.is_path("run", r) for r in runs)


# -- commands ---------------------------------------------------------------------------------
def _cmd_series(args) -> int:
    from . import series

    params = series.load_params(args.params)
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError([("-p", f"{item!r} is not NAME=VALUE")])
        params[key] = _yaml_value(value)
    result = series.run_series(params, root=args.root, only=_split(args.only),
                               start=args.start, workdir=args.workdir, progress=print)
    print(f"series done: {len(result.runs)} notebook(s), executed copies in {result.run_dir}")
    return 0


def _cmd_demo(args) -> int:
    from . import series

    root = Path(args.root) if args.root else series.default_root()
    params = series.load_params(root / DEMO_PARAMS)
    # the demo's parameters (workdir: work/demo, repo: .) are relative to the artifact
    result = series.run_series(params, root=root, workdir=args.workdir, base=root,
                               progress=print)
    print(f"demo done: {len(result.runs)} notebook(s), executed copies in {result.run_dir}")
    _demo_summary(Path(result.workdir))
    return 0


def _demo_summary(workdir: Path) -> None:
    """The lab's MLflow URL and the newest run of the demo experiment, when there is a lab."""
    import json

    lab_file = workdir / "lab.json"
    if not lab_file.exists():
        return
    info = json.loads(lab_file.read_text())
    url = info.get("mlflow_url")
    from . import lab

    print(lab.describe(workdir))  # the URLs, with JupyterLab's tokenized, and the token file
    try:
        from mlflow.tracking import MlflowClient

        from . import config
        from .tracking import TAG_REPLAY_OF

        cfg = config.load(workdir)
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(cfg.experiment)
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"],
                                  max_results=20) if exp else []
        originals = [r for r in runs if TAG_REPLAY_OF not in r.data.tags]
        if originals:  # the example run (the newest run may be its replay)
            r = originals[0]
            print(f"run {r.info.run_id}: {url}/#/experiments/{exp.experiment_id}/runs/"
                  f"{r.info.run_id}")
    except Exception as exc:  # the summary is a convenience; the demo itself succeeded
        print(f"(could not list the demo's runs: {exc})")
    reports = sorted(workdir.glob("replays/*/report/verdict.json"),
                     key=lambda p: p.stat().st_mtime)
    if reports:
        v = json.loads(reports[-1].read_text())
        print(f"replay of run {v.get('original_id')}: verdict {v.get('verdict')} "
              f"(report: {reports[-1].parent / 'report.html'})")
    print(f"stop the lab with: replab lab stop --workdir {workdir}")


def _cmd_config(args) -> int:
    from . import config, guide

    cfg = config.load(args.path)
    if args.action == "show":
        for key, value in guide.summary(cfg):
            print(f"{key:>16}: {value}")
    else:
        print(f"{config.config_path(cfg.workdir) if Path(args.path).is_dir() else args.path}: "
              "valid")
    return 0


def _cmd_run(args) -> int:
    from . import runner

    command = list(args.command_argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError([("command", "nothing to run: give it after '--', e.g. "
                                       "replab run -- python train.py")])
    params = {}
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError([("--param", f"{item!r} is not NAME=VALUE")])
        params[key] = value
    result = runner.run_command(command, experiment=args.experiment, params=params,
                                tracking_uri=_server(args), seed=args.seed,
                                autolog=not args.no_autolog, log_models=args.log_models,
                                **runner.output_options(args))
    print(f"replab: run {result.run_id} (experiment {result.experiment_id}) exited with "
          f"{result.returncode}", file=sys.stderr)
    rc = result.returncode
    _lighter_teardown()
    return 128 - rc if rc < 0 else rc  # killed by signal N: 128+N, as a shell says


def _lighter_teardown() -> None:
    """The process is about to exit: collect garbage cycles now (finalizers run), then freeze
    the rest so the interpreter's teardown does not walk MLflow's objects once more (about
    0.5 s of every replab run; the program's interpreter does the same, _child/)."""
    gc.collect()
    gc.freeze()


def _cmd_lab(args) -> int:
    import json

    from . import config, lab

    cfg = config.load(args.workdir)
    if args.env_file:
        _load_env_file(Path(args.env_file))
    if args.action == "launch":
        info = lab.launch(cfg, progress=print)
        print(json.dumps(info, indent=1) if args.json else _key_values(info))
    elif args.action == "status":
        info = lab.status(cfg)
        print(json.dumps(info, indent=1) if args.json else status_table(info))
        return 0 if _healthy(info) else 1
    elif args.action == "stop":
        for line in lab.stop(cfg):
            print(line)
    elif args.action == "backup":
        from .lab import backup, schedule

        info = backup.backup(cfg, reason=args.reason)
        print(f"backed up {info.runs} run(s) to {info.location}")
        if args.prune:
            schedule.prune(cfg, progress=print)
    elif args.action == "restore":
        from .lab import backup

        if args.if_new:
            done = backup.restore_if_new(cfg, progress=print)
            print(f"restored {done.runs} run(s) from {done.location}" if done else
                  "the database has content, or no backup has any: nothing restored")
            return 0
        info = backup.restore(cfg, args.backup, force=args.force, progress=print)
        print(f"restored {info.runs} run(s) from {info.location}")
    return 0


def _healthy(info: dict) -> bool:
    if "healthy" in info:
        return bool(info["healthy"])
    services = info.get("services") or {}  # a server lab: {service: health or state}
    return bool(services) and all(str(v) in ("healthy", "running") for v in services.values())


def _key_values(info: dict) -> str:
    width = max((len(str(k)) for k in info), default=0)
    return "\n".join(f"{k:>{width}}: {v}" for k, v in info.items() if v not in (None, ""))


_COLUMNS = ("running", "healthy", "port", "pid", "url", "log")


def status_table(info: dict) -> str:
    """``lab status`` for people: a line about the lab, then one row per service."""
    services = info.get("services") or {}
    notes = [str(line) for line in info.get("summary") or []]  # e.g. unrecorded processes
    head = {k: v for k, v in info.items()
            if k not in ("services", "summary", "unrecorded") and v not in (None, "", [])}
    state = "healthy" if _healthy(info) else "NOT healthy"
    lines = [f"lab: {state}  " + "  ".join(f"{k}={v}" for k, v in head.items()
                                          if k not in ("healthy", "running"))]
    if not services:
        return "\n".join([*lines, "no services (the lab was never launched here)", *notes])
    if all(isinstance(v, dict) for v in services.values()):
        cols = [c for c in _COLUMNS if any(c in v for v in services.values())]
        rows = [[name, *(_cell(v.get(c)) for c in cols)] for name, v in services.items()]
    else:
        cols, rows = ["state"], [[name, str(v)] for name, v in services.items()]
    rows = [["service", *cols], *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([*lines, *notes])


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value in (None, "") else str(value)


def _load_env_file(path: Path) -> None:
    """KEY=VALUE lines (the lab's .env) into the environment, never over a set variable."""
    import os

    if not path.is_file():
        raise ConfigError([("--env-file", f"{path} does not exist")])
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and key.strip():
            os.environ.setdefault(key.strip(), value.strip())


def _print_verdict(v, strict: bool = False) -> int:
    from . import verdict

    print(f"verdict: {v.verdict.value}")
    print(verdict.explain(v))
    return v.exit_code(strict)


def _cmd_replay(args) -> int:
    from . import replay

    result = replay.replay_run(args.run, experiment=args.experiment,
                               tracking_uri=_server(args), repo=args.repo,
                               workdir=args.workdir, rebuild_env=args.rebuild_env,
                               allow_missing=args.allow_missing, repeats=args.repeats,
                               progress=print)
    for line in result.mismatches[:20]:
        print(f"  environment differs from the lock: {line}")
    print(f"replay run {result.execution.new_run_id}")
    print(f"report: {result.report.get('report.html')}")
    return _print_verdict(result.verdict, args.strict)


def _cmd_verify(args) -> int:
    from . import replay

    uri = _server(args, required=not _bundles_only(args.original, *args.replay))
    v, _a, _b = replay.verify(args.original, *args.replay, tracking_uri=uri)
    return _print_verdict(v, args.strict)


def _cmd_diff(args) -> int:
    from . import replay, verdict

    uri = _server(args, required=not _bundles_only(args.run_a, args.run_b))
    diffs = replay.diff(args.run_a, args.run_b, tracking_uri=uri)
    if not diffs:
        print("no environment differences")
    for d in diffs:
        print(verdict.describe(d))
    return 0


def _cmd_bundle(args) -> int:
    from . import replay

    path = replay.export_bundle(args.run, args.output, tracking_uri=_server(args))
    print(f"bundle written: {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0


def _yaml_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _split(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def build_parser():
    """The ``replab`` argument parser (its texts live in :mod:`replab.cli_parser`)."""
    from . import cli_parser

    return cli_parser.build_parser({
        "series": _cmd_series, "demo": _cmd_demo, "config": _cmd_config, "lab": _cmd_lab,
        "run": _cmd_run, "replay": _cmd_replay, "verify": _cmd_verify, "diff": _cmd_diff,
        "bundle": _cmd_bundle}, __doc__)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["capture"]:  # its own options: replab capture --only git,python --pretty
        from .capture.__main__ import main as capture_main

        return capture_main(argv[1:])
    args = build_parser().parse_args(argv)
    _absolute_args(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except NotebookFailed as exc:
        _err(str(exc))
        return 1
    except ConfigError as exc:
        _err(str(exc))
        return 2
    except (CloudError, ResourceTimeout) as exc:
        _err(_naming_server(args, exc))
        return 3
    except ReplayError as exc:
        _err(_naming_server(args, exc))
        return 4
    except ReplabError as exc:
        _err(str(exc))
        return 1
    except KeyboardInterrupt as exc:
        _err(str(exc) or "interrupted")
        return 130


def _naming_server(args, exc: Exception) -> str:
    """The message, with the tracking server asked (and where it came from) when the
    message does not name it already."""
    uri, where = getattr(args, "server", (None, ""))
    text = str(exc)
    if uri and uri not in text:
        text = f"{text} (tracking server {uri}, from {where})"
    return text


if __name__ == "__main__":
    sys.exit(main())
