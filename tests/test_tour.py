"""The teacher tour's defects (issue 15) through AppTest: each test failed on the code before the fix.

Hidden patches belong to one (model, image); no delta when nothing is hidden; "Hide the top
10%" follows the Attention page's rollout settings or the class map; picking a sample after an
upload goes back to the samples; a refused file is named in plain words at the top of the
page; "Where to next" lists Train; predictions of a small-class model carry their class list
and, for photos, what that means, and how unusual the image is for the model; the pretrained
download without a network is refused within seconds, in plain words.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from tests.test_app import BUNDLED, PAGES, jpeg_photo, ok, png, prediction_text, start

PREDICTION = "pages/6_prediction.py"


def metric_delta(at) -> str | None:
    m = [m for m in at.metric if m.label.startswith("probability of")]
    assert len(m) == 1
    return m[0].proto.delta or None


def hidden_caption(at) -> str:
    return next(c.value for c in at.caption if " patches hidden" in c.value)


def test_hidden_patches_belong_to_one_model_and_image():
    at = start()
    at.switch_page(PREDICTION).run()
    at.session_state["occluded"] = [0, 1, 2]  # what three clicks on the image set
    at.run()
    ok(at)
    assert hidden_caption(at).startswith("3 of") and metric_delta(at)
    at.selectbox(key="sample_image").set_value("CIFAR-10: dog").run()  # another image
    ok(at)
    assert hidden_caption(at).startswith("0 of") and metric_delta(at) is None
    at.session_state["occluded"] = [5]
    at.run()
    at.selectbox(key="model_key").set_value("untrained").run()  # another model
    ok(at)
    assert hidden_caption(at).startswith("0 of") and metric_delta(at) is None
    at.session_state["occluded"] = [7]
    at.run()
    at.file_uploader(key="image_upload").upload("noise.png", png(3), "image/png").run()  # an upload
    ok(at)
    assert hidden_caption(at).startswith("0 of") and metric_delta(at) is None


def test_no_delta_when_nothing_is_hidden():
    at = start()
    at.switch_page(PREDICTION).run()
    ok(at)
    assert hidden_caption(at).startswith("0 of") and metric_delta(at) is None


def test_hide_top_10_percent_uses_the_attention_pages_rollout_settings_or_the_class_map():
    from vit_core import analysis as A

    at = start()
    at.switch_page("pages/5_attention.py").run()
    at.radio(key="roll_fusion").set_value("max").run()
    at.slider(key="roll_discard").set_value(0.5).run()
    at.slider(key="roll_start").set_value(1).run()
    at.switch_page(PREDICTION).run()
    ok(at)
    button = at.button(key="occ_top")
    assert "max head fusion, discard ratio 0.50, start layer 1" in button.help
    button.click().run()
    ok(at)
    from tests.test_app import SAMPLE, the_model
    from vit_core import load_image, preprocess

    model = the_model()
    x = preprocess(load_image(SAMPLE.read_bytes()), model)
    t = model.trace(x)
    roll = A.rollout_cls_map(t.attentions, t.grid, t.num_prefix_tokens, "max", 0.5, 0)[0].numpy().reshape(-1)
    n = roll.size
    want = sorted(np.argsort(-roll, kind="stable")[: n // 10].tolist())
    assert sorted(at.session_state["occluded"]) == want
    at.radio(key="occ_rank").set_value("class").run()
    at.button(key="occ_top").click().run()
    ok(at)
    c = int(t.probs[0].argmax())
    tc = model.trace(x, target=c)
    cmap = A.class_attention_map_from_trace(tc, 0)[0].detach().numpy().reshape(-1)
    assert sorted(at.session_state["occluded"]) == sorted(np.argsort(-cmap, kind="stable")[: n // 10].tolist())


def test_picking_the_shown_sample_after_an_upload_goes_back_to_it():
    at = start()
    assert any(m.value == "Now showing: **CIFAR-10: cat**" for m in at.sidebar.markdown)
    at.file_uploader(key="image_upload").upload("holiday.png", png(4), "image/png").run()
    ok(at)
    assert "image: upload: holiday.png" in prediction_text(at)
    assert any(m.value == "Now showing: **upload: holiday.png**" for m in at.sidebar.markdown)
    assert at.selectbox(key="sample_image").value is None  # no sample is live: any choice is a change
    at.selectbox(key="sample_image").set_value("CIFAR-10: cat").run()
    ok(at)
    assert "image: CIFAR-10: cat" in prediction_text(at)
    uploaders = at.get("file_uploader")
    image_uploaders = [u for u in uploaders if "upload an image" in u.proto.label]
    assert len(image_uploaders) == 1 and image_uploaders[0].proto.id != "" and image_uploaders[0].key != "image_upload"


def test_a_file_that_is_not_an_image_is_named_in_plain_words_at_the_top():
    at = start()
    at.file_uploader(key="image_upload").upload("notes.png", b"These are my notes, not a picture.", "image/png").run()
    ok(at)
    assert not at.sidebar.error
    errors = [e.value for e in at.main.error]
    assert len(errors) == 1
    text = errors[0]
    assert text.startswith("notes.png was not used") and "Now showing: CIFAR-10: cat" in text
    for word in ("Pillow", "previous image", "Error", "load_image", "vit_core"):
        assert word not in text, text
    assert "image: CIFAR-10: cat" in prediction_text(at)
    assert len(at.get("plotly_chart")) == PAGES[0][2]


def test_where_to_next_lists_train():
    at = start()
    labels = [el.proto.label for el in at.get("page_link")]
    want = ["1 · Patches", "2 · Embeddings", "3 · Positions", "4 · Attention", "5 · Prediction", "Train"]
    assert sorted(labels[-6:]) == sorted(want)  # two rows of three columns


def test_photos_get_the_class_list_and_what_it_means():
    at = start()
    cifar = [c.value for c in at.caption if "classes this model knows" in c.value]
    assert len(cifar) == 1 and "airplane, automobile, bird, cat" in cifar[0] and "100%" not in cifar[0]
    at.file_uploader(key="image_upload").upload("flower.jpg", jpeg_photo(), "image/jpeg").run()
    ok(at)
    notes = [c.value for c in at.caption if "knows only these 10 classes" in c.value]
    assert len(notes) == 1
    assert "add up to 100%" in notes[0] and "a photo of anything else still gets one of them" in notes[0]
    assert "pretrained ImageNet model" in notes[0]


def test_how_unusual_the_image_is_for_the_bundled_model():
    if not BUNDLED.exists():
        return
    from ui.predictions import MSP_REFERENCE, msp_percentile

    assert MSP_REFERENCE.exists()
    at = start()
    at.switch_page(PREDICTION).run()
    ok(at)
    cat = [m.value for m in at.markdown if m.value.startswith("**How sure, compared with its own test images:**")]
    assert len(cat) == 1 and "higher than on 44% of the model's CIFAR-10 test images" in cat[0]  # cat: 74.0%
    at.selectbox(key="sample_image").set_value("Photo: astronaut").run()
    ok(at)
    astro = [m.value for m in at.markdown if m.value.startswith("**How sure")]
    assert "higher than on 2% of" in astro[0] and "unusual for this model" in astro[0]  # truck 28.6%
    q = np.linspace(0.1, 1.0, 101)
    assert msp_percentile(0.05, q) == 0 and msp_percentile(1.5, q) == 100
    assert abs(msp_percentile(0.55, q) - 50) < 1e-9
    assert (
        msp_percentile(1.0, np.r_[np.linspace(0.1, 0.99, 51), np.ones(50)]) == 75.5
    )  # ties: the middle of levels 51..100


def test_pretrained_download_without_a_network_is_refused_within_5_s(monkeypatch, tmp_path):
    """A name lookup that hangs (no network) must not hold the user for the hub client's retries."""
    from vit_core import pretrained as P

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(P.MODELS_DIR_ENV, str(tmp_path / "models"))
    for var in ("HTTPS_PROXY", "https_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)

    def hang(*args, **kwargs):
        time.sleep(30)
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", hang)
    t0 = time.monotonic()
    try:
        P.download_pretrained("deit-tiny", tmp_path / "hub")
    except P.PretrainedNotAvailableError as e:
        msg = str(e)
    else:  # pragma: no cover
        raise AssertionError("downloaded without a network")
    assert time.monotonic() - t0 < 5
    assert "no network: huggingface.co did not answer within 3 s" in msg
    assert str(P.manual_path("deit-tiny")) in msg and "HF_HUB_OFFLINE=1" in msg
    assert "download_pretrained" not in msg and "(" + repr("deit-tiny") not in msg


def test_models_live_under_the_data_cache_root(monkeypatch, tmp_path):
    from vit_core import fetch
    from vit_core import pretrained as P

    monkeypatch.delenv(P.MODELS_DIR_ENV, raising=False)
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    assert P.models_dir() == fetch.default_cache_dir() / "models" == tmp_path / "cache" / "models"
    monkeypatch.setenv(P.MODELS_DIR_ENV, str(tmp_path / "elsewhere"))
    assert P.models_dir() == tmp_path / "elsewhere"
