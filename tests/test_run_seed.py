"""`replab run --seed`: the seed is observed, not assumed: the program's interpreter seeds
Python's and NumPy's generators and the run says which; the verdict's profile follows."""

import subprocess
import sys

from mlflow.tracking import MlflowClient

from replab.envdiff import determinism_profile
from replab.runrecord import fetch_record
from replab.verdict import Outcome, compare
from tests.gitrepo import make_repo

DRAWS = ("import random, numpy\n"
         "print(f'draws {random.random():.12f} {numpy.random.rand():.12f}')\n")


def _run(repo, *options):
    out = subprocess.run([sys.executable, "-m", "replab.cli", "run", "-e", "t-seed",
                          "--no-autolog", *options, "--", sys.executable, "draw.py"], cwd=repo,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("replab: run "))
    return line.split()[2], out.stdout.splitlines()[0]  # then MLflow's "View run" lines


def test_seed_reaches_the_generators_and_the_run_says_which(tracking_uri, tmp_path):
    repo = make_repo(tmp_path / "s", {"draw.py": DRAWS})
    (a, out_a), (b, out_b) = _run(repo, "--seed", "5"), _run(repo, "--seed", "5")
    assert out_a == out_b and out_a.startswith("draws ")
    client = MlflowClient(tracking_uri)
    ra, rb = fetch_record(client, a), fetch_record(client, b)
    assert ra.tags["replab.seeds.seeded"] == "random,numpy"
    profile, reasons = determinism_profile(ra.manifest, ra.tags)
    assert profile == "bit-for-bit" and "replab seeded numpy, random" in reasons
    v = compare(ra, rb)
    assert v.verdict is Outcome.REPRODUCED and not v.tolerance_assumed
    # without --seed the draws differ and nothing claims a seed
    (c, out_c) = _run(repo)
    assert out_c != out_a
    rc = fetch_record(client, c)
    assert "replab.seeds.seeded" not in rc.tags
    assert determinism_profile(rc.manifest, rc.tags)[0] == "statistical"
    assert compare(ra, rc).verdict is Outcome.NOT_FAITHFUL  # the seed is a run option
