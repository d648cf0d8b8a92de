"""Buckets in the object store (S3 API): create, list, measure, empty and delete them, and
the local directories that stand in for them on site ``local``.

Every function takes its client (:func:`replab.s3client.s3_client`) as an argument. Failures of
the service are :class:`~replab.s3client.S3Error`; invalid names and refusals the user must act
on (a bucket of another project, a non-empty bucket) are :class:`~replab.errors.ConfigError`.
Transfers are in :mod:`replab.transfers`; rclone remotes and mounts in :mod:`replab.rclone`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .bucketnames import check_bucket_name
from .errors import ConfigError
from .s3client import (
    S3Error,
    describe_request,
    s3_client,  # noqa: F401  (provisioning.py calls storage.s3_client)
    translated_errors,
)

log = logging.getLogger(__name__)


def _exists(s3, name: str) -> bool:
    """Whether bucket ``name`` exists and is ours; ConfigError when another project owns it.

    A GET (list one key), not a HEAD: a HEAD's error has no body, so a wrong secret and a
    bucket of another project would both read "403".
    """
    from botocore.exceptions import ClientError

    try:
        with translated_errors(s3, "GET", name):
            try:
                s3.list_objects_v2(Bucket=name, MaxKeys=1)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("NoSuchBucket", "404"):
                    return False
                raise
    except S3Error as exc:
        if exc.code == "AccessDenied":
            raise ConfigError(f"bucket {name!r} is not accessible with this credential "
                              "(AccessDenied): most likely another project owns it (S3 bucket "
                              "names are shared by every project of the site); choose other "
                              "bucket names in 0_configure") from None
        raise
    return True


def ensure_bucket(s3, name: str) -> bool:
    """Create bucket ``name`` unless it exists; True if created now, False if it was ours.

    Raises ConfigError for an invalid name or one another project owns, S3Error otherwise.
    """
    check_bucket_name(name)
    if _exists(s3, name):
        log.debug("bucket %s exists", name)
        return False
    try:
        with translated_errors(s3, "PUT", name):
            s3.create_bucket(Bucket=name)
    except S3Error as exc:
        if exc.code == "BucketAlreadyOwnedByYou":  # created meanwhile, by us
            return False
        if exc.code == "BucketAlreadyExists":
            raise ConfigError(f"bucket name {name!r} is taken by another project; choose "
                              "other bucket names in 0_configure") from None
        raise
    log.info("created bucket %s", name)
    return True


def ensure_buckets(s3, names: Iterable[str]) -> dict[str, bool]:
    """:func:`ensure_bucket` for each name (all names checked first); name -> created now."""
    names = list(dict.fromkeys(names))
    for name in names:
        check_bucket_name(name)
    return {name: ensure_bucket(s3, name) for name in names}


def list_buckets(s3) -> list[str]:
    """Names of the buckets the credential's project owns, sorted."""
    with translated_errors(s3, "GET"):
        response = s3.list_buckets()
    return sorted(b["Name"] for b in response.get("Buckets", []))


def iter_objects(s3, bucket: str, prefix: str = "", page_size: int = 1000
                 ) -> Iterator[dict[str, Any]]:
    """Each object under ``prefix`` as S3 lists it (``Key``, ``Size``, ...), paginated."""
    with translated_errors(s3, "GET", bucket):
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
        for page in pages:
            yield from page.get("Contents", [])


def list_objects(s3, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object key under ``prefix`` with its size, in key order (paginated)."""
    return {o["Key"]: int(o["Size"]) for o in iter_objects(s3, bucket, prefix)}


def delete_object(s3, bucket: str, key: str) -> None:
    """Delete ``key`` from ``bucket`` (S3 answers the same whether or not it existed)."""
    with translated_errors(s3, "DELETE", bucket, key):
        s3.delete_object(Bucket=bucket, Key=key)


def bucket_usage(s3, name: str, *, page_size: int = 1000) -> tuple[int, int]:
    """``(objects, bytes)`` stored in bucket ``name``, counted over every page of the listing
    (``page_size`` keys a page).

    Raises S3Error (code NoSuchBucket) when it does not exist."""
    count = size = 0
    for obj in iter_objects(s3, name, page_size=page_size):
        count += 1
        size += int(obj["Size"])
    return count, size


def _empty_bucket(s3, name: str) -> int:
    """Abort multipart uploads in progress, delete every object; returns objects deleted."""
    with translated_errors(s3, "GET", name):
        pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=name)
        uploads = [u for page in pages for u in page.get("Uploads", [])]
    for upload in uploads:
        with translated_errors(s3, "DELETE", name, upload["Key"]):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    deleted = 0
    keys = [o["Key"] for o in iter_objects(s3, name)]
    for start in range(0, len(keys), 1000):
        batch = keys[start:start + 1000]
        with translated_errors(s3, "POST", name, "?delete"):
            response = s3.delete_objects(
                Bucket=name, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise S3Error(f"{first.get('Code')}: could not delete {len(errors)} objects, e.g. "
                          f"{first.get('Key')!r}: {first.get('Message')}",
                          describe_request(s3, "POST", name, "?delete"),
                          code=str(first.get("Code")))
        deleted += len(batch)
    if uploads:
        log.info("aborted %d multipart uploads in bucket %s", len(uploads), name)
    return deleted


def delete_bucket(s3, name: str, *, force: bool = False, ignore_missing: bool = True) -> bool:
    """Delete bucket ``name``; True if deleted now, False if it did not exist.

    A non-empty bucket is refused (ConfigError naming it and its object count) unless
    ``force``, which first deletes every object and aborts multipart uploads in progress.
    Raises S3Error (code NoSuchBucket) for a missing bucket when ``ignore_missing`` is False.
    """
    check_bucket_name(name)
    if not _exists(s3, name):
        if ignore_missing:
            return False
        raise S3Error(f"NoSuchBucket: bucket {name!r} does not exist",
                      describe_request(s3, "DELETE", name), code="NoSuchBucket", status=404)
    if force:
        deleted = _empty_bucket(s3, name)
        if deleted:
            log.info("deleted %d objects from bucket %s", deleted, name)
    else:
        count, size = bucket_usage(s3, name)
        if count:
            raise ConfigError(f"bucket {name!r} is not empty ({count} objects, {size} bytes); "
                              "pass force=True to delete them with it")
    try:
        with translated_errors(s3, "DELETE", name):
            s3.delete_bucket(Bucket=name)
    except S3Error as exc:
        if exc.code == "NoSuchBucket" and ignore_missing:
            return False
        if exc.code == "BucketNotEmpty" and not force:  # a writer got in meanwhile
            raise ConfigError(f"bucket {name!r} is not empty; pass force=True to delete "
                              "its objects with it") from None
        raise
    log.info("deleted bucket %s", name)
    return True


# -- site ``local``: directories stand in for buckets --------------------------------------
def local_buckets(root: str | os.PathLike, names: Iterable[str]) -> dict[str, Path]:
    """For site ``local``: a directory ``root/<name>`` per bucket, created if missing.

    Raises ConfigError for a name that would not be a valid bucket name.
    """
    base = Path(root).expanduser()
    names = list(dict.fromkeys(names))
    for name in names:
        check_bucket_name(name)
    out = {}
    for name in names:
        directory = base / name
        directory.mkdir(parents=True, exist_ok=True)
        out[name] = directory
    return out


__all__ = [
    "bucket_usage", "delete_bucket", "delete_object", "ensure_bucket", "ensure_buckets",
    "iter_objects", "list_buckets", "list_objects", "local_buckets",
]
