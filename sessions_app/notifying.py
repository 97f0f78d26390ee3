"""Notify an external endpoint of a session's outcome: an HTTP POST of a JSON summary.

Every attempt is a Notification row, saved before the request and updated after it, so a worker
that dies mid-request still leaves a trace. Connection errors, timeouts and 5xx are retried with
exponential backoff under one idempotency key; 3xx and 4xx are not (the receiver said no).
When the project names a secret (an environment variable), the body is signed with HMAC-SHA256.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from projects import backoff, outbound
from projects.destinations import ConfigError
from projects.errors import NotifyError
from projects.models import Project
from projects.outbound import redact_url
from projects.secrets import SecretRefused, read_secret
from sessions_app import enqueue, files
from sessions_app.models import FileStatus, Notification, SessionStatus, SyncSession

log = logging.getLogger(__name__)

PRODUCT = "DataUploader"
VERSION = "1.0"
USER_AGENT = f"{PRODUCT}/{VERSION} (session notifications)"
SIGNATURE_HEADER = "X-Uploader-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT = "session.summary"
MAX_FAILED_LISTED = 1000


# -- the payload ---------------------------------------------------------------------------------


def build_payload(session: SyncSession) -> dict[str, Any]:
    session.refresh_from_db()
    failed = list(
        session.files.filter(status=FileStatus.FAILED).order_by("id")
        .values_list("relative_path", "last_error", "error_permanent")[: MAX_FAILED_LISTED + 1]
    )
    duration = session.duration
    return {
        "event": EVENT,
        "session_id": session.pk,
        "project": session.project.name,
        "destination": _destination(session.project),
        "status": session.status,
        "total_files": session.found_count,
        "files_uploaded": session.uploaded_count,
        "files_skipped": session.skipped_count,
        "files_failed": session.failed_count,
        "files_cancelled": session.cancelled_count,
        "bytes_uploaded": session.bytes_uploaded,
        "bytes_total": session.bytes_total,
        "started_at": _iso(session.started_at),
        "finished_at": _iso(session.finished_at),
        "duration_seconds": round(duration.total_seconds(), 3) if duration else None,
        "retry_rounds": session.retry_round,
        "admin_url": session.admin_url(),
        "failed_files": [{"path": p, "error": e, "permanent": perm} for p, e, perm in failed[:MAX_FAILED_LISTED]],
        "failed_files_truncated": len(failed) > MAX_FAILED_LISTED,
        "destinations": _per_destination(session),
    }


def _per_destination(session: SyncSession) -> list[dict[str, Any]]:
    """Each destination of a sync (by name): its status, counts and its own failures."""
    out = []
    for sd in session.destinations.all():
        sd.session = session
        failed = list(session.files.filter(status=FileStatus.FAILED, destination=sd.name).order_by("id")
                      .values_list("relative_path", "last_error", "error_permanent")[: MAX_FAILED_LISTED + 1])
        out.append({
            "name": sd.name, "destination": _destination(session.project, sd.name),
            "status": files.destination_status(sd), "total_files": sd.found_count,
            "files_uploaded": sd.uploaded_count, "files_skipped": sd.skipped_count, "files_failed": sd.failed_count,
            "files_cancelled": sd.cancelled_count, "bytes_uploaded": sd.bytes_uploaded, "bytes_total": sd.bytes_total,
            "failed_files": [{"path": p, "error": e, "permanent": perm} for p, e, perm in failed[:MAX_FAILED_LISTED]],
            "failed_files_truncated": len(failed) > MAX_FAILED_LISTED,
        })
    return out


def _destination(project: Project, name: str | None = None) -> dict[str, Any]:
    try:
        described = project.describe_destination(name)
    except ConfigError:
        described = {"kind": project.destination_kind}
    # describe() has no secrets, but a URL option could still carry user:password.
    return {k: redact_url(v) if isinstance(v, str) and "://" in v else v for k, v in described.items()}


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: "sha256=" + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header_value: str) -> bool:
    """What a receiver does (see the README): recompute and compare in constant time."""
    return hmac.compare_digest(sign(body, secret), header_value or "")


# -- delivery -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status_code: int | None = None
    excerpt: str = ""
    error: str = ""
    retry: bool = False  # worth another attempt

    @property
    def ok(self) -> bool:
        return not self.error


def configured(project: Project) -> bool:
    return bool(project.notify_url or project.notify_url_env)


def shown_url(project: Project) -> str:
    """The project's endpoint as the admin shows it."""
    if project.notify_url_env:
        return f"${project.notify_url_env} (from the environment)"
    return redact_url(project.notify_url)


def check_target(session: SyncSession, url: str | None) -> None:
    """Raises NotifyError when there is no URL to notify (without reading the environment, which is the workers')."""
    if not (url or configured(session.project)):
        raise NotifyError(f"project {session.project.name!r} has no notify_url; give a URL")


def target_url(session: SyncSession, url: str | None) -> str:
    """The URL to notify: the one given, else the project's (itself, or from its environment variable)."""
    check_target(session, url)
    project = session.project
    try:
        url = (url or project.notify_url or read_secret(project.notify_url_env, "notify_url_env") or "").strip()
    except SecretRefused as exc:
        raise NotifyError(exc.message) from exc
    if not url:
        raise NotifyError(f"notify_url_env names {project.notify_url_env}, which is not set in the environment")
    outbound.check_endpoint(url)
    return url


def deliver(session: SyncSession, url: str | None = None, trigger: str = Notification.Trigger.COMMAND,
            *, attempts: int | None = None) -> Notification:
    """POST the session's summary to `url` (default: the project's notify_url), retrying what
    can be retried; returns the last attempt's row. Raises NotifyError for a bad URL."""
    url = target_url(session, url)
    attempts = attempts or settings_value("NOTIFY_ATTEMPTS", 4)
    key = uuid.uuid4().hex
    body = encode(build_payload(session))
    headers = _headers(key)
    secret_error = _sign_into(headers, body, session.project)
    for attempt in range(1, attempts + 1):
        row = Notification.objects.create(session=session, url=redact_url(url), trigger=trigger,
                                          idempotency_key=key, attempt=attempt)
        if secret_error:
            return _record(row, Answer(error=secret_error), 0.0)
        started = time.monotonic()
        answer = _post(url, body, headers, session.project.notify_timeout)
        _record(row, answer, time.monotonic() - started)
        if answer.ok or not answer.retry or attempt == attempts:
            return row
        time.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


def settings_value(name: str, default: float) -> Any:
    return getattr(settings, name, default)


def _headers(key: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT, IDEMPOTENCY_HEADER: key}


def _sign_into(headers: dict[str, str], body: bytes, project: Project) -> str:
    """Add the signature header when the project names a secret; an error text if it is unset."""
    name = project.notify_secret_env
    if not name:
        return ""
    try:
        secret = read_secret(name, "notify_secret_env") or ""
    except SecretRefused as exc:
        return f"{exc.message}; not sent unsigned"
    if not secret:
        return f"notify_secret_env names {name}, which is not set in the environment; not sent unsigned"
    headers[SIGNATURE_HEADER] = sign(body, secret)
    return ""


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    try:
        reply = outbound.post(url, body, headers, timeout)
    except NotifyError as exc:
        return Answer(error=exc.message, retry=not exc.permanent)
    code, excerpt = reply.status, reply.excerpt
    if 200 <= code < 300:
        return Answer(code, excerpt)
    what = f"{code} {reply.reason}".strip()
    if 300 <= code < 400:
        where = redact_url(reply.location)
        return Answer(code, excerpt, f"{what}: the endpoint redirects to {where or '?'}; configure that URL")
    if code < 500:
        return Answer(code, excerpt, f"{what}: the endpoint refused the notification (not retried)")
    return Answer(code, excerpt, f"{what}: server error", retry=True)


def _record(row: Notification, answer: Answer, seconds: float) -> Notification:
    row.status_code = answer.status_code
    row.response_excerpt = answer.excerpt
    row.error = answer.error
    row.succeeded = answer.ok
    row.duration_ms = int(seconds * 1000)
    row.save(update_fields=["status_code", "response_excerpt", "error", "succeeded", "duration_ms"])
    if not answer.ok:
        log.warning("notification of session %s to %s, attempt %s: %s", row.session_id, row.url, row.attempt,
                    answer.error)
    return row


def _backoff(attempt: int) -> float:
    base = settings_value("NOTIFY_RETRY_BASE_SECONDS", 1.0)
    cap = settings_value("NOTIFY_RETRY_CAP_SECONDS", 30.0)
    return backoff.delay(attempt, base, cap)


# -- triggers -----------------------------------------------------------------------------------


def wanted(session: SyncSession) -> bool:
    """Does the project ask for a notification at this end of the session?"""
    project = session.project
    if not configured(project) or session.params.get("notify") == "command":
        return False
    if project.notify_on == Project.NotifyOn.ALWAYS:
        return True
    return project.notify_on == Project.NotifyOn.COMPLETED and session.status == SessionStatus.COMPLETED


def queue_automatic(session: SyncSession) -> str | None:
    """At the real end of a session: queue a notification task if the project says so; a session
    run in a command's process (`upload --sync`, no cluster needed) is notified from there."""
    if not wanted(session):
        return None
    if session.params.get("run_here"):
        deliver(session, None, Notification.Trigger.AUTO)
        return None
    return enqueue.notify(session.pk, Notification.Trigger.AUTO)


def outcome_text(row: Notification) -> str:
    tries = f" after {row.attempt} attempts" if row.attempt > 1 else ""
    if row.succeeded:
        return f"session {row.session_id}: notified {row.url}: {row.status_code}{tries}"
    return f"session {row.session_id}: notifying {row.url} failed{tries}: {row.error}"
