"""Declared inputs (the manifest's ``inputs`` capture) as MLflow datasets of the run.

Each input becomes a :class:`mlflow.data.meta_dataset.MetaDataset` whose digest is the first 36
hex digits of the manifest's sha256 (36 is MLflow's limit), so identical data shows the same
digest in every run and the manifest holds the full hash. Sources:

- a file or directory: its absolute path, source type ``local``;
- ``s3://``, ``https://`` and other URLs: MLflow's own source for the scheme (s3, http, ...);
- ``scheme:name`` references such as ``sklearn:load_digits``: the reference as given, with
  the scheme as source type (``sklearn``), never a file path.

Missing and unreadable inputs are not logged as datasets (the manifest records them).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)
DIGEST_LEN = 36  # MLflow's limit for a dataset digest
_SCHEME_SOURCES: dict[str, type] = {}


def manifest_inputs(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``inputs`` capture's items of ``manifest`` ([] when it has none)."""
    data = (manifest.get("captures") or {}).get("inputs") or []
    items = data.get("items", data) if isinstance(data, dict) else data
    return [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []


def to_dataset(item: Mapping[str, Any], root: str | None = None):
    """The MLflow dataset for one manifest input item, or None when it has none (missing).

    ``root``: the directory relative paths are relative to (the repository root the
    capture used); the current directory when None.
    """
    from mlflow.data.meta_dataset import MetaDataset

    kind = item.get("kind")
    digest = (item.get("sha256") or "")[:DIGEST_LEN] or None
    if kind in ("file", "dir") and item.get("path"):
        path = os.path.normpath(os.path.join(root or os.getcwd(), str(item["path"])))
        source, name = _resolve(path), os.path.basename(path)
    elif kind == "uri" and item.get("uri"):
        uri = str(item["uri"])
        if "://" in uri:
            source = _resolve(uri)
            name = uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        else:
            source, name = scheme_source(uri), uri.split(":", 1)[-1]
    else:
        return None
    return MetaDataset(source, name=str(item.get("name") or name or kind), digest=digest)


def log_inputs(manifest: Mapping[str, Any], root: str | None = None) -> int:
    """Log the manifest's inputs as datasets of the active MLflow run; returns how many.
    Problems are logged, never raised (the manifest is the record)."""
    count = 0
    try:
        import mlflow

        for item in manifest_inputs(manifest):
            dataset = to_dataset(item, root)
            if dataset is not None:
                mlflow.log_input(dataset)
                count += 1
    except Exception as exc:
        log.warning("could not log the run's inputs as MLflow datasets: %s", exc)
    return count


def _resolve(uri: str):
    """MLflow's own source for a path or URL; a scheme source when MLflow has none."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():  # "can be interpreted in multiple ways" for local paths
        warnings.simplefilter("ignore")
        try:
            return resolve_dataset_source(uri)
        except Exception:
            return scheme_source(uri)


def scheme_source(uri: str):
    """A dataset source for ``scheme:reference``, source type ``scheme`` (registered with
    MLflow, so ``mlflow.data.get_source`` reads it back)."""
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else "uri"
    cls = _SCHEME_SOURCES.get(scheme)
    if cls is None:
        cls = _SCHEME_SOURCES[scheme] = _scheme_source_class(scheme)
    return cls(uri)


def _scheme_source_class(scheme: str) -> type:
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.dataset_source_registry import register_dataset_source

    class SchemeDatasetSource(DatasetSource):
        __doc__ = f"A dataset named by a ``{scheme}:`` reference (replab)."

        def __init__(self, uri: str):
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return scheme

        def load(self, **kwargs):
            raise NotImplementedError(f"{self.uri}: load it with the code that reads it")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return isinstance(raw_source, str) and raw_source.lower().startswith(scheme + ":")

        @classmethod
        def _resolve(cls, raw_source: Any):
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, Any]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]):
            return cls(source_dict["uri"])

    SchemeDatasetSource.__name__ = SchemeDatasetSource.__qualname__ = (
        f"{scheme.capitalize()}DatasetSource")
    register_dataset_source(SchemeDatasetSource)
    return SchemeDatasetSource
