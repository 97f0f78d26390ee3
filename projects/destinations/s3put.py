"""Single-request PUTs of open local files: one kept-alive HTTP/1.1 connection per transfer
thread (the standard library's http.client), signed by botocore's SigV4 signer.

botocore spends ~1.4-2 ms of Python per put_object (parameter validation, serialisation, a dozen
event hooks, endpoint rules, signing). Here a 4 KiB file costs ~0.7-0.85 ms of client CPU in all,
of which building and parsing the request take ~50 us and botocore's signature ~90 us; the rest is opening
the file, the system calls and the kernel's TCP work (README, bench/bench_s3.py). What botocore
decides is asked of it once per destination: the endpoint, addressing style and path before the
key, the region, the CA bundle, the credentials (asked again at each signature: refreshable ones
are refreshed by botocore when due).

The signature covers the method, path, host, date, session token and x-amz-* headers; the body is
not hashed into it (UNSIGNED-PAYLOAD: what botocore sends over https and AWS's CRT transfer client
everywhere) and no checksum is sent: S3 needs neither. A small file goes out with its headers in
one send; a larger one by sendfile() over plain http, in chunks over TLS. One attempt per request:
retrying and slowing down belong to the session (sessions_app/pacing.py).
"""

from __future__ import annotations

import http.client
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import BinaryIO
from urllib.parse import SplitResult, quote, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.httpsession import get_cert_path
from botocore.utils import get_environ_proxies

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0  # per socket operation, as botocore's read_timeout
INLINE_BODY = 1024 * 1024  # bodies up to this size are read whole and sent with the headers
TLS_CHUNK = 1024 * 1024
STREAM_CHUNK = 64 * 1024  # what a stream's body is read in: never whole
_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]*)</\1>")


class PutFailed(Exception):
    """A PUT that did not store the object: `status` 0 when no HTTP answer came (connection
    refused or lost, timeout), else the answer's status, S3 error code, message and headers."""

    def __init__(self, message: str, status: int = 0, code: str = "", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.code, self.headers = message, status, code, headers or {}


class Putter:
    """PUTs open local files to one bucket. Thread-safe: each calling thread has a connection."""

    @classmethod
    def for_client(cls, botocore_client, credentials: Credentials, bucket: str, ca_bundle: str | None
                   ) -> Putter | None:
        """A putter that sends where `botocore_client` would, trusting what it trusts (the AWS
        configuration's CA bundle, else botocore's), or None where the client goes through a
        proxy (botocore's path then serves)."""
        url = _base_of(botocore_client, bucket)
        proxies = {**get_environ_proxies(url.geturl()), **(botocore_client.meta.config.proxies or {})}
        if proxies.get(url.scheme):
            return None
        return cls(url, Signer(credentials, botocore_client.meta.region_name, url.scheme), ca_bundle or get_cert_path(True))

    def __init__(self, url: SplitResult, signer: Signer, ca_bundle: str | None = None):
        self.host_header, self.path_prefix = url.netloc, url.path
        self._host, self._port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        self._tls = ssl.create_default_context(cafile=ca_bundle) if url.scheme == "https" else None
        self._signer = signer
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def put(self, file: BinaryIO, full_key: str, size: int, headers: list[tuple[str, str]]) -> str:
        """Send `size` bytes of the open `file`, from its start, to full_key in one PUT; the ETag.
        An error reading the file comes out as the OSError it is."""
        if size > INLINE_BODY:
            return self._put(full_key, size, headers, b"", lambda sock: self._send_file(sock, file, size))
        body = file.read(size)
        if len(body) != size:
            raise PutFailed(f"the file ended after {len(body)} of {size} bytes")
        return self._put(full_key, size, headers, body)

    def put_stream(self, stream: BinaryIO, full_key: str, size: int, headers: list[tuple[str, str]]) -> str:
        """Send `size` bytes read from `stream`, a chunk at a time, to full_key in one PUT; the
        ETag. Errors of stream.read() come out as they are."""
        def send(sock: socket.socket) -> None:
            left = size
            while left:
                chunk = stream.read(min(left, STREAM_CHUNK))
                if not chunk:
                    raise PutFailed(f"the stream ended after {size - left} of {size} bytes")
                _send(sock, chunk)
                left -= len(chunk)

        return self._put(full_key, size, headers, b"", send)

    def _put(self, full_key: str, size: int, headers: list[tuple[str, str]], first: bytes,
             send_rest: Callable[[socket.socket], None] | None = None) -> str:
        path = self.path_prefix + quote(full_key, safe="/~")
        signed = self._signer.sign(self.host_header, path, [(k.lower(), v.strip()) for k, v in headers])
        connection = self._connection()
        try:
            try:
                connection.putrequest("PUT", path, skip_host=True, skip_accept_encoding=True)
                for name, value in signed:
                    connection.putheader(name, value)
                connection.putheader("Content-Length", str(size))
                connection.endheaders(first)  # headers and a small body in one send
            except (OSError, http.client.HTTPException) as exc:
                raise PutFailed(_describe(exc)) from None
            if send_rest is not None:
                send_rest(connection.sock)  # network errors as PutFailed, the source's as they are
            try:
                answer = connection.getresponse()
                data = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                raise PutFailed(_describe(exc)) from None
        except BaseException:
            self._drop(connection)  # a request cut off half-way leaves it unusable
            raise
        if answer.will_close:
            self._drop(connection)
        if answer.status >= 300:
            raise _answer_error(answer.status, data, dict(answer.getheaders()))
        return (answer.getheader("ETag") or "").strip('"')

    def _send_file(self, sock: socket.socket, file: BinaryIO, size: int) -> None:
        if self._tls is None:
            try:
                sent = sock.sendfile(file, 0, size)  # in the kernel, page cache to socket
            except OSError as exc:
                raise PutFailed(_describe(exc)) from None
        else:
            sent, buffer = 0, bytearray(min(size, TLS_CHUNK))
            file.seek(0)
            while sent < size and (n := file.readinto(memoryview(buffer)[: size - sent])):
                _send(sock, memoryview(buffer)[:n])
                sent += n
        if sent != size:
            raise PutFailed(f"the file ended after {sent} of {size} bytes")

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's connection: a new one when there is none or the server closed it (a
        closed idle connection reads as ready: its end of file)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.sock is not None and not _readable(connection.sock):
            return connection
        if connection is not None:
            self._drop(connection)
        try:
            if self._tls is None:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT)
            else:
                connection = http.client.HTTPSConnection(self._host, self._port, timeout=CONNECT_TIMEOUT,
                                                         context=self._tls)
            connection.connect()
        except (OSError, http.client.HTTPException) as exc:
            raise PutFailed(_describe(exc)) from None
        connection.sock.settimeout(READ_TIMEOUT)
        self._local.connection = connection
        with self._lock:
            self._connections.append(connection)
        return connection

    def _drop(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        self._local.connection = None
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections = []


class Signer:
    """AWS Signature Version 4 of an S3 PUT with an unsigned payload, by botocore's own signer
    (S3SigV4Auth): the request is ours, the signature botocore's."""

    def __init__(self, credentials: Credentials, region: str, scheme: str = "https"):
        self._credentials, self._region, self._scheme = credentials, region, scheme

    def sign(self, host: str, path: str, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The request's headers, Authorization among them. `path` is sent as it is (S3 does not
        normalise it, and neither does S3SigV4Auth); `extra` headers named x-amz-* are signed too."""
        request = AWSRequest(method="PUT", url=f"{self._scheme}://{host}{path}", headers=dict(extra))
        request.context["client_config"] = _UNSIGNED_PAYLOAD
        # Frozen credentials at each signature: botocore refreshes expiring ones when due.
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        return [("host", host), *request.headers.items()]


# The body is not hashed into the signature (UNSIGNED-PAYLOAD): S3 takes that over http and https.
_UNSIGNED_PAYLOAD = Config(s3={"payload_signing_enabled": False})


def _base_of(botocore_client, bucket: str) -> SplitResult:
    """The URL before the key, as botocore resolves it for this bucket (endpoint, region,
    path or virtual-hosted addressing): asked once, with a probe key."""
    probe = "k"
    url = urlsplit(botocore_client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": probe}))
    if not url.path.endswith("/" + probe):
        raise AssertionError(f"unexpected presigned URL path {url.path!r}")
    return url._replace(path=url.path[: -len(probe)], query="")


def _send(sock: socket.socket, data: bytes | memoryview) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        raise PutFailed(_describe(exc)) from None


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _answer_error(status: int, body: bytes, headers: dict[str, str]) -> PutFailed:
    fields = dict(_ERROR_FIELD.findall(body))
    code = fields.get(b"Code", b"").decode(errors="replace")
    message = fields.get(b"Message", b"").decode(errors="replace") or code or f"HTTP {status}"
    return PutFailed(message, status=status, code=code, headers={k.lower(): v for k, v in headers.items()})
