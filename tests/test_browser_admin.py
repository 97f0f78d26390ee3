"""The admin renders in a real Chromium for a logged-in operator."""
from __future__ import annotations


def test_the_admin_index_lists_projects_and_sessions_in_chromium(admin_page):
    admin_page.goto("/admin/")
    assert admin_page.title().startswith("Control room")
    main = admin_page.locator("#content-main")
    main.locator("a[href='/admin/projects/project/']").first.click()
    admin_page.wait_for_url("**/admin/projects/project/")
    assert admin_page.locator("#content h1").inner_text() != ""


def test_a_second_destination_is_added_as_an_inline_row_in_chromium(admin_page, tmp_path):
    from projects.models import Project

    source = tmp_path / "source"
    source.mkdir()
    admin_page.goto("/admin/projects/project/add/")
    admin_page.fill("#id_name", "two-places")
    admin_page.fill("#id_source_dir", str(source))
    admin_page.select_option("#id_destination_kind", "local")
    admin_page.fill("#id_destination_name", "archive")
    admin_page.fill("#id_local__path", str(tmp_path / "archive"))
    admin_page.get_by_text("Add another more destination").click()
    admin_page.fill("#id_extra_destinations-0-name", "s3")
    admin_page.select_option("#id_extra_destinations-0-kind", "s3")
    admin_page.fill("#id_extra_destinations-0-options", '{"prefix": "raw"}')
    admin_page.locator("input[name=_save]").click()

    admin_page.locator(".errorlist").first.wait_for()  # the form comes back with its errors
    errors = admin_page.locator(".errorlist").all_inner_texts()
    assert any("destination.bucket: required" in e for e in errors), errors
    assert not Project.objects.exists()

    admin_page.fill("#id_extra_destinations-0-options", '{"bucket": "raw-set", "prefix": "raw"}')
    admin_page.locator("input[name=_save]").click()
    admin_page.wait_for_url("**/admin/projects/project/")

    assert Project.objects.get().destination_names() == ["archive", "s3"]
    assert "(+ s3)" in admin_page.locator("#result_list").inner_text()
