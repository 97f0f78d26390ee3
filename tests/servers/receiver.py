"""A real HTTP endpoint on loopback for notification tests.

Fixtures (auto-loaded by tests/conftest.py):
- receiver           function: a threaded http.server on 127.0.0.1 that records every request and
                     answers 200 unless told otherwise: .url(path="/hook"), .requests, .wait_for(n),
                     .connections (accepted), .fail_next(n, status=500), .stall_next(n) (answer
                     nothing until the client gave up: a timeout on its side), .trickle_next(n) (the
                     answer one byte at a time, without end), .huge_next(n, size) (a 200 answer of
                     `size` bytes, written lazily), .wait_for_hang_up() (the client closed before
                     the answer was complete; how many bytes it had been sent)
- receiver_v6        function: the same on [::1]
- refused_url        function: an http:// URL of a loopback port nobody listens on
- loopback_allowed   function: NOTIFY_ALLOWED_NETWORKS lets notifications reach loopback (LOOPBACK_NETWORKS)
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
TRICKLE_INTERVAL_SECONDS = 0.05
BLOCK = b"x" * 65536


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
    kind: str  # "status", "stall", "trickle" or "huge"
    remaining: int
    status: int = 500
    size: int = 0


@dataclass
class Receiver:
    _server: ThreadingHTTPServer = field(repr=False)
    requests: list[Received] = field(default_factory=list)
    _plans: list[_Plan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)
    connections: int = 0
    hang_ups: list[int] = field(default_factory=list)  # bytes sent to each client that hung up early

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        address, port = self._server.server_address[:2]
        host = host or (f"[{address}]" if ":" in address else address)
        return f"http://{host}:{port}{path}"

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def fail_next(self, n: int, status: int = 500) -> None:
        """Answer the next n requests with `status` instead of 200."""
        with self._lock:
            self._plans.append(_Plan("status", n, status))

    def stall_next(self, n: int) -> None:
        """Hold the next n requests without an answer until the client hangs up (its timeout)."""
        with self._lock:
            self._plans.append(_Plan("stall", n))

    def trickle_next(self, n: int) -> None:
        """Answer the next n requests one byte every TRICKLE_INTERVAL_SECONDS, for as long as the
        client listens (the answer announces far more bytes than the limit lets through)."""
        with self._lock:
            self._plans.append(_Plan("trickle", n, 200))

    def huge_next(self, n: int, size: int) -> None:
        """Answer the next n requests 200 with a body of `size` bytes, written block by block (the
        receiver never holds it), until it is all sent or the client hangs up."""
        with self._lock:
            self._plans.append(_Plan("huge", n, 200, size))

    def wait_for_hang_up(self, timeout: float = 30.0) -> int:
        """Poll until a client hung up before its answer was complete; the bytes it had been sent."""

        def hung_up() -> list[int]:
            with self._lock:
                return list(self.hang_ups)

        return wait_for(hung_up, timeout, "a client hanging up", interval=0.02)[0]

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

    def _count(self, what: str, value: int = 1) -> None:
        with self._lock:
            if what == "connection":
                self.connections += 1
            else:
                self.hang_ups.append(value)

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
        if plan is not None and plan.kind in ("trickle", "huge"):
            self._write_slowly_or_hugely(receiver, plan)
            self.close_connection = True
            return
        answer = json.dumps({"ok": status < 300, "status": status}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_PUT = do_GET = do_POST

    def _write_slowly_or_hugely(self, receiver: Receiver, plan: _Plan) -> None:
        size = plan.size or 1_000_000
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n".encode()
        sent = 0
        self.connection.settimeout(STALL_LIMIT_SECONDS)  # a client that neither reads nor hangs up
        try:
            if plan.kind == "trickle":
                for byte in head + BLOCK:
                    self.wfile.write(bytes([byte]))
                    sent += 1
                    if receiver._release.wait(TRICKLE_INTERVAL_SECONDS):
                        return
            else:
                self.wfile.write(head)
                while sent < size and not receiver._release.is_set():
                    block = memoryview(BLOCK)[: size - sent]
                    self.wfile.write(block)
                    sent += len(block)
        except TimeoutError:
            return
        except OSError:  # the client hung up
            receiver._count("hang_up", sent)

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        accepted = super().get_request()
        self.receiver._count("connection")
        return accepted


class _Server6(_Server):
    address_family = socket.AF_INET6


def _serve(server_class: type[_Server], host: str) -> Iterator[Receiver]:
    server = server_class((host, 0), _Handler)
    rec = Receiver(server)
    server.receiver = rec
    thread = threading.Thread(target=server.serve_forever, name="notify-receiver", daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(_Server, "127.0.0.1")


@pytest.fixture
def receiver_v6() -> Iterator[Receiver]:
    yield from _serve(_Server6, "::1")


@pytest.fixture
def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"


@pytest.fixture
def loopback_allowed(settings) -> str:
    """Let notifications reach the loopback receivers, which the outbound policy refuses by default;
    the same value goes into the environment of subprocesses (NOTIFY_ALLOWED_NETWORKS)."""
    settings.NOTIFY_ALLOWED_NETWORKS = LOOPBACK_NETWORKS.split(",")
    return LOOPBACK_NETWORKS
