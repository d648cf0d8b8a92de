"""Uploads and downloads between local files and a bucket (S3 API), in parts, with progress.

``progress(bytes_done, bytes_total, name)`` callbacks report as bytes move; the bars that draw
them are in :mod:`replab.progressbar`. Failures are :class:`~replab.s3client.S3Error`; a path
that does not exist or a key that would land outside the target is a
:class:`~replab.errors.ConfigError`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .bucketnames import check_bucket_name
from .errors import ConfigError
from .s3client import S3Error, describe_request, translated_errors
from .storage import iter_objects

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 8 * MiB

Progress = Callable[[int, int, str], None]
"""A progress callback: ``progress(bytes_done, bytes_total, name)``, ``name`` the current file."""


class Transferred(NamedTuple):
    """What an upload or download moved: ``count`` files, ``bytes`` bytes."""

    count: int
    bytes: int


def _transfer_config(part_size: int, max_concurrency: int):
    from boto3.s3.transfer import TransferConfig

    if part_size < MIN_PART_SIZE:
        raise ConfigError(f"part_size {part_size} is below S3's minimum of {MIN_PART_SIZE} "
                          "bytes (5 MiB)")
    return TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                          max_concurrency=max_concurrency, use_threads=max_concurrency > 1)


class _Tally:
    """Sums boto3's per-chunk callbacks (from several threads) into one progress call."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress = progress
        self.total = total
        self.done = 0
        self._lock = threading.Lock()

    def _add(self, name: str, amount: int) -> None:
        with self._lock:
            self.done += amount
            if self.progress is not None:
                self.progress(self.done, self.total, name)

    @contextmanager
    def file(self, name: str, size: int) -> Iterator[Callable[[int], None]]:
        """The callback for one file's chunks; when the transfer succeeded, make up for
        chunks boto3 did not report (empty files)."""
        counted = 0

        def add(amount: int) -> None:  # boto3 calls it from its transfer threads
            nonlocal counted
            with self._lock:
                counted += amount
            self._add(name, amount)

        yield add
        self._add(name, size - counted)


def _local_files(path: Path) -> list[tuple[Path, str]]:
    """(file, relative posix name) for every regular file under ``path``, sorted by name."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for filename in sorted(filenames):
            file = Path(dirpath) / filename
            if file.is_file():
                out.append((file, file.relative_to(path).as_posix()))
    return sorted(out, key=lambda item: item[1])


def _join_key(prefix: str | None, name: str) -> str:
    prefix = (prefix or "").strip("/")
    return f"{prefix}/{name}" if prefix else name


def upload(s3, bucket: str, path: str | os.PathLike, key: str | None = None,
           progress: Progress | None = None, *, part_size: int = DEFAULT_PART_SIZE,
           max_concurrency: int = 4) -> Transferred:
    """Upload a file or a directory (recursively) to ``bucket``.

    A file goes to ``key`` (default: its name; a key ending in ``/`` gets the name
    appended); a directory's files go under the prefix ``key`` (default: the bucket's root)
    at their relative paths. Files of ``part_size`` bytes or more go in parts of that size
    (multipart upload). ``progress(bytes_done, bytes_total, name)`` is called as bytes go
    out, and once more as each file ends. Returns ``(count, bytes)`` uploaded.

    Raises ConfigError when ``path`` does not exist, S3Error when the store refuses.
    """
    source = Path(path)
    check_bucket_name(bucket)
    if source.is_dir():
        files = [(f, _join_key(key, rel)) for f, rel in _local_files(source)]
    elif source.is_file():
        if key is None or key.endswith("/"):
            key = _join_key(key, source.name)
        files = [(source, key)]
    else:
        raise ConfigError(f"nothing to upload: {source} does not exist")
    config = _transfer_config(part_size, max_concurrency)
    sizes = [f.stat().st_size for f, _ in files]
    tally = _Tally(progress, sum(sizes))
    for (file, object_key), size in zip(files, sizes, strict=True):
        with tally.file(object_key, size) as on_bytes, \
                translated_errors(s3, "PUT", bucket, object_key):
            s3.upload_file(str(file), bucket, object_key, Config=config, Callback=on_bytes)
        log.debug("uploaded %s to %s/%s (%d bytes)", file, bucket, object_key, size)
    log.info("uploaded %d files (%d bytes) to bucket %s", len(files), tally.total, bucket)
    return Transferred(len(files), tally.total)


def _safe_target(root: Path, relative: str) -> Path:
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or relative.startswith("/"):
        raise ConfigError(f"object key {relative!r} would land outside {root}; "
                          "refusing to download it")
    return root.joinpath(*parts)


def download(s3, bucket: str, key: str, path: str | os.PathLike,
             progress: Progress | None = None, *, part_size: int = DEFAULT_PART_SIZE,
             max_concurrency: int = 4) -> Transferred:
    """Download an object, or every object under a prefix, from ``bucket`` to ``path``.

    When ``key`` names an object (and does not end in ``/``) it is written to ``path`` (into
    it, under the key's last name, when ``path`` is a directory). Otherwise ``key`` is a
    prefix ("" for the whole bucket) and each object under it lands at ``path/<rest of the
    key>``. Directories are created; keys ending in ``/`` (folder markers) are skipped.
    ``progress`` as in :func:`upload`. Returns ``(count, bytes)`` downloaded.

    Raises S3Error (code NoSuchKey) when nothing is at ``key``.
    """
    from botocore.exceptions import ClientError

    check_bucket_name(bucket)
    target = Path(path)
    jobs: list[tuple[str, Path, int]] = []
    if key and not key.endswith("/"):
        with translated_errors(s3, "HEAD", bucket, key):
            try:
                head = s3.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                    raise
                head = None  # not an object: a prefix, perhaps
        if head is not None:
            dest = target / PurePosixPath(key).name if target.is_dir() else target
            jobs.append((key, dest, int(head["ContentLength"])))
    if not jobs:
        prefix = key if not key or key.endswith("/") else key + "/"
        for obj in iter_objects(s3, bucket, prefix):
            if obj["Key"].endswith("/"):
                continue
            jobs.append((obj["Key"], _safe_target(target, obj["Key"][len(prefix):]),
                         int(obj["Size"])))
    if not jobs:
        raise S3Error(f"NoSuchKey: no object {key!r} and no objects under it in bucket "
                      f"{bucket!r}", describe_request(s3, "GET", bucket, key), code="NoSuchKey",
                      status=404)
    config = _transfer_config(part_size, max_concurrency)
    tally = _Tally(progress, sum(size for _, _, size in jobs))
    for object_key, dest, size in jobs:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tally.file(object_key, size) as on_bytes, \
                translated_errors(s3, "GET", bucket, object_key):
            s3.download_file(bucket, object_key, str(dest), Config=config, Callback=on_bytes)
    log.info("downloaded %d files (%d bytes) from bucket %s", len(jobs), tally.total, bucket)
    return Transferred(len(jobs), tally.total)


__all__ = ["DEFAULT_PART_SIZE", "MIN_PART_SIZE", "Progress", "Transferred", "download",
           "upload"]
