"""The roboflow SDK, made safe to call from many worker threads, for the Roboflow destination
and the Roboflow source alike.

We call the SDK one level down, `roboflow.adapters.rfapi` (one request per call, no prints),
because we need what the high level hides: the HTTP status, the Retry-After header, and no
retries or sleeps of its own (retries are the pipeline's).

Three process-wide hooks, installed once and touching only what the SDK does:

- Timeouts and connections. The SDK sends its auth, workspace, project, search and image requests without a
  timeout, so a silent server would hang a worker for ever. All its traffic goes through the
  functions of `roboflow.util.http` and its `Session` class, looked up at call time, so we wrap
  those. A ContextVar carries the caller's timeout into the calling thread only; other SDK
  users in the process get DEFAULT_TIMEOUT where the SDK set none. The wrapper also records the
  response, for the status and Retry-After that the SDK's exceptions drop. Inside our calls the
  module-level functions (a new connection per request) go through a kept-alive session per thread.
- Stdout. `contextlib.redirect_stdout` swaps the process-wide sys.stdout and, across threads,
  restores it out of order. Instead sys.stdout becomes a proxy that sends to logging the writes
  of threads inside one of our SDK calls and passes every other write through untouched (so the
  command's progress display is unaffected).
- The API key. The SDK puts it in every URL; urllib3 logs URLs at DEBUG and requests quotes them
  in exception texts. A filter on urllib3's loggers masks `api_key=` values, our messages are
  scrubbed, and SDK exceptions are never chained to ours, so no traceback carries a URL.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import roboflow
from roboflow.adapters import rfapi
from roboflow.util import http as sdk_http

from projects.destinations.base import local_file_error
from projects.errors import RemoteError
from projects.secrets import SecretRefused, read_secret

# The SDK's chatter, under the name the settings and the docs give it.
sdk_log = logging.getLogger("projects.destinations.roboflow.sdk")

DEFAULT_TIMEOUT = 60.0
# roboflow.check_key() retries while its counter is below 5: starting at 5 means no retries.
NO_SDK_RETRIES = 5
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
WELL_KNOWN_SECRETS = ("ROBOFLOW_API_KEY",)  # the SDK's own name for the key: allowed as a secret variable
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_IN_URL = re.compile(r"(api_key=)[^&\s'\"]+")
_URLLIB3_LOGGERS = (
    "urllib3.connection",
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)


class RoboflowAPI:
    """Calls into the SDK with one API key (read from the environment on every use), one
    timeout, and one error type (the caller's end: DestinationError or SourceError)."""

    def __init__(self, api_key_env: str, timeout: float, error: type[RemoteError]):
        self.key_env, self.timeout, self.error = api_key_env, float(timeout), error
        _install_hooks()

    def api_key(self) -> str:
        # Read on every use rather than kept on the instance, which may be pickled or printed.
        try:
            api_key = (read_secret(self.key_env, "api_key_env", WELL_KNOWN_SECRETS) or "").strip()
        except SecretRefused as exc:
            raise self.error(exc.message, permanent=True) from None
        if not api_key:
            raise self.error(
                f"environment variable {self.key_env} is not set: it must hold the Roboflow API key", permanent=True
            )
        if not any(c.islower() for c in api_key):
            # The SDK takes such a key for a placeholder and silently skips checking it.
            raise self.error(f"the value of {self.key_env} is not a Roboflow API key", permanent=True)
        return api_key

    def check_key(self, workspace: str) -> str:
        """The API key opens `workspace`; returns the key."""
        api_key = self.api_key()
        answer = self.call(roboflow.check_key, api_key, "undefined", "undefined", num_retries=NO_SDK_RETRIES,
                           what="API key check")
        owner = answer.get("workspace") if isinstance(answer, dict) else None
        if owner is None:
            raise self.error(f"the value of {self.key_env} is not a Roboflow API key", permanent=True)
        if owner != workspace:
            # Requests go to the key's workspace whatever we name, so a mismatch must stop here.
            raise self.error(
                f"the API key in {self.key_env} belongs to workspace {owner!r}, not {workspace!r}", permanent=True
            )
        return api_key

    @contextmanager
    def _sdk_call(self, api_key: str) -> Iterator[_Call]:
        call = _Call(timeout=self.timeout, secret=api_key)
        _ensure_stdout_proxy()
        _renew_unhooked_upload_session()
        token = _current.set(call)
        try:
            yield call
        finally:
            _current.reset(token)
            call.flush()

    def call(
        self, func: Callable[..., Any], api_key: str, *args: Any, what: str, lookup: bool = False, local_path: str = "",
        **kwargs: Any,
    ) -> Any:
        """One SDK call: its answer, or an error that says whether to retry.
        `lookup`: a 404 means the named thing does not exist."""
        with self._sdk_call(api_key) as call:
            try:
                return func(api_key, *args, **kwargs)
            except Exception as exc:  # the SDK also crashes (AttributeError, KeyError) on odd answers
                if local_path and isinstance(exc, OSError) and not isinstance(exc, requests.RequestException):
                    error = local_file_error(exc, local_path)
                else:
                    error = self._error(what, exc, call, api_key, lookup)
        # Raised outside the except block, so the SDK's exception (its text holds the URL with
        # the key) is not even attached as __context__ for a traceback printer to find.
        raise error

    def _error(self, what: str, exc: Exception, call: _Call, api_key: str, lookup: bool) -> RemoteError:
        cause = exc if isinstance(exc, requests.RequestException) else exc.__cause__
        if isinstance(cause, requests.Timeout):
            return self.error(f"Roboflow {what}: no answer within {call.timeout:g} s", permanent=False)
        if isinstance(cause, requests.RequestException):
            return self.error(scrub(f"Roboflow {what}: connection failed: {cause}", api_key), permanent=False)
        response = call.response
        status = getattr(exc, "status_code", None) or (response.status_code if response is not None else None)
        detail = scrub(_detail(exc, response), api_key)
        if status is None or status in (408, 429) or status >= 500:
            reason = "rate limited" if status == 429 else f"HTTP {status}" if status else "no answer"
            return self.error(f"Roboflow {what}: {reason}: {detail}", permanent=False,
                              retry_after=retry_after(response), throttled=status == 429)
        if status == 404 and lookup:
            return self.error(f"Roboflow {what}: not found", permanent=True)
        if status in (401, 403):
            return self.error(
                f"Roboflow {what}: the API key in {self.key_env} was refused (HTTP {status}): {detail}", permanent=True
            )
        return self.error(f"Roboflow {what}: HTTP {status}: {detail}", permanent=True)


def scrub(text: str, secret: str = "") -> str:
    """`text` without the API key, whether bare, URL-quoted or as any `api_key=` query value."""
    if secret:
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return _KEY_IN_URL.sub(r"\1***", text)


def retry_after(response: requests.Response | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), if there is one."""
    value = response.headers.get("Retry-After", "").strip() if response is not None else ""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _detail(exc: Exception, response: requests.Response | None) -> str:
    """What went wrong, in the remote's words when it said any."""
    text = _error_message(response) if response is not None and response.status_code >= 400 else ""
    if not text and isinstance(exc, (rfapi.RoboflowError, RuntimeError)) and exc.args:
        text = str(exc.args[0])
    text = " ".join((text or f"{type(exc).__name__}: {exc}").split())
    return text[:300] + "…" if len(text) > 300 else text


def _error_message(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
    except (AttributeError, ValueError):
        return response.text or response.reason or ""
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or response.text)


# -- process-wide hooks (see the module docstring) ----------------------------------------------
@dataclass
class _Call:
    """One SDK call made by one thread: its timeout, its last response, its stdout chatter."""

    timeout: float
    secret: str
    response: requests.Response | None = None
    chatter: str = ""

    def write(self, text: str) -> None:
        *lines, self.chatter = (self.chatter + text).replace("\r", "\n").split("\n")
        for line in lines:
            self._log(line)

    def flush(self) -> None:
        self._log(self.chatter)
        self.chatter = ""

    def _log(self, line: str) -> None:
        if line.strip():
            sdk_log.info("%s", scrub(line.strip(), self.secret))


_current: ContextVar[_Call | None] = ContextVar("roboflow_sdk_call", default=None)
_install_lock = threading.Lock()
_installed = False


def _bounded(send: Callable[..., requests.Response]) -> Callable[..., requests.Response]:
    @functools.wraps(send)
    def wrapper(*args: Any, **kwargs: Any) -> requests.Response:
        call = _current.get()
        if call is not None:
            kwargs["timeout"] = call.timeout  # ours wins over the SDK's own (none, or 60-300 s)
            call.response = None
        elif kwargs.get("timeout") is None:
            kwargs["timeout"] = DEFAULT_TIMEOUT
        response = send(*args, **kwargs)
        if call is not None:
            call.response = response
        return response

    return wrapper


class EnvironmentOnceSession(requests.Session):
    """A requests Session that reads the environment's proxies and CA bundle once per scheme and
    host: requests reads them for every request, scanning the whole environment twice (as much
    CPU as the rest of a small request). The environment of a running process does not change."""

    def __init__(self) -> None:
        super().__init__()
        self._from_environment: dict[tuple, dict[str, Any]] = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[override]
        if proxies or not self.trust_env:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = (*urlsplit(url)[:2], stream, verify, str(cert))
        settings = self._from_environment.get(key)
        if settings is None:
            settings = self._from_environment[key] = super().merge_environment_settings(url, {}, stream, verify,
                                                                                        cert)
        return {**settings, "proxies": dict(settings["proxies"])}


class _BoundedSession(EnvironmentOnceSession, sdk_http.Session):
    request = _bounded(sdk_http.Session.request)  # type: ignore[assignment]


class _StdoutToLog:
    """The process's sys.stdout: writes of a thread inside one of our SDK calls go to logging,
    all other writes to the stream it replaced."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        call = _current.get()
        if call is not None:
            call.write(text)
            return len(text)
        return self._stream.write(text) if self._stream is not None else len(text)

    def flush(self) -> None:
        if _current.get() is None and self._stream is not None:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _MaskApiKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "api_key=" in message:
            record.msg, record.args = scrub(message), ()
        return True


_kept_alive = threading.local()


def _session_of_thread() -> _BoundedSession:
    session = getattr(_kept_alive, "session", None)
    if session is None or _kept_alive.pid != os.getpid():
        session = _kept_alive.session = _BoundedSession()
        _kept_alive.pid = os.getpid()
    return session


def _kept_alive_in_calls(method: str | None, send: Callable[..., requests.Response]) -> Callable[..., requests.Response]:
    """One of the SDK's module-level request functions (requests.get & co: a new session and a new
    TCP connection per request, which cost an import more CPU than the request itself). Inside one
    of our calls it goes through the calling thread's kept-alive session instead, with the SDK's
    User-Agent; elsewhere it is the SDK's, bounded."""
    bounded = _bounded(send)

    @functools.wraps(send)
    def wrapper(*args: Any, **kwargs: Any) -> requests.Response:
        if _current.get() is None:
            return bounded(*args, **kwargs)
        # The SDK's functions take the url (request: method and url) positionally, the rest by name.
        verb, url = args if method is None else (method, args[0])
        return _session_of_thread().request(verb, url, **kwargs)  # its User-Agent is the SDK's

    return wrapper


def _install_hooks() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        for name in ("request", "get", "post", "put", "patch", "delete", "head"):
            method = None if name == "request" else name.upper()
            setattr(sdk_http, name, _kept_alive_in_calls(method, getattr(sdk_http, name)))
        sdk_http.Session = _BoundedSession  # type: ignore[misc]
        for name in _URLLIB3_LOGGERS:
            logging.getLogger(name).addFilter(_MaskApiKeys())
        _installed = True


def _ensure_stdout_proxy() -> None:
    # Re-checked on every call: whoever swaps sys.stdout later (a test's capture, a command
    # redirecting output) drops our proxy, and it is put back around their stream.
    if isinstance(sys.stdout, _StdoutToLog):
        return
    with _install_lock:
        if not isinstance(sys.stdout, _StdoutToLog):
            sys.stdout = _StdoutToLog(sys.stdout)


def _renew_unhooked_upload_session() -> None:
    # rfapi keeps one upload Session per thread; one made before our hooks would bypass them.
    sessions = getattr(rfapi, "_upload_sessions", None)
    if sessions is not None and not isinstance(getattr(sessions, "session", None), _BoundedSession):
        sessions.pid = None
