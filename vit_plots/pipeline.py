"""The overview diagram: the five steps of a ViT with live tensor shapes and parameter counts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from ._base import base_layout, figure

# Soft fills read on light and dark backgrounds alike; text keeps the theme's colour.
STAGE_FILLS = (
    "rgba(99,110,250,0.18)",
    "rgba(0,204,150,0.18)",
    "rgba(255,161,90,0.20)",
    "rgba(171,99,250,0.18)",
    "rgba(239,85,59,0.18)",
    "rgba(25,211,243,0.18)",
)
STAGE_LINES = ("#636efa", "#00cc96", "#ffa15a", "#ab63fa", "#ef553b", "#19d3f3")


@dataclass
class Stage:
    """One box of the diagram."""

    title: str  # e.g. "1. Patches"
    shape: str  # the tensor leaving this step, e.g. "196 x 768"
    detail: str = ""  # what happens, short; "<br>" breaks the line
    params: str = ""  # parameter count of this step, already formatted ("" for none)


def pipeline_figure(stages: Sequence[Stage], height: int = 240) -> go.Figure:
    """Boxes left to right joined by arrows, each with its title, output shape, detail and parameters."""
    n = len(stages)
    if n == 0:
        raise ValueError("no stages to draw")
    w, gap = 1.0, 0.3
    shapes, annotations = [], []
    for i, s in enumerate(stages):
        x0 = i * (w + gap)
        x1 = x0 + w
        color = STAGE_LINES[i % len(STAGE_LINES)]
        shapes.append(
            {
                "type": "rect",
                "x0": x0,
                "x1": x1,
                "y0": 0,
                "y1": 1,
                "fillcolor": STAGE_FILLS[i % len(STAGE_FILLS)],
                "line": {"color": color, "width": 2},
                "layer": "below",
            }
        )
        cx = (x0 + x1) / 2
        annotations.append({"x": cx, "y": 0.86, "text": f"<b>{s.title}</b>", "showarrow": False, "font": {"size": 14}})
        annotations.append(
            {"x": cx, "y": 0.6, "text": f"<b>{s.shape}</b>", "showarrow": False, "font": {"size": 15, "color": color}}
        )
        if s.detail:
            annotations.append({"x": cx, "y": 0.33, "text": s.detail, "showarrow": False, "font": {"size": 11}})
        if s.params:
            annotations.append({"x": cx, "y": 0.12, "text": s.params, "showarrow": False, "font": {"size": 11}})
        if i < n - 1:
            annotations.append(
                {
                    "x": x1 + gap - 0.02,
                    "y": 0.5,
                    "ax": x1 + 0.02,
                    "ay": 0.5,
                    "xref": "x",
                    "yref": "y",
                    "axref": "x",
                    "ayref": "y",
                    "showarrow": True,
                    "arrowhead": 3,
                    "arrowsize": 1.2,
                    "arrowwidth": 2,
                    "arrowcolor": "#888888",
                    "text": "",
                }
            )
    total = n * w + (n - 1) * gap
    hover = {
        "type": "scatter",
        "x": [i * (w + gap) + w / 2 for i in range(n)],
        "y": [0.5] * n,
        "mode": "markers",
        "marker": {"size": 40, "opacity": 0},
        "customdata": [[s.title, s.shape, s.detail, s.params] for s in stages],
        "hovertemplate": "%{customdata[0]}<br>output %{customdata[1]}<br>%{customdata[2]}<br>%{customdata[3]}<extra></extra>",
    }
    layout = {
        **base_layout(height),
        "shapes": shapes,
        "annotations": annotations,
        "xaxis": {"range": [-0.05, total + 0.05], "visible": False, "fixedrange": True},
        "yaxis": {"range": [-0.05, 1.05], "visible": False, "fixedrange": True},
    }
    return figure([hover], layout)
