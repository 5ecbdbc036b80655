"""Embeddings: Conv2d vs flatten + Linear, the projection filters, tokens through the layers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ._base import base_layout, figure, image_axes, image_trace, mosaic, to_uint8


def conv_linear_figure(
    conv: np.ndarray, linear: np.ndarray, max_points: int = 3000, seed: int = 0, height: int = 380
) -> go.Figure:
    """Every embedding value computed by the Conv2d (x) against flatten + Linear (y): a diagonal.

    Args:
        conv, linear: (n, D) the two computations of the patch embedding.
        max_points: a random subset is drawn when there are more values.
    """
    a = np.asarray(conv, dtype=np.float64)
    b = np.asarray(linear, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"conv {a.shape} and linear {b.shape} must be the same (n, D)")
    D = a.shape[1]
    a, b = a.reshape(-1), b.reshape(-1)
    idx = np.arange(a.size)
    if a.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(a.size, max_points, replace=False))
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    data = [
        {
            "type": "scatter",
            "x": [lo, hi],
            "y": [lo, hi],
            "mode": "lines",
            "line": {"color": "#888", "dash": "dot"},
            "hoverinfo": "skip",
            "name": "y = x",
        },
        {
            "type": "scatter",
            "x": a[idx],
            "y": b[idx],
            "mode": "markers",
            "marker": {"size": 4, "color": "#636efa", "opacity": 0.6},
            "customdata": np.stack([idx // D, idx % D, a[idx] - b[idx]], axis=1),
            "hovertemplate": "patch %{customdata[0]}, dim %{customdata[1]}<br>conv %{x:.5f}<br>linear %{y:.5f}<br>diff %{customdata[2]:.1e}<extra></extra>",
            "name": "values",
        },
    ]
    layout = {
        **base_layout(
            height, f"{a.size:,} values, largest difference {diff:.1e}", margin={"l": 60, "r": 10, "t": 40, "b": 50}
        ),
        "xaxis": {"title": {"text": "Conv2d(kernel=P, stride=P) output"}},
        "yaxis": {"title": {"text": "flatten + Linear output"}},
    }
    return figure(data, layout)


def filters_figure(
    filters: np.ndarray,
    labels: Sequence[str] | None = None,
    cols: int = 14,
    tile_px: int = 40,
    max_tiles: int = 196,
    title: str | None = None,
) -> go.Figure:
    """Small RGB tiles in a mosaic (embedding filters or their principal components).

    Args:
        filters: (k, P, P, C) in [0, 1] (C = 3 shown as colour, else the first channel as grey).
        labels: hover text per tile.
        cols: tiles per row.
        tile_px: display size of a tile in source pixels (pixel-sharp upscaling).
    """
    f = np.asarray(filters, dtype=np.float32)[:max_tiles]
    k, P = f.shape[0], f.shape[1]
    if f.shape[-1] != 3:
        f = np.repeat(f[..., :1], 3, axis=-1)
    s = max(1, tile_px // P)
    big = np.repeat(np.repeat(to_uint8(f.reshape(-1, P, 3)).reshape(k, P, P, 3), s, axis=1), s, axis=2)
    rgba = np.concatenate([big, np.full((*big.shape[:3], 1), 255, np.uint8)], axis=-1)
    cols = min(cols, k)
    m, corners = mosaic(rgba, cols, gap=max(2, s), fill=0)
    Hm, Wm = m.shape[:2]
    text = list(labels)[:k] if labels is not None else [f"filter {i}" for i in range(k)]
    hover = {
        "type": "scatter",
        "x": corners[:, 1] + P * s / 2,
        "y": corners[:, 0] + P * s / 2,
        "mode": "markers",
        "marker": {"size": 14, "opacity": 0},
        "text": text,
        "hovertemplate": "%{text}<extra></extra>",
    }
    rows = int(np.ceil(k / cols))
    height = int(min(900, max(140, rows * (Hm / rows) * 700 / max(Wm, 1) + (40 if title else 10))))
    return figure([image_trace(m.astype(np.uint8)), hover], {**base_layout(height, title), **image_axes(Hm, Wm)})


def token_pca_figure(
    rgbs: np.ndarray, labels: Sequence[str], cols: int = 7, tile_px: int = 112, height: int | None = None
) -> go.Figure:
    """Patch tokens coloured by their top 3 principal components, one tile per depth.

    Args:
        rgbs: (S, gh, gw, 3) in [0, 1].
        labels: one caption per tile ("embedding", "block 1", ...).
    """
    a = np.asarray(rgbs, dtype=np.float32)
    S, gh, gw = a.shape[:3]
    s = max(1, tile_px // max(gh, gw))
    tiles = np.repeat(np.repeat(to_uint8(a.reshape(-1, gw, 3)).reshape(S, gh, gw, 3), s, axis=1), s, axis=2)
    rgba = np.concatenate([tiles, np.full((*tiles.shape[:3], 1), 255, np.uint8)], axis=-1)
    cols = min(cols, S)
    label_h = max(14, s * gh // 5)
    m, corners = mosaic(rgba, cols, gap=label_h, fill=0)
    Hm, Wm = m.shape[:2]
    ann = [
        {
            "x": c + gw * s / 2,
            "y": r - 1,
            "text": labels[i],
            "showarrow": False,
            "yanchor": "bottom",
            "font": {"size": 12},
        }
        for i, (r, c) in enumerate(corners)
    ]
    rows = int(np.ceil(S / cols))
    layout = {**base_layout(height or int(rows * 150 + 30)), **image_axes(Hm, Wm, top=-label_h), "annotations": ann}
    return figure([image_trace(m.astype(np.uint8))], layout)


def token_scatter_figure(
    coords: np.ndarray,
    colors: np.ndarray,
    labels: Sequence[str],
    grid: tuple[int, int],
    start: int | None = None,
    height: int = 480,
) -> go.Figure:
    """Patch tokens as points in their top-2 PCA plane, a slider steps through the depths.

    Args:
        coords: (S, n, 2) PCA coordinates of the n patch tokens at each of S depths.
        colors: (n, 3) colour per patch in [0, 1] or uint8 (e.g. its mean pixel colour).
        labels: (S,) depth names for the slider.
        grid: (gh, gw), for hover text.
        start: depth shown first (default: the last).
    """
    c = np.asarray(coords, dtype=np.float64)
    S, n, _ = c.shape
    gw = int(grid[1])
    col = to_uint8(np.asarray(colors).reshape(n, 1, 3)).reshape(n, 3)
    css = [f"rgb({r},{g},{b})" for r, g, b in col]
    idx = np.arange(n)
    custom = np.stack([idx, idx // gw, idx % gw], axis=1)
    s0 = S - 1 if start is None else int(start)

    def scatter(k: int) -> dict:
        return {
            "type": "scatter",
            "x": c[k, :, 0],
            "y": c[k, :, 1],
            "mode": "markers",
            "marker": {"size": 9, "color": css, "line": {"width": 0.5, "color": "#888"}},
            "customdata": custom,
            "hovertemplate": "patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]})<br>PC1 %{x:.2f}, PC2 %{y:.2f}<extra></extra>",
        }

    # The slider restyles the one trace and re-fits the axes (animation frames would keep the
    # first depth's axis ranges, and the token spread grows a lot with depth).
    steps = [
        {
            "label": labels[k],
            "method": "update",
            "args": [{"x": [c[k, :, 0]], "y": [c[k, :, 1]]}, {"xaxis.autorange": True, "yaxis.autorange": True}],
        }
        for k in range(S)
    ]
    layout = {
        **base_layout(height, margin={"l": 50, "r": 10, "t": 10, "b": 10}),
        "sliders": [{"active": s0, "steps": steps, "currentvalue": {"prefix": "depth: "}, "pad": {"t": 40}}],
        "xaxis": {"title": {"text": "PC 1"}, "zeroline": False},
        "yaxis": {"title": {"text": "PC 2"}, "zeroline": False},
    }
    return figure([scatter(s0)], layout)
