"""/admin/projects/project/<id>/upload/: staff with the add-sessions permission; linked from the project list and page."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.test import Client


@pytest.fixture
def project(make_project, tmp_path: Path):
    return make_project({"type": "local", "path": str(tmp_path / "dest")}, project="drops")


def staff_client(django_user_model, *perms: str) -> Client:
    user = django_user_model.objects.create_user("op", password="pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_project", *perms]))
    client = Client()
    client.force_login(user)
    return client


def test_the_page_needs_the_add_sessions_permission(project, django_user_model):
    client = staff_client(django_user_model)

    assert client.get(f"/admin/projects/project/{project.pk}/upload/").status_code == 403


def test_the_page_carries_the_manifest_url_and_the_vendored_tus_client(project, django_user_model):
    client = staff_client(django_user_model, "add_syncsession")

    r = client.get(f"/admin/projects/project/{project.pk}/upload/")

    html = r.content.decode()
    assert r.status_code == 200
    assert 'data-manifest-url="/api/projects/drops/uploads/"' in html
    assert "sessions_app/vendor/tus-js-client/tus.min.js" in html
    assert '<input type="file" id="pick-files" multiple>' in html


def test_the_project_list_and_page_link_to_it(project, admin_client):
    url = f"/admin/projects/project/{project.pk}/upload/"

    assert url in admin_client.get("/admin/projects/project/").content.decode()
    assert url in admin_client.get(f"/admin/projects/project/{project.pk}/change/").content.decode()


def test_the_tus_client_is_vendored_with_its_licence():
    from tests.conftest import ROOT

    vendor = ROOT / "sessions_app" / "static" / "sessions_app" / "vendor" / "tus-js-client"
    assert "MIT License" in (vendor / "LICENSE").read_text()
    assert (vendor / "tus.min.js").stat().st_size > 10_000
