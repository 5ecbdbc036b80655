"""Position embeddings: the similarity tiles of ViT Figure 7 (centre) and one patch's map."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ._base import base_layout, box_shapes, figure, mosaic, named_colorscale

SIMILARITY_SCALE = "Viridis"


def similarity_tiles_figure(sim: np.ndarray, selected: int | None = None, height: int = 560) -> go.Figure:
    """A gh x gw grid of tiles; tile (i, j) is patch (i, j)'s cosine similarity with every position.

    Hovering a cell reads 'position of patch a vs patch b: cos'. Each tile has an invisible
    click target at its centre (customdata[0] is the tile's patch index).

    Args:
        sim: (gh, gw, gh, gw) cosine similarities.
        selected: a tile to outline.
    """
    s = np.asarray(sim, dtype=np.float32)
    gh, gw = s.shape[:2]
    n = gh * gw
    m, corners = mosaic(s.reshape(n, gh, gw), gw, gap=1, fill=np.nan)
    Hm, Wm = m.shape
    tile_of = np.full(m.shape, -1, np.int64)
    cell_of = np.full(m.shape, -1, np.int64)
    for t, (r, c) in enumerate(corners):
        tile_of[r : r + gh, c : c + gw] = t
        cell_of[r : r + gh, c : c + gw] = np.arange(n).reshape(gh, gw)
    heat = {
        "type": "heatmap",
        "z": m,
        "x0": 0.5,
        "y0": 0.5,
        "colorscale": named_colorscale(SIMILARITY_SCALE),
        "zmin": -1,
        "zmax": 1,
        "customdata": np.stack([tile_of, cell_of], axis=-1),
        "hoverongaps": False,
        "colorbar": {"title": {"text": "cosine<br>similarity"}, "thickness": 14},
        "hovertemplate": "position of patch %{customdata[0]} vs patch %{customdata[1]}<br>cos %{z:.3f}<extra></extra>",
    }
    idx = np.arange(n)
    targets = {
        "type": "scatter",
        "x": corners[:, 1] + gw / 2,
        "y": corners[:, 0] + gh / 2,
        "mode": "markers",
        "marker": {"size": 14, "symbol": "square", "opacity": 0, "color": "rgba(0,0,0,0)"},
        "customdata": np.stack([idx, idx // gw, idx % gw], axis=1),
        # not hoverinfo "skip": plotly sends no click events for a skipped trace, so no tile click arrived
        "hovertemplate": "tile of patch %{customdata[0]} (row %{customdata[1]}, col %{customdata[2]}):"
        "<br>click to see it large<extra></extra>",
        "selected": {"marker": {"opacity": 0}},
        "unselected": {"marker": {"opacity": 0}},
        "showlegend": False,
    }
    layout = {
        **base_layout(height),
        "xaxis": {"range": [0, Wm], "visible": False, "constrain": "domain"},
        "yaxis": {"range": [Hm, 0], "visible": False, "scaleanchor": "x", "constrain": "domain"},
    }
    if selected is not None:
        r, c = corners[int(selected)]
        layout["shapes"] = box_shapes(
            np.array([[c - 0.3, r - 0.3, c + gw + 0.3, r + gh + 0.3]]), color="#ff3d7f", width=2.5
        )
    return figure([heat, targets], layout)


def similarity_map_figure(tile: np.ndarray, patch: int, height: int = 420) -> go.Figure:
    """One patch's position similarity with every position, large, its own cell outlined.

    Args:
        tile: (gh, gw) cosine similarities.
        patch: the patch index (row-major) the tile belongs to.
    """
    t = np.asarray(tile, dtype=np.float32)
    gh, gw = t.shape
    heat = {
        "type": "heatmap",
        "z": t,
        "colorscale": named_colorscale(SIMILARITY_SCALE),
        "zmin": -1,
        "zmax": 1,
        "colorbar": {"title": {"text": "cosine<br>similarity"}, "thickness": 14},
        "hovertemplate": "patch at row %{y}, col %{x}<br>cos %{z:.3f}<extra></extra>",
    }
    r, c = divmod(int(patch), gw)
    layout = {
        **base_layout(height),
        "xaxis": {"range": [-0.5, gw - 0.5], "visible": False, "constrain": "domain"},
        "yaxis": {"range": [gh - 0.5, -0.5], "visible": False, "scaleanchor": "x", "constrain": "domain"},
        "shapes": box_shapes(np.array([[c - 0.5, r - 0.5, c + 0.5, r + 0.5]]), color="#ff3d7f", width=3),
    }
    return figure([heat], layout)
