"""The page-to-compute boundary: one object crosses it, one decode and one preparation per run.

Pages hand `ui.compute` the `Current` that the sidebar built for this run; the caches key it
by the model's id and the image's hash, never by its tensors. An uploaded image is decoded
once (the uploader's check and the forward pass share it) and prepared once per run.
"""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
MODEL_KEY = "bundled" if (ROOT / "assets" / "vit_cifar10.safetensors").exists() else "untrained"


def noise_png(seed: int, size: tuple[int, int] = (41, 37)) -> bytes:
    """A PNG no other test uploads (an odd size and its own seed), so no cache knows it yet."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    PIL.Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_an_upload_is_decoded_once_and_prepared_once_per_run(monkeypatch):
    from ui import compute

    at = AppTest.from_file(APP, default_timeout=90)
    at.session_state["model_choice"] = MODEL_KEY
    at.run()
    at.run()  # from here on AppTest runs the page script alone (see tests/test_app.py's start)
    assert not at.exception

    data = noise_png(seed=14_014)
    decodes, prepares = [], []
    open_image, prepare = PIL.Image.open, compute.prepare

    def counting_open(fp, *args, **kwargs):
        if isinstance(fp, io.BytesIO) and fp.getvalue() == data:
            decodes.append(1)
        return open_image(fp, *args, **kwargs)

    def counting_prepare(*args, **kwargs):
        prepares.append(1)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", counting_open)
    monkeypatch.setattr(compute, "prepare", counting_prepare)

    at.file_uploader(key="image_upload").upload("noise.png", data, "image/png").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("image: upload: noise.png" in e.value for e in (*at.info, *at.warning))
    assert (len(decodes), len(prepares)) == (1, 1)  # the uploader's check and the forward pass share one decode

    at.run()  # a plain rerun (a slider moved): the forward pass is cached, nothing is decoded again
    assert not at.exception
    assert (len(decodes), len(prepares)) == (1, 2)


def test_pages_pass_the_current_selection_never_its_ids():
    """No page spells out a cache key: the ids travel inside `cur`."""
    for page in sorted((ROOT / "pages").glob("[1-6]_*.py")):
        text = page.read_text()
        assert not re.search(r"\bcur\.(prep|model_id|image_key|model)\s*,", text), page.name
        for call in re.findall(r"compute\.\w+\(([^)]*)\)", text):
            if call:  # compute.sample_files() takes nothing
                assert call.split(",")[0].strip() == "cur", (page.name, call)


def test_the_caches_key_a_current_by_its_ids(monkeypatch):
    """Two `Current`s with the same model id and image hash share every cached result; another
    image shares only the per-model ones; the model's weights and the tensors are never hashed."""
    import dataclasses
    import uuid

    from ui import compute
    from ui.images import image_choice
    from ui.models import LoadedModel
    from ui.selection import Current
    from vit_core import VisionTransformer, ViTConfig

    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=2)
    loaded = LoadedModel(VisionTransformer(cfg).eval(), f"test:{uuid.uuid4().hex}", "test", "tiny")
    a, b = (image_choice(name, noise_png(seed), "upload") for name, seed in (("a", 1), ("b", 2)))

    calls: dict[str, int] = {}

    def counted(module, name):
        f = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return f(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(compute, "preprocess_steps")
    counted(compute.A, "rollout_cls_map")
    counted(compute.A, "embedding_filters")

    cur_a = Current(loaded, a, compute.prepare(loaded, a))
    # the same ids in new objects: a rerun's Current, a LoadedModel rebuilt by the picker
    again = Current(dataclasses.replace(loaded), image_choice("a again", a.data, "sample"), compute.prepare(loaded, a))
    cur_b = Current(loaded, b, compute.prepare(loaded, b))
    assert calls["preprocess_steps"] == 2  # one preparation per image
    assert again.cache_key == cur_a.cache_key != cur_b.cache_key

    first = compute.rollout(cur_a, "mean", 0.0, 0)
    np.testing.assert_array_equal(compute.rollout(again, "mean", 0.0, 0), first)
    assert calls["rollout_cls_map"] == 1
    compute.rollout(cur_a, "max", 0.0, 0)  # another parameter: computed
    compute.rollout(cur_b, "mean", 0.0, 0)  # another image: computed
    assert calls["rollout_cls_map"] == 3

    compute.filters(cur_a)
    compute.filters(cur_b)  # the filters are the model's alone: every image shares them
    assert calls["embedding_filters"] == 1


@pytest.mark.parametrize("pos", ["learned", "sincos", "none"])
def test_stage_parameter_counts_add_up_for_every_kind_of_position_embedding(pos):
    """Fixed sine-cosine or absent positions are buffers: the Overview must not count them as parameters."""
    from ui import compute
    from ui.images import image_choice
    from ui.models import LoadedModel
    from ui.selection import Current
    from vit_core import VisionTransformer, ViTConfig

    cfg = ViTConfig(
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_classes=3,
        pos_embed_type=pos,
        no_embed_class=pos == "sincos",
    )
    model = VisionTransformer(cfg).eval()
    loaded = LoadedModel(model, f"test:{uuid.uuid4().hex}", "test", "tiny")
    img = image_choice("a", noise_png(3), "upload")
    counts = compute.stage_params(Current(loaded, img, compute.prepare(loaded, img)))
    assert counts["patch_embed"] + counts["tokens"] + counts["blocks"] + counts["head"] == model.num_params()
