"""Predictions: top-k, the logit lens across depth, and before/after comparisons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ._base import base_layout, figure

COMPARE_COLORS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa")
LINE_COLORS = ("#ef553b", "#636efa", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest probabilities, largest first (ties: lower index first)."""
    p = np.asarray(probs).reshape(-1)
    k = min(int(k), p.size)
    return np.argsort(-p, kind="stable")[:k]


def topk_figure(probs: np.ndarray, class_names: Sequence[str], k: int = 5, height: int | None = None) -> go.Figure:
    """Horizontal bars of the k most probable classes, most probable on top, with percentages."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    idx = top_k(p, k)
    bar = {
        "type": "bar",
        "x": p[idx] * 100,
        "y": [class_names[i] for i in idx],
        "orientation": "h",
        "marker": {"color": ["#ef553b"] + ["#636efa"] * (len(idx) - 1)},
        "text": [f"{v * 100:.1f}%" for v in p[idx]],
        "textposition": "outside",
        "cliponaxis": False,
        "hovertemplate": "%{y}: %{x:.2f}%<extra></extra>",
    }
    layout = {
        **base_layout(height or int(70 + 30 * len(idx)), margin={"l": 10, "r": 30, "t": 10, "b": 40}),
        "xaxis": {"title": {"text": "probability (%)"}, "range": [0, 112]},
        "yaxis": {"autorange": "reversed", "automargin": True},
    }
    return figure([bar], layout)


def logit_lens_figure(
    lens: np.ndarray, class_names: Sequence[str], classes: Sequence[int], height: int = 380
) -> go.Figure:
    """Probability of some classes read off the CLS token after each block (the logit lens).

    Args:
        lens: (S, classes) probabilities; row 0 after the embedding, row l after block l.
        classes: which classes to draw (e.g. the final top 5).
    """
    p = np.asarray(lens, dtype=np.float64)
    S = p.shape[0]
    x = ["embedding"] + [f"block {i}" for i in range(1, S)]
    data = [
        {
            "type": "scatter",
            "x": x,
            "y": p[:, c] * 100,
            "mode": "lines+markers",
            "name": class_names[c],
            "line": {"width": 3 if i == 0 else 2, "color": LINE_COLORS[i % len(LINE_COLORS)]},
            "marker": {"color": LINE_COLORS[i % len(LINE_COLORS)]},
            "hovertemplate": f"{class_names[c]}<br>%{{x}}: %{{y:.1f}}%<extra></extra>",
        }
        for i, c in enumerate(classes)
    ]
    layout = {
        **base_layout(
            height, showlegend=True, legend={"orientation": "h", "y": 1.12}, margin={"l": 60, "r": 10, "t": 30, "b": 50}
        ),
        "yaxis": {"title": {"text": "probability (%)"}, "range": [0, 101]},
        "xaxis": {"title": {"text": "read out after"}},
    }
    return figure(data, layout)


def compare_figure(
    runs: Mapping[str, np.ndarray], class_names: Sequence[str], classes: Sequence[int], height: int = 340
) -> go.Figure:
    """Grouped bars: the probability of some classes under several conditions (original, shuffled, ...)."""
    names = [class_names[c] for c in classes]
    data = [
        {
            "type": "bar",
            "x": names,
            "y": np.asarray(probs, dtype=np.float64).reshape(-1)[list(classes)] * 100,
            "name": label,
            "marker": {"color": COMPARE_COLORS[i % len(COMPARE_COLORS)]},
            "hovertemplate": f"{label}<br>%{{x}}: %{{y:.1f}}%<extra></extra>",
        }
        for i, (label, probs) in enumerate(runs.items())
    ]
    layout = {
        **base_layout(
            height, showlegend=True, legend={"orientation": "h", "y": 1.15}, margin={"l": 60, "r": 10, "t": 30, "b": 40}
        ),
        "barmode": "group",
        "yaxis": {"title": {"text": "probability (%)"}, "range": [0, 101]},
    }
    return figure(data, layout)
