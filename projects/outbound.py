"""Outbound HTTP (session notifications), and what of a URL may be stored or shown.

- `redact_url` is the one owner of how a URL looks in the database, the admin, logs and output.
- `Policy` decides which addresses may be contacted: loopback, private, link-local, multicast,
  reserved and unspecified addresses (IPv4, IPv6 and IPv4 inside IPv6) are refused unless the
  operator lists their network in NOTIFY_ALLOWED_NETWORKS. The check is made on the resolved
  addresses when the connection is opened, and the socket connects to exactly the address that
  was checked, so a name that resolves elsewhere a moment later (DNS rebinding) gains nothing.
- `post` sends one bounded request: one deadline over connect, send and read, and at most
  EXCERPT_BYTES of the answer read.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import threading
import time
from dataclasses import dataclass
from http.client import HTTPException
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

import certifi
from django.conf import settings
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from projects.errors import ConfigError, NotifyError

EXCERPT_BYTES = 1024
REDACTED = "***"
TOKEN_MIN_LENGTH = 16  # shorter path parts are names and ids, not credentials

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
AddrInfo = tuple  # one socket.getaddrinfo() entry: family, type, proto, canonname, sockaddr

# IPv6 prefixes whose last 32 bits are an IPv4 address (IPv4-compatible, NAT64).
_IPV4_INSIDE = (ipaddress.ip_network("::/96"), ipaddress.ip_network("64:ff9b::/96"))
_REFUSED_KINDS = ("unspecified", "loopback", "link_local", "multicast", "reserved", "private")


# -- URLs as stored and shown ---------------------------------------------------------------------


def check_http_url(url: str, name: str = "url") -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}: must be an http:// or https:// URL, got {redact_url(url)!r}")
    try:
        parts.port
    except ValueError as exc:
        raise ConfigError(f"{name}: bad port in {redact_url(url)!r}") from exc


def check_endpoint(url: str) -> None:
    """check_http_url for a URL about to be contacted: raises NotifyError."""
    try:
        check_http_url(url)
    except ConfigError as exc:
        raise NotifyError(exc.message) from exc


def redact_url(url: str) -> str:
    """The URL without what may be a secret: user:password, query values, the fragment, and path
    parts that look like tokens (Slack, Discord, Teams webhooks carry theirs in the path)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    path = "/".join(REDACTED if looks_like_token(part) else part for part in parts.path.split("/"))
    query = "&".join(_redact_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, host, path, query, REDACTED if parts.fragment else ""))


def looks_like_token(text: str) -> bool:
    """Long, and mixing at least two of lower case, upper case and digits: random, not a word."""
    classes = (str.islower, str.isupper, str.isdigit)
    return len(text) >= TOKEN_MIN_LENGTH and sum(any(map(test, text)) for test in classes) >= 2


def _redact_pair(pair: str) -> str:
    key, has_value, value = pair.partition("=")
    return f"{key}={REDACTED}" if has_value and value else (pair if has_value else REDACTED)


# -- which addresses may be contacted -------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls) -> Policy:
        networks = []
        for text in filter(None, (t.strip() for t in settings.NOTIFY_ALLOWED_NETWORKS)):
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise NotifyError(f"NOTIFY_ALLOWED_NETWORKS: {text!r} is not a network (e.g. 10.0.0.0/8)") from exc
        return cls(tuple(networks))

    def refusal(self, ip: str) -> str:
        """Why this address may not be contacted; "" when it may."""
        addr = ipaddress.ip_address(ip.partition("%")[0])  # without an IPv6 zone ("fe80::1%eth0")
        if addr.version == 6 and addr.ipv4_mapped:
            addr = addr.ipv4_mapped  # a socket sends to that IPv4 address itself
        candidates = [addr, *filter(None, [_ipv4_inside(addr)])]
        if any(a in net for a in candidates for net in self.allowed):
            return ""
        kinds = [kind for a in candidates if (kind := _refused_kind(a))]
        return f"{ip} is a {kinds[0]} address" if kinds else ""

    def connect(self, host: str, addresses: list[AddrInfo], deadline: Deadline) -> socket.socket:
        """The connect-time guard: refuse every address of `host` if one of them is not allowed,
        else connect to the first that answers — the very address that was checked."""
        for *_, sockaddr in addresses:
            why = self.refusal(sockaddr[0])
            if why:
                raise NotifyError(f"refused {host}: {why}; notifications go to public addresses only, "
                                  f"unless NOTIFY_ALLOWED_NETWORKS lists the network")
        error: OSError = OSError(f"{host} has no address")
        for family, kind, proto, _, sockaddr in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(deadline.remaining())
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        raise error


def resolve(host: str, port: int) -> list[AddrInfo]:
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise NotifyError(f"cannot resolve {host}: {exc.strerror or exc}", permanent=False) from exc


def _ipv4_inside(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4, NAT64 or IPv4-compatible address leads to."""
    if addr.version == 4:
        return None
    if addr.sixtofour:
        return addr.sixtofour
    if any(addr in net for net in _IPV4_INSIDE):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def _refused_kind(addr: IPAddress) -> str:
    for kind in _REFUSED_KINDS:
        if getattr(addr, f"is_{kind}"):
            return kind.replace("_", "-")
    return "" if addr.is_global else "non-public"


# -- one bounded request --------------------------------------------------------------------------


class Deadline:
    """An attempt's whole time. A socket timeout bounds each read, not their sum (a server that
    trickles a byte at a time never trips it); when the deadline passes, the watched sockets are
    shut down, which ends any read or write in progress."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.passed = False
        self._at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._watched: list[socket.socket] = []
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._watched:
                sock.close()
            self._watched.clear()

    def remaining(self) -> float:
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        return left

    def watch(self, sock: socket.socket) -> None:
        # A duplicate of our own: shutting it down also ends I/O on the TLS socket that later takes
        # over the original, and it is never a descriptor number reused by another connection.
        dup = sock.dup()
        with self._lock:
            self._watched.append(dup)
            if self.passed:
                _shut(dup)

    def _cut(self) -> None:
        with self._lock:
            self.passed = True
            for sock in self._watched:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side


class _Guarded:
    """urllib3's connection with its socket opened by the policy's guard and watched by the deadline."""

    def __init__(self, host: str, port: int | None, *, policy: Policy, deadline: Deadline, **kwargs):
        super().__init__(host, port, timeout=deadline.seconds, **kwargs)
        self._policy, self._deadline = policy, deadline

    def _new_conn(self) -> socket.socket:
        try:
            sock = self._policy.connect(self.host, resolve(self._dns_host, self.port), self._deadline)
        except TimeoutError:
            raise
        except OSError as exc:
            raise NotifyError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}",
                              permanent=False) from exc
        self._deadline.watch(sock)
        return sock


class _GuardedHTTP(_Guarded, HTTPConnection):
    pass


class _GuardedHTTPS(_Guarded, HTTPSConnection):
    pass


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    location: str
    excerpt: str


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Reply:
    """POST `body` to `url`, all of it within `timeout` seconds; no proxy, no redirect followed.
    Raises NotifyError: permanent when the URL or its address is refused, transient otherwise."""
    check_endpoint(url)
    parts = urlsplit(url)
    policy = Policy.from_settings()
    with Deadline(timeout) as deadline:
        conn = _connection(parts, policy, deadline)
        try:
            conn.request("POST", urlunsplit(("", "", parts.path or "/", parts.query, "")), body=body,
                         headers={**headers, **_basic_auth(parts)}, preload_content=False, decode_content=False)
            resp = conn.getresponse()
            return Reply(resp.status, resp.reason, resp.headers.get("Location", ""), _excerpt(resp))
        except (OSError, HTTPException, Urllib3Error) as exc:
            if deadline.passed or isinstance(exc, (TimeoutError, Urllib3Timeout)):
                raise NotifyError(f"no answer within {timeout:g}s (timeout)", permanent=False) from exc
            raise NotifyError(f"connection to {conn.host}:{conn.port} failed: {_root_cause(exc)}",
                              permanent=False) from exc
        finally:
            conn.close()


def _connection(parts: SplitResult, policy: Policy, deadline: Deadline) -> HTTPConnection:
    if parts.scheme == "https":
        return _GuardedHTTPS(parts.hostname, parts.port, policy=policy, deadline=deadline, ca_certs=certifi.where())
    return _GuardedHTTP(parts.hostname, parts.port, policy=policy, deadline=deadline)


def _basic_auth(parts: SplitResult) -> dict[str, str]:
    if parts.username is None:
        return {}
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def _excerpt(resp) -> str:
    """The first EXCERPT_BYTES of the body; what had arrived if the rest fails or is too slow (the
    status decides the outcome; the excerpt is for people)."""
    got = bytearray()
    try:
        while len(got) < EXCERPT_BYTES:
            chunk = resp.read1(EXCERPT_BYTES - len(got))
            if not chunk:
                break
            got += chunk
    except (OSError, HTTPException, Urllib3Error):
        pass
    return got.decode("utf-8", "replace")


def _root_cause(exc: BaseException) -> str:
    """The innermost cause ("Connection reset by peer"), not a wrapper's text."""
    inner: BaseException = exc
    while inner.__cause__ or inner.__context__:
        inner = inner.__cause__ or inner.__context__
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return str(inner) or type(inner).__name__
