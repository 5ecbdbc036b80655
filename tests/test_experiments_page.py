"""The Experiments page through AppTest: with shipped results (written by the test) and without any."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_experiments import fake_results
from vit_core import experiments as ex

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGE = "pages/10_experiments.py"


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, at.exception
    return at


def text(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info])


def test_the_page_shows_the_shipped_results_side_by_side(tmp_path, monkeypatch):
    res = fake_results(tmp_path)
    monkeypatch.setattr(ex, "RESULTS_DIR", tmp_path)
    at = open_page()
    charts = at.get("plotly_chart")
    # data size, distance, two filter mosaics, ablation bars, three by-depth tabs
    assert len(charts) == 8
    body = text(at)
    found = ex.findings(res)
    for key in ("data_size", "distance", "pos_none", "pool_avg", "logit_lens"):
        assert found[key] in body
    table = at.dataframe[0].value
    assert list(table["variant"]) == [r["label"] for r in ex.ablation_rows(res)]
    assert list(table["vs baseline (points)"]) == pytest.approx([0.0, -0.3, 3.0])
    assert "RANDOM weights" in body or "shipped demo ResNet" in body
    assert "Train a ViT on the **Train** page" in body  # no run in this session


def test_the_page_works_without_any_shipped_results(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "RESULTS_DIR", tmp_path / "none")
    at = open_page()
    body = text(at)
    assert "No shipped results were found" in body
    assert "No data-size runs are shipped yet." in body and "No ablation runs are shipped yet." in body
    # the live comparisons still draw: distance by depth and the two filter mosaics
    assert len(at.get("plotly_chart")) == 3
    assert not at.dataframe
