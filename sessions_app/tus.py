"""Browser uploads over HTTP: the manifest, then tus 1.0 (core, creation, termination, expiration).

POST    /api/projects/<name>/uploads/   {"files": [{"path", "size"}, ...]} -> 201 {"session", "files", "refused"}
OPTIONS /api/uploads/                   the server's tus capabilities
POST    /api/uploads/                   tus creation: Upload-Length + Upload-Metadata (session, path)
HEAD    /api/uploads/<id>               Upload-Offset, Upload-Length, Upload-Expires
PATCH   /api/uploads/<id>               bytes at Upload-Offset (application/offset+octet-stream)
DELETE  /api/uploads/<id>               tus termination

Callers: a staff login with the "add sessions" permission (session cookie; CSRF token on writes),
or `Authorization: Bearer <project token>` (issue_token). An upload answers only the one who sent
its manifest: another user gets 403, another project's token 404.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.http import http_date
from django.views.decorators.csrf import csrf_exempt

from projects.errors import UploaderError
from projects.models import Project
from sessions_app import api, receiving
from sessions_app.models import Arrival
from sessions_app.receiving import TusError

log = logging.getLogger(__name__)

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
MANIFEST_MAX_BYTES = 32 * 1024 * 1024  # ~200,000 entries of ordinary names
CORS_EXPOSE = "Upload-Offset, Upload-Length, Upload-Expires, Location, Tus-Resumable, Tus-Version, Tus-Extension"


@dataclass(frozen=True)
class Caller:
    owner: str  # Arrival.owner of what this caller sends
    name: str  # for created_by
    user: Any = None
    project: Project | None = None  # a token's


def _tus(response: HttpResponse) -> HttpResponse:
    response["Tus-Resumable"] = TUS_VERSION
    response["Cache-Control"] = "no-store"
    response["Access-Control-Expose-Headers"] = CORS_EXPOSE
    return response


def _error(status: int, message: str) -> HttpResponse:
    return _tus(JsonResponse({"error": message}, status=status))


def _caller(request: HttpRequest) -> Caller:
    """Who calls, or TusError: 401 no credentials, 403 not staff or a forged cross-site write."""
    if api._bearer_token(request):
        project = api._project_of_token(request)
        if project is None:
            raise TusError(401, "missing or invalid API token")
        return Caller(f"token:{project.pk}", f"token of {project.name}", project=project)
    user = request.user
    if not user.is_authenticated:
        raise TusError(401, "log in to the admin, or send Authorization: Bearer <project token>")
    if not user.is_staff:
        raise TusError(403, "staff only")
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        refused = CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {})
        if refused is not None:
            raise TusError(403, "CSRF check failed: send the X-CSRFToken header")
    return Caller(f"user:{user.pk}", user.get_username(), user=user)


def _may_upload_to(caller: Caller, project: Project) -> None:
    if caller.project is not None:
        if caller.project.pk != project.pk:
            raise TusError(404, f"no project named {project.name}")
    elif not caller.user.has_perm("sessions_app.add_syncsession"):
        raise TusError(403, "you may not add sessions")


def _answer(view):
    """Turn TusError into its status, anything else into a 500 that says little."""
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except TusError as exc:
            return _error(exc.status, exc.message)
        except api.BadBody as exc:
            return _error(exc.status, exc.message)
        except UploaderError as exc:  # StartError: the project's destination is misconfigured
            return _error(409, exc.message)
    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return csrf_exempt(wrapped)  # CSRF is checked in _caller, for cookie logins only


def _upload_url(request: HttpRequest, upload_id: Any) -> str:
    return request.build_absolute_uri(f"/api/uploads/{upload_id}")


@_answer
def manifest(request: HttpRequest, name: str) -> HttpResponse:
    """Start a browser upload: 201 with each accepted file's upload_url and each refused one's reason."""
    if request.method != "POST":
        return _error(405, "POST a manifest")
    caller = _caller(request)
    project = Project.objects.filter(name=name).first()
    if project is None:
        raise TusError(404, f"no project named {name}")
    _may_upload_to(caller, project)
    body = api._json_object(request, MANIFEST_MAX_BYTES)
    session, checked = receiving.open_upload(project, body.get("files"), caller.owner, caller.name)
    return _tus(JsonResponse({
        "session": session.pk,
        "status_url": request.build_absolute_uri(f"/api/sessions/{session.pk}/"),
        "files": [{"path": path, "upload_url": _upload_url(request, upload_id)}
                  for path, upload_id in receiving.arrivals(session)],
        "refused": checked.refused,
    }, status=201))


def _options() -> HttpResponse:
    response = _tus(HttpResponse(status=204))
    response["Tus-Version"] = TUS_VERSION
    response["Tus-Extension"] = TUS_EXTENSIONS
    response["Tus-Max-Size"] = str(settings.UPLOAD_MAX_FILE_BYTES)
    return response


def _check_version(request: HttpRequest) -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise TusError(412, f"send Tus-Resumable: {TUS_VERSION}")


@_answer
def creation(request: HttpRequest) -> HttpResponse:
    """tus creation for a file of a manifest: Upload-Metadata names its session and path."""
    if request.method == "OPTIONS":
        return _options()
    if request.method != "POST":
        return _error(405, "POST to create an upload, OPTIONS for the server's capabilities")
    _check_version(request)
    caller = _caller(request)
    meta = _metadata(request.headers.get("Upload-Metadata", ""))
    length = _int_header(request, "Upload-Length")
    try:
        session_id = int(meta.get("session", ""))
    except ValueError:
        raise TusError(400, "Upload-Metadata must name the manifest's session (session <base64 id>)") from None
    path = receiving.clean_path(meta.get("path") or meta.get("filename"))
    arrival = Arrival.objects.select_related("file", "file__session").filter(
        file__session_id=session_id, file__relative_path=path).first()
    if arrival is None:
        raise TusError(404, f"session {session_id} has no file {path}")
    _may_use(caller, arrival)
    receiving.restart(arrival, length)
    response = _tus(HttpResponse(status=201))
    response["Location"] = _upload_url(request, arrival.upload_id)
    _expires(response, arrival)
    return response


@_answer
def upload(request: HttpRequest, upload_id: str) -> HttpResponse:
    """HEAD (offset), PATCH (bytes), DELETE (termination) of one file; OPTIONS."""
    if request.method == "OPTIONS":
        return _options()
    if request.method not in ("HEAD", "PATCH", "DELETE"):
        return _error(405, "HEAD, PATCH, DELETE or OPTIONS")
    _check_version(request)
    caller = _caller(request)
    arrival = receiving.find(upload_id)
    _may_use(caller, arrival)
    if request.method == "DELETE":
        receiving.terminate(arrival)
        return _tus(HttpResponse(status=204))
    if request.method == "PATCH":
        if request.content_type != OFFSET_TYPE:
            raise TusError(415, f"Content-Type must be {OFFSET_TYPE}")
        at = _int_header(request, "Upload-Offset")
        length = int(request.META["CONTENT_LENGTH"]) if request.META.get("CONTENT_LENGTH") else None
        new_offset = receiving.append(arrival, at, request, length)
        response = _tus(HttpResponse(status=204))
    else:
        new_offset = receiving.offset(arrival)
        response = _tus(HttpResponse(status=200))
        response["Upload-Length"] = str(arrival.file.size)
    response["Upload-Offset"] = str(new_offset)
    _expires(response, arrival)
    return response


def _may_use(caller: Caller, arrival: Arrival) -> None:
    if arrival.owner == caller.owner:
        return
    if caller.project is not None or arrival.owner.startswith("token:"):
        raise TusError(404, "no such upload")  # another project's: not even its existence
    raise TusError(403, "this upload belongs to another user")


def _expires(response: HttpResponse, arrival: Arrival) -> None:
    if arrival.received_at is None:
        response["Upload-Expires"] = http_date(arrival.expires_at.timestamp())


def _int_header(request: HttpRequest, name: str) -> int:
    raw = request.headers.get(name, "")
    if not raw.isdigit():
        raise TusError(400, f"{name}: expected a whole number of bytes")
    return int(raw)


def _metadata(header: str) -> dict[str, str]:
    """tus Upload-Metadata: comma-separated `key base64(value)` pairs."""
    out = {}
    for pair in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = pair.partition(" ")
        try:
            out[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise TusError(400, f"Upload-Metadata: {key} is not base64 of UTF-8") from None
    return out
