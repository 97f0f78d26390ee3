"""The upload queue over HTTP, for producers in any language and for monitoring.

POST /api/queue-upload/    Authorization: Bearer <project token>
                           {"path": "...", "remote_subdir": "...", "tag": "..."}
GET  /api/uploader-stats/  Authorization: Bearer <project token> (that project), or a staff login (all)

Tokens are per project (`manage.py issue_token`, or the project admin); only their hash is stored.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from projects.errors import UploaderError
from projects.models import Project, hash_token
from sessions_app import health, queueing

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# A queue request names one file: a path, a folder, a tag. Bodies past this are not read.
MAX_BODY_BYTES = 64 * 1024


def _bearer_token(request: HttpRequest) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _project_of_token(request: HttpRequest) -> Project | None:
    token = _bearer_token(request)
    if not token:
        return None
    project = Project.objects.filter(api_token_hash=hash_token(token)).first()
    return project if project is not None and project.check_api_token(token) else None


def _error(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


class BadBody(UploaderError):
    """A request body we will not read (413) or cannot use (400): sending it again cannot help."""

    def __init__(self, status: int, message: str):
        super().__init__(message, permanent=True)
        self.status = status


def _json_object(request: HttpRequest, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object, read no further than `limit` bytes."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise BadBody(400, "bad Content-Length") from None
    too_large = BadBody(413, f"request body too large (limit {limit} bytes)")
    if declared > limit:
        raise too_large
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise too_large
    try:
        body = json.loads(raw)
    except ValueError:  # also bytes that are not UTF-8
        raise BadBody(400, "expected a JSON object") from None
    except RecursionError:
        raise BadBody(400, "expected a JSON object (this one is nested too deeply)") from None
    if not isinstance(body, dict):
        raise BadBody(400, "expected a JSON object")
    return body


def _unauthorized() -> JsonResponse:
    return _error(401, "missing or invalid API token", WWW_Authenticate='Bearer realm="uploader"')


@csrf_exempt  # token authentication, no cookie: nothing for a forged cross-site form to ride on
@require_POST
def queue_upload(request: HttpRequest) -> JsonResponse:
    """Queue one file; 202 queued, 200 already uploaded, 400 bad path or body, 409 conflict, 413 body
    too large, 429 queue full."""
    try:
        project = _project_of_token(request)
        if project is None:
            return _unauthorized()
        body = _json_object(request)
        answer = queueing.submit(project, body.get("path"), body.get("remote_subdir"), body.get("tag"))
    except BadBody as exc:
        return _error(exc.status, exc.message)
    except Exception:
        log.exception("queue-upload failed")
        return _error(503, "the upload queue is unavailable; try again")
    payload: dict[str, Any] = {"queued": answer.queued, "message": answer.message}
    if answer.queued:
        payload.update(file_id=answer.file_id, duplicate=answer.duplicate)
    response = JsonResponse(payload, status=answer.status)
    if answer.status == 429:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


@require_GET
def uploader_stats(request: HttpRequest) -> JsonResponse:
    """Whether a qcluster is alive, and the upload queue's figures per project and in total."""
    try:
        project = _project_of_token(request)
        if project is not None:
            projects = [project]
        elif _bearer_token(request) or not request.user.is_authenticated:
            return _unauthorized()
        elif not request.user.is_staff:
            return _error(403, "staff only")
        else:
            projects = list(Project.objects.order_by("name"))
        per_project = {p.name: queueing.project_stats(p) for p in projects}
        return JsonResponse({
            "running": health.cluster_running(),
            "stats": queueing.total_stats(per_project),
            "projects": [
                {"project": p.name, "stats": per_project[p.name], "destination": health.destination_health(p)}
                for p in projects
            ],
        })
    except Exception:
        log.exception("uploader-stats failed")
        return _error(503, "stats unavailable; try again")
