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

from projects.models import Project, hash_token
from sessions_app import health, queueing

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


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


def _unauthorized() -> JsonResponse:
    return _error(401, "missing or invalid API token", WWW_Authenticate='Bearer realm="uploader"')


@csrf_exempt  # token authentication, no cookie: nothing for a forged cross-site form to ride on
@require_POST
def queue_upload(request: HttpRequest) -> JsonResponse:
    """Queue one file; 202 queued, 200 already uploaded, 400 bad path, 409 conflict, 429 queue full."""
    try:
        project = _project_of_token(request)
        if project is None:
            return _unauthorized()
        try:
            body = json.loads(request.body)
        except ValueError:
            return _error(400, "expected a JSON object")
        if not isinstance(body, dict):
            return _error(400, "expected a JSON object")
        answer = queueing.submit(project, body.get("path"), body.get("remote_subdir"), body.get("tag"))
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
