"""Bring your own ViT in the app: a student's state dict is uploaded, the sidebar asks what its
weights cannot tell, and every page opens on the loaded model.

Two ways: Streamlit's AppTest (fast, no browser), and a real browser (Debian's Chromium driven
by Playwright, skipped when missing) that uploads the file, answers the heads question in the
sidebar's menu and opens every page.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests._browser_kit import CHROMIUM, CHROMIUM_ARGS, go_to, idle, streamlit_server
from tests.test_app import MODEL_KEY, PAGES, TIMEOUT, ok, prediction_text
from tests.test_families import LucidViT, TutorialViT, _randomise
from vit_core import load_checkpoint

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the AppTest tests still run
    sync_playwright = None

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
# (navigation label, page title)
NAV = [
    ("Overview", "How a Vision Transformer sees an image"),
    ("Patches", "Step 1: cut the image into patches"),
    ("Embeddings", "Step 2: turn every patch into a vector"),
    ("Position embeddings", "Step 3: tell each token where it came from"),
    ("Attention", "Step 4: attention, who looks at whom"),
    ("Prediction", "Step 5: the answer"),
]


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """What `torch.save(model.state_dict(), "my_vit.pth")` writes."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def lucid_vit() -> torch.nn.Module:
    return _randomise(LucidViT(heads=2, dim_head=24, pool="cls", classes=3), seed=11)


def start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_choice"] = MODEL_KEY
    at.run()
    ok(at)
    return at.run()


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="model_upload").upload(name, data, "application/octet-stream").run()
    ok(at)
    return at


def submit_answers(at: AppTest) -> AppTest:
    next(b for b in at.sidebar.button if b.label == "Load with these answers").click().run()
    ok(at)
    return at


def test_upload_asks_then_loads_and_every_page_opens(tmp_path: Path) -> None:
    at = upload(start(), "my_vit.pth", state_dict_bytes(lucid_vit()))
    assert at.selectbox(key="model_key").value == MODEL_KEY  # not loaded yet: it waits for answers
    assert any("vit-pytorch ViT" in i.value for i in at.sidebar.info)
    heads = at.selectbox(key="answer_num_heads")
    assert (
        heads.options[:2] == ["1 head of 48", "2 heads of 24"]
        and "pool='cls'" in at.selectbox(key="answer_global_pool").options[0]
    )
    heads.set_value(2)
    at = submit_answers(at)
    key = at.selectbox(key="model_key").value
    assert key.startswith("file:") and "my_vit" in key
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert "Your own model: vit-pytorch ViT" in sidebar and "2 heads" in sidebar and "24 wide" in sidebar
    assert "class " in prediction_text(at)
    for page, title, _ in PAGES:
        at.switch_page(page).run()
        ok(at)
        assert at.title[0].value == title


def test_tutorial_model_warns_on_every_page_and_offers_the_intended_view() -> None:
    at = upload(start(), "tutorial_vit.pth", state_dict_bytes(_randomise(TutorialViT(), seed=12)))
    at.selectbox(key="answer_num_heads").set_value(4)
    at = submit_answers(at)
    for page, _, _ in PAGES[:2]:
        at.switch_page(page).run()
        ok(at)
        warnings = [w.value for w in at.sidebar.warning]
        assert any("every token attends only to itself" in w for w in warnings), warnings
    at.checkbox(key="as_intended").check().run()
    ok(at)
    assert any("Viewed as intended" in w.value for w in at.sidebar.warning)
    assert not any("attends only to itself" in w.value for w in at.sidebar.warning)


# ---- a real browser ----


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(sync_playwright is None, reason="needs the playwright package")
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's Chromium at /usr/bin/chromium")
def test_browser_upload_answer_heads_and_open_every_page(tmp_path: Path) -> None:
    ref = lucid_vit()
    data = state_dict_bytes(ref)
    (tmp_path / "my_vit.pth").write_bytes(data)
    expected = load_checkpoint(tmp_path / "my_vit.pth", num_heads=2, global_pool="cls")
    with streamlit_server("streamlit_own_model.log") as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1500, "height": 1000})
            pg.goto(srv.url)
            idle(pg)
            sidebar = pg.locator('[data-testid="stSidebar"]')
            sidebar.get_by_text("More models: pretrained, upload, path").click()
            uploader = sidebar.locator('[data-testid="stFileUploader"]').filter(has_text="Upload a checkpoint")
            uploader.locator('input[type="file"]').set_input_files(
                files=[{"name": "my_vit.pth", "mimeType": "application/octet-stream", "buffer": data}]
            )
            sidebar.get_by_text("Load with these answers").wait_for(timeout=60_000)
            idle(pg)
            # the heads question: a menu of the likeliest head counts (a react-aria combobox)
            sidebar.get_by_role("combobox", name=re.compile("attention heads")).click()
            pg.get_by_role("option", name="2 heads of 24", exact=True).first.click()
            idle(pg)
            sidebar.get_by_role("button", name="Load with these answers").click()
            pg.wait_for_function(
                "() => document.querySelector('[data-testid=\"stSidebar\"]').innerText.includes('Your own model')",
                timeout=60_000,
            )
            idle(pg)
            text = sidebar.inner_text()
            assert "vit-pytorch ViT" in text and f"{expected.num_params() / 1e6:.2f} M parameters" in text
            assert "· 2 heads ·" in text and "24 wide" in text  # the answer was used
            for label, title in NAV:
                go_to(pg, label)
                assert pg.locator("h1").first.inner_text().strip() == title
                assert pg.locator('[data-testid="stException"]').count() == 0, label
                assert "Prediction:" in pg.locator('[data-testid="stMain"]').inner_text()
        finally:
            browser.close()
