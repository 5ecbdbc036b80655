"""Patches: the animation into a sequence, the flattened patch matrix, the patch-size what-if."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ._base import base_layout, figure, named_colorscale, png_data_uri, to_uint8


def sequence_layout(n: int, gw: int) -> int:
    """Patches per row of the lined-up sequence: one row when short, else rows of 2*gw (at most 32)."""
    return n if n <= 24 else min(32, max(2 * gw, 8))


def patch_animation_figure(
    image: np.ndarray, grid: tuple[int, int], patch_size: int, n_frames: int = 10, height: int | None = None
) -> go.Figure:
    """Patches leave the image and line up as a sequence (play button, plotly frames).

    Frame 0 is the image cut along its grid (small gaps open between the patches); in the
    last frame patch i sits at position i of the sequence, read left to right and top to
    bottom, under the image. Each patch is one image trace; the frames move its `x0`, `y0`.

    Args:
        image: (H, W, 3) model input for display.
        grid: (gh, gw); patch_size: P.
        n_frames: frames from grid to sequence (>= 2).
        height: in pixels; default: fitted to a ~900 px wide canvas.
    """
    a = to_uint8(image)
    gh, gw = int(grid[0]), int(grid[1])
    P = int(patch_size)
    n = gh * gw
    H, W = gh * P, gw * P
    if a.shape[0] != H or a.shape[1] != W:
        raise ValueError(f"image {a.shape[:2]} is not the {gh}x{gw} grid of {P}-pixel patches")
    gap = max(1.0, P * 0.25)
    per_row = sequence_layout(n, gw)
    idx = np.arange(n)
    r, c = idx // gw, idx % gw
    start = np.stack([c * (P + gap), r * (P + gap)], axis=1).astype(float)  # the grid, exploded
    seq_top = H + gh * gap + 3 * P
    end = np.stack([(idx % per_row) * (P + gap), seq_top + (idx // per_row) * (P + gap)], axis=1).astype(float)
    scale = max(1, int(np.ceil(24 / P)))  # each patch's source is at least 24 px, drawn pixel-sharp
    half = 0.5 / scale
    # trace 0: a faint ghost of the image where the grid was, so the origin stays visible
    gx, gy = (gw * (P + gap) - gap) / W, (gh * (P + gap) - gap) / H
    ghost = {
        "type": "image",
        "source": png_data_uri(a),
        "x0": gx / 2,
        "y0": gy / 2,
        "dx": gx,
        "dy": gy,
        "opacity": 0.25,
        "hoverinfo": "skip",
    }
    traces = [ghost]
    for i in range(n):
        tile = a[r[i] * P : (r[i] + 1) * P, c[i] * P : (c[i] + 1) * P]
        if scale > 1:
            tile = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
        traces.append(
            {
                "type": "image",
                "source": png_data_uri(tile),
                "x0": start[i, 0] + half,
                "y0": start[i, 1] + half,
                "dx": 1.0 / scale,
                "dy": 1.0 / scale,
                "name": f"patch {i}",
                "hovertemplate": f"patch {i} (row {r[i]}, col {c[i]})<extra></extra>",
            }
        )
    frames = []
    delay = 0.5 * idx / max(n - 1, 1)  # patches leave in reading order
    for k, t in enumerate(np.linspace(0.0, 1.0, max(2, n_frames))):
        e = t * t * (3 - 2 * t)  # smoothstep
        local = np.clip((e - delay) / 0.5, 0.0, 1.0)[:, None]
        pos = start + (end - start) * local
        frames.append(
            {
                "name": str(k),
                "data": [{"type": "image", "x0": float(p[0] + half), "y0": float(p[1] + half)} for p in pos],
                "traces": list(range(1, n + 1)),
            }
        )
    width = max(end[:, 0].max(), start[:, 0].max()) + P
    bottom = end[:, 1].max() + P
    if height is None:
        height = int(np.clip(900 * (bottom + P) / (width + P) + 60, 260, 700))
    play = {
        "label": "▶ Play",
        "method": "animate",
        "args": [
            None,
            {
                "frame": {"duration": 150, "redraw": True},
                "transition": {"duration": 0},
                "fromcurrent": False,
                "mode": "immediate",
            },
        ],
    }
    back = {
        "label": "⟲ Reset",
        "method": "animate",
        "args": [["0"], {"frame": {"duration": 0, "redraw": True}, "transition": {"duration": 0}, "mode": "immediate"}],
    }
    layout = {
        **base_layout(height, margin={"l": 10, "r": 10, "t": 50, "b": 10}),
        "xaxis": {"range": [-P * 2.0, width + P * 0.5], "visible": False},
        "yaxis": {"range": [bottom + P * 0.5, -P * 0.5], "visible": False, "scaleanchor": "x"},
        "annotations": [
            {
                "x": 0,
                "y": seq_top - 1.5 * P,
                "xanchor": "left",
                "text": f"the sequence: {n} patch tokens, patch 0 first",
                "showarrow": False,
                "font": {"size": 13},
            }
        ]
        + [  # the index of the first patch of each row of the sequence
            {
                "x": -0.4 * P,
                "y": seq_top + row * (P + gap) + P / 2,
                "xanchor": "right",
                "text": str(row * per_row),
                "showarrow": False,
                "font": {"size": 11},
            }
            for row in range(int(np.ceil(n / per_row)))
        ],
        "updatemenus": [
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": 1.1,
                "xanchor": "left",
                "showactive": False,
                "buttons": [play, back],
            }
        ],
    }
    return figure(traces, layout, frames)


def patch_matrix_figure(
    patches: np.ndarray, channels: int, patch_size: int, max_tokens: int = 256, height: int = 420
) -> go.Figure:
    """The flattened patches as a matrix: one row per patch token, C*P*P columns in (c, p1, p2) order.

    Args:
        patches: (n, C*P*P) values (normalised pixels, as the model sees them).
        channels: C; patch_size: P.
        max_tokens: rows shown at most (the first ones).
    """
    m = np.asarray(patches, dtype=np.float32)
    n, f = m.shape
    if f != channels * patch_size * patch_size:
        raise ValueError(f"{f} columns do not match {channels} x {patch_size} x {patch_size}")
    m = m[:max_tokens]
    lim = float(np.abs(m).max()) or 1.0
    block = patch_size * patch_size
    names = ["R", "G", "B"] if channels == 3 else [f"c{i}" for i in range(channels)]
    heat = {
        "type": "heatmap",
        "z": m,
        "colorscale": named_colorscale("RdBu_r"),
        "zmin": -lim,
        "zmax": lim,
        "colorbar": {"title": {"text": "normalised<br>pixel value"}, "thickness": 14},
        "hovertemplate": "patch %{y}, value %{x}<br>%{z:.3f}<extra></extra>",
    }
    seps = [
        {
            "type": "line",
            "x0": i * block - 0.5,
            "x1": i * block - 0.5,
            "y0": -0.5,
            "y1": m.shape[0] - 0.5,
            "line": {"color": "#888", "width": 1},
        }
        for i in range(1, channels)
    ]
    layout = {
        **base_layout(height, margin={"l": 60, "r": 10, "t": 10, "b": 50}),
        "xaxis": {
            "title": {
                "text": f"{f} values per patch: {', '.join(names)} channels, each {patch_size}x{patch_size} row by row"
            },
            "tickvals": [(i + 0.5) * block for i in range(channels)],
            "ticktext": names,
            "showgrid": False,
        },
        "yaxis": {"title": {"text": "patch (token) index"}, "autorange": "reversed", "showgrid": False},
        "shapes": seps,
    }
    return figure([heat], layout)


def patch_size_whatif(
    img_size: tuple[int, int], patch_sizes: Sequence[int], num_prefix_tokens: int = 1
) -> dict[str, np.ndarray]:
    """Token count and attention cost for each patch size that divides the image.

    Returns:
        'patch_size' (m,), 'tokens' N = k + (H/P)(W/P) (m,), 'attention_entries' N^2 per head
        and layer (m,), 'values_per_patch' 3*P*P (m,).
    """
    H, W = int(img_size[0]), int(img_size[1])
    ps = np.asarray([p for p in patch_sizes if p > 0 and H % p == 0 and W % p == 0], dtype=np.int64)
    tokens = num_prefix_tokens + (H // ps) * (W // ps)
    return {
        "patch_size": ps,
        "tokens": tokens,
        "attention_entries": tokens.astype(np.int64) ** 2,
        "values_per_patch": 3 * ps * ps,
    }


def patch_size_figure(whatif: dict[str, np.ndarray], current: int | None = None, height: int = 460) -> go.Figure:
    """Tokens and attention-matrix entries against patch size (log scale); the model's own patch size in red.

    The two bar charts are stacked, each with its title above it: side by side, in the narrow
    column the page gives them, the titles ran into each other and the bar labels turned sideways.
    """
    ps = whatif["patch_size"]
    labels = [f"P={p}" for p in ps]
    colors = ["#ef553b" if current is not None and p == current else "#636efa" for p in ps]

    def bars(y: np.ndarray, what: str, axis: str) -> dict:
        return {
            "type": "bar",
            "x": labels,
            "y": y,
            "marker": {"color": colors},
            "text": [f"{v:,}" for v in y],
            "textposition": "outside",
            "textangle": 0,
            "cliponaxis": False,
            "hovertemplate": "%{x}: %{y:,} " + what + "<extra></extra>",
            "xaxis": f"x{axis}",
            "yaxis": f"y{axis}",
        }

    def title(text: str, y: float) -> dict:
        return {
            "text": text,
            "x": 0,
            "xanchor": "left",
            "y": y,
            "xref": "paper",
            "yref": "paper",
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": 14},
        }

    top, bottom = [0.58, 0.94], [0.0, 0.36]
    layout = {
        **base_layout(height, margin={"l": 50, "r": 10, "t": 10, "b": 30}),
        "xaxis": {"anchor": "y"},
        "xaxis2": {"anchor": "y2"},
        "yaxis": {"type": "log", "domain": top, "dtick": 1, "exponentformat": "SI"},
        "yaxis2": {"type": "log", "domain": bottom, "dtick": 1, "exponentformat": "SI"},
        "annotations": [
            title("tokens N", top[1] + 0.02),
            title("attention weights N² (per head, per layer)", bottom[1] + 0.04),
        ],
    }
    return figure(
        [bars(whatif["tokens"], "tokens", ""), bars(whatif["attention_entries"], "attention weights", "2")], layout
    )
