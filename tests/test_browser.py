"""The explorer in a real browser: Debian's Chromium driven by Playwright (no browser download).

Starts `streamlit run app.py` on a free port, opens every page, uploads an image, clicks a
patch on the attention page and checks that the query changed, and saves a screenshot of
every page to tests/artifacts/ (ignored by git; the README's screenshots are picked from there).
Skipped when /usr/bin/chromium or the playwright package is missing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests._browser_kit import (
    ARTIFACTS,
    go_to,
    idle,
    import_playwright,
    map_point,
    skip_without_browser,
    streamlit_server,
)

playwright = import_playwright()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(skip_without_browser(), reason="needs Debian's Chromium at /usr/bin/chromium"),
]

# (navigation label, page title, plotly charts expected)
PAGES = [
    ("Overview", "How a Vision Transformer sees an image", 4),
    ("Patches", "Step 1: cut the image into patches", 6),
    ("Embeddings", "Step 2: turn every patch into a vector", 4),
    ("Position embeddings", "Step 3: tell each token where it came from", 5),
    ("Attention", "Step 4: attention, who looks at whom", 5),  # + the clickable map, a picture
    ("Prediction", "Step 5: the answer", 4),
]


@pytest.fixture(scope="module")
def server():
    with streamlit_server("streamlit.log") as srv:
        yield srv.url


@pytest.fixture(scope="module")
def page(server, browser):
    pg = browser.new_page(viewport={"width": 1500, "height": 1000})
    pg.goto(server)
    idle(pg)
    yield pg
    pg.close()


def shoot(pg, name: str) -> Path:
    """A screenshot of the whole page (the main area scrolls inside the app, so grow the viewport)."""
    path = ARTIFACTS / f"{name}.png"
    js = "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : document.body.scrollHeight; }"
    for pause in (0.6, 0.9):  # charts re-layout after a resize, which can change the height again
        pg.set_viewport_size({"width": 1500, "height": int(min(pg.evaluate(js) + 40, 9000))})
        time.sleep(pause)
    pg.screenshot(path=str(path))
    pg.set_viewport_size({"width": 1500, "height": 1000})
    time.sleep(0.3)
    return path


def assert_page_ok(pg, title: str, n_charts: int) -> None:
    assert pg.locator("h1").first.inner_text().strip() == title
    assert pg.locator('[data-testid="stException"]').count() == 0
    pg.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {n_charts}", timeout=60_000)
    assert pg.locator(".js-plotly-plot").count() == n_charts
    assert "Prediction:" in pg.locator('[data-testid="stAlert"]').first.inner_text()


def test_every_page_renders(page):
    for label, title, n_charts in PAGES:
        go_to(page, label)
        assert_page_ok(page, title, n_charts)
        assert shoot(page, label.lower().replace(" ", "_")).stat().st_size > 20_000


def _query_label(pg) -> str:
    text = pg.locator('[data-testid="stMarkdownContainer"]').filter(has_text=re.compile(r"^Query: ")).first.inner_text()
    return text.split("·")[0].strip()


def test_click_a_patch_on_the_attention_page(page):
    go_to(page, "Attention")
    assert _query_label(page) == "Query: CLS"
    x, y = map_point(page, 0.2, 0.3)
    page.mouse.move(x, y)
    time.sleep(0.3)
    page.mouse.click(x, y)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')].some(e => e.innerText.startsWith('Query: patch'))",
        timeout=60_000,
    )
    idle(page)
    label = _query_label(page)
    m = re.fullmatch(r"Query: patch (\d+)", label)
    assert m, label
    # the patch under the click: 20% across, 30% down the grid shown in the sidebar summary
    gh, gw = map(int, re.search(r"grid (\d+)x(\d+)", page.locator('[data-testid="stSidebar"]').inner_text()).groups())
    assert int(m.group(1)) == int(0.3 * gh) * gw + int(0.2 * gw)
    assert "Where patch" in page.locator('[data-testid="stMain"]').inner_text()
    shoot(page, "attention_clicked")


def test_upload_an_image(page, tmp_path):
    go_to(page, "Overview")
    rng = np.random.default_rng(0)
    a = np.zeros((120, 160, 3), np.uint8)
    a[:, :80] = (230, 60, 40)
    a[:, 80:] = (30, 90, 220)
    a = np.clip(a + rng.integers(0, 30, a.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "red_blue.png"
    Image.fromarray(a).save(path)
    uploader = page.locator('[data-testid="stFileUploader"]').filter(has_text="upload an image")
    uploader.locator('input[type="file"]').set_input_files(str(path))
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stAlert\"]')].some(e => e.innerText.includes('upload: red_blue.png'))",
        timeout=60_000,
    )
    idle(page)
    assert_page_ok(page, PAGES[0][1], PAGES[0][2])
    shoot(page, "overview_uploaded")


def test_dark_theme(server, browser):
    """With a dark system preference Streamlit switches to its dark theme; the figures follow it."""
    context = browser.new_context(color_scheme="dark", viewport={"width": 1500, "height": 1000})
    try:
        pg = context.new_page()
        pg.goto(server)
        idle(pg)
        go_to(pg, "Attention")
        assert_page_ok(pg, PAGES[4][1], PAGES[4][2])
        rgb = pg.evaluate("() => getComputedStyle(document.querySelector('[data-testid=\"stApp\"]')).backgroundColor")
        r, g, b = (int(v) for v in re.findall(r"\d+", rgb)[:3])
        assert (0.299 * r + 0.587 * g + 0.114 * b) < 80, rgb  # a dark background
        # chart backgrounds are transparent, so the theme shows through
        bg = pg.evaluate("() => getComputedStyle(document.querySelector('.js-plotly-plot .main-svg')).backgroundColor")
        assert bg in ("rgba(0, 0, 0, 0)", "transparent"), bg
        shoot(pg, "attention_dark")
    finally:
        context.close()


def test_formulas_fit_a_small_laptop_window(server, browser):
    """At 1100 px wide (sidebar open) no formula is wider than the main column: KaTeX does not
    wrap, and an overflowing display formula is cut off at the column's edge."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        pg = context.new_page()
        pg.goto(server)
        idle(pg)
        wide = {}
        for label, title, n_charts in PAGES:
            go_to(pg, label)
            assert_page_ok(pg, title, n_charts)
            sizes = pg.evaluate(
                "() => [...document.querySelectorAll('.katex-display')].map(e => [e.scrollWidth, e.clientWidth])"
            )
            assert sizes, f"no formula found on {label}"
            over = [s for s in sizes if s[0] > s[1] + 2]
            if over:
                wide[label] = over
        assert not wide, f"formulas wider than the column (scrollWidth, clientWidth): {wide}"
    finally:
        context.close()
