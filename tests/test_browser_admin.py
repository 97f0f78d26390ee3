"""The admin renders in a real Chromium for a logged-in operator."""
from __future__ import annotations


def test_the_admin_index_lists_projects_and_sessions_in_chromium(admin_page):
    admin_page.goto("/admin/")
    assert admin_page.title().startswith("Control room")
    assert admin_page.locator("#content-main a[href='/admin/projects/project/']").count() == 1
    assert admin_page.locator("#content-main a[href='/admin/sessions_app/syncsession/']").count() == 1
