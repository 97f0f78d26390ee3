from __future__ import annotations

import os
from datetime import datetime
from datetime import timezone as dt_timezone

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet, Sum
from django.http import FileResponse, Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils.html import format_html

from projects.models import Project
from sessions_app import admin_actions, overview, pacing, staging
from sessions_app.display import progress_bar, seconds_text
from sessions_app.project_admin import SessionsProjectAdmin
from sessions_app.models import Catalog, CatalogEntry, FileStatus, FileUpload, Notification, SyncSession


def skip_counts(session: SyncSession) -> dict[str, int]:
    """Skips by reason: those counted by the plan (no rows) and those with a row (e.g. duplicate)."""
    counts = dict(session.skips)
    rows = session.files.filter(status=FileStatus.SKIPPED).values_list("skip_reason").annotate(n=Count("id"))
    for reason, n in rows.order_by():
        counts[reason] = counts.get(reason, 0) + n
    return counts


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
    list_select_related = ("project", "pace")
    inlines = [NotificationInline]
    actions = [admin_actions.retry_failed, admin_actions.retry_failed_including_permanent,
               admin_actions.notify_endpoint, admin_actions.cancel_sessions, admin_actions.check_destination,
               admin_actions.export_files_csv]
    change_form_template = "admin/sessions_app/syncsession/change_form.html"
    readonly_fields = (
        "project", "config_link", "kind", "status", "progress_display", "found_count", "pending_count",
        "uploaded_count", "skipped_count", "skips_display", "failed_count", "cancelled_count", "bytes_display",
        "speed_display", "pace_display", "duration_display", "files_link", "scan_problems", "unread_folders",
        "created_at", "started_at", "scan_finished_at",
        "finished_at", "heartbeat_at", "retry_round", "next_retry_at", "created_by", "error", "log", "params",
    )
    # Folded under the summary panel the template draws from overview.session_detail().
    fieldsets = [("All fields", {"fields": readonly_fields, "classes": ["collapse"]})]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sessions start from a project ("Start sync") or a command

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        session = self.get_object(request, object_id)
        if session is not None:
            extra_context = {**(extra_context or {}), "summary": overview.session_detail(session)}
        return super().change_view(request, object_id, form_url, extra_context)

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
        if not obj.started_at:
            return "-"
        pace = pacing.describe_pace(pacing.pace_of(obj))
        return f"{filesizeformat(obj.bytes_per_second)}/s" + (f"; {pace}" if pace else "")

    @admin.display(description="pace")
    def pace_display(self, obj: SyncSession) -> str:
        """Whether the destination is throttling the session (sessions_app/pacing.py)."""
        pace = pacing.pace_of(obj)
        text = pacing.describe_pace(pace)
        if pace is not None and pace.throttled_count:
            lowest = f", lowest {pace.lowest_rate:.1f}/s" if pace.lowest_rate is not None else ""
            text = f"{text or 'not throttled now'} ({pace.throttled_count:,} throttling answers{lowest})"
        return text or "-"

    @admin.display(description="duration")
    def duration_display(self, obj: SyncSession) -> str:
        d = obj.duration
        return seconds_text(d.total_seconds() if d else None)

    @admin.display(description="skipped, by reason")
    def skips_display(self, obj: SyncSession) -> str:
        return ", ".join(f"{reason}: {n:,}" for reason, n in skip_counts(obj).items()) or "-"

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
    list_display = ("thumbnail_display", "relative_path", "session_link", "destination", "status", "size_display",
                    "attempts", "retries", "error_display", "uploaded_at")
    list_display_links = ("relative_path",)
    list_filter = ("status", "destination", "error_permanent", "skip_reason", "project")
    search_fields = ("relative_path", "remote_key", "last_error")
    list_select_related = ("session",)
    show_full_result_count = False  # COUNT(*) over millions of rows on every page view is not free
    readonly_fields = ["thumbnail_display", *(f.name for f in FileUpload._meta.fields)]
    actions = [admin_actions.retry_selected_files]

    def get_urls(self):
        return [path("<int:file_id>/thumbnail/", self.admin_site.admin_view(self.thumbnail_view),
                     name="sessions_app_fileupload_thumbnail"), *super().get_urls()]

    def thumbnail_view(self, request: HttpRequest, file_id: int) -> FileResponse:
        """A browser upload's thumbnail, kept on this machine (its copy at the destination may be out of reach)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        row = get_object_or_404(FileUpload.objects.only("id", "session_id"), pk=file_id)
        try:
            return FileResponse(open(staging.thumbnail_path(row.session_id, row.pk), "rb"), content_type="image/webp")
        except FileNotFoundError:
            raise Http404("no thumbnail") from None

    @admin.display(description="thumbnail")
    def thumbnail_display(self, obj: FileUpload) -> str:
        if not os.path.exists(staging.thumbnail_path(obj.session_id, obj.pk)):
            return ""
        url = reverse("admin:sessions_app_fileupload_thumbnail", args=[obj.pk])
        return format_html('<img src="{}" alt="thumbnail of {}" class="thumbnail" loading="lazy" '
                           'style="max-width:64px;max-height:64px">', url, obj.relative_path)

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


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Catalog)
class CatalogAdmin(ReadOnlyAdmin):
    """One row per project and destination, with what its catalog holds."""

    list_display = ("project", "destination", "entries_link", "bytes_display", "source_dir", "listed_at")
    list_filter = ("project",)
    search_fields = ("destination", "project__name")
    list_select_related = ("project",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(n=Count("entries"), total=Sum("entries__size"))

    @admin.display(description="objects", ordering="n")
    def entries_link(self, obj: Catalog) -> str:
        url = reverse("admin:sessions_app_catalogentry_changelist")
        return format_html('<a href="{}?catalog__id__exact={}">{}</a>', url, obj.pk, f"{obj.n:,}")

    @admin.display(description="bytes", ordering="total")
    def bytes_display(self, obj: Catalog) -> str:
        return filesizeformat(obj.total or 0)


class CatalogFilter(admin.SimpleListFilter):
    """Project and destination at once: there are few catalogs, and many entries."""

    title, parameter_name = "destination", "catalog__id__exact"

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[int, str]]:
        return [(c.pk, str(c)) for c in Catalog.objects.select_related("project")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(catalog_id=self.value()) if self.value() else queryset


class SizeFilter(admin.SimpleListFilter):
    title, parameter_name = "size", "size"
    BOUNDS = {"small": (0, 2**10), "kib": (2**10, 2**20), "mib": (2**20, 2**30), "gib": (2**30, None)}

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        return [("small", "under 1 KiB"), ("kib", "1 KiB - 1 MiB"), ("mib", "1 MiB - 1 GiB"), ("gib", "1 GiB and more")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() not in self.BOUNDS:
            return queryset
        low, high = self.BOUNDS[self.value()]
        queryset = queryset.filter(size__gte=low)
        return queryset if high is None else queryset.filter(size__lt=high)


@admin.register(CatalogEntry)
class CatalogEntryAdmin(ReadOnlyAdmin):
    """What is at each destination, as far as we know: one row per object."""

    list_display = ("key", "path_display", "size_display", "modified_display", "arrived_at", "session_link",
                    "catalog")
    list_filter = (CatalogFilter, "catalog__project", SizeFilter, "arrived_at")
    search_fields = ("key", "relative_path")
    list_select_related = ("catalog__project",)
    show_full_result_count = False  # COUNT(*) over millions of rows on every page view is not free
    readonly_fields = ("catalog", "key", "path_display", "size_display", "modified_display", "checksum",
                       "remote_id", "session_link", "arrived_at")
    fields = readonly_fields

    @admin.display(description="source file")
    def path_display(self, obj: CatalogEntry) -> str:
        return obj.path if obj.mtime is not None else "(none: found at the destination)"

    @admin.display(description="size", ordering="size")
    def size_display(self, obj: CatalogEntry) -> str:
        return filesizeformat(obj.size)

    @admin.display(description="modified (source)")
    def modified_display(self, obj: CatalogEntry) -> str:
        if obj.mtime is None:
            return "-"
        return datetime.fromtimestamp(obj.mtime, tz=dt_timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    @admin.display(description="recorded by", ordering="session")
    def session_link(self, obj: CatalogEntry) -> str:
        if obj.session_id is None:
            return "-"
        url = reverse("admin:sessions_app_syncsession_change", args=[obj.session_id])
        return format_html('<a href="{}">session #{}</a>', url, obj.session_id)


# The Project admin with the session actions (Start sync, ...): projects knows nothing of sessions.
admin.site.unregister(Project)
admin.site.register(Project, SessionsProjectAdmin)
