"""The Experiments page in Chromium: every chart draws (with results written by the test), nothing
overflows at 1100 and 1400 px; screenshots in tests/artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests._browser_kit import ARTIFACTS, CHROMIUM, go_to, idle, streamlit_server
from tests.test_experiments import fake_results
from vit_core import experiments as ex

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's Chromium at /usr/bin/chromium"),
]

# Per drawn plotly chart: its width, how many traces it drew, and whether it sticks out of the main column.
CHARTS_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]').getBoundingClientRect();
  return [...document.querySelectorAll('.js-plotly-plot')].filter(p => p.offsetParent !== null).map(p => {
    const r = p.getBoundingClientRect();
    return {width: r.width, height: r.height, traces: p.querySelectorAll('.trace, .imagelayer image').length,
            overflow: r.right > main.right + 1};
  });
}"""


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("experiments")
    fake_results(folder)
    return folder


@pytest.fixture(scope="module")
def server(results_dir):
    env = {"VIT_EXPLORER_EXPERIMENTS_DIR": str(results_dir)}
    with streamlit_server("streamlit_experiments.log", env=env) as srv:
        yield srv.url


def shoot(pg, name: str) -> None:
    js = "() => document.querySelector('[data-testid=stMain]').scrollHeight"
    width = pg.viewport_size["width"]
    pg.set_viewport_size({"width": width, "height": int(min(pg.evaluate(js) + 40, 9000))})
    time.sleep(1.0)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    pg.set_viewport_size({"width": width, "height": 1000})


@pytest.mark.parametrize("width", [1100, 1400])
def test_the_experiments_page_draws_every_chart(browser, server, results_dir, width):
    pg = browser.new_page(viewport={"width": width, "height": 1000})
    pg.goto(server)
    idle(pg, timeout_ms=240_000)  # the Overview first: slow on a busy machine
    go_to(pg, "ViT vs CNN", timeout_ms=180_000)
    pg.wait_for_selector("text=The ablation lab", timeout=60_000)
    charts = pg.evaluate(CHARTS_JS)
    # data size, distance, two filter mosaics, ablation bars, the visible by-depth tab
    assert len(charts) == 6, charts
    assert all(c["traces"] >= 1 and c["width"] > 150 and c["height"] > 100 for c in charts), charts
    assert not any(c["overflow"] for c in charts), charts
    found = ex.findings(ex.load_results(results_dir))
    assert pg.get_by_text(found["pos_none"][:60]).count() >= 1
    pg.get_by_role("tab", name="logit-lens accuracy").click()
    idle(pg)
    assert len(pg.evaluate(CHARTS_JS)) == 6
    shoot(pg, f"experiments_{width}")
    pg.close()
