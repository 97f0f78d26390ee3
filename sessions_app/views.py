from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404

from sessions_app.models import SyncSession


@staff_member_required
def session_status(request: HttpRequest, pk: int) -> JsonResponse:
    """Live counts of one session, polled by its admin page."""
    s = get_object_or_404(SyncSession, pk=pk)
    return JsonResponse(
        {
            "id": s.pk,
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
    )
