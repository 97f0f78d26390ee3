"""Roboflow: images, with their annotations, into a Roboflow project through the roboflow SDK.

We call the SDK one level down, `roboflow.adapters.rfapi` (one request per call, no prints),
instead of `Project.upload()`, because we need what the high level hides: the HTTP status, the
Retry-After header, and no retries or sleeps of its own (retries are the pipeline's).

Three process-wide hooks, installed once and touching only what the SDK does, make it safe
to run in many worker threads:

- Timeouts. The SDK sends its auth, workspace, project, search and image requests without a
  timeout, so a silent server would hang a worker for ever. All its traffic goes through the
  functions of `roboflow.util.http` and its `Session` class, looked up at call time, so we wrap
  those. A ContextVar carries the destination's timeout into the calling thread only; other SDK
  users in the process get DEFAULT_TIMEOUT where the SDK set none. The wrapper also records the
  response, for the status and Retry-After that the SDK's exceptions drop.
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
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import filetype
import requests
import roboflow
from roboflow.adapters import rfapi
from roboflow.core.project import ACCEPTED_IMAGE_FORMATS
from roboflow.util import http as sdk_http

from projects.annotations import Annotation, AnnotationError, AnnotationFinder, in_neither, split_for
from projects.destinations.base import (
    ConfigError,
    Destination,
    DestinationError,
    UploadResult,
    local_file_error,
)
from projects.schema import KINDS
from projects.secrets import check_secret_options, read_secret

log = logging.getLogger(__name__)
sdk_log = logging.getLogger(f"{__name__}.sdk")

DEFAULT_TIMEOUT: float = KINDS["roboflow"].options["timeout"].default
# roboflow.check_key() retries while its counter is below 5: starting at 5 means no retries.
_NO_SDK_RETRIES = 5
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEY_IN_URL = re.compile(r"(api_key=)[^&\s'\"]+")
_URLLIB3_LOGGERS = (
    "urllib3.connection",
    "urllib3.connectionpool",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)


class RoboflowDestination(Destination):
    kind = "roboflow"
    supports_listing = False  # planning relies on our database
    well_known_secrets = ("ROBOFLOW_API_KEY",)  # the SDK's own name for the key: allowed as a secret variable
    default_extensions = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".avif", ".heic")

    def __init__(self, options: dict[str, Any]):
        super().__init__(options)
        self._finder = AnnotationFinder()
        _install_hooks()

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        for name in ("workspace", "project", "neither_project"):
            value = options[name]
            if value is not None and not _SLUG.match(value):
                raise ConfigError(f"destination.{name}: must be a Roboflow url slug (letters, digits, - _ .)")
        check_secret_options(options, "destination.", cls.well_known_secrets)
        if options["neither_project"] == options["project"]:
            raise ConfigError("destination.neither_project: must differ from destination.project")
        if not all(isinstance(tag, str) and tag.strip() for tag in options["tags"]):
            raise ConfigError("destination.tags: must be a list of non-empty strings")
        options["tags"] = [tag.strip() for tag in options["tags"]]
        if options["timeout"] <= 0:
            raise ConfigError("destination.timeout: must be a positive number of seconds")

    def bind(self, *, project: str, session_id: int, source_dir: str) -> None:
        super().bind(project=project, session_id=session_id, source_dir=source_dir)
        # Labelmaps are searched upward from each image, but not above the source folder.
        self._finder = AnnotationFinder(source_dir)

    @property
    def batch_name(self) -> str:
        name = self.options["batch_name"]
        if not name:
            project = getattr(self, "project_name", "")
            name = f"{project}-session-{self.session_id}" if project else "data-uploader"
        return url_safe(name)

    @classmethod
    def describe_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"kind": cls.kind, "workspace": options.get("workspace"), "project": options.get("project")}

    # -- check ------------------------------------------------------------------------------
    def check(self) -> None:
        api_key = self._api_key()
        workspace = self.options["workspace"]
        answer = self._sdk(
            roboflow.check_key, api_key, "undefined", "undefined", num_retries=_NO_SDK_RETRIES, what="API key check"
        )
        owner = answer.get("workspace") if isinstance(answer, dict) else None
        if owner is None:
            raise DestinationError(f"the value of {self._key_env} is not a Roboflow API key", permanent=True)
        if owner != workspace:
            # Uploads go to the key's workspace whatever we name, so a mismatch must stop here.
            raise DestinationError(
                f"the API key in {self._key_env} belongs to workspace {owner!r}, not {workspace!r}", permanent=True
            )
        self._sdk(rfapi.get_workspace, api_key, workspace, what=f"workspace {workspace!r}", lookup=True)
        for project in filter(None, (self.options["project"], self.options["neither_project"])):
            what = f"project {workspace}/{project}"
            self._sdk(rfapi.get_project, api_key, workspace, project, what=what, lookup=True)

    # -- upload -----------------------------------------------------------------------------
    def upload(self, local_path: str, key: str) -> UploadResult:
        api_key = self._api_key()
        project = self._project_for(key)
        size = check_image(local_path)
        try:
            annotation = self._finder.find(local_path)
        except AnnotationError as exc:
            raise DestinationError(str(exc), permanent=True) from None
        image = self._sdk(
            rfapi.upload_image,
            api_key,
            project,
            local_path,
            split=split_for(key, self.options["split"]),
            batch_name=self.batch_name,
            tag_names=list(self.options["tags"]),
            what=f"upload of {os.path.basename(local_path)}",
            local_path=local_path,
        )
        image_id = str(image.get("id") or "")
        if not image_id:
            raise DestinationError(f"Roboflow answered the upload of {key} without an image id", permanent=False)
        duplicate = bool(image.get("duplicate"))
        log.debug("roboflow: %s -> %s image %s%s", key, project, image_id, " (duplicate)" if duplicate else "")
        notes = ["no annotation"] if annotation is None else self._annotate(api_key, project, image_id, annotation)
        return UploadResult(size=size, remote_id=image_id, duplicate=duplicate, note="; ".join(notes))

    def _annotate(self, api_key: str, project: str, image_id: str, annotation: Annotation) -> list[str]:
        notes = []
        if annotation.format == "yolo" and annotation.labelmap is None:
            notes.append("YOLO annotation without data.yaml or classes.txt: classes named by number")
        answer = self._sdk(
            rfapi.save_annotation,
            api_key,
            project,
            annotation_file_name(annotation.name),
            annotation.text,
            image_id,
            job_name=self.batch_name,
            annotation_labelmap=annotation.labelmap,
            what=f"annotation {os.path.basename(annotation.source)} of image {image_id}",
        )
        if answer.get("warn"):  # "already annotated": a re-upload keeps the annotation it has
            notes.append(f"annotation not replaced: {answer['warn']}")
        return notes

    def _project_for(self, key: str) -> str:
        if not in_neither(key):
            return self.options["project"]
        if not self.options["neither_project"]:
            raise DestinationError(
                f"{key} is in a neither/ folder but destination.neither_project is not set", permanent=True
            )
        return self.options["neither_project"]

    # -- talking to the SDK -----------------------------------------------------------------
    @property
    def _key_env(self) -> str:
        return self.options["api_key_env"]

    def _api_key(self) -> str:
        # Read on every use rather than kept on the instance, which may be pickled or printed.
        api_key = (read_secret(self._key_env, "api_key_env", self.well_known_secrets) or "").strip()
        if not api_key:
            raise DestinationError(
                f"environment variable {self._key_env} is not set: it must hold the Roboflow API key", permanent=True
            )
        if not any(c.islower() for c in api_key):
            # The SDK takes such a key for a placeholder and silently skips checking it.
            raise DestinationError(f"the value of {self._key_env} is not a Roboflow API key", permanent=True)
        return api_key

    @contextmanager
    def _sdk_call(self, api_key: str) -> Iterator[_Call]:
        call = _Call(timeout=float(self.options["timeout"]), secret=api_key)
        _ensure_stdout_proxy()
        _renew_unhooked_upload_session()
        token = _current.set(call)
        try:
            yield call
        finally:
            _current.reset(token)
            call.flush()

    def _sdk(
        self, func: Callable[..., Any], api_key: str, *args: Any, what: str, lookup: bool = False, local_path: str = "",
        **kwargs: Any,
    ) -> dict[str, Any]:
        """One SDK call: its JSON answer, or a DestinationError that says whether to retry.
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

    def _error(self, what: str, exc: Exception, call: _Call, api_key: str, lookup: bool) -> DestinationError:
        cause = exc if isinstance(exc, requests.RequestException) else exc.__cause__
        if isinstance(cause, requests.Timeout):
            return DestinationError(f"Roboflow {what}: no answer within {call.timeout:g} s", permanent=False)
        if isinstance(cause, requests.RequestException):
            return DestinationError(scrub(f"Roboflow {what}: connection failed: {cause}", api_key), permanent=False)
        response = call.response
        status = getattr(exc, "status_code", None) or (response.status_code if response is not None else None)
        detail = scrub(_detail(exc, response), api_key)
        if status is None or status in (408, 429) or status >= 500:
            reason = "rate limited" if status == 429 else f"HTTP {status}" if status else "no answer"
            return DestinationError(
                f"Roboflow {what}: {reason}: {detail}", permanent=False, retry_after=retry_after(response)
            )
        if status == 404 and lookup:
            return DestinationError(f"Roboflow {what}: not found", permanent=True)
        if status in (401, 403):
            return DestinationError(
                f"Roboflow {what}: the API key in {self._key_env} was refused (HTTP {status}): {detail}", permanent=True
            )
        return DestinationError(f"Roboflow {what}: HTTP {status}: {detail}", permanent=True)


# -- helpers ------------------------------------------------------------------------------------
def check_image(path: str) -> int:
    """The size of an image Roboflow accepts (judged by its content, not its name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise local_file_error(exc, path) from exc
    kind = filetype.guess(head)
    if kind is None or kind.mime not in ACCEPTED_IMAGE_FORMATS:
        accepted = ", ".join(sorted(mime.split("/")[1] for mime in ACCEPTED_IMAGE_FORMATS))
        found = kind.mime if kind else "not a recognised file type"
        raise DestinationError(
            f"not an image Roboflow accepts: {os.path.basename(path)} ({found}; accepted: {accepted})", permanent=True
        )
    return size


def url_safe(text: str, limit: int = 100) -> str:
    """ASCII letters, digits and - _ . only: the SDK pastes batch and annotation file names into
    the annotation request's query string without encoding them."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", ascii_text).strip("-.")[:limit] or "upload"


def annotation_file_name(name: str) -> str:
    """`name` made url_safe, keeping its extension: it tells Roboflow the annotation format."""
    stem, ext = os.path.splitext(name)
    return f"{url_safe(stem)}.{url_safe(ext)}" if ext else url_safe(stem)


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


class _BoundedSession(sdk_http.Session):
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


def _install_hooks() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        for name in ("request", "get", "post", "put", "patch", "delete", "head"):
            setattr(sdk_http, name, _bounded(getattr(sdk_http, name)))
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
