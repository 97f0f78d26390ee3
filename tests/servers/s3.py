"""S3 test servers on loopback: moto's standalone server, a second one that checks credentials,
and a fault-injecting HTTP proxy in front of the first.

Fixtures (list this module in pytest_plugins):
- s3_server          session: moto on 127.0.0.1; .endpoint_url, .client (plain boto3),
                     .make_bucket(name=None) -> unique name, .fill(bucket, keys) (many small PUTs, fast)
- s3_auth_server     session: moto with IAM auth on; .endpoint_url, .bucket, .access_key_id, .secret_access_key
                     of a user allowed s3:* (the session's own "testing" credentials are refused)
- fault_proxy        function: the proxy (fault_proxy_server, session) in front of s3_server, rules and
                     records reset per test; .endpoint_url, .fail_next(n, kind, method="PUT",
                     path_contains=None), .throttle(first, rate, answer="503") (a throttle storm),
                     .count(method, path_contains, outcome), .count_by_path("PUT"), .requests
- make_s3_destination function: factory of S3Destinations on a fresh bucket, closed at teardown
- s3_destination     function: an S3Destination on a fresh bucket under a prefix
- local_destination  function: a LocalDestination into tmp_path
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import boto3
import pytest

from tests.polling import wait_for
from botocore.config import Config

REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
STARTUP_SECONDS = 30
# Enough of a SigV4 header for moto to route the request to S3 (it checks no signature without auth).
UNSIGNED_S3_AUTH = (
    f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/20260101/{REGION}/s3/aws4_request, "
    "SignedHeaders=host, Signature=0"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the AWS environment ------------------------------------------------------------------
@pytest.fixture(scope="session")
def aws_test_environment(tmp_path_factory) -> Iterator[None]:
    """Test credentials for the whole session; nothing of the real user's AWS set-up leaks in
    (profiles, ~/.aws files, endpoint overrides, instance metadata)."""
    aws_dir = tmp_path_factory.mktemp("aws")
    (aws_dir / "config").write_text("")
    (aws_dir / "credentials").write_text("")
    mp = pytest.MonkeyPatch()
    for name in list(os.environ):
        if name.startswith("AWS_"):
            mp.delenv(name)
    mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    mp.setenv("AWS_DEFAULT_REGION", REGION)
    mp.setenv("AWS_CONFIG_FILE", str(aws_dir / "config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws_dir / "credentials"))
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("NO_PROXY", "no_proxy"):
        mp.setenv(name, ",".join(filter(None, [os.environ.get(name, ""), "127.0.0.1", "localhost"])))
    yield
    mp.undo()


# -- moto -----------------------------------------------------------------------------------
class MotoServer:
    """`python -m moto.server` as a subprocess on a free loopback port."""

    def __init__(self, log_path: Path, extra_env: dict[str, str] | None = None):
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        for _attempt in range(3):  # the free port may be taken between probing and binding
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    env={**os.environ, **self.extra_env},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_for(self._answers, STARTUP_SECONDS, f"moto on port {self.port}", interval=0.02)
                return
            except RuntimeError:
                continue  # exited: most likely the port was taken
            except AssertionError as exc:  # wait_for's deadline
                self.stop()
                raise RuntimeError(f"{exc}; log: {self.log_path}\n{self.log_tail()}") from exc
        raise RuntimeError(f"moto did not start; log: {self.log_path}\n{self.log_tail()}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"moto exited with {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def post(self, path: str, data: bytes) -> None:
        req = urllib.request.Request(
            f"{self.endpoint_url}{path}", data=data, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200, resp.read()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def raw_client(endpoint_url: str, **kwargs):
    """A plain boto3 client for setting up and inspecting state (not our code)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=REGION,
        config=Config(
            max_pool_connections=32,
            retries={"max_attempts": 3, "mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
        **kwargs,
    )


class S3Server:
    def __init__(self, moto: MotoServer):
        self.moto = moto
        self.endpoint_url = moto.endpoint_url
        self.client = raw_client(self.endpoint_url)

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def fill(self, bucket: str, keys: list[str], body: bytes = b"z", threads: int = 8) -> None:
        """PUT many small objects fast: plain HTTP on kept-alive connections (moto does not check
        signatures here), a fraction of boto3's client CPU per object."""
        local = threading.local()
        conns: list[http.client.HTTPConnection] = []

        def put(key: str) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", self.moto.port, timeout=30)
                conns.append(conn)
            path = f"/{bucket}/{quote(key, safe='/~')}"
            conn.request("PUT", path, body=body, headers={"Authorization": UNSIGNED_S3_AUTH})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"PUT {key}: {resp.status}")

        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(put, keys))
        finally:
            for conn in conns:
                conn.close()


@pytest.fixture(scope="session")
def s3_server(aws_test_environment, tmp_path_factory) -> Iterator[S3Server]:
    moto = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    moto.start()
    try:
        yield S3Server(moto)
    finally:
        moto.stop()


@dataclass
class S3AuthServer:
    """moto checking every request's signature against its IAM users."""

    moto: MotoServer
    endpoint_url: str
    bucket: str
    access_key_id: str  # a key of an IAM user allowed s3:*
    secret_access_key: str


@pytest.fixture(scope="session")
def s3_auth_server(aws_test_environment, tmp_path_factory) -> Iterator[S3AuthServer]:
    """Auth starts off (moto's default, INITIAL_NO_AUTH_ACTION_COUNT=inf) so we can create a user,
    its key and a bucket; then /moto-api/reset-auth with 0 makes every later request authenticate."""
    moto = MotoServer(tmp_path_factory.mktemp("moto-auth") / "moto.log")
    moto.start()
    try:
        iam = boto3.client("iam", endpoint_url=moto.endpoint_url, region_name=REGION)
        iam.create_user(UserName="uploader")
        iam.put_user_policy(
            UserName="uploader",
            PolicyName="s3-all",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="uploader")["AccessKey"]
        bucket = f"auth-{uuid.uuid4().hex[:16]}"
        raw_client(moto.endpoint_url).create_bucket(Bucket=bucket)
        moto.post("/moto-api/reset-auth", b"0")
        yield S3AuthServer(moto, moto.endpoint_url, bucket, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        moto.stop()


# -- the fault-injecting proxy ----------------------------------------------------------------
ERRORS = {
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
    "429": (429, "Too Many Requests", "TooManyRequests", "Too many requests, please slow down."),
}
FAULT_KINDS = (*ERRORS, "drop")
# Hop-by-hop headers, and Expect: the proxy answers 100-continue itself.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect"}
CHUNK = 256 * 1024


@dataclass
class Rule:
    remaining: int
    kind: str
    method: str | None
    path_contains: str | None

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method == method)
            and (self.path_contains is None or self.path_contains in path)
        )


class Throttle:
    """A throttle storm on one method: the first `first` requests answer `answer`, then `rate`
    per second pass (a token bucket holding one second's worth) and the rest answer `answer`."""

    def __init__(self, first: int, rate: float, answer: str, method: str):
        self.first, self.rate, self.answer, self.method = first, rate, answer, method
        self.tokens, self.at = 0.0, time.monotonic()

    def outcome(self, method: str) -> str | None:
        if method != self.method:
            return None
        if self.first > 0:
            self.first -= 1
            return self.answer
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return self.answer


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # percent-decoded request target, query included
    outcome: str  # "forwarded" or the fault kind


class FaultProxy:
    """A threaded HTTP/1.1 proxy on loopback that forwards every request to `upstream` (bodies
    streamed both ways) unless a rule says to fail it."""

    def __init__(self, upstream_host: str, upstream_port: int):
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._throttle: Throttle | None = None
        self.requests: list[RecordedRequest] = []
        self.answers: list[tuple[str, str, int]] = []  # (method, decoded path, upstream status)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, n: int, kind: str, method: str | None = "PUT", path_contains: str | None = None) -> None:
        """Fail the next n requests with this method (None: any) whose decoded path contains
        path_contains. kind: "503" SlowDown, "500" InternalError, "403" AccessDenied, "drop"
        (read the request, close the connection without a response)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}, not {kind!r}")
        with self._lock:
            self._rules.append(Rule(n, kind, method, path_contains))

    def throttle(self, first: int, rate: float, answer: str = "503", method: str = "PUT") -> None:
        """Answer `answer` ("503" SlowDown or "429") to the first `first` requests of `method`,
        then let `rate` per second through and answer the rest the same way."""
        with self._lock:
            self._throttle = Throttle(first, rate, answer, method)

    def count(self, method: str | None = None, path_contains: str | None = None, outcome: str | None = None) -> int:
        """How many requests arrived (forwarded or failed) matching method, a substring of the
        percent-decoded path+query, and outcome ("forwarded" or a fault kind)."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method)
                and (path_contains is None or path_contains in r.path)
                and (outcome is None or r.outcome == outcome)
            )

    def count_by_path(self, method: str = "PUT", outcome: str | None = None) -> Counter[str]:
        """Requests per decoded path, query dropped: {"/bucket/key": n}. Multipart parts count
        against their object's path."""
        with self._lock:
            return Counter(
                r.path.split("?", 1)[0]
                for r in self.requests
                if r.method == method and (outcome is None or r.outcome == outcome)
            )

    def succeeded(self, method: str, path_contains: str) -> int:
        """How many such requests the upstream answered with a 2xx: a PUT the client gave up on
        mid-body (a killed worker) arrived, but stored nothing."""
        with self._lock:
            return sum(1 for m, p, status in self.answers if m == method and path_contains in p and status < 300)

    def reset(self) -> None:
        with self._lock:
            self._rules.clear()
            self._throttle = None
            self.requests.clear()
            self.answers.clear()

    def _decide(self, method: str, raw_path: str) -> str:
        path = unquote(raw_path)
        with self._lock:
            outcome = "forwarded"
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    outcome = rule.kind
                    break
            if outcome == "forwarded" and self._throttle is not None:
                outcome = self._throttle.outcome(method) or outcome
            self.requests.append(RecordedRequest(method, path, outcome))
            return outcome

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet, the records are in FaultProxy
        pass

    def _handle(self) -> None:
        proxy: FaultProxy = self.server.proxy
        outcome = proxy._decide(self.command, self.path)
        if outcome != "forwarded":
            for _ in self._body():  # a real server reads the request before it answers
                pass
            if outcome == "drop":
                self.close_connection = True
                return
            self._send_error(outcome)
            return
        try:
            self._forward(proxy.upstream)
        except (ConnectionError, http.client.HTTPException, TimeoutError):
            # Whatever happened, the client must not be left with half a response on a kept-alive connection.
            self.close_connection = True

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_OPTIONS = do_PATCH = _handle

    def _body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                left = size
                while left:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        raise ConnectionError("client closed mid-body")
                    left -= len(data)
                    yield data
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            data = self.rfile.read(min(left, CHUNK))
            if not data:
                raise ConnectionError("client closed mid-body")
            left -= len(data)
            yield data

    def _forward(self, upstream: tuple[str, int]) -> None:
        chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
        conn = http.client.HTTPConnection(*upstream, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.putheader("Connection", "close")
            conn.endheaders()
            for data in self._body():
                conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if chunked:
                conn.send(b"0\r\n\r\n")
            resp = conn.getresponse()
            proxy: FaultProxy = self.server.proxy
            with proxy._lock:
                proxy.answers.append((self.command, unquote(self.path), resp.status))
            self._relay(resp)
        finally:
            conn.close()

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        self.send_response_only(resp.status, resp.reason)
        for name, value in resp.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        length = resp.getheader("Content-Length")
        if no_body:
            self.end_headers()
            return
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            data = resp.read1(CHUNK) if length is None else resp.read(CHUNK)
            if not data:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if length is None else data)
        if length is None:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_error(self, kind: str) -> None:
        status, reason, code, message = ERRORS[kind]
        request_id = uuid.uuid4().hex[:16].upper()
        resource = self.path.split("?", 1)[0]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource>"
            f"<RequestId>{request_id}</RequestId><HostId>fault-proxy</HostId></Error>"
        ).encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        if self.command == "HEAD":  # like S3: a HEAD's error has no body
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="session")
def fault_proxy_server(s3_server) -> Iterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", s3_server.moto.port)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def fault_proxy(fault_proxy_server) -> Iterator[FaultProxy]:
    fault_proxy_server.reset()
    yield fault_proxy_server
    fault_proxy_server.reset()


# -- destinations ---------------------------------------------------------------------------
@pytest.fixture
def make_s3_destination(s3_server):
    """make_s3_destination(via_proxy=None, **options): an S3Destination on a fresh bucket of
    s3_server (or through the given FaultProxy); options override the defaults."""
    from projects.destinations.s3 import S3Destination

    made = []

    def make(via_proxy: FaultProxy | None = None, **options):
        opts = {
            "bucket": options.pop("bucket", None) or s3_server.make_bucket(),
            "endpoint_url": via_proxy.endpoint_url if via_proxy else s3_server.endpoint_url,
            "region": REGION,
            **options,
        }
        dest = S3Destination(opts)
        made.append(dest)
        return dest

    yield make
    for dest in made:
        dest.close()


@pytest.fixture
def s3_destination(make_s3_destination):
    return make_s3_destination(prefix="contract/prefix")


@pytest.fixture
def local_destination(tmp_path):
    from projects.destinations.local import LocalDestination

    dest = LocalDestination({"path": str(tmp_path / "destination"), "prefix": "contract/prefix"})
    yield dest
    dest.close()
