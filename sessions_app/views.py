from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404

from sessions_app import api, kinds
from sessions_app.models import SyncSession


def session_status(request: HttpRequest, pk: int) -> JsonResponse:
    """Live counts of one session, polled by its admin page and the upload page; a browser
    upload's also its phase. A staff login, or the Bearer token of the session's project."""
    if not api._bearer_token(request):
        return _session_status_for_staff(request, pk)
    project = api._project_of_token(request)
    s = SyncSession.objects.filter(pk=pk, project=project).first() if project else None
    if project is None:
        return JsonResponse({"error": "missing or invalid API token"}, status=401)
    if s is None:
        return JsonResponse({"error": "no such session"}, status=404)
    return _status(s)


@staff_member_required
def _session_status_for_staff(request: HttpRequest, pk: int) -> JsonResponse:
    return _status(get_object_or_404(SyncSession, pk=pk))


def _status(s: SyncSession) -> JsonResponse:
    answer = {
        "id": s.pk,
        "kind": s.kind,
        "status": s.status,
        "found": s.found_count,
        "skipped": s.skipped_count,
        "pending": s.pending_count,
        "uploaded": s.uploaded_count,
        "failed": s.failed_count,
        "cancelled": s.cancelled_count,
        "bytes_total": s.bytes_total,
        "bytes_uploaded": s.bytes_uploaded,
        "progress": round(s.progress, 1),
        "bytes_per_second": round(s.bytes_per_second),
    }
    answer.update(kinds.of(s).progress(s))
    return JsonResponse(answer)
