"""Admin actions on sessions and files: retry, notify, cancel. Each one is its own permission
(SyncSession.Meta.permissions); the admin classes hide an action from users without it and
answer 403 to a POST that asks for it anyway (`check_action_permission`)."""

from __future__ import annotations

from collections import Counter

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from django.template.response import TemplateResponse

from projects.destinations import ConfigError
from projects.errors import UploaderError
from projects.models import ConfigHistory, Project
from projects.outbound import check_http_url, redact_url
from sessions_app import cancelling, enqueue, exporting, notifying, retrying, starting
from sessions_app.errors import EnqueueError, RetryError
from sessions_app.models import FileStatus, Notification, SyncSession

PERMISSIONS = {
    "retry": "sessions_app.retry_syncsession",
    "notify": "sessions_app.notify_syncsession",
    "cancel": "sessions_app.cancel_syncsession",
    "start_sync": "projects.start_sync",
}
# action name -> the permission it needs
ACTION_PERMISSIONS = {
    "retry_failed": "retry",
    "retry_failed_including_permanent": "retry",
    "retry_selected_files": "retry",
    "notify_endpoint": "notify",
    "cancel_sessions": "cancel",
    "check_destination": "start_sync",
}


class PermissionsMixin:
    """has_<name>_permission for admin's allowed_permissions, and the 403 for crafted POSTs."""

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["retry"])

    def has_notify_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["notify"])

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["cancel"])

    def has_start_sync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PERMISSIONS["start_sync"])

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if request.method == "POST":
            for action in request.POST.getlist("action"):  # one per action bar (top, bottom)
                check_action_permission(request, action)
        return super().changelist_view(request, extra_context)


def check_action_permission(request: HttpRequest, action: str) -> None:
    needed = ACTION_PERMISSIONS.get(action)
    if needed and not request.user.has_perm(PERMISSIONS[needed]):
        raise PermissionDenied(f"you may not {needed} sessions")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


# -- retry ------------------------------------------------------------------------------------------


@admin.action(description="Retry failed files", permissions=["retry"])
def retry_failed(modeladmin, request: HttpRequest, queryset: QuerySet[SyncSession]) -> None:
    _retry_sessions(request, queryset, include_permanent=False)


@admin.action(description="Retry failed files, permanent errors too (the cause was fixed)", permissions=["retry"])
def retry_failed_including_permanent(modeladmin, request: HttpRequest, queryset: QuerySet[SyncSession]) -> None:
    _retry_sessions(request, queryset, include_permanent=True)


def _retry_sessions(request: HttpRequest, queryset: QuerySet[SyncSession], include_permanent: bool) -> None:
    check_action_permission(request, "retry_failed")
    queued, sessions, ignored = 0, 0, Counter()
    for session in queryset.select_related("project"):
        reason = _not_retryable(session)
        if reason:
            ignored[reason] += 1
            continue
        try:
            done = retrying.queue_retry_round(session, include_permanent=include_permanent)
        except (RetryError, EnqueueError) as exc:
            messages.error(request, str(exc))
            continue
        if not done.total:
            ignored["nothing to retry" if include_permanent else "nothing to retry (or only permanent errors)"] += 1
            continue
        queued += done.total
        sessions += 1
    parts = [f"Queued {plural(queued, 'file')} from {plural(sessions, 'session')}"]
    parts += [f"{plural(n, 'session')} ignored: {why}" for why, n in sorted(ignored.items())]
    messages.add_message(request, messages.SUCCESS if queued else messages.WARNING, "; ".join(parts))


def _not_retryable(session: SyncSession) -> str:
    if session.is_active:
        return "still running"
    if not session.scan_finished_at:
        return "ended before its scan finished"
    return ""


@admin.action(description="Retry selected (failed files only)", permissions=["retry"])
def retry_selected_files(modeladmin, request: HttpRequest, queryset) -> None:
    check_action_permission(request, "retry_selected_files")
    failed = queryset.filter(status=FileStatus.FAILED)
    ignored = Counter({"not failed": queryset.exclude(status=FileStatus.FAILED).count()})
    queued, sessions = 0, 0
    session_ids = failed.order_by().values_list("session_id", flat=True).distinct()
    for session in SyncSession.objects.select_related("project").filter(pk__in=list(session_ids)):
        mine = failed.filter(session=session)
        reason = _not_retryable(session)
        if reason:
            ignored[f"session {reason}"] += mine.count()
            continue
        try:
            done = retrying.queue_retry_round(session, include_permanent=True, files=mine)
        except (RetryError, EnqueueError) as exc:
            messages.error(request, str(exc))
            continue
        queued += done.total
        sessions += bool(done.total)
    parts = [f"Queued {plural(queued, 'file')} from {plural(sessions, 'session')}"]
    parts += [f"{n:,} ignored: {why}" for why, n in sorted(ignored.items()) if n]
    messages.add_message(request, messages.SUCCESS if queued else messages.WARNING, "; ".join(parts))


# -- cancel -----------------------------------------------------------------------------------------


@admin.action(description="Export files as CSV")
def export_files_csv(modeladmin, request: HttpRequest, queryset: QuerySet[SyncSession]) -> StreamingHttpResponse:
    ids = sorted(queryset.values_list("id", flat=True))
    name = f"session-{ids[0]}-files.csv" if len(ids) == 1 else f"sessions-{len(ids)}-files.csv"
    return exporting.response(ids, name)


@admin.action(description="Cancel session", permissions=["cancel"])
def cancel_sessions(modeladmin, request: HttpRequest, queryset: QuerySet[SyncSession]) -> None:
    check_action_permission(request, "cancel_sessions")
    outcomes = Counter(cancelling.cancel(session) for session in queryset)
    parts = []
    if outcomes["cancelled"]:
        parts.append(f"Cancelled {plural(outcomes['cancelled'], 'session')}: transfers in flight finish, "
                     f"the remaining files are cancelled")
    if outcomes["stopped automatic retries"]:
        parts.append(f"stopped the automatic retries of {plural(outcomes['stopped automatic retries'], 'session')}")
    if outcomes[""]:
        parts.append(f"{plural(outcomes[''], 'session')} ignored: not running")
    done = outcomes["cancelled"] or outcomes["stopped automatic retries"]
    messages.add_message(request, messages.SUCCESS if done else messages.WARNING, "; ".join(parts))


# -- check destination --------------------------------------------------------------------------------


@admin.action(description="Check destination (list it, reconcile the catalog, sync)", permissions=["start_sync"])
def check_destination(modeladmin, request: HttpRequest, queryset: QuerySet[SyncSession]) -> None:
    """A new sync of each selected session's project that lists the destination first."""
    check_action_permission(request, "check_destination")
    start_syncs(request, Project.objects.filter(pk__in=queryset.values("project_id")), check_destination=True)


def start_syncs(request: HttpRequest, projects: QuerySet[Project], *, check_destination: bool = False) -> None:
    """Start a sync of each project (checked first) and say what started or why not."""
    params = {"check_destination": True} if check_destination else {}
    started, refused = [], []
    for project in projects:
        try:
            session = starting.start(project, params=params, created_by=request.user.get_username(),
                                     config_source=ConfigHistory.Source.ADMIN)
        except UploaderError as exc:
            refused.append(f"{project.name}: {exc}")
            continue
        started.append(f"{project.name} (session #{session.pk})")
    what = "sync session(s) checking the destination" if check_destination else "sync session(s)"
    if started:
        messages.success(request, f"Started {len(started)} {what}: {', '.join(started)}")
    for line in refused:
        messages.error(request, f"Not started: {line}")


# -- notify -----------------------------------------------------------------------------------------


class NotifyForm(forms.Form):
    url = forms.CharField(
        required=False, max_length=2000, label="Endpoint URL",
        widget=forms.URLInput(attrs={"size": 80, "placeholder": "https://..."}),
        help_text="Empty: each session's project notify_url (or notify_url_env).",
    )

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        if url:
            try:
                check_http_url(url)
            except ConfigError as exc:
                raise forms.ValidationError(str(exc)) from exc
            if redact_url(url) != url:
                # The URL travels to the worker in the queued task, which is stored and shown.
                raise forms.ValidationError("this URL carries a credential (user:password, a query or a token); "
                                            "set it in the project's notify_url_env instead")
        return url


@admin.action(description="Notify endpoint", permissions=["notify"])
def notify_endpoint(modeladmin, request: HttpRequest, queryset: QuerySet[SyncSession]):
    """An intermediate page to confirm (and optionally type) the URL; then queue one notification
    task per session: a worker sends it, never this web request."""
    check_action_permission(request, "notify_endpoint")
    queryset = queryset.select_related("project")
    form = NotifyForm(request.POST if "confirm" in request.POST else None)
    if form.is_bound and form.is_valid():
        _queue_all(request, queryset, form.cleaned_data["url"])
        return None
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Notify an endpoint",
        "opts": modeladmin.model._meta,
        "sessions": [(s, notifying.shown_url(s.project)) for s in queryset],
        "queryset": queryset,
        "form": form,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "action": "notify_endpoint",
        "media": modeladmin.media,
    }
    return TemplateResponse(request, "admin/sessions_app/notify_confirm.html", context)


def _queue_all(request: HttpRequest, queryset: QuerySet[SyncSession], url: str) -> None:
    queued = 0
    for session in queryset:
        try:
            notifying.check_target(session, url)
            enqueue.notify(session.pk, Notification.Trigger.ADMIN, url)
        except (notifying.NotifyError, EnqueueError) as exc:
            messages.error(request, f"session {session.pk}: {exc}")
            continue
        queued += 1
    if queued:
        where = url or "each project's endpoint"
        messages.success(request, f"Queued the notification of {plural(queued, 'session')} to {where}; a worker "
                                  f"sends it and lists every attempt under the session")
