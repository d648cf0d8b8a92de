"""Buckets in the object store (S3 API), transfers, and local stand-ins for site ``local``.

Chameleon's object store is Ceph RGW; the tests' is Swift with its s3api middleware. Both take
EC2 credentials (made by :mod:`replab.credentials`), path-style addressing and a SigV4
signature for region ``us-east-1``. Every function takes its client as an argument; only
:func:`s3_client` builds one.

Failures of the service become :class:`S3Error` (a :class:`~replab.errors.CloudError`) that
says what the code means, what to do, and which request failed; invalid names become
:class:`~replab.errors.ConfigError`. Secrets never reach a message or a log.

rclone remotes and mounts live in :mod:`replab.rclone`; their public names are re-exported here.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from .errors import CloudError, ConfigError
from .rclone import (  # noqa: F401  (re-exported: storage is the one place to look)
    copy,
    is_mounted,
    ls,
    mount,
    mount_args,
    mount_source,
    rclone_binary,
    rclone_env,
    render_rclone_conf,
    s3_remote,
    swift_remote,
    systemd_unit,
    unmount,
    write_rclone_conf,
)
from .redact import strip_url_credentials

log = logging.getLogger(__name__)

S3_REGION = "us-east-1"  # what Ceph RGW and Swift s3api accept in the SigV4 scope
MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 8 * MiB

Progress = Callable[[int, int, str], None]
"""A progress callback: ``progress(bytes_done, bytes_total, name)``, ``name`` the current file."""


class Transferred(NamedTuple):
    """What an upload or download moved: ``count`` files, ``bytes`` bytes."""

    count: int
    bytes: int


class S3Error(CloudError):
    """The object store refused or failed a request. ``code`` is the S3 error code
    (``SignatureDoesNotMatch``, ``NoSuchBucket``, ``EndpointConnectionError``, ...) and
    ``status`` the HTTP status when there was one."""

    def __init__(self, message: str, request: str | None = None, *, code: str = "",
                 status: int | None = None):
        self.code = code
        self.status = status
        super().__init__(message, request)


# -- the client ----------------------------------------------------------------------------
def s3_client(endpoint: str, access_key: str, secret_key: str, region: str = S3_REGION, *,
              verify: bool | str | None = None, max_attempts: int = 4,
              connect_timeout: float = 10, read_timeout: float = 120):
    """A boto3 S3 client for an S3-compatible object store (Ceph RGW, Swift s3api).

    Path-style addressing (bucket in the path, not the host name), SigV4 for ``region``,
    standard retries, and checksums only where the API requires them (boto3 >= 1.36 adds
    CRC32 checksums by default, which Ceph RGW and Swift reject or ignore), plus the
    ``Content-MD5`` header that multi-object delete needs on both.

    TLS: ``verify`` as in boto3; by default ``AWS_CA_BUNDLE`` is honoured when it names a
    readable file, and ignored (with a warning) when it names a missing one.

    Raises ConfigError when ``endpoint`` is not an http(s) URL or a key is empty.
    """
    import boto3.session
    import botocore.session
    from botocore.config import Config as BotoConfig

    if not isinstance(endpoint, str) or not re.match(r"^https?://[^\s/]+", endpoint):
        raise ConfigError(f"S3 endpoint {endpoint!r} is not an http(s) URL "
                          "(e.g. https://chi.tacc.chameleoncloud.org:7480)")
    if not access_key or not secret_key:
        raise ConfigError("the EC2 access key and secret must not be empty; "
                          "run 1_create_credentials")
    if verify is None:
        bundle = os.environ.get("AWS_CA_BUNDLE")
        if bundle is not None and not Path(bundle).is_file():
            log.warning("AWS_CA_BUNDLE=%s is not a readable file; verifying TLS with the "
                        "default CA bundle instead", bundle)
            verify = True
    config = BotoConfig(
        region_name=region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session of its own, blind to AWS_PROFILE (a profile missing from ~/.aws would
    # fail it); the explicit keys, region and endpoint win over AWS_* variables.
    core = botocore.session.Session(session_vars={"profile": (None, None, None, None)})
    session = boto3.session.Session(aws_access_key_id=access_key,
                                    aws_secret_access_key=secret_key, region_name=region,
                                    botocore_session=core)
    client = session.client("s3", endpoint_url=endpoint, config=config, verify=verify)
    client.meta.events.register("before-sign.s3.DeleteObjects", _add_content_md5)
    return client


def _add_content_md5(request, **_kwargs) -> None:
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes) and "Content-MD5" not in request.headers:
        request.headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()


# -- errors --------------------------------------------------------------------------------
_RERUN = "re-run 1_create_credentials (it makes a new EC2 credential)"
_HINTS = {
    "SignatureDoesNotMatch": "the EC2 secret is wrong for this access key (or the key is "
                             f"unknown to this object store); {_RERUN}",
    "InvalidAccessKeyId": "the object store does not know this EC2 access key (deleted, or "
                          f"made for another site); {_RERUN}",
    "AccessDenied": "the EC2 credential may not do this: the bucket belongs to another "
                    "project, or the credential was refused; check the bucket names in "
                    f"0_configure, or {_RERUN}",
    "403": "forbidden: a wrong EC2 access key or secret, or a bucket of another project; "
           f"check the bucket names in 0_configure, or {_RERUN}",
    "NoSuchBucket": "the bucket does not exist; create it with ensure_buckets "
                    "(2_provision does) or check its name",
    "NoSuchKey": "no object with this key in the bucket",
    "NoSuchUpload": "the multipart upload is gone (finished or aborted)",
    "404": "not found: no such bucket or object",
    "BucketNotEmpty": "the bucket still holds objects; delete_bucket(..., force=True) "
                      "deletes them first",
    "BucketAlreadyExists": "another project owns a bucket of this name (names are shared "
                           "by every project of the site); choose other bucket names in "
                           "0_configure",
    "InvalidBucketName": "the object store refuses this bucket name",
    "RequestTimeTooSkewed": "this machine's clock is off by more than 15 minutes; fix the "
                            "clock (timedatectl set-ntp true) and retry",
    "QuotaExceeded": "the project's object-store quota is used up; delete data or ask "
                     "Chameleon for more quota",
    "SlowDown": "the object store is overloaded; retry in a few minutes",
    "ServiceUnavailable": "the object store is unavailable; retry in a few minutes, and see "
                          "https://chameleoncloud.org/user/outages/",
    "InternalError": "the object store failed; retry, and report it if it persists",
}


def _request(s3, method: str, bucket: str | None = None, key: str | None = None) -> str:
    url = strip_url_credentials(str(s3.meta.endpoint_url)).rstrip("/")
    path = "".join(f"/{p}" for p in (bucket, key) if p)
    return f"{method} {url}{path or '/'}"


def _client_error(exc, request: str) -> S3Error:
    err = exc.response.get("Error", {}) or {}
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = str(err.get("Code") or status or "Unknown")
    hint = _HINTS.get(code)
    if hint is None and status and str(status) in _HINTS:
        hint = _HINTS[str(status)]
    if hint is None:
        hint = str(err.get("Message") or "the object store refused the request")
    label = code if not code.isdigit() else f"HTTP {code}"
    return S3Error(f"{label}: {hint}", request, code=code, status=status)


def _transport_error(exc, request: str) -> S3Error:
    from botocore import exceptions as bx

    name = type(exc).__name__
    if isinstance(exc, bx.SSLError):
        bundle = os.environ.get("AWS_CA_BUNDLE")
        where = f" (AWS_CA_BUNDLE={bundle})" if bundle else ""
        msg = (f"{name}: TLS verification failed: the CA bundle{where} does not hold the "
               "object store's certificate authority; fix the bundle or unset AWS_CA_BUNDLE")
    elif isinstance(exc, (bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        msg = (f"{name}: the object store did not answer in time; check the network and the "
               "S3 endpoint, then retry")
    else:
        msg = (f"{name}: cannot reach the object store (connection refused or dropped); "
               "check the S3 endpoint (0_configure) and the network")
    return S3Error(msg, request, code=name)


@contextmanager
def _translated(s3, method: str, bucket: str | None = None, key: str | None = None
                ) -> Iterator[None]:
    """Turn botocore/boto3 failures inside the block into S3Error / ConfigError."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bx

    try:
        yield
    except bx.ClientError as exc:
        raise _client_error(exc, _request(s3, method, bucket, key)) from None
    except S3UploadFailedError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, bx.ClientError):
            raise _client_error(cause, _request(s3, method, bucket, key)) from None
        if isinstance(cause, (bx.HTTPClientError, bx.ConnectionError)):
            raise _transport_error(cause, _request(s3, method, bucket, key)) from None
        raise S3Error(f"upload failed: {exc}", _request(s3, method, bucket, key)) from None
    except (bx.HTTPClientError, bx.ConnectionError) as exc:
        raise _transport_error(exc, _request(s3, method, bucket, key)) from None
    except bx.ParamValidationError as exc:
        raise ConfigError(f"invalid S3 request parameters: {exc}") from None


# -- names ---------------------------------------------------------------------------------
_BUCKET_CHARS = re.compile(r"^[a-z0-9.-]+$")


def bucket_name_problem(name: object) -> str | None:
    """The first S3 bucket-naming rule ``name`` breaks, or None when it is valid."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not 3 <= len(name) <= 63:
        return f"must be 3 to 63 characters long (it is {len(name)})"
    if not _BUCKET_CHARS.match(name):
        return "may hold only lower-case letters, digits, '.' and '-'"
    if not (name[0].isalnum() and name[-1].isalnum()):
        return "must begin and end with a letter or a digit"
    if ".." in name or ".-" in name or "-." in name:
        return "must not hold '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(name)
        return "must not look like an IP address"
    except ValueError:
        pass
    for prefix in ("xn--", "sthree-"):
        if name.startswith(prefix):
            return f"must not begin with {prefix!r}"
    for suffix in ("-s3alias", "--ol-s3"):
        if name.endswith(suffix):
            return f"must not end with {suffix!r}"
    return None


def check_bucket_name(name: object) -> str:
    """``name`` when it is a valid S3 bucket name; raises ConfigError naming the rule."""
    problem = bucket_name_problem(name)
    if problem:
        raise ConfigError(f"invalid bucket name {name!r}: a bucket name {problem}")
    return name  # type: ignore[return-value]


# -- buckets -------------------------------------------------------------------------------
def _exists(s3, name: str) -> bool:
    """Whether bucket ``name`` exists and is ours; ConfigError when another project owns it.

    A GET (list one key), not a HEAD: a HEAD's error has no body, so a wrong secret and a
    bucket of another project would both read "403".
    """
    from botocore.exceptions import ClientError

    try:
        with _translated(s3, "GET", name):
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
        with _translated(s3, "PUT", name):
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
    with _translated(s3, "GET"):
        response = s3.list_buckets()
    return sorted(b["Name"] for b in response.get("Buckets", []))


def _objects(s3, bucket: str, prefix: str = "", page_size: int = 1000
             ) -> Iterator[dict[str, Any]]:
    with _translated(s3, "GET", bucket):
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
        for page in pages:
            yield from page.get("Contents", [])


def list_objects(s3, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object key under ``prefix`` with its size, in key order (paginated)."""
    return {o["Key"]: int(o["Size"]) for o in _objects(s3, bucket, prefix)}


def delete_object(s3, bucket: str, key: str) -> None:
    """Delete ``key`` from ``bucket`` (S3 answers the same whether or not it existed)."""
    with _translated(s3, "DELETE", bucket, key):
        s3.delete_object(Bucket=bucket, Key=key)


def bucket_usage(s3, name: str, *, page_size: int = 1000) -> tuple[int, int]:
    """``(objects, bytes)`` stored in bucket ``name``, counted over every page of the listing
    (``page_size`` keys a page).

    Raises S3Error (code NoSuchBucket) when it does not exist."""
    count = size = 0
    for obj in _objects(s3, name, page_size=page_size):
        count += 1
        size += int(obj["Size"])
    return count, size


def _empty_bucket(s3, name: str) -> int:
    """Abort multipart uploads in progress, delete every object; returns objects deleted."""
    with _translated(s3, "GET", name):
        pages = s3.get_paginator("list_multipart_uploads").paginate(Bucket=name)
        uploads = [u for page in pages for u in page.get("Uploads", [])]
    for upload in uploads:
        with _translated(s3, "DELETE", name, upload["Key"]):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    deleted = 0
    keys = [o["Key"] for o in _objects(s3, name)]
    for start in range(0, len(keys), 1000):
        batch = keys[start:start + 1000]
        with _translated(s3, "POST", name, "?delete"):
            response = s3.delete_objects(
                Bucket=name, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise S3Error(f"{first.get('Code')}: could not delete {len(errors)} objects, e.g. "
                          f"{first.get('Key')!r}: {first.get('Message')}",
                          _request(s3, "POST", name, "?delete"), code=str(first.get("Code")))
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
                      _request(s3, "DELETE", name), code="NoSuchBucket", status=404)
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
        with _translated(s3, "DELETE", name):
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


# -- transfers -----------------------------------------------------------------------------
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
                _translated(s3, "PUT", bucket, object_key):
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
        with _translated(s3, "HEAD", bucket, key):
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
        for obj in _objects(s3, bucket, prefix):
            if obj["Key"].endswith("/"):
                continue
            jobs.append((obj["Key"], _safe_target(target, obj["Key"][len(prefix):]),
                         int(obj["Size"])))
    if not jobs:
        raise S3Error(f"NoSuchKey: no object {key!r} and no objects under it in bucket "
                      f"{bucket!r}", _request(s3, "GET", bucket, key), code="NoSuchKey",
                      status=404)
    config = _transfer_config(part_size, max_concurrency)
    tally = _Tally(progress, sum(size for _, _, size in jobs))
    for object_key, dest, size in jobs:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tally.file(object_key, size) as on_bytes, \
                _translated(s3, "GET", bucket, object_key):
            s3.download_file(bucket, object_key, str(dest), Config=config, Callback=on_bytes)
    log.info("downloaded %d files (%d bytes) from bucket %s", len(jobs), tally.total, bucket)
    return Transferred(len(jobs), tally.total)


# -- progress displays (the one place that draws: tqdm, imported when first used) ---------
class ProgressBar:
    """A :data:`Progress` callback drawing a tqdm bar; a new total starts a new bar."""

    def __init__(self, desc: str = "transfer", notebook: bool = False, **tqdm_kwargs):
        self.desc = desc
        self.notebook = notebook
        self.tqdm_kwargs = tqdm_kwargs
        self._bar = None
        self._ended: tuple[int, int] | None = None  # (done, total) of the bar last completed

    def _new_bar(self, total: int):
        if self.notebook:
            from tqdm.auto import tqdm  # widgets in Jupyter (when ipywidgets is there)
        else:
            from tqdm import tqdm
        return tqdm(total=total, desc=self.desc, unit="B", unit_scale=True,
                    unit_divisor=1024, **self.tqdm_kwargs)

    def __call__(self, done: int, total: int, name: str) -> None:
        if self._bar is None and self._ended == (done, total):
            return  # a repeat of the last call of a finished transfer
        if self._bar is not None and (self._bar.total != total or done < self._bar.n):
            self.close()
        if self._bar is None:
            self._bar = self._new_bar(total)
        self._bar.set_postfix_str(name, refresh=False)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()
            self._ended = (done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def notebook_progress(desc: str = "transfer", **tqdm_kwargs) -> ProgressBar:
    """A progress display for a notebook (tqdm.auto: a widget bar in Jupyter, text
    elsewhere or without ipywidgets)."""
    return ProgressBar(desc, notebook=True, **tqdm_kwargs)


def terminal_progress(desc: str = "transfer", **tqdm_kwargs) -> ProgressBar:
    """A text progress bar (tqdm) for a terminal or a headless log."""
    return ProgressBar(desc, notebook=False, **tqdm_kwargs)


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
    "DEFAULT_PART_SIZE", "MIN_PART_SIZE", "Progress", "ProgressBar", "S3Error", "S3_REGION",
    "Transferred", "bucket_name_problem", "bucket_usage", "check_bucket_name", "delete_bucket",
    "delete_object",
    "download", "ensure_bucket", "ensure_buckets", "is_mounted", "list_buckets",
    "list_objects", "local_buckets", "mount", "mount_args", "mount_source", "notebook_progress",
    "copy", "ls", "rclone_binary", "rclone_env", "render_rclone_conf", "s3_client", "s3_remote",
    "swift_remote", "systemd_unit", "terminal_progress", "unmount", "upload",
    "write_rclone_conf",
]
