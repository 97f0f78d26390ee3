"""Amazon S3 and S3-compatible servers, through boto3.

Credentials come from the default chain or a named AWS profile; nothing secret is an option.
Files up to the multipart threshold go up in one PUT over a kept-alive connection per thread, signed by
botocore's SigV4 signer (projects/destinations/s3put.py: about a third of botocore's put_object CPU per
small file); files above it in parts through boto3's transfer manager, one per destination, its threads
shared by every transfer of the process; listings, HEADs and streams through botocore.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bce
import botocore.session
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.manager import TransferManager
from botocore.config import Config
from botocore.loaders import Loader

from projects.outbound import check_http_url
from projects.destinations.base import (
    ConfigError,
    Destination,
    DestinationError,
    RemoteObject,
    UploadResult,
    check_no_dot_segments,
    local_file_error,
    normalize_key,
)
from projects.destinations.s3put import PutFailed, Putter
from projects.localfile import LocalFile

MiB = 1024 * 1024
MAX_PUT_SIZE = 5 * 1024 * MiB  # S3's limit for one PUT
# Codes that say "try again later" even on a 4xx.
TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "ServiceUnavailable",
    "InternalError",
    "RequestLimitExceeded",
}
# Codes that say "too many requests" (the AWS SDKs' list): the session slows down (throttled).
THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequests",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException",
}


class S3Destination(Destination):
    kind = "s3"
    supports_stream_upload = True

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self._client = None
        self._stream_client = None
        self._check_client = None
        self._session = None
        self._putter: Putter | bool | None = None  # False: not on this destination
        self._transfers: TransferManager | None = None
        self._client_lock = threading.Lock()

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_no_dot_segments("prefix", options["prefix"])
        if options.get("endpoint_url"):
            check_http_url(options["endpoint_url"], "destination.endpoint_url")
            if urlsplit(options["endpoint_url"]).username is not None:
                # It would end up in the database and ConfigHistory; credentials come from the AWS chain.
                raise ConfigError("destination.endpoint_url: must not contain user:password (use aws_profile)")

    @property
    def prefix(self) -> str:
        return normalize_key(self.options["prefix"] or "")

    @property
    def bucket(self) -> str:
        return self.options["bucket"]

    def full_key(self, key: str) -> str:
        return normalize_key(self.prefix, key)

    def identity(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.options['endpoint_url']}" if self.options["endpoint_url"] else where

    @classmethod
    def describe_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"kind": cls.kind, "bucket": options.get("bucket"), "prefix": normalize_key(options.get("prefix") or ""),
                "endpoint_url": options.get("endpoint_url")}

    # -- connection ------------------------------------------------------------------------
    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    @property
    def stream_client(self):
        """A client that sends bodies unsigned (UNSIGNED-PAYLOAD): SigV4 over plain http hashes
        the body before sending, which a stream that cannot be rewound does not allow."""
        with self._client_lock:
            if self._stream_client is None:
                self._stream_client = self._make_client(payload_signing_enabled=False)
            return self._stream_client

    @property
    def check_client(self):
        """For check(): connect and read timeouts of check_timeout, so a silent endpoint fails fast."""
        with self._client_lock:
            if self._check_client is None:
                self._check_client = self._make_client(timeout=self.check_timeout)
            return self._check_client

    @property
    def putter(self) -> Putter | None:
        """Single PUTs: endpoint, credentials and CA bundle resolved once, by botocore. None
        behind a proxy: botocore's put_object then."""
        if self._putter is not None:  # every small file asks: no lock once resolved
            return self._putter or None
        client = self.client
        with self._client_lock:
            if self._putter is None:
                credentials = self._session.get_credentials()
                if credentials is None:
                    raise DestinationError("no AWS credentials found (environment, aws_profile or instance role)",
                                           permanent=True)
                ca_bundle = self._botocore_session.get_config_variable("ca_bundle")
                self._putter = Putter.for_client(client, credentials, self.bucket, ca_bundle) or False
            return self._putter or None

    @property
    def transfers(self) -> TransferManager:
        """boto3's transfer manager for multipart uploads, one per destination and process: parts
        of all files share max_pool_connections threads (the connections the client has); parts
        grow from multipart_chunk_mb when a file would need more than S3's 10,000."""
        client = self.client
        with self._client_lock:
            if self._transfers is None:
                config = TransferConfig(
                    multipart_threshold=self.options["multipart_threshold_mb"] * MiB,
                    multipart_chunksize=self.options["multipart_chunk_mb"] * MiB,
                    max_concurrency=self.options["max_pool_connections"],
                    preferred_transfer_client="classic",  # its retries are off with the client's
                )
                self._transfers = create_transfer_manager(client, config)
            return self._transfers

    def _make_client(self, timeout: float | None = None, **s3_options: Any):
        if self._session is None:  # one credential chain for every client and the putter
            try:
                self._botocore_session = botocore.session.get_session()
                self._session = boto3.session.Session(
                    botocore_session=self._botocore_session, profile_name=self.options["aws_profile"],
                    region_name=self.options["region"],
                )
                # After boto3 added its data path to this session's loader (to the first one only, kept).
                self._botocore_session.register_component("data_loader", _shared_loader(self._botocore_session))
            except bce.ProfileNotFound:
                raise DestinationError(f"AWS profile {self.options['aws_profile']!r} not found", permanent=True)
        session = self._session
        config = Config(
            max_pool_connections=self.options["max_pool_connections"],
            # Retries are ours (counted per file, with backoff) and so is slowing down when throttled
            # (sessions_app/pacing.py, shared by the session's processes), so botocore makes one
            # attempt: its retries would hide throttling from the pacer, and its adaptive mode's
            # rate limiter (per client) would pace a second time, unshared.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=timeout or 10,
            read_timeout=timeout or 120,
            s3={"addressing_style": self.options["addressing_style"], **s3_options},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return session.client("s3", endpoint_url=self.options["endpoint_url"], config=config)

    def close(self) -> None:
        with self._client_lock:
            if self._transfers is not None:
                self._transfers.shutdown()  # before its client closes
            for client in (self._client, self._stream_client, self._check_client):
                if client is not None:
                    client.close()
            self._client = self._stream_client = self._check_client = None
            if self._putter:
                self._putter.close()
            self._putter = self._transfers = None

    # -- the contract ----------------------------------------------------------------------
    def check(self) -> None:
        try:
            self.check_client.head_bucket(Bucket=self.bucket)
        except bce.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise DestinationError(f"bucket {self.bucket!r} not found", permanent=True)
            if status in (401, 403):
                raise DestinationError(
                    f"access to bucket {self.bucket!r} denied: credentials refused or lacking permission",
                    permanent=True,
                )
            raise self._error(exc, f"bucket {self.bucket!r}")
        except (bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
            error = self._error(exc, f"bucket {self.bucket!r}")
            raise DestinationError(f"{error.message} within {self.check_timeout:g} s (preflight_timeout)") from None
        except Exception as exc:
            raise self._error(exc, f"bucket {self.bucket!r}")

    def list_existing(self) -> Iterator[RemoteObject]:
        base = self.prefix + "/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                for obj in page.get("Contents", ()):
                    yield RemoteObject(obj["Key"][len(base):], obj["Size"])
        except Exception as exc:
            raise self._error(exc, f"listing s3://{self.bucket}/{base}")

    def stat(self, key: str) -> RemoteObject | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except bce.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise self._error(exc, key)
        except Exception as exc:
            raise self._error(exc, key)
        return RemoteObject(key, head["ContentLength"])

    def put_file(self, local: LocalFile, key: str) -> UploadResult:
        full_key, f, size = self.full_key(key), local.file, local.size
        try:
            f.seek(0)  # a retry reads the open file again from its start
            if size > self.options["multipart_threshold_mb"] * MiB:
                return self._upload_multipart(local, full_key, size)
            storage = self.options["storage_class"]
            if putter := self.putter:
                etag = putter.put(f, full_key, size, [("x-amz-storage-class", storage)] if storage else [])
            else:
                extra = {"StorageClass": storage} if storage else {}
                resp = self.client.put_object(Bucket=self.bucket, Key=full_key, Body=f, ContentLength=size, **extra)
                etag = resp.get("ETag", "").strip('"')
        except OSError as exc:
            raise local_file_error(exc, local.path) from exc
        except Exception as exc:
            raise self._error(exc, full_key)
        return UploadResult(size=size, checksum=etag)

    def upload_stream(self, fileobj: BinaryIO, key: str, size: int | None = None) -> UploadResult:
        full_key = self.full_key(key)
        body = _CountingReader(fileobj, size)
        storage = self.options["storage_class"]
        extra = {"StorageClass": storage} if storage else {}
        try:
            if size is not None and size <= MAX_PUT_SIZE:
                if putter := self.putter:
                    etag = putter.put_stream(body, full_key, size, [("x-amz-storage-class", storage)] if storage else [])
                else:
                    resp = self.stream_client.put_object(Bucket=self.bucket, Key=full_key, Body=body,
                                                         ContentLength=size, **extra)
                    etag = resp.get("ETag", "").strip('"')
                return UploadResult(size=body.count, checksum=etag)
            # Unknown size: multipart. The transfer manager reads ahead up to max_in_memory_upload_chunks
            # parts (10 by default: the whole of many images); one keeps memory at about one part.
            part = self.options["multipart_chunk_mb"] * MiB
            config = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=1)
            config.max_in_memory_upload_chunks = 1
            self.client.upload_fileobj(body, self.bucket, full_key, ExtraArgs=extra or None, Config=config)
        except Exception as exc:
            raise self._error(exc, full_key)
        return UploadResult(size=body.count)

    def _upload_multipart(self, local: LocalFile, full_key: str, size: int) -> UploadResult:
        extra = {"StorageClass": self.options["storage_class"]} if self.options["storage_class"] else None
        # By the open file's /proc path: each part is read from the file as it is sent, not copied
        # into memory first (as upload_fileobj does); the parts of every large file of the process
        # share the manager's threads.
        self.transfers.upload(local.fd_path, self.bucket, full_key, extra_args=extra).result()
        head = self.client.head_object(Bucket=self.bucket, Key=full_key)
        if head["ContentLength"] != size:
            raise DestinationError(f"size after upload is {head['ContentLength']}, expected {size}")
        return UploadResult(size=size, checksum=head.get("ETag", "").strip('"'))

    # -- errors ----------------------------------------------------------------------------
    def _error(self, exc: Exception, what: str) -> DestinationError:
        if isinstance(exc, DestinationError):
            return exc
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            code = err.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            return _answer_error(what, status, code, err.get("Message") or code or str(exc), headers)
        if isinstance(exc, PutFailed):
            if exc.status:
                return _answer_error(what, exc.status, exc.code, exc.message, exc.headers)
            # Connection refused / reset / closed, no answer in time: try again.
            where = self.options["endpoint_url"] or "S3"
            return DestinationError(f"{what}: connection to {where} failed: {exc.message}", permanent=False)
        if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
            return DestinationError("no AWS credentials found (environment, aws_profile or instance role)",
                                    permanent=True)
        if isinstance(exc, bce.ProfileNotFound):
            return DestinationError(f"AWS profile {self.options['aws_profile']!r} not found", permanent=True)
        if isinstance(exc, bce.ParamValidationError):
            return DestinationError(f"{what}: {exc}", permanent=True)
        if isinstance(exc, (bce.ConnectTimeoutError, bce.ReadTimeoutError)):
            where = self.options["endpoint_url"] or "S3"
            problem = ("could not connect" if isinstance(exc, bce.ConnectTimeoutError)
                       else "accepted the connection but did not answer")
            return DestinationError(f"{what}: {where} {problem}", permanent=False)
        # Connection refused / reset / closed, timeouts, truncated responses: try again.
        return DestinationError(f"{what}: {type(exc).__name__}: {exc}", permanent=False)


_loader: Loader | None = None
_loader_lock = threading.Lock()


def preload() -> None:
    """Read S3's service model, endpoint rules and botocore's common data into the process's shared
    loader now: a cluster calls this before it forks its workers, which then share what was read
    instead of each reading and parsing it at its first task (~0.3 s of CPU a worker)."""
    session = botocore.session.get_session()
    boto3.session.Session(botocore_session=session)  # the loader as a destination's session has it
    loader = _shared_loader(session)
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        loader.load_data(name)
    for type_name in ("service-2", "endpoint-rule-set-1"):
        loader.load_service_model("s3", type_name)


def _shared_loader(session: botocore.session.Session) -> Loader:
    """One botocore data loader per process, so that a destination built for each task does not
    parse S3's service model and endpoint rules again (~65 ms of CPU per client)."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = session.get_component("data_loader")
        return _loader


def _answer_error(what: str, status: int, code: str, message: str, headers: dict[str, str]) -> DestinationError:
    """The server answered with an error: permanent unless it says "later"; throttled when it
    says "too many requests"."""
    permanent = status < 500 and status != 429 and code not in TRANSIENT_CODES
    throttled = status == 429 or code in THROTTLE_CODES
    return DestinationError(f"{what}: {status} {code}: {message}".strip(), permanent=permanent,
                            retry_after=_retry_after(headers), throttled=throttled)


def _retry_after(headers: dict[str, str]) -> float | None:
    value = headers.get("retry-after", "")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: S3 sends none; the pacer's backoff applies


class _CountingReader:
    """A stream's read(), counting bytes; a stream shorter than its announced size is an error
    rather than a request the server waits on for ever."""

    def __init__(self, fileobj: BinaryIO, size: int | None):
        self._fileobj, self._size, self.count = fileobj, size, 0

    def read(self, n: int = -1) -> bytes:
        data = self._fileobj.read(n)
        self.count += len(data)
        if not data and self._size is not None and self.count < self._size:
            raise DestinationError(f"the stream ended after {self.count} of {self._size} bytes", permanent=False)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        # Only there so that botocore's CRT signer (used should awscrt be installed) takes this
        # for a stream instead of copying it into BytesIO, which fails: it signs UNSIGNED-PAYLOAD
        # and never seeks. Anything that really seeks gets the error a pipe would give.
        if (offset, whence) == (0, os.SEEK_SET) and self.count == 0:
            return 0
        raise io.UnsupportedOperation("the stream cannot be rewound")
