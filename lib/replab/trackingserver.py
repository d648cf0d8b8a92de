"""Which MLflow tracking server a command or notebook talks to, asked in one place.

In order: the explicit URI (``--tracking-uri`` / ``tracking_uri=``), ``$MLFLOW_TRACKING_URI``,
the lab of the work directory (``<workdir>/lab.json``'s ``mlflow_url``, written by
3_launch_lab). Never MLflow's own default: that is a ``mlflow.db`` created in the current
directory (a stray store, and a dirty repository for the next run's capture).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)

ENV = "MLFLOW_TRACKING_URI"


def from_lab(workdir: str | os.PathLike | None) -> str | None:
    """``mlflow_url`` of ``<workdir>/lab.json``, or None when there is no such lab."""
    if not workdir:
        return None
    lab_file = Path(workdir) / "lab.json"
    try:
        return json.loads(lab_file.read_text()).get("mlflow_url") or None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError([("lab.json", f"{lab_file} is unreadable: {exc}")]) from None


def find(tracking_uri: str | None = None,
         workdir: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """(the tracking server, where it came from: "--tracking-uri", "$MLFLOW_TRACKING_URI"
    or the lab.json path), or (None, "") when none is known."""
    candidates = ((lambda: tracking_uri, "--tracking-uri"), (lambda: os.environ.get(ENV),
                                                            f"${ENV}"),
                  (lambda: from_lab(workdir), str(Path(workdir or ".") / "lab.json")))
    for get, where in candidates:
        uri = get()
        if uri:
            log.debug("tracking server %s (from %s)", uri, where)
            return uri, where
    return None, ""


def resolve(tracking_uri: str | None = None, workdir: str | os.PathLike | None = None, *,
            required: bool = True) -> str | None:
    """The tracking server to use (see :func:`find`). Raises ConfigError (saying how to give
    one) when ``required`` and none is known; else returns None when none is known."""
    uri, _where = find(tracking_uri, workdir)
    if uri or not required:
        return uri
    lab_file = Path(workdir or ".") / "lab.json"
    lab = (f"{lab_file} names no mlflow_url" if lab_file.exists() else
           f"{lab_file} does not exist") if workdir else "no work directory given"
    raise ConfigError(f"no MLflow tracking server: give --tracking-uri URL (tracking_uri= in a "
                      f"notebook), set {ENV}, or launch the lab with 3_launch_lab ({lab})")
