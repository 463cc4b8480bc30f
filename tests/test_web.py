"""The web page in real headless Chromium (Debian's package, installed here when missing),
driven by Playwright with the system executable: upload, score and overlay appear, a slider
re-scores through the API, a TIFF the browser cannot show is drawn by the server.

The README's docs/web.png is the screenshot of the first test, refreshed only when asked:
WEB_TEST_MODEL=models/default.onnx WEB_SCREENSHOT=docs/web.png pytest tests/test_web.py"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import import_tool, missing_tool
from tests.test_service_support import ROOT, defect_image, encode, serve

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
CANVAS_STATS = """() => {
  const c = document.getElementById("view");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let colour = 0, red = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - d[i + 2]) > 40) colour++;
    if (d[i] > 200 && d[i + 1] < 120 && d[i + 2] < 120) red++;
  }
  return {width: c.width, height: c.height, colour, red};
}"""


def _find() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, apt-get installed on first use (idempotent: found means done)."""
    found = _find()
    if found:
        return found
    if not shutil.which("apt-get") or os.geteuid() != 0:
        missing_tool("chromium is not installed and apt-get as root is not available here")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            missing_tool(f"cannot install chromium: {' '.join(cmd)} failed: {out.stderr[-500:]}")
    found = _find()
    if not found:
        missing_tool("apt-get installed chromium but no chromium executable was found")
    return found


@pytest.fixture(scope="module")
def browser(chromium, tiny_model, tmp_path_factory):
    """One server and one browser for the module; each test gets a fresh page."""
    sync_api = import_tool("playwright.sync_api", "pip install playwright")
    log = tmp_path_factory.mktemp("web") / "server.log"
    model = os.environ.get("WEB_TEST_MODEL") or str(tiny_model)
    with serve([model], log) as server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        browser.server = server
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.server = browser.server
    page.goto(page.server.url + "/")
    yield page
    page.close()


def wait_scored(page, filename: str) -> None:
    """Waits by locators: the page's Content-Security-Policy forbids the eval() that
    page.wait_for_function needs, and the tests run under that policy."""
    from playwright.sync_api import expect

    expect(page.locator("body")).to_have_attribute("data-state", "scored", timeout=30_000)
    expect(page.locator("#status")).to_have_text(re.compile("^" + re.escape(filename)))


def test_upload_shows_score_and_overlay(page, tmp_path):
    from playwright.sync_api import expect

    pixels = defect_image(7, 192, 160)
    path = tmp_path / "bead.png"
    path.write_bytes(encode(Image.fromarray((pixels * 255 + 0.5).astype(np.uint8))))
    expect(page.locator("#model")).to_contain_text("CPU")
    page.set_input_files("#file", str(path))
    wait_scored(page, "bead.png")

    api = httpx.post(page.server.url + "/v1/score", files={"file": ("b.png", path.read_bytes())})
    body = api.json()
    assert float(page.text_content("#score")) == pytest.approx(body["score"], rel=1e-5)
    assert page.text_content("#verdict") == ("ANOMALOUS" if body["is_anomalous"] else "normal")
    assert page.locator("#regions tbody tr").count() == len(body["regions"])
    assert page.text_content("#reason") == body["reason"]  # why, in the answer's words
    counts = page.locator("#regions tbody tr td:last-child").all_text_contents()
    assert counts == ["yes" if g["counts"] else "no" for g in body["regions"]]
    stats = page.evaluate(CANVAS_STATS)
    assert (stats["width"], stats["height"]) == (192, 160)
    assert stats["colour"] > 0  # the heatmap is drawn over the grey image
    assert stats["red"] > 0 or body["anomalous_area_fraction"] == 0  # and the mask
    page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
    if os.environ.get("WEB_SCREENSHOT"):
        shutil.copy(tmp_path / "web.png", ROOT / os.environ["WEB_SCREENSHOT"])

    page.fill("#alpha", "0")  # the slider re-scores through the API with ?alpha=0
    expect(page.locator("#r-alpha")).to_have_text("0.00")
    wait_scored(page, "bead.png")
    at0 = httpx.post(
        page.server.url + "/v1/score",
        params={"alpha": 0},
        files={"file": ("b.png", path.read_bytes())},
    ).json()  # no thresholds sent: the map at alpha 0 (its gamma), the verdict the model's
    assert float(page.text_content("#r-image")) == pytest.approx(at0["image_threshold"], rel=1e-5)
    assert float(page.text_content("#score")) == pytest.approx(at0["score"], rel=1e-5)
    assert page.errors == []


def test_tiff_is_drawn_by_the_server(page, tmp_path):
    """Chromium cannot show TIFF: the page asks the overlay route for the plain image."""
    grey = (defect_image(8, 128, 96) * 65535).astype("<u2")
    path = tmp_path / "scan.tif"
    path.write_bytes(encode(Image.fromarray(grey), "TIFF"))
    page.set_input_files("#file", str(path))
    wait_scored(page, "scan.tif")
    stats = page.evaluate(CANVAS_STATS)
    assert (stats["width"], stats["height"]) == (128, 96)
    assert "16-bit" in page.text_content("#r-size")
    assert page.errors == []


def test_failed_upload_clears_the_previous_result(page, tmp_path):
    """After a scored image, an upload the server refuses shows its error and nothing of the
    earlier image or verdict (which would read as this file's answer)."""
    from playwright.sync_api import expect

    good = tmp_path / "bead.png"
    good.write_bytes(encode(Image.fromarray((defect_image(7, 128, 96) * 255).astype(np.uint8))))
    page.set_input_files("#file", str(good))
    wait_scored(page, "bead.png")
    expect(page.locator("#result")).to_be_visible()

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    page.set_input_files("#file", str(broken))
    expect(page.locator("body")).to_have_attribute("data-state", "error", timeout=30_000)
    expect(page.locator("#status")).to_have_class(re.compile(r"\berror\b"))
    expect(page.locator("#status")).to_contain_text("broken.png")
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#view")).to_have_attribute("width", "0")  # the picture is gone
