from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from sessions_app import metrics as metrics_
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


def _from_loopback(request: HttpRequest) -> bool:
    # A request a proxy forwarded comes from the proxy's address, often loopback: it is not local.
    if "HTTP_X_FORWARDED_FOR" in request.META or "HTTP_FORWARDED" in request.META:
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _bearer_matches(request: HttpRequest, expected: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), expected)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; open on loopback, elsewhere `Authorization: Bearer $METRICS_TOKEN`."""
    if not (_from_loopback(request) or _bearer_matches(request, settings.METRICS_TOKEN)):
        return HttpResponse("403 Forbidden: /metrics answers loopback, or a request with "
                            "Authorization: Bearer <METRICS_TOKEN>\n", status=403, content_type="text/plain")
    return HttpResponse(metrics_.exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
