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
    return 0


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
