"""The Train page in a real browser: Debian's Chromium driven by Playwright.

Starts `streamlit run app.py` (the same way as tests/test_browser.py) with a tiny generated
image folder as the suggested data, trains the quick model for a few steps from the page,
uses the result in the sidebar picker, and checks that closing a tab stops that tab's run.
Screenshots go to tests/artifacts/ (train_setup, train_live, train_results).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests._browser_kit import (
    ARTIFACTS,
    import_playwright,
    skip_without_browser,
    streamlit_server,
)
from tests._tiny_data import make_image_folder

playwright = import_playwright()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(skip_without_browser(), reason="needs Debian's Chromium at /usr/bin/chromium"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_browser")
    data = make_image_folder(tmp / "data")
    runs_dir = tmp / "runs"
    env = {
        "VIT_EXPLORER_DATA": str(data),
        "VIT_EXPLORER_TRAIN_DIR": str(runs_dir),
        "VIT_EXPLORER_RUN_GRACE_S": "0",
        "VIT_EXPLORER_MAX_ARCHIVE_MB": "8",
    }
    with streamlit_server("streamlit_train.log", env=env) as srv:
        yield srv.url, runs_dir


def idle(pg, settle: float = 0.8) -> None:
    time.sleep(0.3)
    pg.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000)
    time.sleep(settle)


def shoot(pg, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    js = "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : document.body.scrollHeight; }"
    for pause in (0.6, 0.9):
        pg.set_viewport_size({"width": 1500, "height": int(min(pg.evaluate(js) + 40, 9000))})
        time.sleep(pause)
    pg.screenshot(path=str(path))
    pg.set_viewport_size({"width": 1500, "height": 1000})
    time.sleep(0.3)
    return path


def open_train_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    pg = context.new_page()
    pg.goto(url)
    idle(pg)
    pg.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Train", exact=True).click()
    pg.wait_for_selector("h1:has-text('Train a ViT and watch it learn')", timeout=60_000)
    idle(pg)
    return context, pg


def choose(pg, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label` (a react-aria combobox in Streamlit 1.67)."""
    pg.get_by_role("combobox", name=label, exact=True).click()
    pg.get_by_role("option", name=option, exact=True).first.click()
    idle(pg, 0.3)


def type_number(pg, label: str, value: str) -> None:
    field = pg.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")
    idle(pg, 0.3)


def small_model(pg) -> None:
    """Width 32, 2 heads, 1 block: a few thousand parameters, steps in milliseconds."""
    choose(pg, "Heads", "2")
    choose(pg, "Width D", "32")
    thumb = pg.get_by_role("slider", name="Depth L")
    thumb.focus()
    thumb.press("Home")
    idle(pg, 0.3)


def newest_metrics(runs_dir: Path) -> dict:
    folders = sorted((p for p in runs_dir.iterdir() if (p / "metrics.json").is_file()), key=lambda p: p.stat().st_mtime)
    return json.loads((folders[-1] / "metrics.json").read_text()) if folders else {}


def progress_text(pg) -> str:
    bars = pg.locator('[data-testid="stProgress"]')
    return bars.first.inner_text() if bars.count() else ""


def wait_running(pg) -> None:
    pg.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')].some(e => /step [1-9]/.test(e.innerText))",
        timeout=120_000,
    )


def test_pause_resume_and_stop_a_long_run(server, browser):
    """The live view of a run too long to end by itself: pause holds the step, resume goes on, stop ends it."""
    url, _ = server
    context, pg = open_train_page(browser, url)
    try:
        main = pg.locator('[data-testid="stMain"]')
        choose(pg, "Preset", next(o for o in preset_options(pg) if o.startswith("Quick")))
        choose(pg, "Batch size", "8")  # the quick model (about 0.8M parameters): tens of ms a step
        type_number(pg, "Epochs", "500")  # 4,500 steps: minutes
        pg.get_by_role("button", name=re.compile("Start training")).click()
        wait_running(pg)
        pg.get_by_role("button", name=re.compile("Pause")).click()
        pg.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')].some(e => /^Paused: step/.test(e.innerText.trim()))",
            timeout=30_000,
        )

        def step_of(text: str) -> int:
            return int(re.search(r"step ([\d,]+)", text).group(1).replace(",", ""))

        # the step in flight when the click came still lands (seconds on a busy CPU), and the
        # page shows the state of its last poll: after that the count must hold
        time.sleep(3.0)
        held = progress_text(pg)
        time.sleep(3.0)
        assert progress_text(pg) == held, "the step count moved while paused"
        time.sleep(0.5)  # let the curves draw
        shoot(pg, "train_live")
        step_paused = step_of(held)
        pg.get_by_role("button", name=re.compile("Resume")).click()
        deadline = time.time() + 60
        while True:
            m = re.search(r"step ([\d,]+)", progress_text(pg))
            if m and int(m.group(1).replace(",", "")) > step_paused:
                break
            assert time.time() < deadline, "the run did not go on after Resume"
            time.sleep(0.3)
        pg.get_by_role("button", name=re.compile(r"\bStop\b")).click()
        try:
            pg.wait_for_function(
                "() => (document.querySelector('[data-testid=\"stMain\"]') || {innerText: ''}).innerText.includes('Stopped at step')",
                timeout=120_000,
            )
        except Exception:
            shoot(pg, "train_stop_failed")
            raise
        idle(pg)
        assert pg.locator('[data-testid="stException"]').count() == 0
        steps = re.search(r"Steps\s*([\d,]+) of 4,500", main.inner_text())
        assert steps and step_paused < int(steps.group(1).replace(",", "")) < 4_500
        assert pg.get_by_role("button", name=re.compile("Resume training")).count() == 1
        pg.get_by_role("button", name=re.compile("New run")).click()
        idle(pg)
        assert pg.get_by_role("button", name=re.compile("Start training")).count() == 1
    finally:
        context.close()


def test_train_a_few_steps_and_use_the_model(server, browser):
    url, _ = server
    context, pg = open_train_page(browser, url)
    try:
        main = pg.locator('[data-testid="stMain"]')
        assert "72 training and 24 test images" in main.inner_text()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        small_model(pg)
        choose(pg, "Batch size", "8")
        type_number(pg, "Epochs", "3")  # 9 steps per epoch: 27 steps
        assert re.search(r"Optimiser steps\s*27", main.inner_text())
        shoot(pg, "train_setup")

        # 27 steps of this model take well under a second: the live view may never be drawn
        # (test_pause_resume_and_stop_a_long_run looks at it), so wait for the end
        pg.get_by_role("button", name=re.compile("Start training")).click()
        pg.wait_for_function(
            "() => (document.querySelector('[data-testid=\"stMain\"]') || {innerText: ''}).innerText.includes('Finished 27 steps')",
            timeout=180_000,
        )
        idle(pg, 1.5)
        assert pg.locator('[data-testid="stException"]').count() == 0
        text = main.inner_text()
        assert "Test accuracy" in text and "How the structures emerged" in text and "Confusion matrix" in text
        assert pg.locator(".js-plotly-plot").count() >= 6
        assert pg.get_by_role("button", name=re.compile("Download the checkpoint")).count() == 1
        shoot(pg, "train_results")

        pg.get_by_role("button", name=re.compile("Use this model")).click()
        idle(pg)
        picker = pg.get_by_role("combobox", name="Model", exact=True)
        assert picker.input_value().startswith("Trained this session: ViT P4 D32 L1")
        assert "is now selected in the sidebar's model picker" in main.inner_text()
        # ... and another page explains that model
        pg.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Position embeddings", exact=True).click()
        idle(pg)
        assert picker.input_value().startswith("Trained this session: ViT P4 D32 L1")
        assert "grid 8x8" in pg.locator('[data-testid="stSidebar"]').inner_text()  # the quick preset's patch 4 on 32 px
        assert pg.locator('[data-testid="stException"]').count() == 0
        assert errors == []
    finally:
        context.close()


def test_closing_the_tab_stops_its_run(server, browser):
    url, runs_dir = server
    context, pg = open_train_page(browser, url)
    small_model(pg)
    choose(pg, "Batch size", "8")
    type_number(pg, "Epochs", "500")
    pg.get_by_role("button", name=re.compile("Start training")).click()
    pg.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stProgress\"]')].some(e => /step [1-9]/.test(e.innerText))",
        timeout=120_000,
    )
    assert not any((p / "metrics.json").is_file() for p in runs_dir.iterdir() if p.stat().st_mtime > time.time() - 5)
    context.close()  # the tab goes away
    deadline = time.time() + 30
    while newest_metrics(runs_dir).get("status") != "stopped":
        assert time.time() < deadline, (
            f"the run kept going after its tab closed: {newest_metrics(runs_dir).get('status')}"
        )
        time.sleep(0.5)
    m = newest_metrics(runs_dir)
    assert 0 < m["step"] < m["total_steps"]


def shoot_at(pg, name: str, width: int) -> Path:
    """The whole page at `width` px (the viewport made as tall as the page), to tests/artifacts/<name>.png."""
    path = ARTIFACTS / f"{name}.png"
    js = "() => { const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 1000; }"
    pg.set_viewport_size({"width": width, "height": int(min(pg.evaluate(js) + 40, 9000))})
    time.sleep(0.8)
    pg.screenshot(path=str(path))
    pg.set_viewport_size({"width": width, "height": 1000})
    time.sleep(0.3)
    return path


def preset_options(pg) -> list[str]:
    pg.get_by_role("combobox", name="Preset", exact=True).click()
    options = [o.inner_text() for o in pg.get_by_role("option").all()]
    pg.keyboard.press("Escape")
    idle(pg, 0.3)
    return options


@pytest.mark.parametrize("width", [1100, 1400])
def test_setup_at_classroom_widths_shows_estimates_and_refuses_an_upload_bomb(server, browser, width, tmp_path):
    import io
    import tarfile

    url, _ = server
    context, pg = open_train_page(browser, url)
    try:
        pg.set_viewport_size({"width": width, "height": 1000})
        idle(pg, 0.5)
        main = pg.locator('[data-testid="stMain"]')
        options = preset_options(pg)
        assert options[0].startswith("Demo"), options
        text = main.inner_text()
        assert "On this server now, for this data: Demo about" in text
        assert "cifar10_jpeg.tar.gz" in text and "Measured (Demo)" in text and "floating-point operations" in text
        shoot_at(pg, f"train_setup_{width}", width)

        bomb = tmp_path / "bomb.tar.gz"
        with tarfile.open(bomb, "w:gz") as tf:
            info = tarfile.TarInfo("train/a/zeros.jpg")
            info.size = 64 * 2**20
            tf.addfile(info, io.BytesIO(bytes(info.size)))
        pg.get_by_text("Upload an archive", exact=True).click()
        idle(pg, 0.5)
        main.locator('input[type="file"]').set_input_files(str(bomb))
        try:
            pg.wait_for_function(
                "() => (document.querySelector('[data-testid=\"stMain\"]') || {innerText: ''}).innerText.includes('unpacks to more than 8 MB')",
                timeout=60_000,
            )
        except Exception:
            shoot_at(pg, f"train_upload_failed_{width}", width)
            raise
        idle(pg, 0.5)
        assert pg.get_by_role("button", name=re.compile("Start training")).is_disabled()
        shoot_at(pg, f"train_upload_refused_{width}", width)
    finally:
        context.close()
