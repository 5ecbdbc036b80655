"""Training: loss / accuracy / learning-rate curves, the confusion matrix, per-class accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ._base import base_layout, figure, named_colorscale

TRAIN_COLOR = "#636efa"
TEST_COLOR = "#ef553b"
LR_COLOR = "#00a58a"
MAX_POINTS = 600  # per trace: a run has thousands of steps; more points only cost bytes on every poll


def ema(values: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Exponential moving average with bias correction (the first values are not pulled to 0)."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    m, w = 0.0, 0.0
    for i, x in enumerate(v):
        if not np.isfinite(x):
            out[i] = m / w if w else np.nan
            continue
        m = (1 - alpha) * m + alpha * x
        w = (1 - alpha) * w + alpha
        out[i] = m / w
    return out


def _thin(x: np.ndarray, *ys: np.ndarray, n: int = MAX_POINTS) -> tuple[np.ndarray, ...]:
    if len(x) <= n:
        return (x, *ys)
    idx = np.unique(np.linspace(0, len(x) - 1, n).round().astype(np.int64))
    return (x[idx], *(y[idx] for y in ys))


def training_curves_figure(
    steps: Sequence[int],
    loss: Sequence[float],
    acc: Sequence[float],
    lr: Sequence[float],
    eval_steps: Sequence[int] = (),
    eval_loss: Sequence[float] = (),
    eval_acc: Sequence[float] = (),
    total_steps: int | None = None,
    height: int = 300,
) -> go.Figure:
    """Three panels side by side: loss, accuracy and learning rate against the optimiser step.

    Args:
        steps, loss, acc, lr: per training step (loss with label smoothing, accuracy of the
            augmented batch), drawn faint with their moving average on top.
        eval_steps, eval_loss, eval_acc: the evaluations on held-out images (loss without
            label smoothing).
        total_steps: the x range of every panel (so the curves grow across it); default: the data.
    """
    s = np.asarray(steps, dtype=np.float64)
    lo, ac, lr_ = (np.asarray(a, dtype=np.float64) for a in (loss, acc, lr))
    lo_s, ac_s = ema(lo), ema(ac, 0.03)
    xs, lo_t, lo_st, ac_st, lr_t = _thin(s, lo, lo_s, ac_s, lr_)
    es = np.asarray(eval_steps, dtype=np.float64)
    xmax = float(total_steps) if total_steps else float(max(s.max(initial=1.0), es.max(initial=1.0)))
    line = {"type": "scatter", "mode": "lines"}
    data = [
        {**line, "x": xs, "y": lo_t, "name": "train loss (batch)", "line": {"color": TRAIN_COLOR, "width": 1}, "opacity": 0.25, "showlegend": False, "hovertemplate": "step %{x}<br>batch loss %{y:.3f}<extra></extra>"},
        {**line, "x": xs, "y": lo_st, "name": "train", "legendgroup": "train", "line": {"color": TRAIN_COLOR, "width": 2}, "hovertemplate": "step %{x}<br>train loss (avg) %{y:.3f}<extra></extra>"},
        {"type": "scatter", "mode": "lines+markers", "x": es, "y": np.asarray(eval_loss, dtype=np.float64), "name": "test", "legendgroup": "test", "line": {"color": TEST_COLOR, "width": 2}, "marker": {"size": 6}, "hovertemplate": "step %{x}<br>test loss %{y:.3f}<extra></extra>"},
        {**line, "x": xs, "y": ac_st * 100, "xaxis": "x2", "yaxis": "y2", "name": "train", "legendgroup": "train", "showlegend": False, "line": {"color": TRAIN_COLOR, "width": 2}, "hovertemplate": "step %{x}<br>train accuracy (avg) %{y:.1f}%<extra></extra>"},
        {"type": "scatter", "mode": "lines+markers", "x": es, "y": np.asarray(eval_acc, dtype=np.float64) * 100, "xaxis": "x2", "yaxis": "y2", "name": "test", "legendgroup": "test", "showlegend": False, "line": {"color": TEST_COLOR, "width": 2}, "marker": {"size": 6}, "hovertemplate": "step %{x}<br>test accuracy %{y:.1f}%<extra></extra>"},
        {**line, "x": xs, "y": lr_t, "xaxis": "x3", "yaxis": "y3", "name": "learning rate", "showlegend": False, "line": {"color": LR_COLOR, "width": 2}, "hovertemplate": "step %{x}<br>lr %{y:.2e}<extra></extra>"},
    ]  # fmt: skip
    xr = [0, xmax]
    axis = {"range": xr, "title": {"text": "step"}, "zeroline": False}
    layout = {
        **base_layout(height, margin={"l": 50, "r": 10, "t": 30, "b": 40}),
        "showlegend": True,
        "legend": {"orientation": "h", "x": 0.0, "y": 1.02, "xanchor": "left", "yanchor": "bottom"},
        "hovermode": "x unified",
        "xaxis": {**axis, "domain": [0.0, 0.29]},
        "xaxis2": {**axis, "domain": [0.355, 0.645], "anchor": "y2"},
        "xaxis3": {**axis, "domain": [0.71, 1.0], "anchor": "y3"},
        "yaxis": {"title": {"text": "loss"}, "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "accuracy (%)"}, "range": [0, 100], "anchor": "x2"},
        "yaxis3": {"title": {"text": "learning rate"}, "exponentformat": "e", "rangemode": "tozero", "anchor": "x3"},
    }  # fmt: skip
    return figure(data, layout)


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], height: int = 420) -> go.Figure:
    """The confusion matrix: rows are true classes, columns predictions; colour = share of the row.

    Args:
        confusion: (K, K) counts, `confusion[true][predicted]`.
    """
    c = np.asarray(confusion, dtype=np.float64)
    K = c.shape[0]
    if c.shape != (K, K) or len(class_names) != K:
        raise ValueError(f"confusion {c.shape} does not match {len(class_names)} class names")
    share = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    names = list(class_names)
    counts = c.astype(np.int64)
    heat = {
        "type": "heatmap",
        "z": share,
        "x": names,
        "y": names,
        "zmin": 0,
        "zmax": 1,
        "colorscale": named_colorscale("Blues"),
        "customdata": counts,
        "text": np.where(counts > 0, counts.astype(str), ""),
        "texttemplate": "%{text}" if K <= 20 else "",
        "hovertemplate": "true %{y}, predicted %{x}<br>%{customdata} images (%{z:.1%} of the %{y}s)<extra></extra>",
        "colorbar": {"title": {"text": "share<br>of row"}, "thickness": 14},
    }
    layout = {
        **base_layout(height, margin={"l": 90, "r": 10, "t": 10, "b": 80}),
        "xaxis": {"title": {"text": "predicted"}, "tickangle": -45, "constrain": "domain"},
        "yaxis": {"title": {"text": "true"}, "autorange": "reversed", "scaleanchor": "x", "constrain": "domain"},
    }
    return figure([heat], layout)


def per_class_figure(per_class_acc: Sequence[float], class_names: Sequence[str], height: int = 420) -> go.Figure:
    """Accuracy (recall) of each class as horizontal bars, with the mean as a dotted line."""
    a = np.asarray(per_class_acc, dtype=np.float64) * 100
    names = list(class_names)
    if len(a) != len(names):
        raise ValueError(f"{len(a)} accuracies for {len(names)} classes")
    mean = float(a.mean()) if len(a) else 0.0
    bars = {
        "type": "bar",
        "orientation": "h",
        "x": a,
        "y": names,
        "marker": {"color": a, "colorscale": named_colorscale("Viridis"), "cmin": 0, "cmax": 100},
        "text": [f"{v:.0f}%" for v in a],
        "textposition": "auto",
        "hovertemplate": "%{y}: %{x:.1f}% of its test images right<extra></extra>",
    }
    layout = {
        **base_layout(height, margin={"l": 90, "r": 10, "t": 28, "b": 40}),
        "xaxis": {"range": [0, 100], "title": {"text": "accuracy (%)"}},
        "yaxis": {"autorange": "reversed"},
        "shapes": [
            {
                "type": "line",
                "x0": mean,
                "x1": mean,
                "y0": 0,
                "y1": 1,
                "yref": "paper",
                "line": {"dash": "dot", "color": "#888"},
            }
        ],
        "annotations": [
            {
                "x": mean,
                "y": 1,
                "yref": "paper",
                "text": f"mean {mean:.0f}%",
                "showarrow": False,
                "yanchor": "bottom",
                "xanchor": "right" if mean > 70 else "left",
                "font": {"size": 11},
            }
        ],
    }
    return figure([bars], layout)
