"""The ``replab`` command. Thin: parse arguments, call the library, display, exit codes.

Exit codes: 0 success, 1 a step failed (a notebook, a run), 2 bad input (ConfigError),
3 the cloud or a service refused (CloudError / ResourceTimeout), 4 replay problems.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import (
    CloudError,
    ConfigError,
    NotebookFailed,
    ReplabError,
    ReplayError,
    ResourceTimeout,
)

DEMO_PARAMS = "examples/params-local.yaml"


def _err(msg: str) -> None:
    print(f"replab: {msg}", file=sys.stderr)


def _cmd_series(args) -> int:
    from . import series

    params = series.load_params(args.params)
    for item in args.param or []:
        key, _, value = item.partition("=")
        params[key] = _yaml_value(value)
    result = series.run_series(params, root=args.root, only=_split(args.only),
                               start=args.start, workdir=args.workdir, progress=print)
    print(f"series done: {len(result.runs)} notebook(s), executed copies in {result.run_dir}")
    return 0


def _cmd_demo(args) -> int:
    from . import series

    root = Path(args.root) if args.root else series.default_root()
    params = series.load_params(root / DEMO_PARAMS)
    result = series.run_series(params, root=root, workdir=args.workdir, progress=print)
    print(f"demo done: {len(result.runs)} notebook(s), executed copies in {result.run_dir}")
    _demo_summary(Path(args.workdir or params.get("workdir") or "work"))
    return 0


def _demo_summary(workdir: Path) -> None:
    """The lab's MLflow URL and the newest run of the demo experiment, when there is a lab."""
    import json

    lab_file = workdir / "lab.json"
    if not lab_file.exists():
        return
    info = json.loads(lab_file.read_text())
    url = info.get("mlflow_url")
    print(f"MLflow: {url}   JupyterLab: {info.get('jupyter_url')} (token: secrets/lab.env)")
    try:
        from mlflow.tracking import MlflowClient

        from . import config

        cfg = config.load(workdir)
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(cfg.experiment)
        from .tracking import TAG_REPLAY_OF

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
    params = {}
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError([("--param", f"{item!r} is not NAME=VALUE")])
        params[key] = value
    result = runner.run_command(command, experiment=args.experiment, params=params,
                                tracking_uri=args.tracking_uri, seed=args.seed,
                                autolog=not args.no_autolog, log_models=args.log_models)
    print(f"replab: run {result.run_id} (experiment {result.experiment_id}) exited with "
          f"{result.returncode}", file=sys.stderr)
    return result.returncode


def _cmd_lab(args) -> int:
    import json

    from . import config, lab

    cfg = config.load(args.workdir)
    if args.env_file:
        _load_env_file(Path(args.env_file))
    if args.action == "launch":
        info = lab.launch(cfg, progress=print)
        print(json.dumps(info, indent=1))
    elif args.action == "status":
        print(json.dumps(lab.status(cfg), indent=1))
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


def _load_env_file(path: Path) -> None:
    """KEY=VALUE lines (the lab's .env) into the environment, never over a set variable."""
    import os

    if not path.is_file():
        raise ConfigError([("--env-file", f"{path} does not exist")])
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and key.strip():
            os.environ.setdefault(key.strip(), value.strip())


def _print_verdict(v) -> int:
    from . import verdict

    print(f"verdict: {v.verdict.value}")
    print(verdict.explain(v))
    return 0 if v.reproduced else 1


def _cmd_replay(args) -> int:
    from . import replay

    result = replay.replay_run(args.run, experiment=args.experiment,
                               tracking_uri=args.tracking_uri, repo=args.repo,
                               workdir=args.workdir, rebuild_env=args.rebuild_env,
                               allow_missing=args.allow_missing, progress=print)
    for line in result.mismatches[:20]:
        print(f"  environment differs from the lock: {line}")
    print(f"replay run {result.execution.new_run_id}")
    print(f"report: {result.report.get('report.html')}")
    return _print_verdict(result.verdict)


def _cmd_verify(args) -> int:
    from . import replay

    v, _a, _b = replay.verify(args.original, args.replay, tracking_uri=args.tracking_uri)
    return _print_verdict(v)


def _cmd_diff(args) -> int:
    from . import replay, verdict

    diffs = replay.diff(args.run_a, args.run_b, tracking_uri=args.tracking_uri)
    if not diffs:
        print("no environment differences")
    for d in diffs:
        print(verdict.describe(d))
    return 0


def _cmd_bundle(args) -> int:
    from . import replay

    path = replay.export_bundle(args.run, args.output, tracking_uri=args.tracking_uri)
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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="replab", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"replab {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("series", help="run the numbered notebooks headless, in order")
    s.add_argument("--params", help="YAML file of parameters (flat: name: value)")
    s.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                   help="one parameter (repeatable; overrides --params)")
    s.add_argument("--only", help="comma-separated notebooks to run (numbers or names)")
    s.add_argument("--from", dest="start", help="start at this notebook (number or name)")
    s.add_argument("--workdir", help="experiment work directory (default: params' or ./work)")
    s.add_argument("--root", help="directory holding the notebooks (default: auto)")
    s.set_defaults(func=_cmd_series)

    d = sub.add_parser("demo", help=f"run the series on site=local with {DEMO_PARAMS}")
    d.add_argument("--workdir", help="work directory (default: work/demo)")
    d.add_argument("--root", help="directory holding the notebooks (default: auto)")
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("config", help="check or show an experiment config")
    c.add_argument("action", choices=["check", "show"])
    c.add_argument("path", nargs="?", default="work", help="config.yaml or its work directory")
    c.set_defaults(func=_cmd_config)

    lb = sub.add_parser("lab", help="the lab: launch, status, stop, backup, restore")
    lb.add_argument("action", choices=["launch", "status", "stop", "backup", "restore"])
    lb.add_argument("--workdir", default="work", help="experiment work directory")
    lb.add_argument("--reason", default="manual", help="backup: a word kept in its name")
    lb.add_argument("--backup", help="restore: a backup key or stamp (default: the latest)")
    lb.add_argument("--force", action="store_true", help="restore over a database with runs")
    lb.add_argument("--if-new", action="store_true",
                    help="restore: only into a new (empty) database, from the latest backup "
                         "with runs")
    lb.add_argument("--env-file", help="read variables (POSTGRES_PASSWORD, ...) from this "
                                       "file, as the lab's .env on the GPU server")
    lb.add_argument("--prune", action="store_true",
                    help="backup: then delete old scheduled backups (keeps the newest 48 and "
                         "one a day for 30 days; manual and teardown backups are kept)")
    lb.set_defaults(func=_cmd_lab)

    r = sub.add_parser("run", help="track an unmodified program: replab run -- python x.py")
    r.add_argument("--experiment", "-e", help="MLflow experiment (default: Default)")
    r.add_argument("--param", "-p", action="append", metavar="NAME=VALUE",
                   help="a parameter to record (repeatable)")
    r.add_argument("--seed", type=int, help="set PYTHONHASHSEED and REPLAB_SEED for the program")
    r.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    r.add_argument("--no-autolog", action="store_true", help="do not switch on autologging")
    r.add_argument("--log-models", action="store_true", help="let autologging save models")
    r.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    r.set_defaults(func=_cmd_run)

    rp = sub.add_parser("replay", help="re-execute a tracked run and judge it")
    rp.add_argument("run", help="run id, 'latest' (with --experiment) or a bundle file")
    rp.add_argument("--experiment", "-e", help="the experiment, for 'latest'")
    rp.add_argument("--repo", help="clone this (path or URL) instead of the recorded remote")
    rp.add_argument("--workdir", default="work", help="where replays/<run>-<stamp>/ go")
    rp.add_argument("--rebuild-env", dest="rebuild_env", action="store_true", default=None,
                    help="always build the environment from the lock")
    rp.add_argument("--no-rebuild-env", dest="rebuild_env", action="store_false",
                    help="never build it: replay in the current environment")
    rp.add_argument("--allow-missing", action="store_true",
                    help="go on when untracked files were not captured")
    rp.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    rp.set_defaults(func=_cmd_replay)

    vf = sub.add_parser("verify", help="the verdict of two existing runs (or bundles)")
    vf.add_argument("original")
    vf.add_argument("replay")
    vf.add_argument("--tracking-uri")
    vf.set_defaults(func=_cmd_verify)

    df = sub.add_parser("diff", help="the ranked environment differences of two runs")
    df.add_argument("run_a")
    df.add_argument("run_b")
    df.add_argument("--tracking-uri")
    df.set_defaults(func=_cmd_diff)

    bd = sub.add_parser("bundle", help="bundle export RUN -o FILE: a run, replayable offline")
    bd.add_argument("action", choices=["export"])
    bd.add_argument("run")
    bd.add_argument("-o", "--output", required=True, help="the bundle file (.tar.gz)")
    bd.add_argument("--tracking-uri")
    bd.set_defaults(func=_cmd_bundle)

    sub.add_parser("capture", help="print the run manifest of this environment "
                                   "(replab capture --help)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["capture"]:  # its own options: replab capture --only git,python --pretty
        from . import capture

        return capture.main(argv[1:])
    args = build_parser().parse_args(argv)
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
        _err(str(exc))
        return 3
    except ReplayError as exc:
        _err(str(exc))
        return 4
    except ReplabError as exc:
        _err(str(exc))
        return 1
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
