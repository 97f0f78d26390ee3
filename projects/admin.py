from __future__ import annotations

import json

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.templatetags.static import static
from django.utils.timesince import timesince

from projects.forms import ExtraDestinationForm, ExtraDestinationFormSet, ProjectForm, project_fieldsets
from projects.models import ConfigHistory, Project, ProjectDestination


class ExtraDestinationInline(admin.TabularInline):
    """The project's destinations after the first: each a name, a type and its options."""

    model = ProjectDestination
    form = ExtraDestinationForm
    formset = ExtraDestinationFormSet
    extra = 0
    verbose_name = "more destination"
    verbose_name_plural = "more destinations (each synced from the same scan, with its own status and retries)"


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "destination_display", "health_display", "source_dir", "upload_workers", "max_retries",
                    "last_session_display", "updated_at")
    search_fields = ("name", "source_dir")
    list_filter = ("destination_kind", "health_ok")
    form = ProjectForm
    inlines = [ExtraDestinationInline]
    readonly_fields = ("created_at", "updated_at", "health_display", "api_token_display")
    fieldsets = [*project_fieldsets(), ("Status", {"fields": ["health_display", "api_token_display", "created_at",
                                                      "updated_at"]})]

    class Media:
        js = ["projects/project_form.js"]  # shows only the chosen destination type's options

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("extra_destinations")

    @admin.display(description="destination")
    def destination_display(self, obj: Project) -> str:
        where = obj.describe_destination()
        detail = " ".join(str(v) for k, v in where.items() if k != "kind" and v)
        more = [name for name, _, _ in obj.destination_specs()[1:]]
        return f"{obj.destination_kind}: {detail}" + (f" (+ {', '.join(more)})" if more else "")

    @admin.display(description="destination answers")
    def health_display(self, obj: Project) -> str:
        if obj.health_checked_at is None:
            return "not checked yet"
        icon = "yes" if obj.health_ok else "no"
        return format_html('<img src="{}" alt="{}"> {} <small>({} ago)</small>', static(f"admin/img/icon-{icon}.svg"),
                           icon, obj.health_message, timesince(obj.health_checked_at))

    @admin.display(description="upload queue API token")
    def api_token_display(self, obj: Project) -> str:
        return "issued (only its hash is stored)" if obj.api_token_hash else "none: use the Issue API token action"

    @admin.display(description="last session")
    def last_session_display(self, obj: Project) -> str:
        last = obj.last_session()
        if last is None:
            return "-"
        url = reverse("admin:sessions_app_syncsession_change", args=[last.pk])
        return format_html('<a href="{}">#{} {} ({}%)</a>', url, last.pk, last.get_status_display(),
                           f"{last.progress:.0f}")

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # After the inline rows: the recorded config has every destination.
        form.instance.record_config(ConfigHistory.Source.ADMIN, request.user.get_username())


@admin.register(ConfigHistory)
class ConfigHistoryAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "source", "created_by", "created_at")
    list_filter = ("source", "project")
    readonly_fields = ("project", "source", "created_by", "created_at", "config_display", "change_display")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="effective config (secrets redacted)")
    def config_display(self, obj: ConfigHistory) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.config, indent=2, sort_keys=True))

    @admin.display(description="change from the previous config")
    def change_display(self, obj: ConfigHistory) -> str:
        return format_html("<pre>{}</pre>", obj.diff_from_previous() or "(no change)")
