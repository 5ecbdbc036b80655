"""vit_plots: the figure builders on real analysis outputs; values, shapes, axes, validity."""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

import vit_plots as vp
from vit_core import analysis as A
from vit_plots._base import named_colorscale, patch_centres, to_uint8


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def valid(fig: go.Figure) -> go.Figure:
    """The builders skip plotly's validation for speed; here every figure must pass it."""
    go.Figure(fig.to_dict())  # raises on any invalid property
    return fig


def trace_of(fig: go.Figure, kind: str) -> list:
    return [t for t in fig.data if t.type == kind]


@pytest.fixture(scope="module")
def vit(make_vit):
    """A tiny random ViT on a non-square 3x4 grid, its input and its trace."""
    model = make_vit(img_size=(12, 16), patch_size=4, num_classes=5, depth=3, mlp_ratio=2.0)
    x = torch.randn(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    return model, x, model.trace(x)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.random((12, 16, 3))


# ---- shared pieces ----


def test_png_round_trip_keeps_pixels(image):
    a = to_uint8(image)
    assert np.array_equal(decode(vp.png_data_uri(a)), a)
    rgba = np.concatenate([a, np.zeros((*a.shape[:2], 1), np.uint8)], axis=-1)
    assert decode(vp.png_data_uri(rgba)).shape == (12, 16, 4)


def test_named_colorscales_avoid_streamlit_placeholders():
    for name in ("Inferno", "Viridis", "RdBu_r"):
        cs = named_colorscale(name)
        assert cs[0][0] == 0.0 and cs[-1][0] == 1.0
        assert all(c.startswith("rgb(") for _, c in cs)  # never "#000004", which Streamlit repaints
    assert named_colorscale("Inferno")[0][1] == "rgb(0, 0, 4)"
    lut = vp.colorscale_lut("Inferno")
    assert lut.shape == (256, 3) and tuple(lut[0]) == (0, 0, 4)


def test_blend_ends_and_upscaling(image):
    heat = np.arange(12, dtype=float).reshape(3, 4)
    s = vp.display_scale(12, 16)
    assert s == int(np.ceil(128 / 16))
    only_image = vp.blend(image, heat, alpha=0.0)
    assert only_image.shape == (12 * s, 16 * s, 3)
    assert np.array_equal(only_image[::s, ::s], to_uint8(image))  # pixel-sharp upscaling
    only_map = vp.blend(image, heat, alpha=1.0, smooth=False)
    lut = vp.colorscale_lut("Inferno")
    assert tuple(only_map[0, 0]) == tuple(lut[0])  # the minimum is the scale's first colour
    assert tuple(only_map[-1, -1]) == tuple(lut[-1])  # the maximum its last


def test_upsample_keeps_values_and_mosaic_layout():
    m = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = vp.upsample(m, (4, 4), smooth=False)
    assert np.array_equal(up[::2, ::2], m)
    tiles = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    mos, corners = vp.mosaic(tiles, cols=3, gap=1)
    assert mos.shape == (2 * 3 - 1, 3 * 4 - 1)
    assert corners.tolist() == [[0, 0], [0, 4], [0, 8], [3, 0], [3, 4]]
    assert np.array_equal(mos[3:5, 4:7], tiles[4])
    assert np.isnan(mos[2]).all() and np.isnan(mos[3:5, 8:]).all()  # gap row, empty slot


# ---- images ----


def test_patch_grid_targets_numbers_and_selection(image):
    fig = valid(vp.patch_grid_figure(image, (3, 4), 4, selected=6, marked=[1, 2]))
    img = trace_of(fig, "image")[0]
    src = decode(img.source)
    assert img.x0 - img.dx / 2 == 0 and img.x0 + img.dx * (src.shape[1] - 0.5) == pytest.approx(16)  # covers [0, W]
    targets = [t for t in trace_of(fig, "scatter") if t.mode == "markers"][0]
    cd = np.asarray(targets.customdata)
    assert cd[:, 0].tolist() == list(range(12))
    assert np.array_equal(cd[:, 1], np.arange(12) // 4) and np.array_equal(cd[:, 2], np.arange(12) % 4)
    x, y = patch_centres((3, 4), 4)
    assert np.allclose(targets.x, x) and np.allclose(targets.y, y) and targets.x[6] == 10 and targets.y[6] == 6
    numbers = [t for t in trace_of(fig, "scatter") if t.mode == "text"][0]
    assert list(numbers.text) == [str(i) for i in range(12)]
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.x0, r.y0, r.x1, r.y1) for r in rects] == [
        (4, 0, 8, 4),
        (8, 0, 12, 4),
        (8, 4, 12, 8),
    ]  # marked, then selected
    assert len([s for s in fig.layout.shapes if s.type == "line"]) == (4 - 1) + (3 - 1)
    assert fig.layout.yaxis.range == (12, 0) and fig.layout.xaxis.range == (0, 16)


def test_overlay_carries_values_colour_bar_and_hover(vit, image):
    _, _, t = vit
    heat = t.attentions[0, -1, 0, 0, 1:].reshape(3, 4).numpy()
    fig = valid(vp.overlay_figure(image, heat, (3, 4), 4, colorbar_title="attention", vmin=0, selected=5))
    targets = trace_of(fig, "scatter")[0]
    assert np.allclose(targets.marker.color, heat.reshape(-1))
    assert targets.marker.cmin == 0 and targets.marker.cmax == pytest.approx(heat.max())
    assert targets.marker.showscale and targets.marker.colorbar.title.text == "attention"
    assert np.allclose(np.asarray(targets.customdata)[:, 3], heat.reshape(-1))
    assert fig.layout.shapes[0].x0 == 4 and fig.layout.shapes[0].y0 == 4
    with pytest.raises(ValueError, match="grid"):
        vp.overlay_figure(image, heat.T, (3, 4), 4)


def test_crop_figure_outlines_the_crop(image):
    fig = valid(vp.crop_figure(image, (1.5, 0.0, 13.5, 12.0)))
    (r,) = fig.layout.shapes
    assert (r.x0, r.y0, r.x1, r.y1) == (1.5, 0.0, 13.5, 12.0) and r.line.dash == "dash"


# ---- patches ----


def test_patch_animation_moves_every_patch_from_grid_to_sequence(image):
    fig = valid(vp.patch_animation_figure(image, (3, 4), 4, n_frames=6))
    ghost, *imgs = trace_of(fig, "image")
    assert ghost.opacity < 1 and len(imgs) == 12 and len(fig.frames) == 6
    assert list(fig.frames[0].traces) == list(range(1, 13))  # the frames move the patches, not the ghost
    a = to_uint8(image)
    for i, tr in enumerate(imgs):  # each trace shows its own patch
        tile = decode(tr.source)
        s = tile.shape[0] // 4
        r, c = divmod(i, 4)
        assert np.array_equal(tile[::s, ::s], a[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4])
    assert all(d.type == "image" for f in fig.frames for d in f.data)  # frames move the image traces
    first = [(d.x0, d.y0) for d in fig.frames[0].data]
    last = [(d.x0, d.y0) for d in fig.frames[-1].data]
    assert first == [(tr.x0, tr.y0) for tr in imgs]  # frame 0 is the (exploded) grid
    xs, ys = zip(*last)
    assert len(set(ys)) == 1 and list(xs) == sorted(xs)  # 12 patches: one row, in reading order
    assert min(ys) > max(y for _, y in first)  # the sequence lies under the image
    assert fig.layout.updatemenus[0].buttons[0].args[1]["frame"]["redraw"] is True
    with pytest.raises(ValueError):
        vp.patch_animation_figure(image, (4, 4), 4)


def test_patch_matrix_is_patchify(vit):
    _, x, _ = vit
    m = A.patchify(x, 4)[0].numpy()
    fig = valid(vp.patch_matrix_figure(m, 3, 4))
    (h,) = fig.data
    assert np.allclose(np.asarray(h.z), m) and np.asarray(h.z).shape == (12, 48)
    assert list(fig.layout.xaxis.ticktext) == ["R", "G", "B"] and list(fig.layout.xaxis.tickvals) == [8, 24, 40]
    assert h.zmin == -h.zmax
    with pytest.raises(ValueError):
        vp.patch_matrix_figure(m, 3, 5)


def test_patch_size_whatif_counts():
    w = vp.patch_size_whatif((224, 224), [7, 8, 14, 16, 32, 10], num_prefix_tokens=1)
    assert w["patch_size"].tolist() == [7, 8, 14, 16, 32]  # 10 does not divide 224
    assert w["tokens"].tolist() == [1025, 785, 257, 197, 50]
    assert w["attention_entries"][3] == 197**2 and w["values_per_patch"][3] == 768
    fig = valid(vp.patch_size_figure(w, current=16))
    assert [list(t.y) for t in fig.data] == [w["tokens"].tolist(), w["attention_entries"].tolist()]
    assert fig.data[0].marker.color[3] != fig.data[0].marker.color[0]  # the model's own P stands out
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"


# ---- overview ----


def test_pipeline_boxes_and_labels():
    stages = [
        vp.Stage("1. Patches", "196 x 768", "cut", "no parameters"),
        vp.Stage("2. Embed", "196 x 768", "", "590,592 parameters"),
    ]
    fig = valid(vp.pipeline_figure(stages))
    assert len([s for s in fig.layout.shapes if s.type == "rect"]) == 2
    texts = [a.text for a in fig.layout.annotations]
    assert "<b>196 x 768</b>" in texts and "590,592 parameters" in texts
    assert sum(1 for a in fig.layout.annotations if a.showarrow) == 1  # one arrow between two boxes
    with pytest.raises(ValueError):
        vp.pipeline_figure([])


# ---- embeddings ----


def test_conv_linear_scatter_and_difference(vit):
    model, x, _ = vit
    r = A.conv_vs_linear(model, x)
    conv, lin = r["conv"][0].numpy(), r["linear"][0].numpy()
    fig = valid(vp.conv_linear_figure(conv, lin, max_points=50))
    pts = fig.data[1]
    assert len(pts.x) == 50 and np.allclose(pts.x, pts.y, atol=1e-5)
    assert f"largest difference {r['max_abs_diff']:.1e}" in fig.layout.title.text
    idx = np.asarray(pts.customdata)[:, :2].astype(int)
    assert np.allclose(pts.x, conv[idx[:, 0], idx[:, 1]])
    with pytest.raises(ValueError):
        vp.conv_linear_figure(conv, lin[:, :3])


def test_filters_mosaic_shows_each_filter(vit):
    model, _, _ = vit
    f = A.embedding_filters_pca(model, 6).numpy()  # (6, 4, 4, 3)
    fig = valid(vp.filters_figure(f, [f"pc {i}" for i in range(6)], cols=4, tile_px=8))
    mos = decode(trace_of(fig, "image")[0].source)
    assert mos.shape[-1] == 4  # RGBA: transparent gaps work in light and dark themes
    assert np.array_equal(mos[0:8:2, 0:8:2, :3], to_uint8(f[0]))  # tile 0 at the top-left, 2x upscaled
    assert mos[0, 8, 3] == 0  # a gap pixel is transparent
    assert list(fig.data[1].text) == [f"pc {i}" for i in range(6)]


def test_token_views(vit):
    _, _, t = vit
    S = t.hidden_states.shape[1]
    rgb = torch.stack([A.token_pca_rgb(t.hidden_states, d, t.grid, 1)[0] for d in range(S)]).numpy()
    fig = valid(vp.token_pca_figure(rgb, [f"d{i}" for i in range(S)], cols=2))
    assert [a.text for a in fig.layout.annotations] == [f"d{i}" for i in range(S)]
    xy = torch.stack([A.token_pca(t.hidden_states, d, 1, 2)[0] for d in range(S)]).numpy()
    fig = valid(
        vp.token_scatter_figure(xy, np.random.default_rng(0).random((12, 3)), [f"d{i}" for i in range(S)], t.grid)
    )
    assert np.allclose(fig.data[0].x, xy[-1, :, 0])  # starts at the last depth
    steps = fig.layout.sliders[0].steps
    assert len(steps) == S and fig.layout.sliders[0].active == S - 1
    assert np.allclose(steps[1].args[0]["y"][0], xy[1, :, 1]) and steps[1].args[1]["xaxis.autorange"] is True


# ---- positions ----


def test_similarity_tiles_match_the_analysis(vit):
    model, _, _ = vit
    sim = A.position_similarity(model).numpy()  # (3, 4, 3, 4)
    fig = valid(vp.similarity_tiles_figure(sim, selected=6))
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (3 * 4 - 1, 4 * 5 - 1)
    assert np.allclose(z[4:7, 10:14], sim[1, 2])  # tile (1, 2) sits at mosaic corner (4, 10)
    cd = np.asarray(fig.data[0].customdata)
    assert cd[4, 10].tolist() == [6, 0] and cd[6, 13].tolist() == [6, 11]
    targets = fig.data[1]
    assert np.asarray(targets.customdata)[:, 0].tolist() == list(range(12))
    assert (targets.x[6], targets.y[6]) == (12, 5.5)  # centre of tile 6
    assert fig.data[0].zmin == -1 and fig.data[0].zmax == 1
    big = valid(vp.similarity_map_figure(sim[1, 2], 6))
    assert np.allclose(np.asarray(big.data[0].z), sim[1, 2])
    assert (big.layout.shapes[0].x0, big.layout.shapes[0].y0) == (1.5, 0.5)


# ---- attention ----


def test_heads_small_multiples(vit):
    _, _, t = vit
    maps = t.attentions[0, 0, :, 0, 1:].reshape(2, 3, 4).numpy()
    fig = valid(vp.heads_figure(maps, query=5))
    z = np.asarray(fig.data[0].z, dtype=float)
    cd = np.asarray(fig.data[0].customdata, dtype=float)
    for h in range(2):
        tile = cd[..., 0] == h
        assert np.nanmax(z[tile]) == pytest.approx(1.0)  # each head scaled to its own max
        assert np.allclose(np.sort(cd[..., 2][tile]), np.sort(maps[h].reshape(-1)))  # raw values in hover
    assert [a.text for a in fig.layout.annotations] == ["head 0", "head 1"]
    assert len(fig.layout.shapes) == 2


def test_head_steps_panels(vit):
    model, _, t = vit
    steps = A.head_computation(model, t, layer=1, head=1, query=3)
    fig = valid(vp.head_steps_figure(steps["scores"], steps["weights"], steps["output"], t.grid, 1))
    assert np.allclose(np.asarray(fig.data[0].z), steps["scores"][1:].reshape(3, 4))
    assert np.allclose(np.asarray(fig.data[1].z), steps["weights"][1:].reshape(3, 4))
    assert np.allclose(fig.data[2].y, steps["output"]) and len(fig.data[2].y) == 8
    assert fig.data[0].zmin == -fig.data[0].zmax
    assert any("CLS" in a.text for a in fig.layout.annotations)
    # no colour bars (a costly redraw on every slider step): each panel's title states its colour range
    assert fig.data[0].showscale is False and fig.data[1].showscale is False
    texts = " ".join(a.text for a in fig.layout.annotations)
    assert f"red {fig.data[0].zmax:.2f}" in texts and f"blue {-fig.data[0].zmax:.2f}" in texts
    assert f"yellow {float(np.max(steps['weights'][1:])):.3f}" in texts
    with pytest.raises(ValueError):
        vp.head_steps_figure(steps["scores"][1:], steps["weights"][1:], steps["output"], t.grid, 1)


def test_distance_and_entropy(vit):
    _, _, t = vit
    mad = A.mean_attention_distance(t.attentions, t.grid, 4, 1).numpy()
    fig = valid(vp.mean_distance_figure(mad, image_extent=16))
    assert len(fig.data) == 2 and np.allclose(fig.data[1].y, mad[:, 1])
    assert np.allclose(np.round(fig.data[0].x), [1, 2, 3])  # depth on x, 1-based
    assert fig.layout.shapes[0].y0 == 16
    ent = A.attention_entropy(t.attentions).numpy()
    fig = valid(vp.entropy_figure(ent, max_entropy=float(np.log(13))))
    assert np.allclose(np.asarray(fig.data[0].z), ent) and fig.data[0].zmax == pytest.approx(np.log(13))
    assert list(fig.data[0].y) == ["layer 1", "layer 2", "layer 3"]


def test_token_labels():
    assert vp.token_labels(1, 3) == ["CLS", "patch 0", "patch 1", "patch 2"]
    assert vp.token_labels(2, 1) == ["CLS", "prefix 1", "patch 0"]
    assert vp.token_labels(0, 2) == ["patch 0", "patch 1"]


# ---- prediction ----


def test_top_k_and_bars():
    p = np.array([0.1, 0.4, 0.1, 0.3, 0.1])
    assert vp.top_k(p, 3).tolist() == [1, 3, 0]  # ties broken by index
    fig = valid(vp.topk_figure(p, list("abcde"), k=3))
    (bar,) = fig.data
    assert list(bar.y) == ["b", "d", "a"] and np.allclose(bar.x, [40, 30, 10])
    assert list(bar.text) == ["40.0%", "30.0%", "10.0%"]


def test_logit_lens_and_compare(vit):
    model, _, t = vit
    lens = A.logit_lens(model, t)[0].numpy()  # (4, 5)
    fig = valid(vp.logit_lens_figure(lens, list("abcde"), [2, 0]))
    assert [tr.name for tr in fig.data] == ["c", "a"]
    assert np.allclose(fig.data[0].y, lens[:, 2] * 100) and list(fig.data[0].x)[0] == "embedding"
    assert np.allclose(lens[-1], t.probs[0].numpy(), atol=1e-6)
    fig = valid(vp.compare_figure({"before": lens[0], "after": lens[-1]}, list("abcde"), [4, 1]))
    assert [tr.name for tr in fig.data] == ["before", "after"] and list(fig.data[1].x) == ["e", "b"]
    assert np.allclose(fig.data[1].y, lens[-1][[4, 1]] * 100)


def test_pipeline_wraps_into_rows_with_an_elbow_arrow():
    stages = [vp.Stage(f"{i}. step", f"{i} x 8", "detail", "") for i in range(6)]
    fig = valid(vp.pipeline_figure(stages, cols=3))
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == 6
    assert {r.y0 for r in rects[:3]} == {0.0} and len({r.y0 for r in rects[3:]}) == 1 > rects[3].y0
    assert [r.x0 for r in rects[3:]] == [r.x0 for r in rects[:3]]  # the second row starts on the left again
    assert sum(1 for a in fig.layout.annotations if a.showarrow) == 5  # one arrow into every box but the first
    assert [s.type for s in fig.layout.shapes].count("path") == 1  # the elbow from box 3 to box 4
    assert fig.layout.height > vp.pipeline_figure(stages).layout.height  # two rows are taller


def test_patch_size_charts_are_stacked_with_their_titles_apart():
    what = vp.patch_size_whatif((32, 32), [1, 2, 4, 8], 1)
    fig = valid(vp.patch_size_figure(what, current=4))
    top, bottom = fig.layout.yaxis.domain, fig.layout.yaxis2.domain
    assert bottom[1] < top[0]  # one above the other, not side by side
    t1, t2 = fig.layout.annotations
    assert t1.y > top[1] and bottom[1] < t2.y < top[0]  # each title between its chart and the one above
