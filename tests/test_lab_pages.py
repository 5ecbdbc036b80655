"""The "Which map to trust" and "Side by side" pages through Streamlit's AppTest, with the bundled
model (the untrained fallback when it is missing): they render, a class change follows through,
and knocking out a head changes the displayed probability by exactly what `knockout_heads` gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.test_app import APP, MODEL_KEY, SAMPLE, ok, prediction_text, the_model
from vit_core import load_image, preprocess
from vit_core.analysis import knockout_heads

LAB = "pages/8_trust.py"
COMPARE = "pages/9_compare.py"
REFERENCE = SAMPLE.parents[2] / "lab_reference.json"
SLOW = 600  # the lab's first run computes every curve on a busy 2-core machine


def start(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=SLOW)
    at.session_state["model_choice"] = MODEL_KEY
    at.run()
    ok(at)
    at.run()
    at.switch_page(page).run()
    ok(at)
    return at


def metric(at: AppTest, label_start: str):
    found = [m for m in at.metric if m.label.startswith(label_start)]
    assert len(found) == 1, [m.label for m in at.metric]
    return found[0]


def cat_input():
    model = the_model().eval()
    return model, preprocess(load_image(SAMPLE.read_bytes()), model)


@pytest.fixture(scope="module")
def lab() -> AppTest:
    return start(LAB)


def test_lab_renders_every_section_for_the_predicted_class(lab):
    at = lab
    assert at.title[0].value == "Which map to trust"
    assert "image: CIFAR-10: cat" in prediction_text(at)
    shipped = REFERENCE.exists() and MODEL_KEY == "bundled"
    assert len(at.get("plotly_chart")) == (7 if shipped else 5)  # the knockout grid is a picker, its maps pictures
    model, x = cat_input()
    with torch.no_grad():
        p = model(x).double().softmax(-1)[0]
    c = int(p.argmax())
    assert at.selectbox(key="lab_class").value == c
    m = metric(at, f"probability of '{model.class_names[c]}'")
    assert m.value == f"{p[c] * 100:.2f}%"  # nothing knocked out: the model's own probability
    text = " ".join(e.value for e in at.markdown)
    assert f"removed '{model.class_names[c]}' fastest" in text
    assert "random rankings gave deletion areas" in text
    table = at.dataframe[0].value
    assert list(table["method"])[-1].startswith("random (mean of 10)") and len(table) == 6
    if shipped:
        ref = json.loads(REFERENCE.read_text())
        assert f"{len(ref['curves']['images'])} CIFAR-10 test images" in text
        assert f"over **{ref['importance']['images']:,} CIFAR-10 test images**" in " ".join(e.value for e in at.caption)


def test_lab_follows_a_class_change(lab):
    at = lab
    model, x = cat_input()
    with torch.no_grad():
        p = model(x).double().softmax(-1)[0]
    second = int(torch.argsort(p, descending=True)[1])
    at.selectbox(key="lab_class").set_value(second).run()
    ok(at)
    name = model.class_names[second]
    m = metric(at, f"probability of '{name}'")
    assert m.value == f"{p[second] * 100:.2f}%"
    text = " ".join(e.value for e in at.markdown)
    assert f"removed '{name}' fastest" in text and f"would answer '{name}'" in text
    at.selectbox(key="lab_class").set_value(int(p.argmax())).run()  # back, for the next test
    ok(at)


def test_knocking_out_heads_changes_the_probability_by_what_knockout_heads_computes(lab):
    at = lab
    model, x = cat_input()
    H = model.cfg.num_heads
    c = int(at.selectbox(key="lab_class").value)
    with torch.no_grad():
        p0 = float(model.trace(x).probs[0, c])
    for heads in ([(1, 1)], [(1, 1), (model.cfg.depth - 1, 0)]):
        for layer, head in heads:
            flat = layer * H + head
            if flat not in at.multiselect(key="lab_knocked").value:
                at.multiselect(key="lab_knocked").select(flat).run()
        ok(at)
        with torch.no_grad():
            p = float(knockout_heads(model, x, heads).double().softmax(-1)[0, c])
        m = metric(at, f"probability of '{model.class_names[c]}'")
        assert m.value == f"{p * 100:.2f}%"
        assert m.delta == f"{(p - p0) * 100:+.2f} points"
        assert p != pytest.approx(p0, abs=1e-6)  # the knockout did something
        (grid,) = [json.loads(el.proto.json) for el in at.get("bidi_component") if el.key == "lab_heads"]
        assert grid["crossed"] == sorted(a * H + b for a, b in heads)  # the grid crosses exactly those heads
    at.multiselect(key="lab_knocked").unselect(1 * H + 1).unselect((model.cfg.depth - 1) * H).run()
    ok(at)
    assert metric(at, f"probability of '{model.class_names[c]}'").value == f"{p0 * 100:.2f}%"


def test_lab_caps_the_knockout_set(lab):
    from ui.lab import MAX_KNOCKED

    assert lab.multiselect(key="lab_knocked").proto.max_selections == MAX_KNOCKED


def test_lens_depth_slider_reads_the_patch_tokens_at_that_depth(lab):
    at = lab
    at.slider(key="lab_lens_depth").set_value(0).run()
    ok(at)
    model, x = cat_input()
    from vit_core.analysis import patch_logit_lens

    lens = patch_logit_lens(model, model.trace(x))[0]
    c = int(at.selectbox(key="lab_class").value)
    votes = int((lens.argmax(-1) == c).sum())
    n = lens.shape[0]
    text = " ".join(e.value for e in at.markdown)
    assert f"At depth 0, **{votes} of {n}** patches would answer '{model.class_names[c]}'" in text


def shared_scales(at: AppTest) -> list[tuple[float, float]]:
    """(cmin, cmax) of each map's colour bar on the compare page, in order."""
    out = []
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        bars = [t["marker"] for t in spec["data"] if t.get("type") == "scatter" and "cmin" in t.get("marker", {})]
        out.append((bars[0]["cmin"], bars[0]["cmax"]))
    return out


@pytest.mark.parametrize("mode", ["models", "images", "classes"])
def test_side_by_side_shares_one_colour_scale_per_view(mode):
    at = start(COMPARE)
    assert at.title[0].value == "Side by side"
    at.radio(key="cmp_mode").set_value(mode).run()
    ok(at)
    assert not at.error, [e.value for e in at.error]
    scales = shared_scales(at)
    assert len(scales) == 6  # rollout, class map, attention: left and right
    for left, right in zip(scales[::2], scales[1::2]):
        assert left == right
    text = " ".join(e.value for e in at.markdown)
    if mode == "models":
        assert "Untrained CIFAR-sized ViT" in text
    if mode == "images":
        assert "CIFAR-10: cat" in text and "CIFAR-10: airplane" in text
    if mode == "classes":
        assert text.count("Class shown:") == 2
        # the two class maps really are the two classes' maps
        model, x = cat_input()
        from vit_core.analysis import class_attention_map

        a, b = (at.selectbox(key=k).value for k in ("cmp_class_a", "cmp_class_b"))
        maps = [class_attention_map(model, x, int(t))[0].detach().numpy() for t in (a, b)]
        lo, hi = min(m.min() for m in maps), max(m.max() for m in maps)
        assert np.allclose(scales[2], (lo, hi), rtol=1e-5)


def test_column_mean_of_finite_agrees_with_nanmean_and_stays_quiet():
    """The lab's mean rank correlation over images: the numbers of np.nanmean, without its
    "Mean of empty slice" warning for a column that has no finite value (a constant map)."""
    import warnings

    from ui.lab import column_mean_of_finite

    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 4))
    v[rng.random((7, 4)) < 0.3] = np.nan
    v[:, 2] = np.nan  # no finite value in this column
    v[0, 3] = np.inf  # not finite either: left out like a NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = column_mean_of_finite(v)
    w = np.where(np.isfinite(v), v, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmean(w, 0)
    assert got.shape == (4,)
    assert np.isnan(got[2])
    np.testing.assert_allclose(np.delete(got, 2), np.delete(want, 2), rtol=1e-12)
