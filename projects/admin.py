from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.templatetags.static import static
from django.utils.timesince import timesince

from projects.errors import ConfigError
from projects.models import ConfigHistory, Project


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "destination_display", "health_display", "source_dir", "upload_workers", "max_retries",
                    "last_session_display", "updated_at")
    search_fields = ("name", "source_dir")
    list_filter = ("destination_kind", "health_ok")
    actions = ["start_sync", "import_from_roboflow", "check_health", "issue_api_token"]
    readonly_fields = ("created_at", "updated_at", "health_display", "api_token_display")

    @admin.display(description="destination")
    def destination_display(self, obj: Project) -> str:
        try:
            where = obj.destination().describe()
        except ConfigError as exc:  # stored before a rule it now breaks (e.g. a refused secret name)
            return f"{obj.destination_kind}: misconfigured: {exc}"
        detail = " ".join(str(v) for k, v in where.items() if k != "kind" and v)
        return f"{obj.destination_kind}: {detail}"

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

    def save_model(self, request: HttpRequest, obj: Project, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        obj.record_config(ConfigHistory.Source.ADMIN, request.user.get_username())

    @admin.action(description="Start sync", permissions=["start_sync"])
    def start_sync(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        from sessions_app import pipeline, tasks

        started, refused = [], []
        for project in queryset:
            try:
                pipeline.preflight(project).close()
                session = pipeline.create_session(project, created_by=request.user.get_username())
                tasks.enqueue_scan(session.pk)
                started.append(f"{project.name} (session #{session.pk})")
            except (pipeline.StartError, tasks.EnqueueError) as exc:
                refused.append(f"{project.name}: {exc}")
        if started:
            self.message_user(request, f"Started {len(started)} sync session(s): {', '.join(started)}",
                              messages.SUCCESS)
        for line in refused:
            self.message_user(request, f"Not started: {line}", messages.ERROR)

    def has_start_sync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("projects.start_sync")

    @admin.action(description="Check destination health")
    def check_health(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        from sessions_app.health import check_destination

        for project in queryset:
            ok, message = check_destination(project)
            level = messages.SUCCESS if ok else messages.ERROR
            answer = "answers" if ok else f"does not answer: {message}"
            self.message_user(request, f"Destination of {project.name} {answer}", level)

    @admin.action(description="Issue API token (replaces the current one)", permissions=["change"])
    def issue_api_token(self, request: HttpRequest, queryset: QuerySet[Project]) -> TemplateResponse:
        # Rendered at once, never put in a message (a cookie or the session): the token is stored nowhere.
        issued = [(project, project.issue_api_token()) for project in queryset]
        context = {**self.admin_site.each_context(request), "title": "API tokens issued", "issued": issued,
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/projects/project/api_tokens.html", context)  # admin: never cached

    @admin.action(description="Import from Roboflow…", permissions=["start_sync"])
    def import_from_roboflow(self, request: HttpRequest, queryset: QuerySet[Project]) -> HttpResponse | None:
        """An intermediate page asks for the Roboflow workspace and project, then starts an import
        session into the selected project's storage."""
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one project to import into.", messages.ERROR)
            return None
        project = queryset.get()
        form = RoboflowImportForm(request.POST if "apply" in request.POST else None)
        session = form.start(project, request.user.get_username()) if form.is_valid() else None
        if session is not None:
            self.message_user(request, f"Import session #{session.pk} started: {session.params['workspace']}/"
                                       f"{session.params['project']} into {project.name}.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:sessions_app_syncsession_change", args=[session.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Import from Roboflow into {project.name}",
            "opts": self.model._meta,
            "project": project,
            "destination": project.destination().describe(),
            "form": form,
            "queryset": queryset,
            "action": "import_from_roboflow",
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/projects/import_roboflow.html", context)


class RoboflowImportForm(forms.Form):
    workspace = forms.CharField(max_length=200, help_text="the slug in app.roboflow.com/<workspace>")
    rf_project = forms.CharField(label="Roboflow project", max_length=200, help_text="the project's url slug")
    api_key_env = forms.CharField(
        label="API key variable", max_length=200, initial="ROBOFLOW_API_KEY",
        help_text="NAME of the environment variable holding the Roboflow API key on the workers' machines",
    )
    concurrency = forms.IntegerField(initial=20, min_value=1, max_value=200, help_text="concurrent fetches")

    def start(self, project: Project, username: str):  # -> SyncSession | None
        """Start the import; None, with the reason on the form, when it cannot start."""
        from projects.destinations import ConfigError
        from sessions_app import importing, pipeline, tasks

        data = self.cleaned_data
        try:
            params = importing.import_params(project, data["workspace"].strip(), data["rf_project"].strip(),
                                             api_key_env=data["api_key_env"].strip(),
                                             concurrency=data["concurrency"])
            return importing.start_import(project, params, created_by=username,
                                          config_source=ConfigHistory.Source.ADMIN)
        except (ConfigError, pipeline.StartError, tasks.EnqueueError) as exc:
            self.add_error(None, str(exc))
            return None


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
        import json

        return format_html("<pre>{}</pre>", json.dumps(obj.config, indent=2, sort_keys=True))

    @admin.display(description="change from the previous config")
    def change_display(self, obj: ConfigHistory) -> str:
        return format_html("<pre>{}</pre>", obj.diff_from_previous() or "(no change)")
