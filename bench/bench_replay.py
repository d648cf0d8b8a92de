"""Replay cost: the original digits run vs its replay with the environment cached (the
current one satisfies the lock), side by side against one local MLflow server.
Target: replay <= 1.2 x original + 5 s.

And, with --demo, `replab demo` end to end in a fresh work directory (target <= 90 s on a
2-core machine, after install).

    .venv/bin/python bench/bench_replay.py [--epochs 15] [--demo]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from replab import replay  # noqa: E402
from tests.fixtures_mlflow import start_mlflow, stop_mlflow  # noqa: E402
from tests.gitrepo import make_repo  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--demo", action="store_true", help="also time `replab demo` end to end")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = start_mlflow(tmp / "mlflow")
        try:
            os.environ["MLFLOW_TRACKING_URI"] = server.url
            src = ROOT / "examples" / "digits"
            repo = make_repo(tmp / "digits", {f.name: f.read_text()
                                              for f in src.glob("*.py")})
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "train.py", "--epochs", str(a.epochs)],
                                 cwd=repo, capture_output=True, text=True, check=True)
            t_orig = time.perf_counter() - t0
            run_id = next(ln.split()[1] for ln in out.stdout.splitlines()
                          if ln.startswith("run "))
            t0 = time.perf_counter()
            result = replay.replay_run(run_id, repo=repo, workdir=tmp / "wd")
            t_replay = time.perf_counter() - t0
        finally:
            stop_mlflow(server)
    budget = 1.2 * t_orig + 5
    print(f"original run          : {t_orig:6.1f} s")
    print(f"replay (env cached)   : {t_replay:6.1f} s  verdict {result.verdict.verdict.value}")
    print(f"replay / original     : {t_replay / t_orig:6.2f}x   budget 1.2x + 5 s = "
          f"{budget:.1f} s  {'OK' if t_replay <= budget else 'MISSED'}")
    if a.demo:
        wd = ROOT / "work" / "bench-demo"
        shutil.rmtree(wd, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([str(ROOT / ".venv" / "bin" / "replab"), "demo", "--workdir", str(wd)],
                       cwd=ROOT, check=True, capture_output=True)
        t_demo = time.perf_counter() - t0
        subprocess.run([str(ROOT / ".venv" / "bin" / "replab"), "lab", "stop", "--workdir",
                        str(wd)], cwd=ROOT, capture_output=True)
        print(f"replab demo end to end: {t_demo:6.1f} s  target <= 90 s  "
              f"{'OK' if t_demo <= 90 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
