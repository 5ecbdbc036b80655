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


def pipeline_figure(stages: Sequence[Stage], height: int | None = None, cols: int | None = None) -> go.Figure:
    """Boxes in reading order joined by arrows, each with its title, output shape, detail and parameters.

    Args:
        stages: the boxes, in order.
        height: of the figure in pixels (default: 230 per row of boxes).
        cols: boxes per row (default: all in one row). Text has a fixed size, so a box needs about
            150 px: six boxes in one row overflow a main column narrower than ~950 px; with
            `cols=3` the rows wrap, the last box of a row joined to the first of the next by an
            elbow arrow.
    """
    n = len(stages)
    if n == 0:
        raise ValueError("no stages to draw")
    cols = n if cols is None else max(1, min(int(cols), n))
    rows = -(-n // cols)
    w, gap, vgap = 1.0, 0.3, 0.45
    shapes, annotations = [], []

    def arrow(x: float, y: float, ax: float, ay: float) -> dict:
        return {
            "x": x,
            "y": y,
            "ax": ax,
            "ay": ay,
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

    def corner(i: int) -> tuple[float, float]:
        r, c = divmod(i, cols)
        return c * (w + gap), -r * (1 + vgap)  # left, bottom

    for i, s in enumerate(stages):
        x0, y0 = corner(i)
        x1, y1 = x0 + w, y0 + 1
        color = STAGE_LINES[i % len(STAGE_LINES)]
        shapes.append(
            {
                "type": "rect",
                "x0": x0,
                "x1": x1,
                "y0": y0,
                "y1": y1,
                "fillcolor": STAGE_FILLS[i % len(STAGE_FILLS)],
                "line": {"color": color, "width": 2},
                "layer": "below",
            }
        )
        cx = (x0 + x1) / 2
        annotations.append(
            {"x": cx, "y": y0 + 0.86, "text": f"<b>{s.title}</b>", "showarrow": False, "font": {"size": 14}}
        )
        annotations.append(
            {
                "x": cx,
                "y": y0 + 0.6,
                "text": f"<b>{s.shape}</b>",
                "showarrow": False,
                "font": {"size": 15, "color": color},
            }
        )
        if s.detail:
            annotations.append({"x": cx, "y": y0 + 0.33, "text": s.detail, "showarrow": False, "font": {"size": 11}})
        if s.params:
            annotations.append({"x": cx, "y": y0 + 0.12, "text": s.params, "showarrow": False, "font": {"size": 11}})
        if i == n - 1:
            continue
        nx0, ny0 = corner(i + 1)
        if ny0 == y0:  # same row: a straight arrow
            annotations.append(arrow(x1 + gap - 0.02, 0.5 + y0, x1 + 0.02, 0.5 + y0))
        else:  # wrap: down from this box, left along the gap, down into the next row's first box
            mid = y0 - vgap / 2
            ncx = nx0 + w / 2
            shapes.append(
                {
                    "type": "path",
                    "path": f"M {cx},{y0 - 0.02} L {cx},{mid} L {ncx},{mid}",
                    "line": {"color": "#888888", "width": 2},
                }
            )
            annotations.append(arrow(ncx, ny0 + 1 + 0.02, ncx, mid))
    total = cols * w + (cols - 1) * gap
    hover = {
        "type": "scatter",
        "x": [corner(i)[0] + w / 2 for i in range(n)],
        "y": [corner(i)[1] + 0.5 for i in range(n)],
        "mode": "markers",
        "marker": {"size": 40, "opacity": 0},
        "customdata": [[s.title, s.shape, s.detail, s.params] for s in stages],
        "hovertemplate": "%{customdata[0]}<br>output %{customdata[1]}<br>%{customdata[2]}<br>%{customdata[3]}<extra></extra>",
    }
    layout = {
        **base_layout(height or 230 * rows + 10),
        "shapes": shapes,
        "annotations": annotations,
        "xaxis": {"range": [-0.05, total + 0.05], "visible": False, "fixedrange": True},
        "yaxis": {"range": [-(rows - 1) * (1 + vgap) - 0.05, 1.05], "visible": False, "fixedrange": True},
    }
    return figure([hover], layout)
