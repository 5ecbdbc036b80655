"""Attention: all heads of a layer, one head step by step, distance and entropy per head."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ._base import base_layout, box_shapes, figure, mosaic, named_colorscale

HEAD_COLORS = (
    "#636efa",
    "#ef553b",
    "#00cc96",
    "#ab63fa",
    "#ffa15a",
    "#19d3f3",
    "#ff6692",
    "#b6e880",
    "#ff97ff",
    "#fecb52",
    "#1f77b4",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def heads_figure(
    maps: np.ndarray,
    query: int | None = None,
    cols: int | None = None,
    colorscale: str = "Inferno",
    height: int | None = None,
) -> go.Figure:
    """Every head's attention map of one layer as small multiples (one mosaic heat map).

    Each tile is coloured relative to its own maximum (heads differ a lot in range); hover
    shows the raw attention weight.

    Args:
        maps: (h, gh, gw) attention of the query over the patch keys, per head.
        query: patch index outlined in every tile (None when the query is a prefix token).
        cols: tiles per row (default: about the square root of the number of heads).
    """
    m = np.asarray(maps, dtype=np.float64)
    h, gh, gw = m.shape
    cols = cols or int(np.ceil(np.sqrt(h)))
    peak = m.reshape(h, -1).max(axis=1)
    rel = m / np.where(peak > 0, peak, 1.0)[:, None, None]
    gap = max(1, max(gh, gw) // 5)
    label = max(1.0, gh * 0.22)
    z, corners = mosaic(rel, cols, gap=gap + int(np.ceil(label)), fill=np.nan)
    raw, _ = mosaic(m, cols, gap=gap + int(np.ceil(label)), fill=np.nan)
    head_of = np.full(z.shape, -1.0)
    patch_of = np.full(z.shape, -1.0)
    for i, (r, c) in enumerate(corners):
        head_of[r : r + gh, c : c + gw] = i
        patch_of[r : r + gh, c : c + gw] = np.arange(gh * gw).reshape(gh, gw)
    heat = {
        "type": "heatmap",
        "z": z,
        "x0": 0.5,
        "y0": 0.5,
        "colorscale": named_colorscale(colorscale),
        "zmin": 0,
        "zmax": 1,
        "customdata": np.stack([head_of, patch_of, raw], axis=-1),
        "hoverongaps": False,
        "colorbar": {"title": {"text": "share of the<br>head's max"}, "thickness": 14},
        "hovertemplate": "head %{customdata[0]:.0f}, key patch %{customdata[1]:.0f}<br>attention %{customdata[2]:.4f}<extra></extra>",
    }
    Hm, Wm = z.shape
    ann = [
        {"x": c + gw / 2, "y": r, "yanchor": "bottom", "text": f"head {i}", "showarrow": False, "font": {"size": 12}}
        for i, (r, c) in enumerate(corners)
    ]
    layout = {
        **base_layout(height or int(int(np.ceil(h / cols)) * 160 + 30)),
        "annotations": ann,
        "xaxis": {"range": [0, Wm], "visible": False, "constrain": "domain"},
        "yaxis": {"range": [Hm, -label], "visible": False, "scaleanchor": "x", "constrain": "domain"},
    }
    if query is not None:
        qr, qc = divmod(int(query), gw)
        layout["shapes"] = box_shapes(
            np.array([[c + qc, r + qr, c + qc + 1, r + qr + 1] for r, c in corners]), color="#00e5ff", width=1.5
        )
    return figure([heat], layout)


def head_steps_figure(
    scores: np.ndarray,
    weights: np.ndarray,
    output: np.ndarray,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    height: int = 330,
) -> go.Figure:
    """One head, one query: the scores q.k/sqrt(d), their softmax, and the weighted sum of values.

    Args:
        scores: (N,) q.k_j / sqrt(d) for every key token j.
        weights: (N,) softmax of the scores (sums to 1).
        output: (d,) sum_j weights_j v_j, the head's output for this query.
        grid: (gh, gw); num_prefix_tokens: k (the prefix keys are written under the panels).
    """
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    o = np.asarray(output, dtype=np.float64)
    gh, gw = int(grid[0]), int(grid[1])
    k = int(num_prefix_tokens)
    if s.shape != w.shape or s.size != k + gh * gw:
        raise ValueError(f"scores {s.shape} / weights {w.shape} do not fit {k} prefix tokens + a {gh}x{gw} grid")
    lim = float(np.abs(s[k:]).max()) or 1.0
    data = [
        {
            "type": "heatmap",
            "z": s[k:].reshape(gh, gw),
            "colorscale": named_colorscale("RdBu_r"),
            "zmin": -lim,
            "zmax": lim,
            "showscale": False,  # the range is in the panel's title: a colour bar is a costly redraw
            "hovertemplate": "key patch row %{y}, col %{x}<br>score %{z:.3f}<extra></extra>",
            "xaxis": "x",
            "yaxis": "y",
        },
        {
            "type": "heatmap",
            "z": w[k:].reshape(gh, gw),
            "colorscale": named_colorscale("Inferno"),
            "zmin": 0,
            "showscale": False,
            "hovertemplate": "key patch row %{y}, col %{x}<br>weight %{z:.4f}<extra></extra>",
            "xaxis": "x2",
            "yaxis": "y2",
        },
        {
            "type": "bar",
            "x": np.arange(o.size),
            "y": o,
            "marker": {"color": "#00cc96"},
            "hovertemplate": "dim %{x}: %{y:.3f}<extra></extra>",
            "xaxis": "x3",
            "yaxis": "y3",
        },
    ]

    def title(text: str, x: float) -> dict:
        return {
            "text": text,
            "x": x,
            "y": 1.0,
            "xref": "paper",
            "yref": "paper",
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": 13},
        }

    ann = [
        title(f"① scores q·kⱼ/√d<br><sup>blue {-lim:.2f} … white 0 … red {lim:.2f}</sup>", 0.13),
        title(f"② softmax → weights<br><sup>black 0 … yellow {float(w[k:].max()):.3f}</sup>", 0.48),
        title(f"③ Σⱼ weightⱼ vⱼ ({o.size} dims)", 0.84),
    ]
    if k:
        prefix = ", ".join(("CLS" if j == 0 else f"token {j}") + f": {s[j]:.2f} → {w[j]:.3f}" for j in range(k))
        ann.append(
            {
                "text": f"prefix keys, score → weight: {prefix}",
                "x": 0,
                "y": -0.06,
                "xref": "paper",
                "yref": "paper",
                "yanchor": "top",
                "xanchor": "left",
                "showarrow": False,
                "font": {"size": 11},
            }
        )
    grid_axis = {"showticklabels": False, "showgrid": False, "zeroline": False}
    layout = {
        **base_layout(height, margin={"l": 10, "r": 10, "t": 46, "b": 40}),
        "annotations": ann,
        "xaxis": {**grid_axis, "domain": [0, 0.26], "constrain": "domain"},
        "yaxis": {**grid_axis, "autorange": "reversed", "scaleanchor": "x", "constrain": "domain"},
        "xaxis2": {**grid_axis, "domain": [0.35, 0.61], "constrain": "domain"},
        "yaxis2": {**grid_axis, "autorange": "reversed", "scaleanchor": "x2", "anchor": "x2", "constrain": "domain"},
        "xaxis3": {"domain": [0.76, 1.0], "anchor": "y3", "title": {"text": "output dimension"}},
        "yaxis3": {"anchor": "x3"},
    }
    return figure(data, layout)


def mean_distance_figure(mad: np.ndarray, image_extent: float | None = None, height: int = 380) -> go.Figure:
    """ViT Figure 7 right: mean attention distance (pixels) against depth, one dot per head.

    Args:
        mad: (L, h) mean attention distance in pixels.
        image_extent: optional reference line (e.g. the image side), labelled.
    """
    m = np.asarray(mad, dtype=np.float64)
    L, h = m.shape
    layers = np.arange(1, L + 1)
    data = [
        {
            "type": "scatter",
            "x": layers + (j - (h - 1) / 2) * 0.03,
            "y": m[:, j],
            "mode": "markers",
            "marker": {"size": 9, "color": HEAD_COLORS[j % len(HEAD_COLORS)]},
            "name": f"head {j}",
            "customdata": layers,
            "hovertemplate": f"layer %{{customdata}}, head {j}<br>%{{y:.1f}} px<extra></extra>",
        }
        for j in range(h)
    ]
    layout = {
        **base_layout(height, showlegend=h <= 16, margin={"l": 60, "r": 10, "t": 10, "b": 50}),
        "xaxis": {"title": {"text": "network depth (layer)"}, "tickmode": "linear", "dtick": 1},
        "yaxis": {"title": {"text": "mean attention distance (pixels)"}, "rangemode": "tozero"},
    }
    if image_extent:
        layout["shapes"] = [
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": image_extent,
                "y1": image_extent,
                "line": {"dash": "dot", "color": "#888"},
            }
        ]
        layout["annotations"] = [
            {
                "xref": "paper",
                "x": 1,
                "xanchor": "right",
                "y": image_extent,
                "yanchor": "bottom",
                "text": f"image side {image_extent:.0f} px",
                "showarrow": False,
            }
        ]
    return figure(data, layout)


def entropy_figure(entropy: np.ndarray, max_entropy: float | None = None, height: int | None = None) -> go.Figure:
    """Attention entropy per layer and head (nats); low = focused on few keys.

    Args:
        entropy: (L, h).
        max_entropy: log N, the entropy of uniform attention (colour scale top).
    """
    e = np.asarray(entropy, dtype=np.float64)
    L, h = e.shape
    heat = {
        "type": "heatmap",
        "z": e,
        "x": [f"head {j}" for j in range(h)],
        "y": [f"layer {i + 1}" for i in range(L)],
        "colorscale": named_colorscale("Viridis"),
        "zmin": 0,
        "zmax": max_entropy,
        "colorbar": {"title": {"text": "entropy<br>(nats)"}, "thickness": 14},
        "hovertemplate": "%{y}, %{x}<br>entropy %{z:.3f} nats<extra></extra>",
    }
    if L * h <= 200:
        heat["text"] = np.round(e, 2)
        heat["texttemplate"] = "%{text}"
    layout = {
        **base_layout(height or int(60 + 28 * L), margin={"l": 70, "r": 10, "t": 10, "b": 30}),
        "yaxis": {"autorange": "reversed"},
    }
    return figure([heat], layout)


def token_labels(num_prefix_tokens: int, n: int) -> Sequence[str]:
    """'CLS' (and 'prefix j') then 'patch i' for the N tokens, for menus and hover."""
    names = (["CLS"] + [f"prefix {j}" for j in range(1, num_prefix_tokens)]) if num_prefix_tokens else []
    return names + [f"patch {i}" for i in range(n)]
