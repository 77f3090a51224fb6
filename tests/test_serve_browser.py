"""The web page of `vlkit serve` in a real headless browser (Playwright driving the system's Chromium).

Upload an image, see a prediction, correct it with one click, see the class's example count
go up and the held-out accuracy line answer. Skipped when Playwright or /usr/bin/chromium
is missing (CI installs Debian's `chromium`: see .ci/run).
"""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="vlkit serve needs the serve extra (pip install 'vlkit[serve]')")
pytest.importorskip("httpx", reason="the service tests need httpx (pip install 'vlkit[test]')")
playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install 'vlkit[test]')")

from serve_helpers import Server, png_bytes  # noqa: E402
from vlkit.apps import upgrade  # noqa: E402
from vlkit.data.resolve import load_data  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.mark.slow  # about 15 s alone, more on a busy machine: a server start plus a browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install -y chromium (Debian)")
def test_page_upload_predict_correct(tmp_path, tiny_backbone):
    classes = load_data("fashion-mnist-mini", "test").classnames  # the offline demo data: held-out accuracy shows
    run = tmp_path / "run"
    upgrade.init_run(run, "test-tiny", classes, backbone=tiny_backbone)
    image = tmp_path / "upload.png"
    image.write_bytes(png_bytes(seed=5))
    server = Server(run, "--heldout", "fashion-mnist-mini", "--heldout-per-class", "5").wait_ready()
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(server.url)
            page.wait_for_selector("#classes td.count")
            assert page.inner_text("#accuracy").endswith("%")  # the held-out score is shown from the start
            assert "50 test images of fashion-mnist-mini" in page.inner_text("#heldout-size")
            page.set_input_files("#file-input", str(image))
            predicted = page.wait_for_selector(".result .predicted").inner_text()
            assert predicted in classes
            assert page.locator(".result .bar").count() == 3  # the top-3 with probabilities
            # correct it: the true class is another one; one click adds the example
            truth = next(name for name in classes if name != predicted)
            count = page.locator(f'#classes td.count[data-class="{truth}"]')
            assert count.inner_text() == "0"
            page.click(f'.result .correct button[data-class="{truth}"]')
            page.wait_for_function(
                f"document.querySelector('#classes td.count[data-class=\"{truth}\"]').textContent === '1'")
            assert f"added as {truth}: 1 examples now" in page.inner_text(".result .status")
            assert "1 examples" in page.inner_text("#heldout-size")
            # the try-out strip offers train-split images of the demo data; one click classifies one
            page.click("#tryouts img >> nth=0")
            page.wait_for_function("document.querySelectorAll('.result').length === 2")
            assert "(try-out 0)" in page.inner_text(".result >> nth=0")  # newest first, named by its true class
            browser.close()
    finally:
        server.stop()
    meta = upgrade.read_meta(run)
    assert meta["per_class"][truth] == 1 and meta["examples"] == 1


@pytest.mark.slow  # a server start plus a browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install -y chromium (Debian)")
def test_docs_render_offline(tmp_path, tiny_backbone):
    """Swagger UI at /docs renders every route's operation with every request off this server refused."""
    run = tmp_path / "run"
    upgrade.init_run(run, "test-tiny", ["red", "blue"], backbone=tiny_backbone)
    server = Server(run).wait_ready()
    outside: list[str] = []
    try:
        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.set_default_timeout(60_000)

            def local_only(route):  # an offline machine: anything not on this server fails
                if route.request.url.startswith(server.url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", local_only)
            page.goto(f"{server.url}/docs")
            page.wait_for_selector(".opblock-summary-path")
            paths = {page.locator(".opblock-summary-path").nth(i).get_attribute("data-path")
                     for i in range(page.locator(".opblock-summary-path").count())}
            assert {"/predict", "/examples", "/classes", "/health"} <= paths
            assert "vlkit serve" in page.inner_text(".info .title")
            browser.close()
    finally:
        server.stop()
    assert not outside, f"/docs tried to reach: {outside}"
