"""The faithfulness lab in a real browser: open "Which map to trust", click a head on the
knockout grid, and check that the probability shown changed by what `knockout_heads` computes;
screenshots at two widths with the sample cat and an uploaded photo (tests/artifacts/)."""

from __future__ import annotations

import re
import time

import pytest
import torch

from tests._browser_kit import (
    ARTIFACTS,
    ROOT,
    go_to,
    idle,
    import_playwright,
    skip_without_browser,
    streamlit_server,
)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(skip_without_browser(), reason="no Chromium")]
playwright = import_playwright()

LAB = "Which map to trust"
SLOW = 600_000  # the lab's first run computes every curve on a busy 2-core machine
SAMPLE = ROOT / "assets" / "samples" / "cifar10" / "cat.jpg"
PHOTO = ROOT / "assets" / "samples" / "photos" / "chelsea_cat.jpg"


@pytest.fixture(scope="module")
def server():
    with streamlit_server("streamlit_lab.log") as srv:
        yield srv.url


def shoot(pg, name: str, width: int) -> None:
    """The whole page at `width` px (the main area scrolls inside the app, so grow the viewport)."""
    js = "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 2000; }"
    for pause in (0.8, 1.2):
        pg.set_viewport_size({"width": width, "height": int(min(pg.evaluate(js) + 40, 12000))})
        time.sleep(pause)
    pg.screenshot(path=str(ARTIFACTS / f"{name}_{width}.png"))
    pg.set_viewport_size({"width": width, "height": 1000})


def probability(pg) -> tuple[str, float]:
    """The knockout section's metric: ("cat", 74.03)."""
    box = pg.locator('[data-testid="stMetric"]').filter(has_text="probability of").first
    label = box.locator('[data-testid="stMetricLabel"]').inner_text()
    value = box.locator('[data-testid="stMetricValue"]').inner_text()
    return re.search(r"probability of '(.+)'", label).group(1), float(value.strip().rstrip("%"))


def click_head(pg, layer: int, head: int, layers: int, heads: int) -> None:
    """Click the grid cell of (layer, head), 0-based: rows are layers top down, columns heads."""
    grid = pg.locator(".st-key-lab_heads .vx-stage img").first
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    x = box["x"] + box["width"] * (head + 0.5) / heads
    y = box["y"] + box["height"] * (layer + 0.5) / layers
    pg.mouse.move(x, y)
    time.sleep(0.3)
    pg.mouse.click(x, y)


def test_click_a_head_and_the_prediction_changes_by_what_the_library_computes(server, browser):
    from vit_core import load_checkpoint, load_image, preprocess
    from vit_core.analysis import knockout_heads

    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.goto(server)
    idle(pg, timeout_ms=SLOW)
    go_to(pg, LAB, timeout_ms=SLOW)
    assert pg.locator("h1").first.inner_text().strip() == LAB
    assert pg.locator('[data-testid="stException"]').count() == 0
    model = load_checkpoint(ROOT / "assets" / "vit_cifar10.safetensors").eval()
    x = preprocess(load_image(SAMPLE.read_bytes()), model)
    L, H = model.cfg.depth, model.cfg.num_heads
    with torch.no_grad():
        p = model(x).double().softmax(-1)[0]
    c = int(p.argmax())
    name, shown = probability(pg)
    assert name == model.class_names[c] and shown == pytest.approx(round(float(p[c]) * 100, 2), abs=1e-9)
    shoot(pg, "lab_cat", 1400)

    click_head(pg, 1, 1, L, H)  # layer 2 (as the grid labels it), head 1
    pg.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stMetricDelta\"]')].some(e => e.innerText.includes('points'))",
        timeout=SLOW,
    )
    idle(pg, timeout_ms=SLOW)
    with torch.no_grad():
        want = float(knockout_heads(model, x, [(1, 1)]).double().softmax(-1)[0, c])
    name, shown = probability(pg)
    assert name == model.class_names[c]
    assert shown == pytest.approx(round(want * 100, 2), abs=1e-9)
    delta = pg.locator('[data-testid="stMetricDelta"]').first.inner_text()
    assert delta.strip().replace("\u2212", "-") == f"{(want - float(p[c])) * 100:+.2f} points"
    assert "layer 2 · head 1" in pg.locator('[data-testid="stMultiSelect"]').first.inner_text()
    # the cross sits on the cell of layer 2, head 1 of the picture (marks placed in percent of it)
    img, cross = pg.locator(".st-key-lab_heads .vx-cross").first.evaluate(
        """(c) => [c.closest('.vx-stage').querySelector('img'), c].map((e) => {
             const q = e.getBoundingClientRect(); return [q.left, q.right, q.top, q.bottom]; })"""
    )
    cw, ch = (img[1] - img[0]) / H, (img[3] - img[2]) / L
    want = [img[0] + cw, img[0] + 2 * cw, img[2] + ch, img[2] + 2 * ch]
    assert cross == pytest.approx(want, abs=1.5), (cross, want)
    # the knocked-out cell is crossed, and its value stays readable: the cross does not cover it
    found, *r = pg.locator(".st-key-lab_heads .vx-cross").first.evaluate(
        """(cross) => {
          const texts = [...cross.parentNode.querySelectorAll('.vx-text')].filter(
            (t) => t.style.left === cross.style.left && t.style.top === cross.style.top);
          const box = (el) => { const g = document.createRange(); g.selectNodeContents(el); return g.getBoundingClientRect(); };
          const a = box(cross), b = texts.length ? box(texts[0]) : a;
          return [texts.length, a.left, a.right, a.top, a.bottom, b.left, b.right, b.top, b.bottom];
        }"""
    )
    assert found == 1, "no value written in the knocked-out cell"
    a_left, a_right, a_top, a_bottom, b_left, b_right, b_top, b_bottom = r
    assert a_right <= b_left or a_left >= b_right or a_bottom <= b_top or a_top >= b_bottom, r
    shoot(pg, "lab_cat_knocked", 1100)

    # an uploaded photo: the page recomputes everything for it
    uploader = pg.locator('[data-testid="stFileUploader"]').filter(has_text="upload an image")
    uploader.locator('input[type="file"]').set_input_files(str(PHOTO))
    pg.wait_for_function(
        "() => document.querySelector('[data-testid=\"stSidebar\"]').innerText.includes('upload: chelsea_cat.jpg')",
        timeout=SLOW,
    )
    idle(pg, timeout_ms=SLOW)
    assert pg.locator('[data-testid="stException"]').count() == 0
    shoot(pg, "lab_photo", 1400)
    shoot(pg, "lab_photo", 1100)
    go_to(pg, "Side by side", timeout_ms=SLOW)
    assert pg.locator('[data-testid="stException"]').count() == 0
    shoot(pg, "compare_photo", 1400)
    pg.close()
