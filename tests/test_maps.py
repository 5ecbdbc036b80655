"""Maps a class can read: patch maps over the original photo, several maps on one colour scale,
and token PCA colours that keep their signs from one depth to the next."""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

import vit_plots as vp
from vit_core import ViTConfig, preprocess_steps
from vit_core import analysis as A
from vit_plots._base import colorscale_lut


def decode(uri: str) -> np.ndarray:
    head, data = uri.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def valid(fig: go.Figure) -> go.Figure:
    go.Figure(fig.to_dict())  # plotly's full validation
    return fig


def photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A non-square 'photo' whose content varies everywhere (a smooth gradient plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 7.0) * np.cos(y / 5.0)], axis=-1)
    a = a + rng.normal(0, 0.02, a.shape)
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "size, crop_mode, crop_pct",
    [((200, 100), "center", 1.0), ((90, 160), "center", 0.875), ((200, 100), "squash", 0.9)],
)
def test_the_patch_grid_lands_on_the_pixels_the_model_saw(size, crop_mode, crop_pct):
    """Each patch box on the original, cut out and resized to P x P, is that patch of the model input."""
    w, h = size
    cfg = ViTConfig(img_size=(32, 32), patch_size=8, crop_pct=crop_pct, crop_mode=crop_mode, interpolation="bilinear")
    orig = photo(w, h)
    steps = preprocess_steps(Image.fromarray(orig), cfg)
    boxes = vp.patch_boxes_on((4, 4), steps.crop_box)
    resized = np.asarray(steps.resized, dtype=np.float64)
    for p in (0, 5, 15):
        x0, y0, x1, y1 = boxes[p]
        cut = Image.fromarray(orig).resize((8, 8), Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
        r, c = divmod(p, 4)
        want = resized[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
        assert np.abs(np.asarray(cut, dtype=np.float64) - want).mean() < 6.0, p


def test_a_hot_patch_is_drawn_on_its_region_of_a_non_square_photo():
    """200x100 photo, centre crop 100x100 (crop_pct 1): patch (1, 2) of a 4x4 grid covers
    x in [100, 125), y in [25, 50) of the photo; outside the crop the photo is dimmed."""
    cfg = ViTConfig(img_size=(32, 32), patch_size=8, crop_pct=1.0)
    orig = np.full((100, 200, 3), 200, np.uint8)
    box = preprocess_steps(Image.fromarray(orig), cfg).crop_box
    assert box == pytest.approx((50.0, 0.0, 150.0, 100.0))
    heat = np.zeros((4, 4))
    heat[1, 2] = 1.0
    out = vp.heat_on_image(orig, heat, box, alpha=1.0, colorscale="Greys", smooth=False, dim=0.5)
    assert out.shape == (100, 200, 3)
    lut = colorscale_lut("Greys")
    hot, cold = lut[-1], lut[0]
    assert (out[25:50, 100:125] == hot).all()
    mask = np.zeros((100, 200), bool)
    mask[25:50, 100:125] = True
    inside = np.zeros((100, 200), bool)
    inside[:, 50:150] = True
    assert (out[inside & ~mask] == cold).all()
    assert (out[~inside] == 100).all()  # dimmed by half, never coloured


def test_map_figure_on_the_photo_puts_clicks_and_the_query_on_the_mapped_patches():
    orig = photo(300, 150)
    box = (75.0, 0.0, 225.0, 150.0)
    heat = np.arange(16, dtype=float).reshape(4, 4)
    fig = valid(vp.map_figure(orig, heat, (4, 4), box, selected=6, colorbar_title="attention", alpha=0.5))
    img = fig.data[0]
    pixels = decode(img.source)
    assert pixels.shape[:2] == (150, 300)  # drawn at the photo's own resolution
    assert img.dx == pytest.approx(1.0) and img.dy == pytest.approx(1.0)
    targets = fig.data[1]
    # patch 6 = row 1, col 2: centre of x [150, 187.5], y [37.5, 75]
    assert targets.x[6] == pytest.approx(168.75) and targets.y[6] == pytest.approx(56.25)
    assert targets.customdata[6][0] == 6 and targets.customdata[6][3] == 6.0
    assert (targets.marker.cmin, targets.marker.cmax) == (0.0, 15.0)
    rects = [(s.x0, s.y0, s.x1, s.y1) for s in fig.layout.shapes]
    assert (75.0, 0.0, 225.0, 150.0) in rects  # the crop, dashed
    assert (150.0, 37.5, 187.5, 75.0) in rects  # the query patch
    assert fig.layout.width > fig.layout.height  # a wide photo makes a wide figure


def test_a_large_photo_goes_out_as_jpeg_and_stays_light():
    orig = photo(1024, 768)
    fig = vp.map_figure(orig, np.random.default_rng(0).random((4, 4)), (4, 4), (128, 0, 896, 768))
    src = fig.data[0].source
    assert src.startswith("data:image/jpeg")
    assert len(src) < 400_000  # a PNG of this photo is over 2 MB


def test_two_maps_share_one_colour_scale():
    """The same value gets the same colour in both panels; a weak map looks weak."""
    img = np.full((32, 32, 3), 0.5)
    strong = np.zeros((4, 4))
    strong[0, 0] = 2.0
    weak = np.zeros((4, 4))
    weak[0, 0] = 1.0
    fig = valid(vp.compare_maps_figure(img, [strong, weak], ["cat", "dog"], (4, 4), alpha=1.0, smooth=False))
    images = [t for t in fig.data if t.type == "image"]
    markers = [t for t in fig.data if t.type == "scatter"]
    assert len(images) == 2
    assert fig.layout.meta["vmin"] == 0.0 and fig.layout.meta["vmax"] == 2.0
    bars = [m for m in markers if m.marker.showscale]
    assert len(bars) == 1 and (bars[0].marker.cmin, bars[0].marker.cmax) == (0.0, 2.0)  # one colour bar
    a, b = (decode(t.source) for t in images)
    s = a.shape[0] // 32  # display upscale
    corner = (slice(0, 8 * s), slice(0, 8 * s))
    lut = colorscale_lut("Inferno")
    assert (a[corner] == lut[-1]).all()
    assert (b[corner] == lut[len(lut) // 2]).all() or np.abs(b[corner].astype(int) - lut[127]).max() <= 1
    assert (a[8 * s :, 8 * s :] == b[8 * s :, 8 * s :]).all()  # the zeros: one colour in both
    assert [t.xaxis for t in images] == ["x", "x2"]


def test_each_map_alone_would_hide_the_difference():
    """The reason for the shared scale: drawn on their own scales the two peaks look the same."""
    img = np.full((32, 32, 3), 0.5)
    strong, weak = np.zeros((4, 4)), np.zeros((4, 4))
    strong[0, 0], weak[0, 0] = 2.0, 1.0
    own = [vp.heat_on_image(img, m, alpha=1.0, smooth=False) for m in (strong, weak)]
    assert (own[0] == own[1]).all()
    lo, hi = vp.shared_range([strong, weak])
    shared = [vp.heat_on_image(img, m, alpha=1.0, smooth=False, vmin=lo, vmax=hi) for m in (strong, weak)]
    assert not (shared[0] == shared[1]).all()


def test_heads_on_the_photo_one_tile_per_head():
    orig = photo(400, 200)
    maps = np.random.default_rng(1).random((6, 4, 4))
    fig = valid(vp.heads_on_image_figure(orig, maps, (100, 0, 300, 200), tile_px=120, cols=3))
    canvas = decode(fig.data[0].source)
    assert canvas.shape[-1] == 4
    assert [a.text for a in fig.layout.annotations] == [f"head {i}" for i in range(6)]
    assert canvas.shape[1] < 3 * 130  # tiles shrunk to ~120 px: the figure stays light


def test_smooth_and_raw_grid_differ_only_in_upsampling():
    img = np.full((32, 32, 3), 0.5)
    heat = np.random.default_rng(2).random((4, 4))
    raw = vp.heat_on_image(img, heat, alpha=1.0, smooth=False)
    smooth = vp.heat_on_image(img, heat, alpha=1.0, smooth=True)
    s = raw.shape[0] // 4
    block = raw[:s, :s].reshape(-1, 3)
    assert (block == block[0]).all()  # raw: one colour per patch
    assert not (smooth == raw).all()


# ---- token PCA signs from one depth to the next ----


def test_token_pca_signs_follow_the_previous_depth():
    """Depth 1 is depth 0 with a tiny perturbation: its components must keep depth 0's signs,
    although PCA alone is free to flip them (here the per-depth sign rule does flip one)."""
    g = torch.Generator().manual_seed(0)
    n, D = 16, 8
    base = torch.randn(n, D, generator=g) * torch.tensor([5.0, 3.0, 2.0, 0.2, 0.2, 0.1, 0.1, 0.1])
    # depth 1: the same tokens, with the entry of largest magnitude of component 0 made negative
    # by a reflection of feature 0, which flips the per-depth sign convention of component 0
    flip = torch.ones(D)
    flip[0] = -1
    tokens = torch.stack([base, base * flip + 0.01 * torch.randn(n, D, generator=g)])  # (S, n, D)
    hs = torch.cat([torch.zeros(2, 1, D), tokens], dim=1)[None]  # (1, S, 1 + n, D), a CLS in front
    per_depth = torch.stack([A.token_pca(hs, d, 1, k=3)[0] for d in range(2)])  # (S, n, 3)
    assert (per_depth[0] * per_depth[1]).sum(0)[0] < 0  # the bug: component 0 flips between depths
    aligned = A.token_pca_by_depth(hs, 1, k=3)[0]  # (S, n, 3)
    corr = (aligned[0] * aligned[1]).sum(0)
    assert (corr > 0).all()
    assert torch.allclose(aligned[0], per_depth[0])  # depth 0 keeps the per-depth convention
    assert torch.allclose(aligned.abs(), per_depth.abs(), atol=1e-5)  # only signs change


def test_token_pca_rgb_by_depth_matches_the_aligned_coordinates():
    g = torch.Generator().manual_seed(3)
    hs = torch.randn(1, 4, 1 + 12, 6, generator=g)
    rgb = A.token_pca_rgb_by_depth(hs, (3, 4), 1)
    assert rgb.shape == (1, 4, 3, 4, 3)
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    coords = A.token_pca_by_depth(hs, 1, k=3)
    for d in range(4):
        r = rgb[0, d].reshape(-1, 3)
        for c in range(3):  # each channel increases with its component
            order = torch.argsort(coords[0, d, :, c])
            assert (r[order, c].diff() >= -1e-6).all()


def test_variance_explained_by_a_linear_function_of_the_features():
    g = torch.Generator().manual_seed(4)
    colours = torch.rand(20, 3, generator=g)
    linear = colours @ torch.randn(3, 3, generator=g) + 2.0  # exactly a linear function: R² 1
    noise = torch.randn(20, 3, generator=g)
    r2 = A.variance_explained_by(torch.stack([linear, noise, torch.ones(20, 3)]), colours)
    assert r2.shape == (3,)
    assert r2[0] == pytest.approx(1.0, abs=1e-9)
    assert 0.0 <= float(r2[1]) < 0.6
    assert float(r2[2]) == 0.0  # constant: nothing to explain


# ---- the Attention page: the Display control and the two-class comparison (AppTest) ----


def _attention_page(upload: bytes | None = None):
    from tests.test_app import ok, start

    at = start()
    if upload is not None:
        at.file_uploader(key="image_upload").upload("lake.png", upload, "image/png").run()
        ok(at)
    at.switch_page("pages/5_attention.py").run()
    ok(at)
    return at


def _charts(at) -> dict[str, dict]:
    import json

    return {el.key: json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def test_attention_maps_over_the_uploaded_photo_and_two_classes_on_one_scale():
    from tests.test_app import PAGES, ok, pickers

    w, h = 300, 120  # a wide photo: the model sees its centre square
    buf = io.BytesIO()
    Image.fromarray(photo(w, h, seed=5)).save(buf, format="PNG")
    at = _attention_page(buf.getvalue())
    n_charts = PAGES[4][2]
    before = _charts(at)
    assert len(before) == n_charts
    assert before["roll_map"]["layout"]["xaxis"]["range"] == [0, 32]  # default: over the 32x32 model input
    query_map = pickers(at)["attn_image"]  # the clickable query map: one picture (ui.picker)
    assert query_map["box"] == [0.0, 0.0, 1.0, 1.0] and query_map["frame"] is False
    at.radio(key="attn_display_over").set_value("photo").run()
    at.slider(key="attn_display_opacity").set_value(0.8).run()
    at.selectbox(key="attn_display_cmap").set_value("Viridis").run()
    at.toggle(key="attn_display_smooth").set_value(False).run()
    ok(at)
    charts = _charts(at)
    assert len(charts) == n_charts
    for key in ("roll_map", "chefer_map"):  # rollout, the class maps: in the photo's pixels
        assert charts[key]["layout"]["xaxis"]["range"] == [0, w], key
        assert charts[key]["layout"]["yaxis"]["range"] == [h, 0], key
    query_map = pickers(at)["attn_image"]
    assert decode(query_map["src"]).shape[:2] == (h, w)  # the photo itself
    assert query_map["frame"] is True and query_map["box"] == [
        90 / w,
        0.0,
        210 / w,
        1.0,
    ]  # the crop: the centre 120x120
    # the two class maps: one colour scale, one colour bar
    cls = charts["chefer_map"]
    bars = [t for t in cls["data"] if t.get("marker", {}).get("showscale")]
    assert len(bars) == 1
    assert (bars[0]["marker"]["cmin"], bars[0]["marker"]["cmax"]) == (
        cls["layout"]["meta"]["vmin"],
        cls["layout"]["meta"]["vmax"],
    )
    assert sum(t["type"] == "image" for t in cls["data"]) == 2
    assert any("one colour scale" in c.value for c in at.caption)
    # the DINO heads over the photo too
    assert charts["dino_heads"]["data"][0]["type"] == "image"


def test_embeddings_page_wording_filters_and_per_depth_colours():
    """No "the first 192 of the 192 filters"; the token colours say they are per depth, signs aligned."""
    from tests.test_app import ok, start

    at = start()
    at.switch_page("pages/3_embeddings.py").run()
    ok(at)
    caption = " ".join(c.value for c in at.caption)
    assert "at each depth separately" in caption and "flipped to agree" in caption
    assert "% of the embedding's colours" in caption  # measured, not asserted
    at.radio(key="filters_view").set_value("raw filters").run()
    ok(at)
    text = " ".join(m.value for m in at.markdown)
    assert "filters as they are" in text
    assert "The first 192 of the 192" not in text and "All 192 filters" in text
