from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.html import format_html

from projects.models import Project
from sessions_app import admin_actions
from sessions_app.project_admin import SessionsProjectAdmin
from sessions_app.models import FileStatus, FileUpload, Notification, SyncSession


def progress_bar(percent: float, failed: bool = False) -> str:
    colour = "#ba2121" if failed else "#417690"
    return format_html(
        '<div style="width:120px;background:#eee;border-radius:3px" title="{}%">'
        '<div style="width:{}%;background:{};height:10px;border-radius:3px"></div></div>'
        '<small>{}%</small>',
        f"{percent:.1f}", f"{percent:.1f}", colour, f"{percent:.1f}",
    )


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


class NotificationInline(admin.TabularInline):
    model = Notification
    extra = 0
    can_delete = False
    fields = ("created_at", "trigger", "url", "attempt", "status_code", "succeeded", "duration_ms", "error",
              "response_excerpt")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(SyncSession)
class SyncSessionAdmin(admin_actions.PermissionsMixin, admin.ModelAdmin):
    list_display = ("id", "project", "kind", "status", "progress_display", "found_count", "uploaded_count",
                    "skipped_count", "failed_count", "bytes_display", "speed_display", "duration_display",
                    "created_at")
    list_display_links = ("id", "project")
    list_filter = ("status", "kind", "project", "created_at")
    search_fields = ("project__name", "error")
    date_hierarchy = "created_at"
    list_select_related = ("project",)
    inlines = [NotificationInline]
    actions = [admin_actions.retry_failed, admin_actions.retry_failed_including_permanent,
               admin_actions.notify_endpoint, admin_actions.cancel_sessions]
    change_form_template = "admin/sessions_app/syncsession/change_form.html"
    readonly_fields = (
        "project", "config_link", "kind", "status", "progress_display", "found_count", "pending_count",
        "uploaded_count", "skipped_count", "failed_count", "cancelled_count", "bytes_display", "speed_display",
        "duration_display", "files_link", "scan_problems", "created_at", "started_at", "scan_finished_at",
        "finished_at", "heartbeat_at", "retry_round", "next_retry_at", "created_by", "error", "log", "params",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sessions start from a project ("Start sync") or a command

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="progress")
    def progress_display(self, obj: SyncSession) -> str:
        return progress_bar(obj.progress, failed=bool(obj.failed_count))

    @admin.display(description="bytes")
    def bytes_display(self, obj: SyncSession) -> str:
        return f"{filesizeformat(obj.bytes_uploaded)} / {filesizeformat(obj.bytes_total)}"

    @admin.display(description="speed")
    def speed_display(self, obj: SyncSession) -> str:
        return f"{filesizeformat(obj.bytes_per_second)}/s" if obj.started_at else "-"

    @admin.display(description="duration")
    def duration_display(self, obj: SyncSession) -> str:
        d = obj.duration
        return seconds_text(d.total_seconds() if d else None)

    @admin.display(description="config")
    def config_link(self, obj: SyncSession) -> str:
        if not obj.config_id:
            return "-"
        url = reverse("admin:projects_confighistory_change", args=[obj.config_id])
        return format_html('<a href="{}">config #{}</a>', url, obj.config_id)

    @admin.display(description="files")
    def files_link(self, obj: SyncSession) -> str:
        base = reverse("admin:sessions_app_fileupload_changelist")
        links = [format_html('<a href="{}?session__id__exact={}">all {}</a>', base, obj.pk, obj.found_count)]
        for status in (FileStatus.FAILED, FileStatus.PENDING, FileStatus.UPLOADED, FileStatus.SKIPPED):
            links.append(format_html('<a href="{}?session__id__exact={}&status__exact={}">{}</a>',
                                     base, obj.pk, status.value, status.label.lower()))
        return format_html(" · ".join(["{}"] * len(links)), *links)


@admin.register(FileUpload)
class FileUploadAdmin(admin_actions.PermissionsMixin, admin.ModelAdmin):
    list_display = ("relative_path", "session_link", "status", "size_display", "attempts", "retries", "error_display",
                    "uploaded_at")
    list_filter = ("status", "error_permanent", "skip_reason", "project")
    search_fields = ("relative_path", "remote_key", "last_error")
    list_select_related = ("session",)
    show_full_result_count = False  # COUNT(*) over millions of rows on every page view is not free
    readonly_fields = [f.name for f in FileUpload._meta.fields]
    actions = [admin_actions.retry_selected_files]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).defer("note")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="session", ordering="session")
    def session_link(self, obj: FileUpload) -> str:
        url = reverse("admin:sessions_app_syncsession_change", args=[obj.session_id])
        return format_html('<a href="{}">#{}</a>', url, obj.session_id)

    @admin.display(description="size", ordering="size")
    def size_display(self, obj: FileUpload) -> str:
        return filesizeformat(obj.size)

    @admin.display(description="error")
    def error_display(self, obj: FileUpload) -> str:
        if not obj.last_error:
            return obj.skip_reason or ""
        kind = "permanent" if obj.error_permanent else "transient"
        return f"{obj.last_error[:200]} ({kind})"


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("created_at", "session", "url", "trigger", "attempt", "status_code", "succeeded", "duration_ms")
    list_filter = ("succeeded", "trigger")
    search_fields = ("url", "error")
    readonly_fields = [f.name for f in Notification._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


# The Project admin with the session actions (Start sync, ...): projects knows nothing of sessions.
admin.site.unregister(Project)
admin.site.register(Project, SessionsProjectAdmin)
