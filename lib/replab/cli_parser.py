"""The ``replab`` command's parser: every command's description, examples and exit codes.

:mod:`replab.cli` gives it the command functions; this module holds only the words.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Mapping, Sequence

DEMO_PARAMS = "examples/params-local.yaml"
WIDTH = 88  # the help's paragraphs (RawDescriptionHelpFormatter keeps the examples' lines)

EXIT_CODES = {
    0: "success (replay, verify: the verdict is REPRODUCED or REPRODUCED_WITHIN_TOLERANCE)",
    1: "a step failed: a notebook or a lab operation; replay, verify: NOT_REPRODUCED",
    2: "bad input: usage, an invalid config or parameter, a missing file, no tracking server",
    3: "the cloud or a service refused or timed out",
    4: "the run cannot be replayed (not found, its workspace or environment cannot be rebuilt)",
    5: "replay, verify: NOT_FAITHFUL (params, code, entrypoint, run options or inputs differ)",
    6: "replay, verify: INCOMPLETE (no evidence, or some of it missing on one side)",
    7: "replay, verify --strict: REPRODUCED_WITHIN_TOLERANCE on an assumed tolerance (the "
       "spread was not measured: --repeats)",
    130: "interrupted",
}


def _epilog(examples: Sequence[str], codes: Sequence[int] | Sequence[str]) -> str:
    lines = ["examples:", *(f"  {e}" for e in examples), "", "exit codes:"]
    for c in codes:
        text = f"{c}" if isinstance(c, str) else f"{c:<3} {EXIT_CODES[c]}"
        lines.append(textwrap.fill(text, WIDTH, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def _command(sub, name: str, summary: str, description: str, examples: Sequence[str],
             codes: Sequence[int] | Sequence[str], func) -> argparse.ArgumentParser:
    """A subcommand with its one-paragraph description, examples and exit codes."""
    c = sub.add_parser(name, help=summary, description=textwrap.fill(description, WIDTH),
                       epilog=_epilog(examples, codes),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.set_defaults(func=func)
    return c


def _server_options(c: argparse.ArgumentParser, also: str = "") -> None:
    c.add_argument("--tracking-uri", help="MLflow server (default: $MLFLOW_TRACKING_URI, "
                                          "else the lab's, from WORKDIR/lab.json)")
    c.add_argument("--workdir", default="work",
                   help=f"experiment work directory whose lab.json names the MLflow server{also}"
                        " (default: ./work)")


_SERVER = ("The MLflow server is --tracking-uri, else $MLFLOW_TRACKING_URI, else the lab of "
           "--workdir (its lab.json); with none of them the command stops (exit 2) rather than "
           "write a stray mlflow.db.")


def build_parser(handlers: Mapping[str, Callable[[argparse.Namespace], int]],
                 description: str) -> argparse.ArgumentParser:
    """The parser; ``handlers`` maps each command to its function (set as ``args.func``)."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="replab", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(["replab demo", "replab series --params work/params.yaml --from 1",
                        "replab run -e mnist -- python train.py --lr 0.1",
                        "replab replay latest -e mnist --workdir work",
                        "replab <command> --help"], sorted(EXIT_CODES)))
    p.add_argument("--version", action="version", version=f"replab {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _command(sub, "series", "run the numbered notebooks headless, in order",
                 "Run the numbered notebooks (0_configure ... 5_teardown) headless through "
                 "papermill, in order, with one flat parameters file; each notebook gets the "
                 "parameters it declares, path parameters made absolute. A parameter no "
                 "notebook declares is refused before anything runs. Executed notebooks are "
                 "kept in WORKDIR/runs/<stamp>/; the series stops at the first failing one.",
                 ["replab series --params examples/params-local.yaml",
                  "replab series --params work/params.yaml --from 1 -p keep_lab=true",
                  "replab series --params p.yaml --only 0,1 --workdir work/mnist"],
                 [0, "1   a notebook failed (its executed copy is named)", 2, 3, 130],
                 handlers["series"])
    s.add_argument("--params", help="YAML file of parameters (flat: name: value)")
    s.add_argument("-p", "--param", action="append", metavar="NAME=VALUE",
                   help="one parameter (repeatable; overrides --params)")
    s.add_argument("--only", help="comma-separated notebooks to run (numbers or names)")
    s.add_argument("--from", dest="start", help="start at this notebook (number or name)")
    s.add_argument("--workdir", help="experiment work directory (default: params' or ./work)")
    s.add_argument("--root", help="directory holding the notebooks (default: auto)")

    d = _command(sub, "demo", f"the whole series on this machine ({DEMO_PARAMS})",
                 "Run the whole series on this machine (site local, no cloud) with "
                 f"{DEMO_PARAMS}: configure, credentials, local checks, a local lab (MLflow + "
                 "JupyterLab), an example training run, its replay and verdict, and a "
                 "teardown that backs the lab up and leaves it running. Prints the lab's "
                 "URLs, the run and the verdict.",
                 ["replab demo", "replab demo --workdir /tmp/demo",
                  "replab lab stop --workdir work/demo   # afterwards"],
                 [0, "1   a notebook failed (its executed copy is named)", 2, 130],
                 handlers["demo"])
    d.add_argument("--workdir", help="work directory (default: work/demo in the artifact)")
    d.add_argument("--root", help="directory holding the notebooks (default: auto)")

    c = _command(sub, "config", "check or show an experiment config",
                 "Validate an experiment's config.yaml (written by 0_configure) and say so "
                 "(check), or print its summary (show). Every problem is named with its "
                 "field, the value and what is allowed.",
                 ["replab config check work", "replab config show work/config.yaml"],
                 [0, 2], handlers["config"])
    c.add_argument("action", choices=["check", "show"])
    c.add_argument("path", nargs="?", default="work", help="config.yaml or its work directory")

    lb = _command(sub, "lab", "the lab: launch, status, stop, backup, restore",
                  "Manage the experiment's lab (MLflow + JupyterLab): local processes for "
                  "site local, the compose stack on the GPU server otherwise. status prints "
                  "a table of the services (--json for machines); backup copies MLflow's "
                  "database to the backups bucket; restore brings one back.",
                  ["replab lab status --workdir work", "replab lab status --json",
                   "replab lab backup --prune", "replab lab restore --if-new",
                   "replab lab stop --workdir work/demo"],
                  [0, "1   status: the lab is not healthy; another action failed", 2, 3],
                  handlers["lab"])
    lb.add_argument("action", choices=["launch", "status", "stop", "backup", "restore"])
    lb.add_argument("--workdir", default="work", help="experiment work directory")
    lb.add_argument("--json", action="store_true", help="launch, status: print JSON")
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

    r = _command(sub, "run", "track an unmodified program: replab run -- python x.py",
                 "Run an unmodified program as one tracked MLflow run: its code (commit, "
                 "diff, untracked files), environment, parameters, printed output and exit "
                 "status are recorded, with autologging on, so the run can be replayed. "
                 + _SERVER,
                 ["replab run -e mnist -- python train.py --lr 0.1",
                  "replab run -e mnist -p note=baseline --seed 0 -- python train.py",
                  "replab run --tracking-uri http://127.0.0.1:5000 -- python fit.py"],
                 ["the program's own exit code (0 when it succeeded)",
                  "2   nothing to run, the program cannot start, or no tracking server",
                  "3   the tracking server is unreachable or refused"], handlers["run"])
    r.add_argument("--experiment", "-e", help="MLflow experiment (default: Default)")
    r.add_argument("--param", "-p", action="append", metavar="NAME=VALUE",
                   help="a parameter to record (repeatable)")
    r.add_argument("--seed", type=int, help="set PYTHONHASHSEED and REPLAB_SEED for the program")
    _server_options(r)
    r.add_argument("--no-autolog", action="store_true", help="do not switch on autologging")
    r.add_argument("--log-models", action="store_true",
                   help="let autologging save models, their signatures and input examples, "
                        "and scikit-learn's per-fit plots (off: they cost most of "
                        "autologging's time)")
    r.add_argument("--outputs", action="append", metavar="DIR", default=[],
                   help="a directory (or file) of the program's outputs, relative to its "
                        "working directory (repeatable): its files are hashed, kept and "
                        "compared on replay (CSV/TSV/JSON/NPY/text by value). Default: the "
                        "files the program creates or changes under its working directory")
    r.add_argument("--no-output-evidence", action="store_true",
                   help="do not record printed output and output files as evidence")
    r.add_argument("--compare-stderr", action="store_true",
                   help="compare stderr too, not only stdout")
    r.add_argument("--mask", action="append", metavar="[NAME=]REGEX", default=[],
                   help="also mask what this regular expression matches in printed output "
                        "before comparing (repeatable; NAME: letters only)")
    r.add_argument("--no-mask", action="append", metavar="NAME", default=[],
                   help="drop a default mask (timestamp, date, clock, progress, duration, "
                        "tmp-path, pid, hex-address, uuid, mlflow-link) or all (repeatable)")
    r.add_argument("command_argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")

    rp = _command(sub, "replay", "re-execute a tracked run and judge it",
                  "Re-execute a tracked run: rebuild its workspace (recorded commit, "
                  "uncommitted diff, untracked files), reuse or rebuild its environment from "
                  "the lock, run the recorded entrypoint with the recorded parameters, record "
                  "the new run linked to the original, and print the verdict with the "
                  "environment differences. The workspace and report go to "
                  "WORKDIR/replays/<run>-<stamp>/. " + _SERVER,
                  ["replab replay latest -e demo --workdir work/demo",
                   "replab replay 3f2a...c9 --repo . --no-rebuild-env",
                   "replab replay latest -e demo --repeats 3 --strict",
                   "replab replay run.tar.gz --tracking-uri http://127.0.0.1:5000"],
                  [0, 1, 2, 3, 4, 5, 6, 7, 130], handlers["replay"])
    rp.add_argument("run", help="run id, 'latest' (with --experiment) or a bundle file")
    rp.add_argument("--experiment", "-e", help="the experiment, for 'latest'")
    rp.add_argument("--repo", help="clone this (path or URL) instead of the recorded remote")
    rp.add_argument("--rebuild-env", dest="rebuild_env", action="store_true", default=None,
                    help="always build the environment from the lock")
    rp.add_argument("--no-rebuild-env", dest="rebuild_env", action="store_false",
                    help="never build it: replay in the current environment")
    rp.add_argument("--allow-missing", action="store_true",
                    help="go on when untracked files were not captured")
    rp.add_argument("--repeats", type=int, default=1, metavar="N",
                    help="replay N times, each in a fresh workspace, and judge the original "
                         "against the measured spread (N >= 3: within 3 sd of the mean)")
    rp.add_argument("--strict", action="store_true",
                    help="exit 7 when the verdict passes only on an assumed tolerance (for "
                         "CI)")
    _server_options(rp, ", and where replays/<run>-<stamp>/ go")

    vf = _command(sub, "verify", "the verdict of two existing runs (or bundles)",
                  "Compare two existing runs (ids or bundle files): metrics curve by curve, "
                  "printed numbers with tolerances, output files, and whether the second is a "
                  "faithful replay of the first; print the verdict and why. Two bundles need "
                  "no server. " + _SERVER,
                  ["replab verify ORIGINAL_ID REPLAY_ID --workdir work",
                   "replab verify original.tar.gz replay.tar.gz",
                   "replab verify ORIGINAL_ID REPLAY_1 REPLAY_2 REPLAY_3"],
                  [0, 1, 2, 3, 4, 5, 6, 7],
                  handlers["verify"])
    vf.add_argument("original", help="the original run: id or bundle file")
    vf.add_argument("replay", nargs="+",
                    help="the replay: id or bundle file; several: their measured spread judges "
                         "the original")
    vf.add_argument("--strict", action="store_true",
                    help="exit 7 when the verdict passes only on an assumed tolerance")
    _server_options(vf)

    df = _command(sub, "diff", "the ranked environment differences of two runs",
                  "Print the environment differences of two runs (ids or bundle files), "
                  "most likely to move the metrics first: packages, Python, CUDA and GPU, "
                  "CPU, platform, determinism settings. " + _SERVER,
                  ["replab diff RUN_A RUN_B --workdir work",
                   "replab diff a.tar.gz b.tar.gz"], [0, 2, 3, 4], handlers["diff"])
    df.add_argument("run_a", help="a run id or bundle file")
    df.add_argument("run_b", help="a run id or bundle file")
    _server_options(df)

    bd = _command(sub, "bundle", "bundle export RUN -o FILE: a run, replayable offline",
                  "Export a run's whole record (params, metrics, manifest, lock, captured "
                  "files) to one .tar.gz that replay, verify and diff read without its "
                  "tracking server, e.g. to hand a run to a reviewer. " + _SERVER,
                  ["replab bundle export RUN_ID -o run.tar.gz --workdir work"],
                  [0, 2, 3, 4], handlers["bundle"])
    bd.add_argument("action", choices=["export"])
    bd.add_argument("run", help="the run id")
    bd.add_argument("-o", "--output", required=True, help="the bundle file (.tar.gz)")
    _server_options(bd)

    sub.add_parser("capture", help="print the run manifest of this environment "
                                   "(replab capture --help)")
    return p
