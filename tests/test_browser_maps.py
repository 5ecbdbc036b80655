"""Layout and feel in a real browser (Chromium): text that fits its boxes at 1100 and 1400 px,
titles that do not collide, sections of the Attention page that rerun alone, and maps over an
uploaded photo that still answer clicks. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests._browser_kit import ARTIFACTS, CHROMIUM, ROOT, go_to, idle, streamlit_server

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's Chromium at /usr/bin/chromium"),
]

# Every text of a plotly figure's annotations with the rectangle shape it sits in (page pixels).
TEXTS_IN_BOXES_JS = """(plot) => {
  const boxes = [...plot.querySelectorAll('.shapelayer path')].map(p => p.getBoundingClientRect())
    .filter(r => r.width > 20 && r.height > 20);
  return [...plot.querySelectorAll('.annotation-text')].filter(t => t.textContent.trim()).map(t => {
    const r = t.getBoundingClientRect();
    const cx = (r.left + r.right) / 2, cy = (r.top + r.bottom) / 2;
    const box = boxes.find(b => b.left <= cx && cx <= b.right && b.top <= cy && cy <= b.bottom);
    return {text: t.textContent, left: r.left, right: r.right,
            boxLeft: box ? box.left : null, boxRight: box ? box.right : null};
  });
}"""
# Counts DOM changes inside one element until read.
WATCH_JS = """(el) => {
  window.__changes = 0;
  if (window.__watch) window.__watch.disconnect();
  window.__watch = new MutationObserver(ms => { window.__changes += ms.length; });
  window.__watch.observe(el, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def server():
    with streamlit_server("streamlit_maps.log") as srv:
        yield srv.url


def open_page(browser, url: str, width: int):
    pg = browser.new_page(viewport={"width": width, "height": 1000})
    pg.goto(url)
    idle(pg)
    return pg


def shoot(pg, name: str) -> None:
    js = "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : document.body.scrollHeight; }"
    width = pg.viewport_size["width"]
    for pause in (0.6, 0.9):
        pg.set_viewport_size({"width": width, "height": int(min(pg.evaluate(js) + 40, 9000))})
        time.sleep(pause)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    pg.set_viewport_size({"width": width, "height": 1000})
    time.sleep(0.3)


@pytest.mark.parametrize("width", [1100, 1400])
def test_overview_pipeline_text_stays_inside_its_boxes(browser, server, width):
    pg = open_page(browser, server, width)
    try:
        plot = pg.locator(".st-key-pipeline .js-plotly-plot").first
        plot.wait_for()
        texts = plot.evaluate(TEXTS_IN_BOXES_JS)
        assert len(texts) >= 24  # six boxes: title, shape, detail, parameters
        for t in texts:
            assert t["boxLeft"] is not None, t
            assert t["left"] >= t["boxLeft"] - 1 and t["right"] <= t["boxRight"] + 1, t
        shoot(pg, f"overview_{width}")
    finally:
        pg.close()


@pytest.mark.parametrize("width", [1100, 1400])
def test_patch_size_chart_titles_do_not_overlap(browser, server, width):
    pg = open_page(browser, server, width)
    try:
        go_to(pg, "Patches")
        plot = pg.locator(".st-key-patch_whatif_chart .js-plotly-plot").first
        plot.scroll_into_view_if_needed()
        rects = plot.evaluate(
            "(p) => [...p.querySelectorAll('.annotation-text')].map(t => { const r = t.getBoundingClientRect();"
            " return [r.left, r.top, r.right, r.bottom]; })"
        )
        assert len(rects) == 2
        (a0, b0, a1, b1), (c0, d0, c1, d1) = rects
        assert a1 <= c0 or c1 <= a0 or b1 <= d0 or d1 <= b0, rects  # disjoint
        shoot(pg, f"patches_{width}")
    finally:
        pg.close()


def test_a_layer_step_redraws_only_its_own_section(browser, server):
    """The Layer slider reruns the query section alone: the rollout, class and DINO figures,
    which do not depend on it, are not touched (before: every figure of the page was resent)."""
    pg = open_page(browser, server, 1400)
    try:
        go_to(pg, "Attention")
        heads = pg.locator(".st-key-attn_heads").first
        others = [pg.locator(f".st-key-{k}").first for k in ("roll_map", "chefer_map", "dino_heads", "attn_entropy")]
        for el in others:
            el.evaluate("(e) => { e.dataset.before = '1'; }")
        others[0].evaluate(WATCH_JS)  # counts changes inside the rollout map
        before = heads.inner_html()
        pg.get_by_role("slider", name="Layer").first.focus()
        pg.keyboard.press("ArrowLeft")
        pg.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')]"
            ".some(e => e.innerText.startsWith('Query: CLS · layer 5'))",
            timeout=60_000,
        )
        idle(pg)
        assert heads.inner_html() != before  # the section itself was redrawn
        assert pg.evaluate("() => window.__changes") == 0  # the rollout map was not
        for el in others:
            assert el.evaluate("(e) => e.dataset.before") == "1"  # same elements, not replaced
    finally:
        pg.close()


def test_maps_over_an_uploaded_photo_and_a_click_on_it(browser, server):
    pg = open_page(browser, server, 1400)
    try:
        up = pg.locator('[data-testid="stSidebar"] [data-testid="stFileUploader"]').filter(has_text="upload an image")
        up.locator('input[type="file"]').set_input_files(str(ROOT / "assets" / "samples" / "photos" / "coffee.jpg"))
        pg.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=\"stAlert\"]')].some(e => e.innerText.includes('coffee.jpg'))",
            timeout=60_000,
        )
        idle(pg)
        go_to(pg, "Attention")
        pg.get_by_role("button", name="Display of the maps").click()
        pg.get_by_text("the original image").click()
        idle(pg)
        pg.keyboard.press("Escape")
        idle(pg)
        assert pg.locator('[data-testid="stException"]').count() == 0
        shoot(pg, "attention_photo_1400")
        # the query map is the photo (wider than high); a click on it picks the patch under the cursor
        picker = pg.locator(".st-key-attn_image .vx-stage").first
        picker.scroll_into_view_if_needed()
        time.sleep(0.3)
        src = picker.locator("img").first.get_attribute("src")
        assert src.startswith("data:image/jpeg")
        left, top, w, h = picker.evaluate(
            "(p) => { const r = p.querySelector('img').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }"
        )
        assert w > h * 1.2
        # the crop is the centre of the photo (the dashed frame): a point 3% inside its left edge is patch column 0
        crop = picker.evaluate(
            "(p) => { const r = p.querySelector('.vx-frame').getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }"
        )
        assert crop[0] > left + 1 and crop[2] < w  # the model saw a centre part of the wide photo
        x, y = crop[0] + crop[2] * 0.03, crop[1] + crop[3] * 0.55
        assert left < x < left + w and top < y < top + h
        pg.mouse.move(x, y)
        time.sleep(0.3)
        pg.mouse.click(x, y)
        pg.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=\"stMarkdownContainer\"]')].some(e => e.innerText.startsWith('Query: patch'))",
            timeout=60_000,
        )
        idle(pg)
        text = pg.locator('[data-testid="stMarkdownContainer"]').filter(has_text="Query: patch").first.inner_text()
        patch = int(text.split("Query: patch")[1].split("·")[0])
        gw = 8
        assert patch % gw == 0 and patch // gw == 4, text  # column 0, row int(0.55 * 8)
    finally:
        pg.close()
