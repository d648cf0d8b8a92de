"""``replab run`` overhead on a short, third-party-style scikit-learn script (it knows nothing
of replab or MLflow: a few estimators fitted, scored, cross-validated), side by side with the
plain run, against one local MLflow server. Target: tracked <= 1.3 x plain + 3 s.

Also timed, to say where the time goes: ``replab run --no-autolog`` (the parent's capture,
run creation, output evidence, no autologging in the child) and, with ``--options``, the
child's autologging with MLflow's defaults instead of replab's choices
(``REPLAB_AUTOLOG_DEFAULTS=1``, see ``replab/_child/sitecustomize.py``). CPU seconds (the
command and its children, not the server's) are printed too: on a shared machine they vary
less than wall time.

    .venv/bin/python bench/bench_run.py [-n 3] [--options]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from tests.fixtures_mlflow import start_mlflow, stop_mlflow  # noqa: E402
from tests.gitrepo import make_repo  # noqa: E402

SCRIPT = """\
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
models = {
    "logreg": make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)),
    "forest": RandomForestClassifier(n_estimators=100, random_state=0),
    "svc": SVC(gamma=0.001, C=10, probability=True, random_state=0),
}
for name, model in models.items():
    model.fit(X_train, y_train)
    print(f"{name}: test accuracy {model.score(X_test, y_test):.4f}")
    scores = cross_val_score(model, X_train, y_train, cv=5)
    print(f"{name}: cv accuracy {np.mean(scores):.4f} +- {np.std(scores):.4f}")
"""

TARGET_RATIO, TARGET_PLUS_S = 1.3, 3.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the command and its children; not the server's)."""
    t0, c0 = time.perf_counter(), _cpu()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took, cpu = time.perf_counter() - t0, _cpu() - c0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return took, cpu


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=3, help="rounds, interleaved; medians (default 3)")
    p.add_argument("--options", action="store_true",
                   help="also time autologging with MLflow's default options")
    a = p.parse_args()
    replab = str(ROOT / ".venv" / "bin" / "replab")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = start_mlflow(tmp / "mlflow")
        try:
            env = dict(os.environ, MLFLOW_TRACKING_URI=server.url)
            repo = make_repo(tmp / "proj", {"script.py": SCRIPT})
            variants = {
                "plain": [sys.executable, "script.py"],
                "replab run": [replab, "run", "--experiment", "bench-run", "--",
                               sys.executable, "script.py"],
                "replab run --no-autolog": [replab, "run", "--experiment", "bench-run",
                                            "--no-autolog", "--", sys.executable,
                                            "script.py"],
            }
            envs = {name: env for name in variants}
            if a.options:
                variants["replab run, MLflow's autolog defaults"] = variants["replab run"]
                envs["replab run, MLflow's autolog defaults"] = dict(
                    env, REPLAB_AUTOLOG_DEFAULTS="1")
            timed(variants["plain"], repo, env)  # warm-up: file caches
            timed(variants["replab run"], repo, env)
            times: dict[str, list[float]] = {name: [] for name in variants}
            cpus: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(a.n):
                for name, cmd in variants.items():
                    wall, cpu = timed(cmd, repo, envs[name])
                    times[name].append(wall)
                    cpus[name].append(cpu)
        finally:
            stop_mlflow(server)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    plain = med["plain"]
    cpu_plain = statistics.median(cpus["plain"])
    for name, t in med.items():
        cpu = statistics.median(cpus[name])
        print(f"{name:40s}: {t:6.2f} s  ({t / plain:5.2f}x plain; all: "
              f"{', '.join(f'{x:.1f}' for x in times[name])})  CPU {cpu:6.2f} s "
              f"({cpu / cpu_plain:4.2f}x)")
    budget = TARGET_RATIO * plain + TARGET_PLUS_S
    tracked = med["replab run"]
    ok = tracked <= budget
    print(f"replab run / plain: {tracked / plain:.2f}x; budget {TARGET_RATIO}x + "
          f"{TARGET_PLUS_S:.0f} s = {budget:.1f} s; tracked / budget {tracked / budget:.2f}  "
          f"{'OK' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
