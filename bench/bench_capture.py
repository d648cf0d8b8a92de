"""Time the full capture manifest against what the prior tool (ReproGen) ran for the same job.

Baseline: ReproGen's ``log_git`` / ``log_python`` / ``log_gpu`` without the MLflow calls:
``git rev-parse --show-toplevel``, ``git diff --quiet``, ``git config --get remote.origin.url``,
``git rev-parse --abbrev-ref HEAD``, ``git rev-parse HEAD``, ``git diff``, ``pip freeze``
(this interpreter's pip), and ``nvidia-smi`` (else ``rocm-smi``) when present.

Both run side by side in this process, alternating, after one warm-up each; the medians are
printed with their ratio. Targets: ours <= 1/4 of the baseline and < 300 ms.

Also timed, side by side with the same baseline: ``python -m replab.capture`` as a whole process
(interpreter start-up, imports, every capture, the JSON printed), what ``replab capture`` and a
``replab run`` child pay. Target: <= 1/4 of the baseline. It runs in this environment (the
target is judged there) and, printed beside it, with bytecode cached as an installed package
has it: where ``PYTHONDONTWRITEBYTECODE`` is set, a checkout without ``__pycache__`` compiles
replab's sources at every start, while pip, the baseline, starts from its installed bytecode.

    python bench/bench_capture.py [--repo PATH] [-n 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from replab.capture import collect

TARGET_RATIO = 0.25
TARGET_MS = 300.0


def _run(args: list[str], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, check=False)


def baseline(repo: str) -> None:
    """What ReproGen's log_git, log_python and log_gpu ran (their results are dropped)."""
    root = _run(["git", "rev-parse", "--show-toplevel"], repo).stdout.decode().strip() or repo
    _run(["git", "diff", "--quiet"], root)
    _run(["git", "config", "--get", "remote.origin.url"], root)
    _run(["git", "rev-parse", "--abbrev-ref", "HEAD"], root)
    _run(["git", "rev-parse", "HEAD"], root)
    _run(["git", "diff"], root)
    platform.platform()
    _run([sys.executable, "-m", "pip", "freeze"], root)
    if shutil.which("nvidia-smi"):
        _run(["nvidia-smi"], root)
    elif shutil.which("rocm-smi"):
        _run(["rocm-smi"], root)


def ours(repo: str) -> dict:
    return collect(repo=repo)


def whole_process(repo: str, env: dict[str, str] | None = None) -> None:
    """``python -m replab.capture`` from start-up to exit (its JSON dropped)."""
    subprocess.run([sys.executable, "-m", "replab.capture", "--repo", repo],
                   capture_output=True, check=True, env=env)


def cached_bytecode_env(cache_dir: str) -> dict[str, str]:
    """This environment with bytecode written to and read from ``cache_dir`` (the first run
    fills it), as an installed package starts."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache_dir
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("-n", type=int, default=15, help="timed rounds (default 15)")
    args = parser.parse_args(argv)

    cache_dir = tempfile.mkdtemp(prefix="bench-capture-pycache-")
    cached_env = cached_bytecode_env(cache_dir)
    baseline(args.repo)  # warm-up: file caches, imports
    manifest = ours(args.repo)
    whole_process(args.repo)
    whole_process(args.repo, cached_env)  # fills the bytecode cache
    base_ms: list[float] = []
    our_ms: list[float] = []
    proc_ms: list[float] = []
    cached_ms: list[float] = []
    per_capture: dict[str, list[float]] = {}
    for _ in range(args.n):
        start = time.perf_counter()
        baseline(args.repo)
        base_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        manifest = ours(args.repo)
        our_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        whole_process(args.repo)
        proc_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        whole_process(args.repo, cached_env)
        cached_ms.append((time.perf_counter() - start) * 1000)
        for name, ms in manifest["timings_ms"].items():
            per_capture.setdefault(name, []).append(ms)

    base, mine = statistics.median(base_ms), statistics.median(our_ms)
    ratio = mine / base
    print(f"repo: {args.repo}  rounds: {args.n}  python: {platform.python_version()}")
    print(f"baseline (ReproGen: git x6, pip freeze, *-smi): median {base:8.1f} ms "
          f"(min {min(base_ms):.1f}, max {max(base_ms):.1f})")
    print(f"replab.capture.collect() full manifest:       median {mine:8.1f} ms "
          f"(min {min(our_ms):.1f}, max {max(our_ms):.1f})")
    print(f"ratio ours/baseline: {ratio:.3f}  (speed-up x{base / mine:.1f})")
    proc = statistics.median(proc_ms)
    print(f"python -m replab.capture, whole process:     median {proc:8.1f} ms "
          f"(min {min(proc_ms):.1f}, max {max(proc_ms):.1f})  ratio {proc / base:.3f} "
          f"(target <= {TARGET_RATIO}) {'met' if proc / base <= TARGET_RATIO else 'MISSED'}")
    cached = statistics.median(cached_ms)
    writes = "not written" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "written"
    print(f"  the same, bytecode cached as installed:    median {cached:8.1f} ms "
          f"(min {min(cached_ms):.1f}, max {max(cached_ms):.1f})  ratio {cached / base:.3f} "
          f"(this environment: bytecode {writes})")
    shutil.rmtree(cache_dir, ignore_errors=True)
    print("per capture (median ms): " + ", ".join(
        f"{name} {statistics.median(v):.1f}" for name, v in per_capture.items()))
    print(f"errors: {manifest['errors'] or 'none'}; skipped: {sorted(manifest['skipped'])}")
    ok = ratio <= TARGET_RATIO and mine < TARGET_MS and proc / base <= TARGET_RATIO
    print(f"targets (ratio <= {TARGET_RATIO}, < {TARGET_MS:.0f} ms): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
