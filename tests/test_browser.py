"""Browser tests: headless Chromium (Playwright) against a real server process, a real Celery worker,
Redis and the real PostgreSQL + pgvector test database, on a slice of the real H&M data.

Chromium is Debian's (``apt-get install chromium``), never Playwright's download. Screenshots of the
main pages are written to ``var/screenshots/``; ``UPDATE_SCREENSHOTS=1`` also refreshes the README's
``static/img/screenshot-product.png``.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from playwright.sync_api import expect

from tests.waiting import wait_for

# ``django_db`` (not transactional): the test database is created, and the committed slice is not flushed
# after each test. The server and the worker are other processes, so what they see is committed data.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db]

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
PORT = int(os.environ.get("BROWSER_TEST_PORT", "7011"))
BASE = f"http://127.0.0.1:{PORT}"
SHOTS = settings.VAR_DIR / "screenshots"
README_SHOT = settings.BASE_DIR / "static" / "img" / "screenshot-product.png"
PASSWORD = "browser-pw"


_wait = wait_for


def _answers(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def site(django_db_setup, django_db_blocker, trained_catalog, hm_root):
    """The trained slice committed in the test database, a merchandiser, a worker and a server process.

    Tests in this module read the database through ``django_db_blocker`` (committed data, as the
    server and the worker see it). Yields the base URL.
    """
    from django.contrib.auth.models import Permission, User

    from recommender import runtime
    from recommender.celery import app
    from tests.conftest import active_trained_slice

    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)")
    with django_db_blocker.unblock():
        active_trained_slice(hm_root)  # rebuilt when a transactional test flushed it
        user, _ = User.objects.get_or_create(username="browser-merch")
        user.is_staff = (
            False  # a merchandiser needs the permission, not staff status (the site's own sign-in)
        )
        user.set_password(PASSWORD)
        user.save()
        user.user_permissions.add(Permission.objects.get(codename="add_product"))
        db_url = runtime.database_url(connections["default"].settings_dict)
    env = {"DATABASE_URL": db_url, "DJANGO_SETTINGS_MODULE": "recommender.settings.test"}
    logs = settings.VAR_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runtime.ensure_redis(settings.CELERY_BROKER_URL, settings.VAR_DIR)
    app.control.purge()
    worker = runtime.start_worker(
        queues="embedding,training",
        concurrency=1,
        logfile=logs / "browser-worker.log",
        name=f"browser-{os.getpid()}",
        env=env,
    )
    server_log = (logs / "browser-server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{PORT}", "--noreload", "--insecure"],
        cwd=settings.BASE_DIR,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},  # its log shows how far it got, even on a hang
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # Starting (importing torch and the towers) takes minutes on a loaded machine; a server that exits
        # fails at once with its log instead of after the timeout.
        runtime.wait_for_http(BASE + "/healthz", server, timeout=240)
        _wait(lambda: _answers(BASE + "/"), 60, f"the server at {BASE} (see {logs / 'browser-server.log'})")
        assert runtime.wait_for_worker(app, timeout=120), (logs / "browser-worker.log").read_text()[-3000:]
        # The first text search loads the text tower in the server process; do it before any page waits.
        assert _answers(BASE + "/search?q=warm+up", timeout=180), "the first search did not answer"
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield BASE
    finally:
        server.terminate()
        server.wait(10)
        server_log.close()
        runtime.stop_worker(worker)
        with django_db_blocker.unblock():
            _remove_what_the_tests_created()
            _wait_quietly(lambda: not _other_sessions(), 15)  # the server's and worker's sessions end
        # ORM calls made while Playwright's event loop runs use their own connection (Django keeps one per
        # context); close it, or the test database cannot be dropped at the end of the session.
        connections.close_all()


def _remove_what_the_tests_created() -> None:
    """Delete the products, import jobs and user these tests committed, so later tests see the slice
    as it was (an uploaded copy of an H&M photo would otherwise win their photo searches)."""
    from django.contrib.auth.models import User

    from catalog.models import ImportJob, Product
    from catalog.services import product_delete

    for product in Product.objects.filter(sku__startswith="UI-"):
        product_delete(product=product)
    ImportJob.objects.filter(started_by__username="browser-merch").delete()
    User.objects.filter(username="browser-merch").delete()


def _other_sessions() -> int:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cur.fetchone()[0]


def _wait_quietly(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.25)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; Django refuses ORM calls there unless told
    # that this (single-threaded, test-only) use is safe.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
            yield b
            b.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=site)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def _db(django_db_blocker, fn):
    with django_db_blocker.unblock():
        return fn()


def _login(page) -> None:
    page.goto("/manage/upload")  # a merchandiser page sends an anonymous visitor to the sign-in page
    page.wait_for_url(re.compile(r"/accounts/login/\?next=/manage/upload$"))
    page.fill("#id_username", "browser-merch")
    page.fill("#id_password", PASSWORD)
    page.click("button:text('Sign in')")
    page.wait_for_url(re.compile(r"/manage/upload$"))
    assert page.locator("button:text('Sign out (browser-merch)')").is_visible()


def _new_article(hm_root, django_db_blocker, slot: str, skip: int = 0):
    """A real H&M article of ``slot`` that is not in the catalog yet."""
    from catalog.models import Product
    from ml.data import read_articles

    known = _db(django_db_blocker, lambda: set(Product.objects.values_list("sku", flat=True)))
    arts, _ = read_articles(hm_root)
    return [
        a for a in arts if a.article_id not in known and f"UI-{a.article_id}" not in known and a.slot == slot
    ][skip]


def test_shopper_searches_completes_the_look_and_scores_an_outfit(page, django_db_blocker):
    page.goto("/")
    page.screenshot(path=SHOTS / "catalog.png", full_page=True)
    page.fill("#site-q", "black trousers")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/search\?q=black\+trousers$"))
    cards = page.locator(".grid .card")
    assert cards.count() >= 5
    page.screenshot(path=SHOTS / "search.png", full_page=True)

    cards.first.locator("a.card-link").click()
    page.wait_for_url(re.compile(r"/products/\d+$"))
    product_slot = page.locator(".product-info .eyebrow").inner_text().strip()
    looks = page.locator(".look")
    assert looks.count() >= 2, "complete-the-look shows at least two slots"
    look_slots = [s.strip() for s in looks.locator("> .eyebrow").all_inner_texts()]
    assert product_slot not in look_slots and len(set(look_slots)) == len(look_slots)
    assert re.fullmatch(r"\d+% compatible", looks.first.locator(".bar-label").inner_text().strip())
    page.screenshot(path=SHOTS / "product.png", full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        page.screenshot(path=README_SHOT, full_page=True)
    first_url = page.url

    page.click("text=+ Add to outfit")  # the outfit builder with this item
    page.wait_for_url(re.compile(r"/outfit\?ids=\d+$"))
    page.goto(first_url)
    looks.first.locator("a.card-link").first.click()  # the pick of another slot
    page.wait_for_url(re.compile(r"/products/\d+$"))
    page.click("text=+ Add to outfit")  # site.js appends it to the outfit being built
    page.wait_for_url(re.compile(r"/outfit\?ids=\d+,\d+$"))
    assert page.locator(".outfit-items > li").count() == 2
    assert re.fullmatch(r"\d+%", page.locator(".big-score").inner_text().strip())
    assert page.locator("table.heatmap").is_visible()
    page.screenshot(path=SHOTS / "outfit.png", full_page=True)


def test_merchandiser_upload_is_embedded_by_the_worker_and_found_by_search(page, hm_root, django_db_blocker):
    from catalog.models import Product

    art = _new_article(hm_root, django_db_blocker, "bottom")
    _login(page)
    page.fill("input[name=sku]", f"UI-{art.article_id}")
    page.fill("input[name=title]", art.title)
    page.select_option("select[name=slot]", "bottom")
    # colour and type are choices of the catalog's values; a new one is typed after "Add a new …"
    expect(page.locator("input[name=colour_new]")).to_be_hidden()
    for name, value in (("product_type", art.product_type), ("colour", art.colour)):
        page.select_option(f"select[name={name}]", "__new__")
        expect(page.locator(f"input[name={name}_new]")).to_be_visible()
        page.fill(f"input[name={name}_new]", value)
    page.fill("textarea[name=description]", art.description)
    page.set_input_files("#upload-image", str(art.image_path))
    # The preview is an <img> with a blob: URL; it has no box (so is not "visible") until the browser
    # has decoded the photo, which takes a moment on a loaded machine: wait for it, do not sample it.
    expect(page.locator("#upload-preview")).to_be_visible(timeout=15_000)
    assert page.locator("#upload-preview").evaluate("img => img.naturalWidth") > 0
    page.screenshot(path=SHOTS / "upload.png", full_page=True)
    page.click("button:text('Upload')")
    page.wait_for_url(re.compile(r"/products/\d+\?uploaded=1$"))
    pk = int(re.search(r"/products/(\d+)", page.url).group(1))
    # The page polls the index status until the worker has stored the vectors, then (if it was rendered
    # before them) reloads itself once so its recommendations appear: auto-waiting assertions ride the reload.
    expect(page.locator("#index-status .pill-ready")).to_be_visible(timeout=120_000)
    expect(page.locator("#index-status")).to_contain_text("Embedded for the active model")
    expect(page.locator("[data-recs-unavailable]")).to_have_count(0, timeout=15_000)
    expect(page.locator("a.card-link").first).to_be_visible()  # similar items / complete-the-look shown
    assert _db(django_db_blocker, lambda: Product.objects.get(pk=pk).sku) == f"UI-{art.article_id}"

    page.goto(f"/search?q={art.title} {art.colour} {art.product_type}")
    assert page.locator(f".grid a.card-link[href='/products/{pk}']").count() == 1


def test_broken_image_upload_shows_an_inline_error_and_creates_nothing(
    page, hm_root, django_db_blocker, tmp_path
):
    from catalog.models import Product

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(next((hm_root / "images").glob("*/*.jpg")).read_bytes()[:200])
    before = _db(django_db_blocker, Product.objects.count)
    _login(page)
    page.fill("input[name=sku]", "UI-BROKEN")
    page.fill("input[name=title]", "Broken photo")
    page.set_input_files("#upload-image", str(broken))
    page.click("button:text('Upload')")
    error = page.locator("#upload-errors")
    error.wait_for()
    assert "Nothing was created" in error.inner_text()
    assert "UI-BROKEN: broken or truncated image" in error.inner_text()
    assert page.locator("input[name=title]").input_value() == "Broken photo"  # what was typed is kept
    assert _db(django_db_blocker, Product.objects.count) == before
    assert not _db(django_db_blocker, Product.objects.filter(sku="UI-BROKEN").exists)


def test_bulk_import_reaches_100_percent_and_lists_rejected_rows(page, hm_root, django_db_blocker, tmp_path):
    from catalog.models import Product

    good = [_new_article(hm_root, django_db_blocker, "top", skip=i) for i in range(3)]
    rows = [[f"UI-{a.article_id}", a.title, a.slot, f"photos/{a.article_id}.jpg", a.colour] for a in good]
    rows += [
        [f"UI-{good[0].article_id}", "Again", "top", f"photos/{good[0].article_id}.jpg", ""],  # row 5
        ["UI-NOPHOTO", "Missing photo", "top", "photos/missing.jpg", ""],  # row 6
        ["UI-EVIL", "Climbing out", "top", "../evil.jpg", ""],  # row 7
    ]
    with (tmp_path / "products.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["sku", "title", "slot", "image", "colour"])
        w.writerows(rows)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for a in good:
            zf.writestr(f"photos/{a.article_id}.jpg", a.image_path.read_bytes())
        zf.writestr(zipfile.ZipInfo("../evil.jpg"), b"not a photo")
    (tmp_path / "photos.zip").write_bytes(buf.getvalue())

    _login(page)
    page.goto("/manage/import")
    assert page.locator("a[href='/manage/import/example.csv']").is_visible()
    page.set_input_files("input[name=csv]", str(tmp_path / "products.csv"))
    page.set_input_files("input[name=images]", str(tmp_path / "photos.zip"))
    page.screenshot(path=SHOTS / "import.png", full_page=True)
    page.click("button:text('Start the import')")
    page.wait_for_url(re.compile(r"/manage/import/\d+$"))
    page.locator("[data-field=bar][aria-valuenow='100']").wait_for(timeout=120_000)
    page.locator("text=Import finished.").wait_for(timeout=30_000)
    cells = [r.locator("td").all_inner_texts() for r in page.locator("table.rejected tbody tr").all()]
    assert cells == [
        [
            "5",
            f"UI-{good[0].article_id}",
            "sku",
            f"SKU 'UI-{good[0].article_id}' appears again (first on row 2)",
        ],
        ["6", "UI-NOPHOTO", "image", "'photos/missing.jpg' is not in images zip"],
        [
            "7",
            "UI-EVIL",
            "image",
            "'../evil.jpg' is not a safe path inside the zip (absolute or with '..'); not opened",
        ],
    ]
    assert page.locator("[data-field=created]").inner_text() == "3"
    page.screenshot(path=SHOTS / "import-job.png", full_page=True)
    with page.expect_download() as dl:
        page.click("text=Download the report (CSV)")
    report = Path(dl.value.path()).read_text(encoding="utf-8").splitlines()
    assert report[0] == "row,sku,field,message" and len(report) == 4
    assert (
        _db(django_db_blocker, lambda: Product.objects.filter(sku__in=[r[0] for r in rows[:3]]).count()) == 3
    )


def test_models_page_phone_width_and_keyboard(browser, site):
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=site)
    page = context.new_page()
    try:
        for path in ("/", "/models", "/search?q=dress"):
            page.goto(path)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} scrolls sideways by {overflow} px at 390 px"
            missing_alt = page.evaluate("[...document.images].filter(i => !i.hasAttribute('alt')).length")
            assert missing_alt == 0, f"{path}: {missing_alt} images without alt text"
        page.goto("/models")
        page.locator("article.run .loss-chart svg polyline[data-series=loss]").first.wait_for()  # drawn by JS
        assert re.fullmatch(
            r"\d+%( · loss \d+\.\d{4})?( · step \d+)?",
            page.locator("article.run .bar-label").first.inner_text(),
        )
        page.screenshot(path=SHOTS / "models-phone.png", full_page=True)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.className") == "skip-link"
        page.keyboard.press("Tab")
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none", "the focused link shows a focus outline"
    finally:
        context.close()
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=site)
    page = context.new_page()
    _login(page)
    page.goto("/models")
    assert page.locator("form.train-form select[name=miner]").is_visible()  # merchandisers can train
    page.screenshot(path=SHOTS / "models.png", full_page=True)
    context.close()
