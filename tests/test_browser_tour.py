"""The teacher tour in a real browser (issue 15): Debian's Chromium driven by Playwright.

Position tiles answer a click; the Attention page's query survives a visit to another page;
the address carries the view and a link opens it again; after an upload, choosing the sample
in the menu goes back to it and empties the uploader; a file that is not an image is named at
the top of the page, in view. Saves screenshots of every page with an uploaded photo at 1100
and 1400 px to tests/artifacts/tour_*.png. Skipped without /usr/bin/chromium or playwright.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests._browser_kit import ARTIFACTS, CHROMIUM, ROOT, go_to, idle, map_point, streamlit_server

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's Chromium at /usr/bin/chromium"),
]

PAGES = ["Overview", "Patches", "Embeddings", "Position embeddings", "Attention", "Prediction"]


@pytest.fixture(scope="module")
def server():
    with streamlit_server("streamlit_tour.log") as srv:
        yield srv.url


@pytest.fixture
def page(server, browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(120_000)  # a loaded 2-core machine
    pg.goto(server)
    idle(pg)
    yield pg
    pg.close()


def main_text(pg) -> str:
    return pg.locator('[data-testid="stMain"]').inner_text()


def number_input(pg, label: str) -> int:
    box = pg.locator('[data-testid="stNumberInput"]').filter(has_text=label).first
    return int(box.locator("input").input_value())


def query_label(pg) -> str:
    text = pg.locator('[data-testid="stMarkdownContainer"]').filter(has_text=re.compile(r"^Query: ")).first.inner_text()
    return text.split("·")[0].strip()


def wait_for_text(pg, testid: str, text: str) -> None:
    """Wait until the element `data-testid=testid` shows `text` (a rerun on a loaded machine takes a while)."""
    pg.wait_for_function(
        "([id, t]) => (document.querySelector(`[data-testid=\"${id}\"]`) || {innerText: ''}).innerText.includes(t)",
        arg=[testid, text],
        timeout=120_000,
    )


def click_map(pg, fx: float, fy: float) -> None:
    x, y = map_point(pg, fx, fy)
    pg.mouse.move(x, y)
    time.sleep(0.3)
    pg.mouse.click(x, y)
    time.sleep(0.5)
    idle(pg)


def upload(pg, path: Path) -> None:
    uploader = pg.locator('[data-testid="stFileUploader"]').filter(has_text="upload an image")
    uploader.locator('input[type="file"]').set_input_files(str(path))
    time.sleep(0.5)
    idle(pg)


def test_a_click_on_a_position_tile_enlarges_it(page):
    go_to(page, "Position embeddings")
    before = number_input(page, "Patch")
    # tile (row 1, column 1) of the 8x8 tiles: the mosaic is 8*8 cells + 7 gaps = 71 cells wide
    cells = 71
    click_map(page, (9 + 4) / cells, (9 + 4) / cells)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stNumberInput\"] input').value === '9'", timeout=30_000
    )
    assert before != 9 and number_input(page, "Patch") == 9
    assert "Patch 9 (row 1, column 1)" in main_text(page)


def test_the_attention_query_survives_a_visit_to_another_page_and_lives_in_the_address(page, server, browser):
    go_to(page, "Attention")
    click_map(page, 0.2, 0.3)
    label = query_label(page)
    assert label.startswith("Query: patch")
    go_to(page, "Prediction")
    go_to(page, "Attention")
    assert query_label(page) == label
    url = page.url
    assert "/attention?" in url and "model=" in url and "image=cifar-10-cat" in url and "query=" in url
    other = browser.new_page(viewport={"width": 1400, "height": 1000})  # a new session from the link
    try:
        other.goto(url)
        idle(other)
        assert query_label(other) == label
    finally:
        other.close()


def test_back_to_the_samples_after_an_upload(page, tmp_path):
    photo = tmp_path / "my coffee.jpg"
    shutil.copy(ROOT / "assets" / "samples" / "photos" / "coffee.jpg", photo)
    upload(page, photo)
    sidebar = page.locator('[data-testid="stSidebar"]')
    wait_for_text(page, "stSidebar", "Now showing: upload: my coffee.jpg")
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Sample image").click()
    page.get_by_role("option", name="CIFAR-10: cat", exact=True).click()
    wait_for_text(page, "stSidebar", "Now showing: CIFAR-10: cat")
    idle(page)
    assert "Now showing: CIFAR-10: cat" in sidebar.inner_text()
    assert "image: CIFAR-10: cat" in main_text(page)
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="upload an image")
    assert "my coffee.jpg" not in uploader.inner_text()  # the uploader no longer shows a file not in use


def test_a_file_that_is_not_an_image_is_named_where_the_user_looks(page, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_text("this is a text file, not a picture")
    upload(page, bad)
    wait_for_text(page, "stMain", "holiday.png was not used")
    alert = page.locator('[data-testid="stMain"] [data-testid="stAlert"]').filter(has_text="holiday.png was not used")
    assert alert.count() == 1
    box = alert.bounding_box()
    assert box is not None and 0 <= box["y"] < 400  # at the top, in view without scrolling
    text = alert.inner_text()
    assert "Now showing: CIFAR-10: cat" in text and "Pillow" not in text and "previous image" not in text
    assert "image: CIFAR-10: cat" in main_text(page)
    page.screenshot(path=str(ARTIFACTS / "tour_refused_upload.png"))


@pytest.mark.parametrize("width", [1100, 1400])
def test_screenshots_of_every_page_with_an_uploaded_photo(browser, server, tmp_path, width):
    pg = browser.new_page(viewport={"width": width, "height": 900})
    pg.set_default_timeout(120_000)
    try:
        pg.goto(server)
        idle(pg)
        photo = tmp_path / "espresso on the table.jpg"
        shutil.copy(ROOT / "assets" / "samples" / "photos" / "coffee.jpg", photo)
        upload(pg, photo)
        for label in PAGES:
            go_to(pg, label)
            assert pg.locator('[data-testid="stException"]').count() == 0, label
            assert "image: upload: espresso on the table.jpg" in main_text(pg)
            js = "() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight"
            pg.set_viewport_size({"width": width, "height": int(min(pg.evaluate(js) + 40, 9000))})
            time.sleep(0.8)
            pg.screenshot(path=str(ARTIFACTS / f"tour_{width}_{label.lower().replace(' ', '_')}.png"))
            pg.set_viewport_size({"width": width, "height": 900})
        assert "knows only these 10 classes" in main_text(pg)
    finally:
        pg.close()
