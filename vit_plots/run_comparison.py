"""Two (or more) training runs on one chart: loss and test accuracy against the images seen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import plotly.graph_objects as go

from ._base import base_layout, figure
from .training import _thin, ema

RUN_COLORS = ("#636efa", "#ef553b", "#00a58a", "#ab63fa")


@dataclass
class RunCurves:
    """One run's curves, as `vit_core.runs.RunView` holds them."""

    name: str  # legend label, e.g. "ViT"
    batch_size: int  # images per step: the x axis counts images, so runs of two batch sizes line up
    steps: Sequence[int] = field(default_factory=list)
    loss: Sequence[float] = field(default_factory=list)  # training loss per step
    eval_steps: Sequence[int] = field(default_factory=list)
    eval_loss: Sequence[float] = field(default_factory=list)  # held-out loss at each evaluation
    eval_acc: Sequence[float] = field(default_factory=list)  # held-out accuracy in [0, 1]


def run_comparison_figure(runs: Sequence[RunCurves], total_images: int | None = None, height: int = 320) -> go.Figure:
    """Loss (left) and test accuracy (right) of every run against the training images seen.

    Each run has one colour: its training loss as a moving average (solid), its evaluations on
    held-out images as markers (test loss dashed, test accuracy solid).

    Args:
        runs: the runs, in legend order; a run with no steps yet is listed with no line.
        total_images: the x range (so that curves grow across it); default: the data.
    """
    if not runs:
        raise ValueError("no runs to compare")
    data = []
    xmax = 1.0
    for i, r in enumerate(runs):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        s = np.asarray(r.steps, dtype=np.float64) * r.batch_size
        lo = np.asarray(r.loss, dtype=np.float64)
        if len(s) != len(lo) or len(r.eval_steps) != len(r.eval_acc) or len(r.eval_steps) != len(r.eval_loss):
            raise ValueError(f"run {r.name!r}: every curve needs one value per step")
        xs, lo_s = _thin(s, ema(lo))
        es = np.asarray(r.eval_steps, dtype=np.float64) * r.batch_size
        xmax = max(xmax, s.max(initial=0.0), es.max(initial=0.0))
        group = {"legendgroup": r.name}
        data += [
            {"type": "scatter", "mode": "lines", "x": xs, "y": lo_s, "name": f"{r.name}: train loss", **group, "line": {"color": color, "width": 2}, "hovertemplate": f"{r.name}<br>%{{x:,}} images<br>train loss (avg) %{{y:.3f}}<extra></extra>"},
            {"type": "scatter", "mode": "lines+markers", "x": es, "y": np.asarray(r.eval_loss, dtype=np.float64), "name": f"{r.name}: test loss", **group, "line": {"color": color, "width": 1.5, "dash": "dash"}, "marker": {"size": 5}, "hovertemplate": f"{r.name}<br>%{{x:,}} images<br>test loss %{{y:.3f}}<extra></extra>"},
            {"type": "scatter", "mode": "lines+markers", "x": es, "y": np.asarray(r.eval_acc, dtype=np.float64) * 100, "xaxis": "x2", "yaxis": "y2", "name": f"{r.name}: test accuracy", **group, "line": {"color": color, "width": 2}, "marker": {"size": 6}, "hovertemplate": f"{r.name}<br>%{{x:,}} images<br>test accuracy %{{y:.1f}}%<extra></extra>"},
        ]  # fmt: skip
    xr = [0, float(total_images) if total_images else xmax]
    axis = {"range": xr, "title": {"text": "training images seen"}, "zeroline": False}
    layout = {
        **base_layout(height, margin={"l": 50, "r": 10, "t": 30, "b": 40}),
        "showlegend": True,
        "legend": {"orientation": "h", "x": 0.0, "y": 1.02, "xanchor": "left", "yanchor": "bottom"},
        "xaxis": {**axis, "domain": [0.0, 0.46]},
        "xaxis2": {**axis, "domain": [0.54, 1.0], "anchor": "y2"},
        "yaxis": {"title": {"text": "loss"}, "rangemode": "tozero"},
        "yaxis2": {"title": {"text": "test accuracy (%)"}, "range": [0, 100], "anchor": "x2"},
    }
    return figure(data, layout)
