"""The S3 client for the object store, and what its failures become.

Chameleon's object store is Ceph RGW; the tests' is Swift with its s3api middleware. Both take
EC2 credentials (made by :mod:`replab.credentials`), path-style addressing and a SigV4
signature for region ``us-east-1``; only :func:`s3_client` builds a client.

Failures of the service become :class:`S3Error` (a :class:`~replab.errors.CloudError`) that
says what the code means, what to do, and which request failed; invalid parameters become
:class:`~replab.errors.ConfigError`. Secrets never reach a message or a log.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CloudError, ConfigError
from .redact import strip_url_credentials

log = logging.getLogger(__name__)

S3_REGION = "us-east-1"  # what Ceph RGW and Swift s3api accept in the SigV4 scope


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


def describe_request(s3, method: str, bucket: str | None = None, key: str | None = None
                     ) -> str:
    """``METHOD endpoint/bucket/key`` for an error message, without credentials."""
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
def translated_errors(s3, method: str, bucket: str | None = None, key: str | None = None
                      ) -> Iterator[None]:
    """Turn botocore/boto3 failures inside the block into S3Error / ConfigError; the
    request ``method bucket/key`` is named in the S3Error."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bx

    try:
        yield
    except bx.ClientError as exc:
        raise _client_error(exc, describe_request(s3, method, bucket, key)) from None
    except S3UploadFailedError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, bx.ClientError):
            raise _client_error(cause, describe_request(s3, method, bucket, key)) from None
        if isinstance(cause, (bx.HTTPClientError, bx.ConnectionError)):
            raise _transport_error(cause, describe_request(s3, method, bucket, key)) from None
        raise S3Error(f"upload failed: {exc}", describe_request(s3, method, bucket, key)) from None
    except (bx.HTTPClientError, bx.ConnectionError) as exc:
        raise _transport_error(exc, describe_request(s3, method, bucket, key)) from None
    except bx.ParamValidationError as exc:
        raise ConfigError(f"invalid S3 request parameters: {exc}") from None


__all__ = ["S3Error", "S3_REGION", "describe_request", "s3_client", "translated_errors"]
