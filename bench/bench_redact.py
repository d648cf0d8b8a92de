"""Time the masking of a big uncommitted diff: the one-pass scan against the old line-by-line
redaction, with ``git diff`` itself as the yardstick (issue 12: 3 s for a 13.6 MB diff, git
0.3 s).

A temporary repository gets files of training-script-like code (``token``, ``key``, URLs and
a few planted ``password = "..."`` lines among them), committed, then every line rewritten, so
``git diff HEAD`` is about ``--mb`` megabytes. Then, side by side, alternating, after one
warm-up each:

- git: ``git diff`` as the capture runs it;
- old: the previous ``redact_added_lines``, copied below: every added line through
  ``redact_credentials`` (token shapes and URL credentials only);
- new: ``secretmask.mask_added_lines``: token shapes, URL credentials *and* secret-looking
  assignments, found by C-speed passes (one per trigger literal) over the regions of the diff
  that hold its added lines only (here about half of it: every line is rewritten, so each
  file's removed lines are skipped).

Medians are printed with the ratios new/old and new/git. Target: new <= old / 4 and within a
few times git's own time. Also printed: what compiling redact's regexes at import cost (they
are compiled on first use now).

    python bench/bench_redact.py [--mb 13.6] [-n 5]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from replab import redact
from replab.capture.git import _DIFF_ARGS
from replab.redact import redact_credentials
from replab.secretmask import mask_added_lines

TARGET_RATIO = 0.25

_LINES = (
    "    logits = model(batch['input_ids'], attention_mask=batch['attention_mask'])",
    "    tokens = tokenizer(text, max_length=512, truncation=True)",
    "    key = f'layer{i}.weight'",
    "    state[key] = value.detach().cpu()",
    "    loss = criterion(logits.view(-1, vocab), labels.view(-1))",
    "    url = 'https://huggingface.co/datasets/{name}/resolve/main/train.parquet'",
    "    for step, batch in enumerate(loader):",
    "    optimizer.zero_grad(set_to_none=True)",
    "    print(f'epoch {epoch} step {step} loss {loss.item():.4f}')",
    "    pad_token = tokenizer.pad_token or '<pad>'",
    "    cfg = {'lr': 3e-4, 'warmup': 500, 'max_tokens': 4096}",
    "    # the sort key of the leaderboard, see README",
    "",
)


def old_redact_added_lines(diff: str) -> tuple[str, int]:
    """The redaction before the one-pass scan (lib/replab/redact.py, up to issue 12)."""
    if not isinstance(diff, str) or not diff:
        return diff, 0
    lines = diff.split("\n")
    changed = 0
    for i, line in enumerate(lines):
        if line.startswith("+") and not line.startswith("+++ "):
            masked = "+" + redact_credentials(line[1:])
            if masked != line:
                lines[i] = masked
                changed += 1
    return "\n".join(lines), changed


def _git(repo: Path, *args: str) -> bytes:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.org",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.org"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True,
                          capture_output=True).stdout


def make_repo(root: Path, megabytes: float) -> Path:
    """A repository whose uncommitted diff is about ``megabytes`` MB."""
    rng = random.Random(12)
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    per_file = 64 * 1024
    count = max(1, int(megabytes * 1e6 / 2 / per_file))  # every line: one '-', one '+'
    for n in range(count):
        body = []
        size = 0
        while size < per_file:
            line = rng.choice(_LINES)
            body.append(line)
            size += len(line) + 1
        (repo / f"train_{n:04d}.py").write_text("\n".join(body) + "\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "base")
    for n in range(count):
        path = repo / f"train_{n:04d}.py"
        lines = [f"{line}  # v2" if line else "# v2" for line in path.read_text().splitlines()]
        if n % 10 == 0:
            lines.insert(3, f'    password = "planted-{n:04d}-pw"')
        path.write_text("\n".join(lines) + "\n")
    return repo


def _median_ms(fn, rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def _eager_compile_ms() -> float:
    """What compiling redact's patterns at import cost (the old module did it eagerly)."""
    sources = [p for _, p in redact._TOKEN_RULES] + [
        redact._URL, redact._ASSIGNED, redact._NAME_PART, redact._SECRET_FILE]
    re.purge()
    start = time.perf_counter()
    for pattern in sources:
        re.compile(pattern)
    return (time.perf_counter() - start) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=13.6, help="diff size in MB (13.6)")
    parser.add_argument("-n", type=int, default=5, help="timed rounds (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), args.mb)
        diff_args = [*_DIFF_ARGS, "HEAD"]
        text = _git(repo, *diff_args).decode("utf-8", "surrogateescape")
        old_redact_added_lines(text), mask_added_lines(text)  # warm-up
        git_ms, old_ms, new_ms = [], [], []
        for _ in range(args.n):  # alternating, so that machine noise hits all three alike
            git_ms.append(_median_ms(lambda: _git(repo, *diff_args), 1)[0])
            old_ms.append(_median_ms(lambda: old_redact_added_lines(text), 1)[0])
            t, new = _median_ms(lambda: mask_added_lines(text), 1)
            new_ms.append(t)
        _, old_count = old_redact_added_lines(text)
    git_t, old_t, new_t = (statistics.median(x) for x in (git_ms, old_ms, new_ms))
    print(f"diff: {len(text.encode()) / 1e6:.1f} MB, {text.count(chr(10))} lines; "
          f"rounds: {args.n}")
    print(f"git diff (yardstick)                    median {git_t:8.1f} ms")
    print(f"old: line by line, shapes + URLs        median {old_t:8.1f} ms  "
          f"({old_count} lines masked)")
    print(f"new: added lines, shapes+URLs+assigns   median {new_t:8.1f} ms  "
          f"({new.lines} lines masked)")
    ratio = new_t / old_t
    print(f"new/old: {ratio:.3f} (target <= {TARGET_RATIO})   new/git: {new_t / git_t:.2f}   "
          f"{'OK' if ratio <= TARGET_RATIO else 'MISSED'}")
    print(f"regex compile that import no longer pays: {_eager_compile_ms():.1f} ms")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
