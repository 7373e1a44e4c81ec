"""Browser tests of the merchandiser's import pages, headless Chromium (Playwright) against a real server
process on the PostgreSQL test database; no worker and no model are needed: the upload preview is the
page's own script, and the mapping page queues its job (the worker's part is covered in
``tests/catalog/test_mapping.py`` and ``tests/test_browser.py``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connections

from tests.catalog.test_mapping import SHOPIFY_CSV, shopify_zip
from tests.test_browser import CHROMIUM, _answers, _wait_quietly, browser  # noqa: F401 (fixture)
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

PORT = int(os.environ.get("BROWSER_IMPORT_TEST_PORT", "7013"))
BASE = f"http://127.0.0.1:{PORT}"
PASSWORD = "import-pw"


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker):
    from django.contrib.auth.models import Permission, User

    from catalog.models import ImportJob
    from recommender import runtime

    with django_db_blocker.unblock():
        user, _ = User.objects.get_or_create(username="import-merch")
        user.set_password(PASSWORD)
        user.save()
        user.user_permissions.add(Permission.objects.get(codename="add_product"))
        db_url = runtime.database_url(connections["default"].settings_dict)
    logs = settings.VAR_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / "browser-import-server.log").open("wb")
    env = {**os.environ, "DATABASE_URL": db_url, "DJANGO_SETTINGS_MODULE": "recommender.settings.test"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{PORT}", "--noreload", "--insecure"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _answers(BASE + "/"), 60, f"the server at {BASE}")
        yield BASE
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        with django_db_blocker.unblock():
            ImportJob.objects.filter(started_by__username="import-merch").delete()
            User.objects.filter(username="import-merch").delete()
        connections.close_all()


@pytest.fixture
def page(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.goto("/accounts/login/?next=/manage/upload")
    pg.fill("#id_username", "import-merch")
    pg.fill("#id_password", PASSWORD)
    pg.click("button:text('Sign in')")
    pg.wait_for_url(re.compile(r"/manage/upload$"))
    yield pg
    context.close()


def test_upload_preview_shows_the_chosen_photo(page, hm_root):
    preview = page.locator("#upload-preview")
    assert not preview.is_visible()  # nothing chosen yet: no broken image
    photo = next((hm_root / "images").glob("*/*.jpg"))
    page.set_input_files("#upload-image", str(photo))
    page.wait_for_function("document.getElementById('upload-preview').complete")
    assert preview.is_visible()
    size = preview.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [240, 360]  # the real photo decoded, not a broken-image icon (0 x 0)


def test_mapping_page_shows_columns_and_queues_the_import(page, hm_root, tmp_path, django_db_blocker):
    from catalog.models import ImportJob

    (tmp_path / "photos.zip").write_bytes(shopify_zip(hm_root))
    page.goto("/manage/import")
    page.set_input_files("input[name=csv]", str(SHOPIFY_CSV))
    page.set_input_files("input[name=images]", str(tmp_path / "photos.zip"))
    page.click("button:text('Start the import')")
    page.wait_for_url(re.compile(r"/manage/import/\d+/columns$"))
    assert "Shopify product export" in page.locator(".page-head").inner_text()
    sku = page.locator("tr[data-target=sku] select")
    assert sku.input_value() == "Variant SKU"
    assert page.locator("table.file-columns").get_by_text("basic-sweater").first.is_visible()
    page.select_option("tr[data-target=variant_group] select", "")  # the merchandiser changes one field
    page.fill("input[name=save_as]", "Browser Shopify")
    page.click("button:text('Import with these columns')")
    page.wait_for_url(re.compile(r"/manage/import/\d+$"))
    pk = int(page.url.rsplit("/", 1)[1])
    with django_db_blocker.unblock():
        job = ImportJob.objects.get(pk=pk)
        assert job.status in ("queued", "running", "succeeded")
        assert "variant_group" not in job.mapping["fields"]
        assert job.mapping["fields"]["colour"] == {"option": "Color"}
