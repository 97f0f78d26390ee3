"""Single-request PUTs of open local files through the AWS Common Runtime (awscrt): HTTP and
SigV4 signing in C, on the CRT's event-loop threads.

botocore spends ~1.6-2 ms of Python per put_object (parameter validation, serialisation, a dozen
event hooks, endpoint rules, signing); this path costs ~0.6-0.7 ms per 4 KiB file (bench/bench_s3.py,
README). Resolved once per destination: the endpoint, addressing style and path before the key
(botocore's own resolution, asked once), the credentials (static ones handed to the CRT once;
refreshable ones asked through botocore at each signature, which refreshes them when due), TLS.

One attempt per request and no retry of any kind here, as the botocore client: retrying and slowing
down belong to the session (sessions_app/pacing.py). (The CRT's S3Client retries on its own and
cannot be told not to, hence plain HTTP connections, one per transfer thread.) The payload is not
hashed into the signature (UNSIGNED-PAYLOAD: what botocore sends over https and the CRT's S3 client
everywhere) and no checksum is sent: S3 needs neither.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote, urlsplit

from awscrt import auth, http, io, s3
from awscrt.exceptions import AwsCrtError
from botocore.credentials import Credentials, RefreshableCredentials
from botocore.utils import get_environ_proxies

CONNECT_TIMEOUT_MS = 10_000
# Time a PUT may take, on top of what its bytes need at 1 MB/s: a server that accepts a body and
# never answers must not hold a transfer thread for ever.
BASE_TIMEOUT = 120.0
MIN_RATE = 1e6
_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]*)</\1>")


class CrtPutFailed(Exception):
    """A PUT that did not store the object: `status` 0 when no HTTP answer came (connection
    refused or lost, timeout), else the answer's status, S3 error code, message and headers."""

    def __init__(self, message: str, status: int = 0, code: str = "", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.status, self.code, self.headers = message, status, code, headers or {}


class CrtPutter:
    """PUTs open local files to one bucket. Thread-safe: each calling thread has a connection."""

    @classmethod
    def for_client(cls, botocore_client, credentials: Credentials, bucket: str, ca_bundle: str | None
                   ) -> CrtPutter | None:
        """A putter that sends where `botocore_client` would, or None where the client goes
        through a proxy or trusts a CA bundle of its own (botocore's path then serves)."""
        url = _base_of(botocore_client, bucket)
        proxies = {**get_environ_proxies(url.geturl()), **(botocore_client.meta.config.proxies or {})}
        if ca_bundle or proxies.get(url.scheme):
            return None
        return cls(botocore_client, credentials, url)

    def __init__(self, botocore_client, credentials: Credentials, url):
        self.host_header, self.path_prefix = url.netloc, url.path
        self._host, self._port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
        self._tls = None
        if url.scheme == "https":
            self._tls = io.ClientTlsContext(io.TlsContextOptions()).new_connection_options()
            self._tls.set_server_name(self._host)
        self._signing = s3.create_default_s3_signing_config(region=botocore_client.meta.region_name,
                                                            credential_provider=_provider(credentials))
        self._socket = io.SocketOptions()
        self._socket.connect_timeout_ms = CONNECT_TIMEOUT_MS
        self._local = threading.local()
        self._connections: list[http.HttpClientConnection] = []
        self._lock = threading.Lock()

    def put(self, file, full_key: str, size: int, headers: list[tuple[str, str]]) -> str:
        """Send `size` bytes read from the open `file` (from where it stands) to full_key in one
        PUT; the ETag."""
        request = http.HttpRequest("PUT", self.path_prefix + quote(full_key, safe="/~"), http.HttpHeaders(
            [("Host", self.host_header), ("Content-Length", str(size)), *headers]), body_stream=file)
        answer: dict = {}
        body: list[bytes] = []

        def on_response(status_code: int, headers: list[tuple[str, str]], **_) -> None:
            answer.update(headers)
            answer[":status"] = status_code

        def on_body(chunk: bytes, **_) -> None:
            body.append(bytes(chunk))

        timeout = BASE_TIMEOUT + size / MIN_RATE
        connection = None
        try:
            auth.aws_sign_request(request, self._signing).result(timeout)
            connection = self._connection()
            stream = connection.request(request, on_response=on_response, on_body=on_body)
            stream.activate()
            stream.completion_future.result(timeout)
        except TimeoutError:
            if connection is not None:
                connection.close()
            raise CrtPutFailed(f"no answer within {timeout:.0f} s") from None
        except AwsCrtError as exc:
            raise CrtPutFailed(f"{exc.name}: {exc.message}") from None
        status = answer.pop(":status")
        if status >= 300:
            raise _answer_error(status, b"".join(body), answer)
        return next((v for k, v in answer.items() if k.lower() == "etag"), "").strip('"')

    def _connection(self) -> http.HttpClientConnection:
        """This thread's connection, or a new one when the server closed it."""
        connection = getattr(self._local, "connection", None)
        if connection is None or not connection.is_open():
            connection = http.HttpClientConnection.new(
                host_name=self._host, port=self._port, bootstrap=io.ClientBootstrap.get_or_create_static_default(),
                socket_options=self._socket, tls_connection_options=self._tls,
            ).result(CONNECT_TIMEOUT_MS / 1000 + 5)
            self._local.connection = connection
            with self._lock:
                self._connections = [c for c in self._connections if c.is_open()] + [connection]
        return connection

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections = []


def _base_of(botocore_client, bucket: str):
    """The URL before the key, as botocore resolves it for this bucket (endpoint, region,
    path or virtual-hosted addressing): asked once, with a probe key."""
    probe = "k"
    url = urlsplit(botocore_client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": probe}))
    if not url.path.endswith("/" + probe):
        raise AssertionError(f"unexpected presigned URL path {url.path!r}")
    return url._replace(path=url.path[: -len(probe)], query="")


def _provider(credentials: Credentials) -> auth.AwsCredentialsProvider:
    if isinstance(credentials, RefreshableCredentials):
        def fetch() -> auth.AwsCredentials:
            frozen = credentials.get_frozen_credentials()
            return auth.AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)
        return auth.AwsCredentialsProvider.new_delegate(fetch)
    frozen = credentials.get_frozen_credentials()
    return auth.AwsCredentialsProvider.new_static(frozen.access_key, frozen.secret_key, frozen.token)


def _answer_error(status: int, body: bytes, headers: dict[str, str]) -> CrtPutFailed:
    fields = dict(_ERROR_FIELD.findall(body))
    code = fields.get(b"Code", b"").decode(errors="replace")
    message = fields.get(b"Message", b"").decode(errors="replace") or code or f"HTTP {status}"
    return CrtPutFailed(message, status=status, code=code, headers={k.lower(): v for k, v in headers.items()})
