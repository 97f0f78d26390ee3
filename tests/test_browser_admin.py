"""The admin renders in a real Chromium for a logged-in operator."""
from __future__ import annotations


def test_the_admin_index_lists_projects_and_sessions_in_chromium(admin_page):
    admin_page.goto("/admin/")
    assert admin_page.title().startswith("Control room")
    main = admin_page.locator("#content-main")
    main.locator("a[href='/admin/projects/project/']").first.click()
    admin_page.wait_for_url("**/admin/projects/project/")
    assert admin_page.locator("#content h1").inner_text() != ""
