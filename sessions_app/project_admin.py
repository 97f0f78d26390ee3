"""The Project admin's session actions: Start sync, Import from Roboflow…, Check destination
health, Issue API token. They live here, on a subclass of projects.admin.ProjectAdmin that
sessions_app/admin.py registers in its place, so `projects` never imports `sessions_app`.
Each action needs its permission; a POST that asks for one anyway is answered 403."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from projects.admin import ProjectAdmin
from projects.errors import UploaderError
from projects.models import ConfigHistory, Project
from sessions_app import admin_actions, display, health, importing, kinds, starting
from sessions_app.models import SyncSession

# action name -> the has_<name>_permission it needs
ACTION_PERMISSIONS = {
    "start_sync": "start_sync",
    "check_destination": "start_sync",
    "import_from_roboflow": "start_sync",
    "check_health": "change",
    "issue_api_token": "change",
}


class SessionsProjectAdmin(ProjectAdmin):
    actions = ["start_sync", "check_destination", "import_from_roboflow", "check_health", "issue_api_token"]
    list_display = (*ProjectAdmin.list_display, "upload_link")
    change_form_template = "admin/projects/project/change_form.html"

    def get_urls(self):
        return [path("<int:object_id>/upload/", self.admin_site.admin_view(self.upload_view),
                     name="projects_project_upload"), *super().get_urls()]

    def has_upload_permission(self, request: HttpRequest) -> bool:
        return request.user.is_staff and request.user.has_perm("sessions_app.add_syncsession")

    @admin.display(description="browser upload")
    def upload_link(self, obj: Project) -> str:
        return format_html('<a href="{}">Upload files…</a>', reverse("admin:projects_project_upload", args=[obj.pk]))

    def upload_view(self, request: HttpRequest, object_id: int) -> TemplateResponse:
        """Drop files and folders: the manifest first, then the bytes over tus, then both phases' bars."""
        if not self.has_upload_permission(request):
            raise PermissionDenied("you may not add sessions")
        project = get_object_or_404(Project, pk=object_id)
        context = {**self.admin_site.each_context(request), "title": f"Upload files to {project.name}",
                   "opts": self.model._meta, "original": project, "project": project,
                   "destination": project.describe_destination()}
        return TemplateResponse(request, "admin/projects/project/upload.html", context)

    def changelist_view(self, request: HttpRequest, extra_context=None):
        if request.method == "POST":
            for action in request.POST.getlist("action"):  # one per action bar (top, bottom)
                needed = ACTION_PERMISSIONS.get(action)
                if needed and not getattr(self, f"has_{needed}_permission")(request):
                    raise PermissionDenied(f"you may not {action.replace('_', ' ')}")
        return super().changelist_view(request, extra_context)

    def has_start_sync_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("projects.start_sync")

    @admin.display(description="last session")
    def last_session_display(self, obj: Project) -> str:
        last = obj.last_session()
        url = reverse("admin:sessions_app_syncsession_change", args=[last.pk]) if last else ""
        return display.last_session(last, url)

    @admin.action(description="Start sync", permissions=["start_sync"])
    def start_sync(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        admin_actions.start_syncs(request, queryset)

    @admin.action(description="Check destination (list it, reconcile the catalog, sync)", permissions=["start_sync"])
    def check_destination(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        admin_actions.start_syncs(request, queryset, check_destination=True)

    @admin.action(description="Check destination health", permissions=["change"])
    def check_health(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        for project in queryset:
            ok, message = health.check_destination(project)
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
            "destination": project.describe_destination(),
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
        label="API key variable", max_length=200, initial=importing.DEFAULT_API_KEY_ENV,
        help_text="NAME of the environment variable holding the Roboflow API key on the workers' machines",
    )
    concurrency = forms.IntegerField(initial=importing.DEFAULT_CONCURRENCY, min_value=1,
                                     max_value=importing.MAX_CONCURRENCY, help_text="concurrent fetches")

    def start(self, project: Project, username: str) -> SyncSession | None:
        """Start the import; None, with the reason on the form, when it cannot start."""
        data = self.cleaned_data
        try:
            params = importing.import_params(project, data["workspace"].strip(), data["rf_project"].strip(),
                                             api_key_env=data["api_key_env"].strip(),
                                             concurrency=data["concurrency"])
            return starting.start(project, kind=kinds.IMPORT, params=params, created_by=username,
                                  config_source=ConfigHistory.Source.ADMIN)
        except UploaderError as exc:
            self.add_error(None, str(exc))
            return None
