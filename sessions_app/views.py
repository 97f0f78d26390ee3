from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from sessions_app import api, exporting, kinds
from sessions_app import metrics as metrics_
from sessions_app import overview
from sessions_app.models import SyncSession


def session_status(request: HttpRequest, pk: int) -> JsonResponse:
    """Live counts of one session, polled by its admin page and the upload page (a browser
    upload's also its phase); with ?detail=1 also its throughput over time and its top failure
    reasons. A staff login, or the Bearer token of the session's project."""
    if not api._bearer_token(request):
        return _session_status_for_staff(request, pk)
    project = api._project_of_token(request)
    if project is None:
        return JsonResponse({"error": "missing or invalid API token"}, status=401)
    s = SyncSession.objects.filter(pk=pk, project=project).first()
    if s is None:
        return JsonResponse({"error": "no such session"}, status=404)
    return _status(request, s)


@staff_member_required
def _session_status_for_staff(request: HttpRequest, pk: int) -> JsonResponse:
    return _status(request, get_object_or_404(SyncSession, pk=pk))


def _status(request: HttpRequest, s: SyncSession) -> JsonResponse:
    answer = overview.session_detail(s) if request.GET.get("detail") else overview.session_summary(s)
    answer.update(kinds.of(s).progress(s))
    return JsonResponse(answer)


@staff_member_required
def session_files_csv(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    """Every file row of the session as CSV, streamed."""
    session = get_object_or_404(SyncSession, pk=pk)
    return exporting.response([session.pk], f"session-{session.pk}-files.csv")


@staff_member_required
def dashboard_data(request: HttpRequest) -> JsonResponse:
    """Everything the Dashboard page draws."""
    return JsonResponse(overview.dashboard())


def dashboard(request: HttpRequest) -> TemplateResponse:
    context = {**admin.site.each_context(request), "title": "Dashboard"}
    return TemplateResponse(request, "admin/dashboard.html", context)


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
