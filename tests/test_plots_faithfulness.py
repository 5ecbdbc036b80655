"""vit_plots.faithfulness: the lab's figures carry the values they are given, pass plotly's full
validation, and put clicks and colours where the pages expect them."""

from __future__ import annotations

import base64
import io

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

import vit_plots.faithfulness as vpf


def valid(fig: go.Figure) -> go.Figure:
    """The builders skip plotly's validation for speed; here every figure must pass it."""
    go.Figure(fig.to_dict())
    return fig


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


METHODS = ["raw attention", "rollout", "occlusion"]


def test_curves_figure_draws_each_method_in_percent_on_two_panels_with_the_random_band():
    fr = np.linspace(0, 1, 5)
    dele = {m: np.linspace(0.8, 0.1 * i, 5) for i, m in enumerate(METHODS)}
    ins = {m: np.linspace(0.1, 0.8 - 0.1 * i, 5) for i, m in enumerate(METHODS)}
    rand = np.stack([np.linspace(0.8, 0.2, 5), np.linspace(0.8, 0.4, 5)])
    fig = valid(vpf.curves_figure(fr, dele, ins, rand, rand[::-1]))
    lines = [t for t in fig.data if t.name in METHODS]
    assert len(lines) == 6  # each method on both panels
    left = [t for t in lines if t.xaxis == "x"]
    assert [t.name for t in left] == METHODS
    assert np.allclose(left[1].y, dele["rollout"] * 100) and np.allclose(left[1].x, fr * 100)
    assert left[0].line.color == vpf.METHOD_COLORS["raw attention"]
    means = [t for t in fig.data if (t.name or "").startswith("random (mean")]
    assert len(means) == 2 and np.allclose(means[0].y, rand.mean(0) * 100)
    band = [t for t in fig.data if t.fill == "toself"][0]
    assert np.allclose(band.y[:5], rand.max(0) * 100) and np.allclose(band.y[5:], (rand.min(0) * 100)[::-1])
    assert sum(bool(t.showlegend) for t in fig.data if t.name in METHODS) == 3  # one legend entry a method


def test_agreement_figure_shows_both_matrices_with_their_values():
    rho = np.array([[1.0, 0.25, np.nan], [0.25, 1.0, -0.5], [np.nan, -0.5, 1.0]])
    over = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 1 / 3], [0.0, 1 / 3, 1.0]])
    fig = valid(vpf.agreement_figure(rho, over, METHODS))
    a, b = fig.data
    assert (a.zmin, a.zmax, b.zmin, b.zmax) == (-1.0, 1.0, 0.0, 1.0)
    assert a.text[0][1] == "0.25" and a.text[0][2] == "n/a" and b.text[1][2] == "33%"
    with pytest.raises(ValueError):
        vpf.agreement_figure(rho[:2, :2], over, METHODS)


def test_cascade_figure_lays_one_row_per_method_and_captions_each_tile():
    M, S, gh, gw = 2, 3, 2, 3
    maps = np.arange(M * S * gh * gw, dtype=float).reshape(M, S, gh, gw)
    maps[1, 2] = 5.0  # a constant map: drawn, correlation n/a
    rho = np.array([[1.0, 0.5, 0.1], [1.0, 0.9, np.nan]])
    fig = valid(vpf.cascade_figure(maps, ["rollout", "occlusion"], ["trained", "head", "block 0"], rho, tile_px=12))
    canvas = decode(fig.data[0].source)
    s = 12 // 3  # upscale so the longer side reaches the tile
    th, tw, label, gap = gh * s, gw * s, 14, 2
    assert canvas.shape == (M * (th + label), S * (tw + gap) - gap, 4)
    tile = canvas[label : label + th, 0:tw]  # method 0, step 0: a ramp, darkest top left, brightest bottom right
    assert tile[..., 3].min() == 255 and tile[0, 0, :3].sum() < tile[-1, -1, :3].sum()
    texts = [a.text for a in fig.layout.annotations]
    assert "ρ 0.50" in texts and "ρ n/a" in texts and "trained" in texts and "<b>occlusion</b>" in texts
    assert "Spearman with the trained map: 0.900" in fig.data[1].text[4]


def test_head_grid_reports_clicks_as_layer_times_heads_plus_head_and_crosses_knocked_heads():
    v = np.array([[0.1, -0.2, 0.0], [0.5, 0.05, 0.3]])  # 2 layers, 3 heads
    fig = valid(vpf.head_grid_figure(v, knocked=[(1, 2), (0, 0), (1, 2)]))
    heat, targets, crosses = fig.data
    assert heat.zmin == -0.5 and heat.zmax == 0.5  # centred on 0
    cd = np.asarray(targets.customdata)
    assert cd[:, 0].tolist() == list(range(6))  # flat index = layer * heads + head
    i = 5  # layer 2 (1-based), head 2
    assert (cd[i, 1], cd[i, 2], cd[i, 3]) == (2, 2, 0.3)
    assert targets.x[i] == "head 2" and targets.y[i] == "layer 2"
    assert list(zip(crosses.y, crosses.x)) == [("layer 1", "head 0"), ("layer 2", "head 2")]
    assert fig.layout.meta["knocked"] == [[0, 0], [1, 2]]


def test_patch_class_figure_paints_each_patch_in_its_classes_colour():
    img = np.full((8, 12, 3), 0.5)
    top = np.array([[0, 1, 1], [2, 0, 0]])
    prob = np.full((2, 3), 0.4)
    names = ["a", "b", "c", "d"]
    fig = valid(vpf.patch_class_figure(img, top, prob, names, patch_size=4, alpha=1.0))
    pix = decode(fig.data[0].source)
    s = pix.shape[0] // 8
    for i, c in enumerate(top.reshape(-1)):
        r, col = divmod(i, 3)
        centre = pix[(r * 4 + 2) * s, (col * 4 + 2) * s, :3]
        assert tuple(int(v) for v in centre) == vpf._hex_rgb(vpf.CLASS_COLORS[c])
    legend = [t.name for t in fig.data if t.type == "scatter" and t.showlegend]
    assert legend == ["a (3)", "b (2)", "c (1)"]  # most common first, with counts
    assert "b: 40.0%" in fig.data[1].text[1]


def test_area_bars_give_means_and_standard_errors():
    d = np.array([[0.1, 0.3], [0.3, 0.5]])
    i = np.array([[0.6, 0.2], [0.4, 0.2]])
    fig = valid(vpf.area_bars_figure(["occlusion", "random"], d, i))
    a, b = fig.data
    assert np.allclose(a.y, [0.2, 0.4]) and np.allclose(b.y, [0.5, 0.2])
    assert np.allclose(a.error_y.array, d.std(0, ddof=1) / np.sqrt(2))
    assert a.marker.color[1] == vpf.METHOD_COLORS["random"]
