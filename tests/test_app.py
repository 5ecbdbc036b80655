"""Every page of the explorer through Streamlit's AppTest: sample, upload, camera, bad input.

The app runs with the bundled CIFAR-10 model when assets/vit_cifar10.safetensors exists and
with the untrained CIFAR-sized fallback otherwise. AppTest drives the real file uploader and
camera widgets (Streamlit 1.67 supports both); plotly click events cannot be sent from
AppTest, so clicks are driven through the widgets they update (the query selectbox, the
patch number inputs, the occlusion list), and the browser test clicks for real.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from vit_core import VisionTransformer, load_checkpoint, load_image, preprocess

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
BUNDLED = ROOT / "assets" / "vit_cifar10.safetensors"
MODEL_KEY = "bundled" if BUNDLED.exists() else "untrained"
SAMPLE = ROOT / "assets" / "samples" / "cifar10" / "cat.jpg"
TIMEOUT = 90

# (file, title, plotly charts on the page)
PAGES = [
    ("pages/1_overview.py", "How a Vision Transformer sees an image", 4),
    ("pages/2_patches.py", "Step 1: cut the image into patches", 6),
    ("pages/3_embeddings.py", "Step 2: turn every patch into a vector", 4),
    ("pages/4_positions.py", "Step 3: tell each token where it came from", 5),
    ("pages/5_attention.py", "Step 4: attention, who looks at whom", 5),  # + the clickable map, a picker
    ("pages/6_prediction.py", "Step 5: the answer", 4),
]


def the_model() -> VisionTransformer:
    """The model the app shows by default in these tests, built independently of the app's caches."""
    if BUNDLED.exists():
        return load_checkpoint(BUNDLED)
    from ui.models import untrained_cifar_model

    return untrained_cifar_model()


def expected_prediction(data: bytes) -> str:
    model = the_model()
    with torch.no_grad():
        p = model(preprocess(load_image(data), model)).softmax(-1)[0]
    c = int(p.argmax())
    return f"{model.class_names[c]} ({p[c] * 100:.1f}%)"


def png(seed: int = 0, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    a = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_photo() -> bytes:
    buf = io.BytesIO()
    Image.open(ROOT / "assets" / "samples" / "photos" / "chelsea_cat.jpg").convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def start() -> AppTest:
    """The app after its first two runs.

    AppTest runs app.py on the first run only; later runs of an `st.navigation` app execute
    just the page script (the pages then draw the sidebar themselves, see ui.session). Widget
    ids differ between the two kinds of run, so widgets are driven from the second run on.
    """
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_choice"] = MODEL_KEY
    at.run()
    ok(at)
    return at.run()


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def prediction_text(at: AppTest) -> str:
    lines = [e.value for e in (*at.info, *at.warning) if "Prediction:" in e.value]
    assert len(lines) == 1, lines
    return lines[0]


def charts(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def pickers(at: AppTest) -> dict[str, dict]:
    """The clickable pictures (ui.picker) of the page: their views, by the picker's key."""
    return {el.key: json.loads(el.proto.json) for el in at.get("bidi_component")}


def array(v) -> np.ndarray:
    """A plotly JSON array (plain list or base64 typed array) as numpy."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if isinstance(shape, str):  # "11, 23"
            shape = [int(x) for x in shape.split(",")]
        return a.reshape(shape) if shape else a
    return np.asarray(v)


@pytest.fixture(scope="module")
def app() -> AppTest:
    at = start()
    ok(at)
    return at


def test_navigation_lists_every_page(app):
    assert app.title[0].value == PAGES[0][1]
    sidebar_labels = [w.label for w in app.sidebar.selectbox]
    assert sidebar_labels == ["Model", "Pretrained catalogue", "Sample image"]
    assert app.selectbox(key="model_key").value == MODEL_KEY
    for path, _, _ in PAGES:
        assert (ROOT / path).exists()
    # the navigation lists the Train page when its file exists (it is written separately);
    # read after a first run, the one that executes app.py and its st.navigation
    first = AppTest.from_file(APP, default_timeout=TIMEOUT)
    first.session_state["model_choice"] = MODEL_KEY
    first.run()
    ok(first)
    nav = [p["page_name"] for p in first._registered_pages.values() if "page_name" in p]
    assert ("Train" in nav) == (ROOT / "pages" / "7_train.py").exists(), nav
    assert nav == [
        "Overview",
        "Lessons",
        "Patches",
        "Embeddings",
        "Position embeddings",
        "Attention",
        "Prediction",
        "Train",
        "ViT vs CNN",
        "Which map to trust",
        "Side by side",
    ]


@pytest.mark.skipif(not BUNDLED.exists(), reason="no bundled model")
def test_sidebar_gives_the_bundled_models_measured_accuracy(app):
    import json

    acc = json.loads((ROOT / "assets" / "vit_cifar10.metrics.json").read_text())["test_acc"]
    caption = " ".join(c.value for c in app.sidebar.caption)
    assert f"{acc:.1%} right on the CIFAR-10 test set" in caption, caption


def test_accuracy_record_that_cannot_be_read_shows_nothing(tmp_path):
    from ui.models import _read_accuracy

    cases = {"good": ('{"test_acc": 0.5}', 0.5), "junk": ("not json", None), "list": ("[1]", None)}
    cases |= {"range": ('{"test_acc": 7}', None), "text": ('{"test_acc": "high"}', None)}
    for name, (text, want) in cases.items():
        f = tmp_path / f"{name}.json"
        f.write_text(text)
        assert _read_accuracy(str(f), f.stat().st_mtime) == want, name
    assert _read_accuracy(str(tmp_path / "missing.json"), 0.0) is None


@pytest.mark.parametrize("page,title,n_charts", PAGES, ids=[p[0].split("/")[1][:-3] for p in PAGES])
def test_page_with_sample_upload_and_camera(page, title, n_charts):
    at = start()
    at.switch_page(page).run()
    ok(at)
    assert at.title[0].value == title
    assert len(at.get("plotly_chart")) == n_charts
    want = expected_prediction(SAMPLE.read_bytes())
    assert f"**Prediction:** {want}" in prediction_text(at) and "image: CIFAR-10: cat" in prediction_text(at)

    # an uploaded image (the real uploader widget)
    data = png(seed=1)
    at.file_uploader(key="image_upload").upload("noise.png", data, "image/png").run()
    ok(at)
    assert at.title[0].value == title and len(at.get("plotly_chart")) == n_charts
    text = prediction_text(at)
    assert "image: upload: noise.png" in text and expected_prediction(data) in text

    # the camera (the real camera widget, behind its toggle)
    at.toggle(key="camera_on").set_value(True).run()
    photo = jpeg_photo()
    at.camera_input(key="camera_photo").upload("shot.jpg", photo).run()
    ok(at)
    text = prediction_text(at)
    assert "image: camera photo" in text and expected_prediction(photo) in text
    assert len(at.get("plotly_chart")) == n_charts


def test_the_latest_image_choice_wins():
    at = start()
    at.file_uploader(key="image_upload").upload("noise.png", png(2), "image/png").run()
    assert "upload: noise.png" in prediction_text(at)
    at.selectbox(key="sample_image").set_value("Photo: coffee").run()
    ok(at)
    assert "image: Photo: coffee" in prediction_text(at)
    photo = jpeg_photo()
    at.toggle(key="camera_on").set_value(True).run()
    at.camera_input(key="camera_photo").upload("shot.jpg", photo).run()
    assert "image: camera photo" in prediction_text(at)
    at.toggle(key="camera_on").set_value(False).run()  # turning the camera off drops its photo
    ok(at)
    assert "image: Photo: coffee" in prediction_text(at)


def test_bad_upload_keeps_the_previous_image():
    at = start()
    at.file_uploader(key="image_upload").upload("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png").run()
    ok(at)
    errors = [e.value for e in at.main.error]  # at the top of the page, where the user is looking
    assert errors and "broken.png" in errors[0] and "Now showing: CIFAR-10: cat" in errors[0]
    assert "image: CIFAR-10: cat" in prediction_text(at)
    assert len(at.get("plotly_chart")) == PAGES[0][2]


def test_bad_checkpoint_path_keeps_the_previous_model(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    at = start()
    label_before = at.selectbox(key="model_key").value
    at.text_input(key="model_path").set_value(str(bad)).run()
    ok(at)
    errors = [e.value for e in at.sidebar.error]
    assert errors and "previous model is still in use" in errors[0]
    assert at.selectbox(key="model_key").value == label_before
    at.text_input(key="model_path").set_value(str(tmp_path / "missing.safetensors")).run()
    ok(at)
    assert any("No checkpoint" in e.value for e in at.sidebar.error)
    assert len(at.get("plotly_chart")) == PAGES[0][2]


def test_good_checkpoint_path_is_added_and_selected(tmp_path, make_vit):
    from vit_core import save_checkpoint

    model = make_vit(
        3, ["ant", "bee", "cow"], num_classes=3, embed_dim=24, depth=2, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0
    )
    path = save_checkpoint(model, tmp_path / "tiny.safetensors")
    at = start()
    at.text_input(key="model_path").set_value(str(path)).run()
    ok(at)
    assert at.selectbox(key="model_key").value == f"file:{path}"
    assert "2 layers · 2 heads" in " ".join(c.value for c in at.sidebar.caption)
    assert any(name in prediction_text(at) for name in ("ant", "bee", "cow"))
    at.switch_page("pages/5_attention.py").run()
    ok(at)
    assert at.slider(key="attn_layer").max == 2 and len(at.get("plotly_chart")) == PAGES[4][2]


def test_attention_query_layer_head_and_rollout():
    at = start()
    at.switch_page("pages/5_attention.py").run()
    ok(at)
    n_tokens = len(at.selectbox(key="attn_query").options)
    gh = gw = int(round((n_tokens - 1) ** 0.5))
    assert "**Query: CLS**" in [m.value for m in at.markdown][3] or any(
        m.value.startswith("**Query: CLS**") for m in at.markdown
    )
    at.selectbox(key="attn_query").set_value(1 + 5).run()  # the same state a click on patch 5 sets
    ok(at)
    assert any(m.value.startswith("**Query: patch 5**") for m in at.markdown)
    overlay = pickers(at)["attn_image"]
    assert overlay["outlined"] == [5] and overlay["grid"] == [gh, gw]  # the query patch is outlined
    # the overlay's values are the attention row of the query (mean of heads, last layer)
    values = np.asarray(overlay["values"])
    assert values.shape == (gh * gw,) and np.isclose(values.sum(), 1.0, atol=0.2)
    at.slider(key="attn_layer").set_value(1).run()
    at.selectbox(key="attn_head").set_value(1).run()
    ok(at)
    assert any("layer 1 · head 1" in m.value for m in at.markdown)
    at.slider(key="roll_discard").set_value(0.9).run()
    at.radio(key="roll_fusion").set_value("max").run()
    at.slider(key="roll_start").set_value(2).run()
    ok(at)
    assert len(at.get("plotly_chart")) == PAGES[4][2]


def test_occlusion_changes_the_prediction_inputs():
    at = start()
    at.switch_page("pages/6_prediction.py").run()
    ok(at)
    assert any("0 of" in c.value for c in at.caption)
    at.session_state["occluded"] = [0, 1, 2]  # what three clicks on the image set
    at.run()
    ok(at)
    assert any(c.value.startswith("3 of") for c in at.caption)
    at.radio(key="occ_mode").set_value("drop").run()
    ok(at)
    at.button(key="occ_top").click().run()
    ok(at)
    assert at.session_state["occluded"] and not any(c.value.startswith("3 of") for c in at.caption)
    at.button(key="occ_clear").click().run()
    assert at.session_state["occluded"] == []


def test_register_session_model_selects_it():
    script = """
import streamlit as st
import torch
from ui.models import model_picker, register_session_model
from vit_core import ViTConfig, VisionTransformer

if st.button("register", key="reg"):
    torch.manual_seed(1)
    cfg = ViTConfig(img_size=32, patch_size=8, num_classes=2, embed_dim=16, depth=1, num_heads=2, crop_pct=1.0)
    register_session_model("my run", VisionTransformer(cfg, ["yes", "no"]))
    st.rerun()
loaded = model_picker()
st.write(f"using {loaded.label} / {loaded.model_id[:8]}")
"""
    at = AppTest.from_string(script, default_timeout=TIMEOUT)
    at.session_state["model_choice"] = "untrained"
    at.run()
    ok(at)
    at.button(key="reg").click().run()
    ok(at)
    assert at.selectbox(key="model_key").value == "session:my run"
    assert "Trained this session: my run" in at.selectbox(key="model_key").options
    assert at.markdown[-1].value.startswith("using Trained this session: my run / session:")


UNUSUAL = {
    # a backbone without a classifier (like DINO): no classes, no prediction
    "headless": {"num_classes": 0},
    # no class token, average pooling: zero prefix tokens
    "avgpool": {"class_token": False, "global_pool": "avg", "num_classes": 3},
    # a class token and four registers, on a non-square 4x6 grid
    "registers-nonsquare": {"reg_tokens": 4, "img_size": (32, 48), "num_classes": 3},
}


@pytest.mark.parametrize("kind", list(UNUSUAL))
def test_every_page_with_unusual_models(kind, tmp_path, make_vit):
    from vit_core import save_checkpoint

    opts = {"embed_dim": 24, "depth": 2, "crop_pct": 1.0, **UNUSUAL[kind]}
    n_cls = opts["num_classes"]
    model = make_vit(4, [f"class {i}" for i in range(n_cls)] if n_cls else None, **opts)
    path = save_checkpoint(model, tmp_path / f"{kind}.safetensors")
    at = start()
    at.text_input(key="model_path").set_value(str(path)).run()
    ok(at)
    assert at.selectbox(key="model_key").value == f"file:{path}"
    for page, title, n_charts in PAGES:
        at.switch_page(page).run()
        ok(at)
        assert at.title[0].value == title
        text = prediction_text(at)
        if n_cls:
            assert "class " in text.split("·")[0]
        else:
            assert "no classifier head" in text
        charts_here = len(at.get("plotly_chart"))
        if n_cls:
            assert charts_here == n_charts, page
        else:  # the prediction views are left out, with a short note
            assert charts_here < n_charts or page in ("pages/2_patches.py", "pages/3_embeddings.py"), page


def test_checkpoint_upload_good_and_bad(tmp_path, make_vit):
    from vit_core import save_checkpoint

    at = start()
    at.file_uploader(key="model_upload").upload(
        "junk.safetensors", b"not a checkpoint at all", "application/octet-stream"
    ).run()
    ok(at)
    assert any("previous model is still in use" in e.value for e in at.sidebar.error)
    assert at.selectbox(key="model_key").value == MODEL_KEY
    model = make_vit(5, ["left", "right"], depth=3, crop_pct=1.0)
    path = save_checkpoint(model, tmp_path / "mine.safetensors")
    at.file_uploader(key="model_upload").upload("mine.safetensors", path.read_bytes(), "application/octet-stream").run()
    ok(at)
    assert at.selectbox(key="model_key").value.startswith("file:") and "mine" in at.selectbox(key="model_key").value
    assert "Uploaded: mine.safetensors" in at.selectbox(key="model_key").options
    assert "3 layers" in " ".join(c.value for c in at.sidebar.caption)
    assert any(name in prediction_text(at) for name in ("left", "right"))


def test_pretrained_without_network_keeps_the_app_working(monkeypatch, tmp_path):
    """No network and nothing downloaded: pressing the button shows what to do; nothing changes."""
    from vit_core import pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(pretrained.MODELS_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(pretrained, "local_path", lambda name, cache_dir=None: None)  # not in any cache
    at = start()
    at.selectbox(key="pretrained_name").set_value("deit-tiny").run()
    assert at.button(key="pretrained_go").label == "Download and use"
    at.button(key="pretrained_go").click().run()
    ok(at)
    errors = [e.value for e in at.error]
    assert errors and "Could not download deit-tiny" in errors[0] and "not on this computer" in errors[0]
    assert at.selectbox(key="model_key").value == MODEL_KEY
    assert len(at.get("plotly_chart")) == PAGES[0][2]


def test_attention_extras_dino_heads_and_mean_distance_over_samples():
    at = start()
    at.switch_page("pages/5_attention.py").run()
    ok(at)

    def chart_of(key: str) -> dict:
        (spec,) = [json.loads(el.proto.spec) for el in at.get("plotly_chart") if el.key == key]
        return spec

    def kept_cells() -> int:
        z = array(chart_of("dino_heads")["data"][0]["z"]).astype(float)
        return int(np.sum(np.nan_to_num(z) > 0))

    at.slider(key="dino_mass").set_value(1.0).run()
    everything = kept_cells()
    at.slider(key="dino_mass").set_value(0.2).run()
    ok(at)
    assert 0 < kept_cells() < everything  # a smaller share keeps fewer patches
    one_image = array(chart_of("attn_distance")["data"][0]["y"])
    at.toggle(key="mad_samples").set_value(True).run()
    ok(at)
    samples = array(chart_of("attn_distance")["data"][0]["y"])
    assert samples.shape == one_image.shape and not np.allclose(samples, one_image)
    assert (samples > 0).all() and (samples < 32 * 2**0.5).all()  # pixels, within the 32x32 image


def test_patch_size_what_if():
    at = start()
    at.switch_page("pages/2_patches.py").run()
    ok(at)
    slider = at.select_slider(key="patch_size_whatif")
    P = int(slider.value)
    assert 32 % P == 0
    metrics = {m.label: m.value for m in at.metric}
    tokens = 1 + (32 // P) ** 2
    assert metrics["tokens N (with prefix)"] == f"{tokens:,}"
    slider.set_value(P // 2).run()
    ok(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["tokens N (with prefix)"] == f"{1 + (64 // P) ** 2:,}"
    assert metrics["attention weights per head and layer (N²)"] == f"{(1 + (64 // P) ** 2) ** 2:,}"


def test_a_model_that_cannot_run_shows_a_message(tmp_path, make_vit):
    """A checkpoint whose forward pass fails (here: 4 input channels) stops the page with a message."""
    from vit_core import save_checkpoint

    model = make_vit(0, ["a", "b"], in_chans=4, crop_pct=1.0, mean=(0.5,) * 4, std=(0.5,) * 4)
    path = save_checkpoint(model, tmp_path / "four_channels.safetensors")
    at = start()
    at.text_input(key="model_path").set_value(str(path)).run()
    ok(at)
    if at.selectbox(key="model_key").value != f"file:{path}":
        pytest.skip("this checkpoint is refused at load time, which is also fine")
    assert any("could not run on this image" in e.value or "cannot run on this image" in e.value for e in at.error)
    at.selectbox(key="sample_image").set_value("Photo: coffee").run()
    ok(at)
