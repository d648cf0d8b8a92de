"""``python -m replab.capture`` (and ``replab capture``): print the run manifest as JSON."""

from __future__ import annotations

import argparse
import sys

from replab.capture import collect, manifest_json, names


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, collect the manifest and print it; returns the exit status (2 for an
    unknown capture name)."""
    parser = argparse.ArgumentParser(
        prog="replab capture",
        description="Print the environment manifest of this machine and repository as JSON.")
    parser.add_argument("--repo", default=None,
                        help="repository (or any directory in it); default: the current one")
    parser.add_argument("--only", default=None, metavar="NAME,NAME",
                        help=f"captures to run (default all: {','.join(names())})")
    parser.add_argument("--input", action="append", dest="inputs", metavar="PATH_OR_URI",
                        help="a data input to hash (repeatable)")
    parser.add_argument("--artifacts-dir", default=None,
                        help="directory for big attachments (nvidia-smi -q, large diffs)")
    parser.add_argument("--pretty", action="store_true", help="indent the JSON")
    args = parser.parse_args(argv)

    selected = None
    if args.only:
        selected = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in selected if n not in names()]
        if unknown:
            print(f"replab capture: unknown capture(s) {', '.join(unknown)}; "
                  f"have: {', '.join(names())}", file=sys.stderr)
            return 2
    manifest = collect(selected, repo=args.repo, inputs=args.inputs,
                       artifacts_dir=args.artifacts_dir)
    print(manifest_json(manifest, indent=2 if args.pretty else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
