"""`manage.py issue_token <project>` and the project admin's "Issue API token" action: a new token,
shown once, only its hash kept."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command

from projects.models import Project, hash_token


@pytest.fixture
def project(make_project, tmp_path):
    return make_project({"type": "local", "path": str(tmp_path / "dest")}, project="camera")


def issue(name: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("issue_token", name, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_prints_a_token_that_authenticates_and_stores_only_its_hash(project):
    token, note = issue("camera")

    project.refresh_from_db()
    assert len(token) >= 40 and "\n" not in token
    assert project.api_token_hash == hash_token(token) and token not in project.api_token_hash
    assert project.check_api_token(token)
    assert "shown once" in note


def test_a_new_token_revokes_the_previous_one(project):
    first, _ = issue("camera")
    second, note = issue("camera")

    project.refresh_from_db()
    assert first != second
    assert not project.check_api_token(first) and project.check_api_token(second)
    assert "previous token no longer works" in note


def test_unknown_project(db):
    with pytest.raises(CommandError, match="no project named 'nope'"):
        issue("nope")


def test_admin_action_shows_the_token_once(client, django_user_model, project):
    client.force_login(django_user_model.objects.create_superuser("admin", "admin@example.com", "pw"))

    page = client.post("/admin/projects/project/", {"action": "issue_api_token", "_selected_action": [project.pk]})

    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    text = page.content.decode()
    token = text.split('<code class="api-token">', 1)[1].split("</code>", 1)[0]
    assert Project.objects.get(pk=project.pk).check_api_token(token)
    assert token not in client.get("/admin/projects/project/").content.decode()  # not kept in a message


def test_admin_action_needs_the_change_permission(client, django_user_model, project):
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_project"))
    client.force_login(viewer)

    client.post("/admin/projects/project/", {"action": "issue_api_token", "_selected_action": [project.pk]})

    assert Project.objects.get(pk=project.pk).api_token_hash == ""
