"""The Experiments page through AppTest: with shipped results (written by the test) and without any."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_experiments import fake_results, synthetic, tiny
from vit_core import experiments as ex
from vit_core.snapshots import take_snapshot
from vit_core.train import Trainer

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


class FakeRun:
    """Just what the page reads of a TrainingRun: `view().snapshots` (and `release` for the lease)."""

    id = "fake"

    def __init__(self, snapshots):
        self._view = SimpleNamespace(status="finished", active=False, done=True, snapshots=snapshots)

    def view(self):
        return self._view

    def release(self) -> None:
        pass


def test_the_emergence_dashboard_draws_the_sessions_snapshots(tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "RESULTS_DIR", tmp_path / "none")
    vit = Trainer(tiny(), synthetic(8)).model
    data = synthetic(8)
    x = (data.images[:8].float() / 255 - 0.5) / 0.25
    snaps = [
        take_snapshot(vit, x[:1], step=s, epoch=s / 10, measure_images=x, measure_labels=data.labels[:8])
        for s in (0, 5, 10)
    ]
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["train_run"] = FakeRun(snaps)
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 4  # distance, two filter mosaics, the dashboard
    assert "This session's run, 3 snapshots" in text(at)
    # a CNN run's snapshots carry no measures: said in words, no dashboard
    cnn = Trainer(tiny(arch="resnet"), data).model
    at.session_state["train_run"] = FakeRun([take_snapshot(cnn, x[:1], step=0, epoch=0.0)])
    at.run()
    assert "has no emergence measures" in text(at) and len(at.get("plotly_chart")) == 3


def test_the_train_form_offers_the_variants_and_counts_the_cnn_and_the_subset():
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/7_train.py")
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="train_preset").set_value("demo")
    at.run()
    at.selectbox(key="train_arch").set_value("resnet")
    at.selectbox(key="train_images").set_value(1000)
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"] == "0.14 M" and metrics["Tokens per image"] == "0"  # the demo ResNet: 144,542
    per_epoch = 1000 // at.session_state["train_batch"]
    assert int(metrics["Optimiser steps"].replace(",", "")) == round(at.session_state["train_epochs"] * per_epoch)
    assert at.selectbox(key="train_pos").disabled
