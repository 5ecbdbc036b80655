"""Figures of the Experiments page: ViT vs CNN by data size, receptive field vs attention distance,
the ablations side by side, and the Figure 7 measures over a run's snapshots. Lists in, figures out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ._base import base_layout, figure

ARCH_COLOURS = {"vit": "#1f77b4", "resnet": "#d62728"}
ARCH_NAMES = {"vit": "ViT", "resnet": "ResNet (CNN)"}
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")


def _axis(title: str, **kw) -> dict:
    return {"title": {"text": title}, "gridcolor": "rgba(128,128,128,0.25)", "zeroline": False, **kw}


def _legend() -> dict:
    return {"showlegend": True, "legend": {"orientation": "h", "y": -0.25, "x": 0}}


def accuracy_vs_data_figure(
    table: Mapping[str, Sequence[tuple[int, float]]], height: int = 360, title: str | None = None
) -> go.Figure:
    """Test accuracy (%) against training-set size (log axis), one line per architecture.

    Args:
        table: arch ("vit", "resnet") -> (train_size, accuracy in [0, 1]) pairs (`data_size_table`).
    """
    data = []
    for arch, rows in table.items():
        if not rows:
            continue
        n, acc = zip(*sorted(rows))
        data.append(
            {
                "type": "scatter",
                "x": list(n),
                "y": [100 * a for a in acc],
                "mode": "lines+markers+text",
                "name": ARCH_NAMES.get(arch, arch),
                "text": [f"{100 * a:.1f}" for a in acc],
                "textposition": "top center",
                "line": {"color": ARCH_COLOURS.get(arch)},
                "hovertemplate": "%{x:,} images: %{y:.1f}%<extra>" + ARCH_NAMES.get(arch, arch) + "</extra>",
            }
        )
    sizes = sorted({n for rows in table.values() for n, _ in rows})
    layout = base_layout(
        height,
        title,
        xaxis=_axis("training images (class-balanced subset of CIFAR-10)", type="log", tickvals=sizes),
        yaxis=_axis("test accuracy (%)", rangemode="tozero"),
        margin={"l": 60, "r": 20, "t": 40 if title else 20, "b": 60},
        **_legend(),
    )
    return figure(data, layout)


def distance_by_depth_figure(
    series: Sequence[dict], height: int = 380, title: str | None = None, reference: float | None = None
) -> go.Figure:
    """Distances in input pixels by depth, one line per model: a ViT's mean attention distance per
    block and a CNN's effective-receptive-field distance per layer, on one axis.

    Args:
        series: dicts with "name", "values" (pixels, index 0 = first layer), optional "kind"
            ("vit" or "resnet": colour and marker), "dash" (e.g. "dot"), "layer_names".
        reference: a horizontal line (e.g. the distance of attention spread evenly over the image).
    """
    data = []
    for i, s in enumerate(series):
        v = [float(x) for x in s["values"]]
        kind = s.get("kind", "vit")
        names = s.get("layer_names") or [f"layer {d + 1}" for d in range(len(v))]
        data.append(
            {
                "type": "scatter",
                "x": list(range(1, len(v) + 1)),
                "y": v,
                "mode": "lines+markers",
                "name": s["name"],
                "text": list(names),
                "line": {
                    "color": s.get("color") or ARCH_COLOURS.get(kind, _PALETTE[i % len(_PALETTE)]),
                    "dash": s.get("dash", "solid"),
                },
                "marker": {"symbol": "square" if kind == "resnet" else "circle", "size": 8},
                "hovertemplate": "%{text}: %{y:.1f} px<extra>" + s["name"] + "</extra>",
            }
        )
    shapes = []
    if reference is not None:
        shapes.append(
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": reference,
                "y1": reference,
                "line": {"dash": "dash", "color": "rgba(128,128,128,0.8)", "width": 1},
            }
        )
    layout = base_layout(
        height,
        title,
        xaxis=_axis("depth (1 = first layer: ViT block 1, CNN stem)", dtick=1),
        yaxis=_axis("distance in input pixels", rangemode="tozero"),
        shapes=shapes,
        margin={"l": 60, "r": 20, "t": 40 if title else 20, "b": 60},
        **_legend(),
    )
    if reference is not None:
        layout["annotations"] = [
            {
                "xref": "paper",
                "x": 1,
                "y": reference,
                "yanchor": "bottom",
                "xanchor": "right",
                "showarrow": False,
                "text": f"attention spread evenly: {reference:.1f} px",
                "font": {"size": 11},
            }
        ]
    return figure(data, layout)


def ablation_accuracy_figure(rows: Sequence[dict], height: int | None = None) -> go.Figure:
    """Test accuracy per ablation run, horizontal bars, the baseline first and marked."""
    labels = [r["label"] for r in rows]
    acc = [100 * r["test_acc"] for r in rows]
    colours = ["#7f7f7f" if r["key"] == "baseline" else "#1f77b4" for r in rows]
    data = [
        {
            "type": "bar",
            "orientation": "h",
            "y": labels,
            "x": acc,
            "marker": {"color": colours},
            "text": [f"{a:.1f}%" for a in acc],
            "textposition": "auto",
            "hovertemplate": "%{y}: %{x:.1f}%<extra></extra>",
        }
    ]
    base = acc[0] if rows and rows[0]["key"] == "baseline" else None
    shapes = []
    if base is not None:
        shapes.append(
            {
                "type": "line",
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "x0": base,
                "x1": base,
                "line": {"dash": "dot", "color": "rgba(128,128,128,0.9)"},
            }
        )
    layout = base_layout(
        height or 60 + 34 * max(1, len(rows)),
        None,
        xaxis=_axis("test accuracy (%)", rangemode="tozero"),
        yaxis={"autorange": "reversed", "automargin": True},
        shapes=shapes,
        margin={"l": 10, "r": 20, "t": 10, "b": 50},
    )
    return figure(data, layout)


def ablation_by_depth_figure(
    rows: Sequence[dict], measure: str, axis_title: str, height: int = 340, title: str | None = None
) -> go.Figure:
    """One line per ablation run of a per-depth measure ("mean_attention_distance",
    "attention_entropy" or "logit_lens_accuracy"; the lens starts at depth 0, the embedding)."""
    data = []
    lens = measure == "logit_lens_accuracy"
    for i, r in enumerate(rows):
        v = [float(x) for x in r.get(measure) or []]
        if not v:
            continue
        scale = 100.0 if lens else 1.0
        data.append(
            {
                "type": "scatter",
                "x": list(range(0 if lens else 1, len(v) + (0 if lens else 1))),
                "y": [scale * x for x in v],
                "mode": "lines+markers",
                "name": r["label"],
                "line": {"color": _PALETTE[i % len(_PALETTE)], "width": 3 if r["key"] == "baseline" else 1.5},
                "hovertemplate": "depth %{x}: %{y:.2f}<extra>" + r["label"] + "</extra>",
            }
        )
    layout = base_layout(
        height,
        title,
        xaxis=_axis("after block (0 = the embedding)" if lens else "block", dtick=1),
        yaxis=_axis(axis_title, rangemode="tozero"),
        margin={"l": 60, "r": 20, "t": 40 if title else 20, "b": 60},
        **_legend(),
    )
    return figure(data, layout)


def emergence_figure(steps: Sequence[int], measures: Sequence[Mapping], height: int = 560) -> go.Figure:
    """The Figure 7 measures of a run's snapshots as lines over training steps, four panels:
    mean attention distance per block, attention entropy per block, the position structure
    score, and the logit-lens accuracy after each block.

    Args:
        steps: the snapshots' steps.
        measures: one `emergence_measures` dict per step (same keys and depths throughout).
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=(
            "mean attention distance (px) per block",
            "attention entropy (nats) per block",
            "position structure score",
            "logit-lens accuracy (%) after each block",
        ),
        vertical_spacing=0.16,
        horizontal_spacing=0.1,
    )
    x = [int(s) for s in steps]

    def lines(key: str, row: int, col: int, scale: float = 1.0, start: int = 1, label: str = "block") -> None:
        arr = np.array([m.get(key) or [] for m in measures], dtype=float)
        if arr.ndim != 2 or arr.shape[1] == 0:
            return
        n = arr.shape[1]
        for d in range(n):
            shade = 0.25 + 0.75 * d / max(1, n - 1)
            name = f"{label} {d + start}" if not (start == 0 and d == 0) else "embedding"
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=scale * arr[:, d],
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=False,
                    line={"color": f"rgba(31,119,180,{shade:.2f})"},
                    hovertemplate="step %{x}: %{y:.2f}<extra>" + name + "</extra>",
                ),
                row=row,
                col=col,
            )

    lines("mean_attention_distance", 1, 1)
    lines("attention_entropy", 1, 2)
    score = [m.get("position_structure_score") for m in measures]
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[np.nan if s is None else s for s in score],
            mode="lines+markers",
            line={"color": "#2ca02c"},
            showlegend=False,
            hovertemplate="step %{x}: %{y:.3f}<extra>position structure</extra>",
        ),
        row=2,
        col=1,
    )
    lines("logit_lens_accuracy", 2, 2, scale=100.0, start=0, label="after block")
    fig.update_layout(**base_layout(height, None, margin={"l": 50, "r": 20, "t": 40, "b": 40}))
    fig.update_xaxes(title_text="training step", gridcolor="rgba(128,128,128,0.25)", row=2)
    fig.update_yaxes(gridcolor="rgba(128,128,128,0.25)")
    return fig
