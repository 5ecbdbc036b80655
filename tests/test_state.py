"""Page settings kept for the session, and the address that shares a view (issue 15), through AppTest.

A teacher goes back and forth between pages: each page's choices (layer, head, query, rollout
settings, class, ...) must be there again when they come back, dropping only what no longer
fits a new model. A link (`?model=...&image=...&layer=...`) opens the same view; a link
naming what this server does not have says so and falls back.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.test_app import APP, MODEL_KEY, PAGES, TIMEOUT, ok, prediction_text, start

ATTENTION, PREDICTION, POSITIONS = "pages/5_attention.py", "pages/6_prediction.py", "pages/4_positions.py"


def test_attention_settings_survive_a_visit_to_another_page():
    at = start()
    at.switch_page(ATTENTION).run()
    ok(at)
    at.slider(key="attn_layer").set_value(2).run()
    at.selectbox(key="attn_head").set_value(1).run()
    at.selectbox(key="attn_query").set_value(7).run()
    at.radio(key="roll_fusion").set_value("max").run()
    at.slider(key="roll_discard").set_value(0.5).run()
    at.slider(key="roll_start").set_value(3).run()
    ok(at)
    at.switch_page(PREDICTION).run()
    ok(at)
    at.switch_page(POSITIONS).run()
    ok(at)
    at.switch_page(ATTENTION).run()
    ok(at)
    assert at.slider(key="attn_layer").value == 2
    assert at.selectbox(key="attn_head").value == 1
    assert at.selectbox(key="attn_query").value == 7
    assert at.radio(key="roll_fusion").value == "max"
    assert at.slider(key="roll_discard").value == 0.5
    assert at.slider(key="roll_start").value == 3
    assert any(m.value.startswith("**Query: patch 6** · layer 2 · head 1") for m in at.markdown)


def test_prediction_and_position_settings_survive_too():
    at = start()
    at.switch_page(PREDICTION).run()
    at.slider(key="pred_topk").set_value(3).run()
    at.radio(key="occ_mode").set_value("drop").run()
    at.switch_page(POSITIONS).run()
    at.number_input(key="pos_patch").set_value(9).run()
    at.switch_page(ATTENTION).run()
    at.switch_page(PREDICTION).run()
    ok(at)
    assert at.slider(key="pred_topk").value == 3 and at.radio(key="occ_mode").value == "drop"
    at.switch_page(POSITIONS).run()
    ok(at)
    assert at.number_input(key="pos_patch").value == 9


def test_a_setting_that_no_longer_fits_a_new_model_falls_back(tmp_path, make_vit):
    from vit_core import save_checkpoint

    model = make_vit(3, ["ant", "bee", "cow"], num_classes=3, embed_dim=24, depth=2, crop_pct=1.0)
    path = save_checkpoint(model, tmp_path / "two_layers.safetensors")
    at = start()
    at.switch_page(ATTENTION).run()
    at.slider(key="attn_layer").set_value(5).run()
    at.selectbox(key="attn_head").set_value(1).run()
    at.text_input(key="model_path").set_value(str(path)).run()
    ok(at)
    assert at.slider(key="attn_layer").max == 2
    assert at.slider(key="attn_layer").value == 2  # layer 5 does not exist: the default, the last layer
    assert at.selectbox(key="attn_head").value == 1  # head 1 still exists: kept
    assert len(at.get("plotly_chart")) == PAGES[4][2]


# ---- the address ----


def open_link(path: str = "", **params: str) -> AppTest:
    """The app's first run in a new session opened at `path?params`."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_choice"] = MODEL_KEY
    at.query_params.update(params)
    if path:
        at.switch_page(path)
    return at.run()


def test_the_view_is_written_to_the_address():
    at = start()
    at.switch_page(ATTENTION).run()
    at.slider(key="attn_layer").set_value(3).run()
    at.selectbox(key="attn_head").set_value(2).run()
    at.selectbox(key="attn_query").set_value(10).run()
    at.selectbox(key="sample_image").set_value("CIFAR-10: dog").run()
    ok(at)
    qp = dict(at.query_params)
    assert qp["model"] == MODEL_KEY and qp["image"] == "cifar-10-dog"
    assert (qp["layer"], qp["head"], qp["query"]) == ("3", "2", "10")


def test_a_link_opens_the_same_view():
    at = open_link(ATTENTION, model=MODEL_KEY, image="photo-coffee", layer="2", head="3", query="12")
    ok(at)
    assert "image: Photo: coffee" in prediction_text(at)
    assert at.slider(key="attn_layer").value == 2
    assert at.selectbox(key="attn_head").value == 3
    assert at.selectbox(key="attn_query").value == 12
    assert not at.warning or all("link" not in w.value for w in at.warning)


@pytest.mark.parametrize(
    "params, says",
    [
        ({"model": "session:my run"}, "model that is not available here"),
        ({"model": "pretrained:vit-b16"}, "has not been downloaded on this server"),
        ({"model": "file:/etc/passwd"}, "model that is not available here"),
        ({"image": "upload"}, "made with an uploaded image"),
        ({"image": "cifar-10-unicorn"}, "sample image “cifar-10-unicorn” that is not here"),
        ({"layer": "40"}, "asks for layer 40"),
    ],
    ids=["session-model", "not-downloaded", "file-path", "upload", "unknown-sample", "layer"],
)
def test_a_link_to_something_unavailable_falls_back_with_a_message(params, says, monkeypatch):
    from vit_core import pretrained

    monkeypatch.setattr(pretrained, "local_path", lambda name, cache_dir=None: None)  # nothing downloaded
    at = open_link(ATTENTION if "layer" in params else "", **params)
    ok(at)
    warnings = [w.value for w in at.main.warning]
    assert any(says in w for w in warnings), warnings
    assert f"model: {'Bundled' if MODEL_KEY == 'bundled' else 'Untrained'}" in prediction_text(at)
    assert "image: CIFAR-10: cat" in prediction_text(at)
    assert len(at.get("plotly_chart")) == (PAGES[4][2] if "layer" in params else PAGES[0][2])
