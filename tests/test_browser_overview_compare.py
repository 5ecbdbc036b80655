"""Real browser: the Overview draws the loaded model's architecture (bundled and a non-standard model
from the server's model folder), and the Train page trains a ViT, then the CNN, on one budget.

Screenshots at 1100 and 1400 px go to tests/artifacts/ (overview_arch_*.png, train_compare_*.png).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from tests._browser_kit import (
    ARTIFACTS,
    idle,
    import_playwright,
    skip_without_browser,
    streamlit_server,
)
from tests._tiny_data import make_image_folder
from vit_core.checkpoints import save_checkpoint
from vit_core.config import ViTConfig
from vit_core.model import VisionTransformer

playwright = import_playwright()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(skip_without_browser(), reason="needs Debian's Chromium at /usr/bin/chromium"),
]

# a SimpleViT-like model with post-norm ReLU blocks: every option the Overview must draw differently
OWN = ViTConfig(
    img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=2, num_heads=4, dim_head=24, mlp_ratio=2.0,
    norm_placement="post", activation="relu", patch_norm=True, pos_embed_type="sincos", class_token=False,
    global_pool="avg", no_embed_class=True, crop_pct=1.0, name="own",
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overview_compare")
    data = make_image_folder(tmp / "data", train_per_class=64, test_per_class=16)
    models = tmp / "models"
    models.mkdir()
    torch.manual_seed(0)
    save_checkpoint(VisionTransformer(OWN), models / "simple_post_relu.safetensors")
    env = {
        "VIT_EXPLORER_DATA": str(data),
        "VIT_EXPLORER_TRAIN_DIR": str(tmp / "runs"),
        "VIT_EXPLORER_RUN_GRACE_S": "0",
        "VIT_EXPLORER_MODELS": str(models),
    }
    with streamlit_server("streamlit_overview_compare.log", env=env) as srv:
        yield srv.url, models / "simple_post_relu.safetensors"


def shoot_at(pg, name: str, width: int) -> Path:
    path = ARTIFACTS / f"{name}.png"
    js = "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 1000; }"
    pg.set_viewport_size({"width": width, "height": int(min(pg.evaluate(js) + 40, 9000))})
    time.sleep(1.0)
    pg.screenshot(path=str(path))
    pg.set_viewport_size({"width": width, "height": 1000})
    time.sleep(0.3)
    return path


def diagram_text(pg) -> str:
    """The pipeline diagram's text, once plotly has drawn it."""
    js = "() => (document.querySelector('.js-plotly-plot')?.textContent || '').includes('Encoder')"
    pg.wait_for_function(js, timeout=60_000)
    return pg.locator(".js-plotly-plot").first.text_content()


def overflows(pg) -> list[str]:
    """Elements of the main column wider than it (formulas or charts cut off)."""
    return pg.evaluate(
        """() => { const m = document.querySelector('[data-testid="stMainBlockContainer"]');
        const w = m.getBoundingClientRect().right + 1;
        return [...m.querySelectorAll('.katex-display, .js-plotly-plot')].filter(e => e.getBoundingClientRect().right > w)
          .map(e => e.className); }"""
    )


@pytest.mark.parametrize("width", [1100, 1400])
def test_overview_draws_the_bundled_and_an_own_models_architecture(server, browser, width):
    url, own = server
    ctx = browser.new_context(viewport={"width": width, "height": 1000})
    pg = ctx.new_page()
    try:
        pg.goto(url)
        idle(pg, settle=1.5)
        main = pg.locator('[data-testid="stMain"]')
        assert "MSA" in main.inner_text() or pg.locator(".katex").count() > 0
        text = main.inner_text()
        assert "Where this model differs" not in text
        assert "learned position vectors" in diagram_text(pg)
        assert not overflows(pg), overflows(pg)
        shoot_at(pg, f"overview_arch_bundled_{width}", width)

        pg.goto(f"{url}/?model=file:{own}")
        idle(pg, settle=1.5)
        text = pg.locator('[data-testid="stMain"]').inner_text()
        assert "Where this model differs from the ViT paper's" in text and "post-norm blocks" in text
        diagram = diagram_text(pg)
        assert "fixed 2-D sine-cosine positions" in diagram and "ReLU MLP" in diagram
        assert "LayerNorm, Linear, LayerNorm" in diagram and "[CLS]" not in diagram
        assert "3 x 64 x 4·24 = 3 x 64 x 96" in text
        assert not overflows(pg), overflows(pg)
        shoot_at(pg, f"overview_arch_own_{width}", width)
    finally:
        ctx.close()


def test_train_vit_then_cnn_on_one_budget(server, browser):
    url, _ = server
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    try:
        pg.goto(url)
        idle(pg)
        pg.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Train", exact=True).click()
        pg.wait_for_selector("h1:has-text('Train a ViT and watch it learn')", timeout=60_000)
        idle(pg)
        field = pg.get_by_label("Epochs", exact=True)
        field.fill("12")  # 192 images at batch 64: 3 steps an epoch, 36 steps each
        field.press("Enter")
        idle(pg)
        pg.get_by_role("button", name="Train the ViT, then the CNN, on this budget").click()
        pg.wait_for_function("() => document.body.innerText.includes('ViT vs CNN on the same budget')", timeout=60_000)
        pg.wait_for_function(
            "() => /CNN \\(ResNet\\): (training|loading)/.test(document.body.innerText)", timeout=300_000
        )
        time.sleep(3)
        shoot_at(pg, "train_compare_live_1400", 1400)
        pg.wait_for_function("() => /On this budget the/.test(document.body.innerText)", timeout=300_000, polling=1000)
        idle(pg, settle=2.0)
        text = pg.locator('[data-testid="stMain"]').inner_text()
        assert re.search(r"the ViT \d+\.\d%, the CNN \d+\.\d%", text)
        assert "ViT vs CNN on the same budget" in text
        assert pg.locator('[data-testid="stDataFrame"]').count() >= 1  # the side-by-side table (drawn on a canvas)
        for width in (1100, 1400):
            pg.set_viewport_size({"width": width, "height": 1000})
            idle(pg, settle=1.0)
            shoot_at(pg, f"train_compare_done_{width}", width)
    finally:
        ctx.close()
