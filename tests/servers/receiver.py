"""A real HTTP endpoint on loopback for notification tests.

Fixtures (auto-loaded by tests/conftest.py):
- receiver           function: a threaded http.server that records every request and answers 200
                     unless told otherwise: .url(path="/hook"), .requests, .wait_for(n),
                     .fail_next(n, status=500), .stall_next(n) (answer nothing until the client
                     gave up: a timeout on its side)
- refused_url        function: an http:// URL of a loopback port nobody listens on
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.polling import wait_for

STALL_LIMIT_SECONDS = 30.0


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    answered: int | None  # status sent back; None when stalled

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Plan:
    kind: str  # "status" or "stall"
    remaining: int
    status: int = 500


@dataclass
class Receiver:
    _server: ThreadingHTTPServer = field(repr=False)
    requests: list[Received] = field(default_factory=list)
    _plans: list[_Plan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str = "/hook") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next n requests with `status` instead of 200."""
        with self._lock:
            self._plans.append(_Plan("status", n, status))

    def stall_next(self, n: int) -> None:
        """Hold the next n requests without an answer until the client hangs up (its timeout)."""
        with self._lock:
            self._plans.append(_Plan("stall", n))

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Received]:
        """Poll until n requests have arrived; the requests."""

        def arrived() -> list[Received] | None:
            with self._lock:
                return list(self.requests) if len(self.requests) >= n else None

        return wait_for(arrived, timeout, f"{n} requests (got {len(self.requests)})", interval=0.02)

    def _next_plan(self) -> _Plan | None:
        with self._lock:
            for plan in self._plans:
                if plan.remaining > 0:
                    plan.remaining -= 1
                    return plan
        return None

    def _record(self, item: Received) -> None:
        with self._lock:
            self.requests.append(item)

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - quiet; the records are on the Receiver
        pass

    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        plan = receiver._next_plan()
        if plan is not None and plan.kind == "stall":
            receiver._record(Received(self.command, self.path, headers, body, None))
            self._wait_for_hang_up(receiver)
            self.close_connection = True
            return
        status = plan.status if plan is not None else 200
        receiver._record(Received(self.command, self.path, headers, body, status))
        answer = json.dumps({"ok": status < 300, "status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_PUT = do_GET = do_POST

    def _wait_for_hang_up(self, receiver: Receiver) -> None:
        """Block until the client closes the connection (it timed out) or the fixture ends."""
        self.connection.settimeout(0.05)
        deadline = time.monotonic() + STALL_LIMIT_SECONDS
        while not receiver._release.is_set() and time.monotonic() < deadline:
            try:
                if self.connection.recv(1, socket.MSG_PEEK) == b"":
                    return
            except TimeoutError:
                continue
            except OSError:
                return


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    rec = Receiver(server)
    server.receiver = rec
    thread = threading.Thread(target=server.serve_forever, name="notify-receiver", daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture
def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
