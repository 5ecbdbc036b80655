"""Images with things on them: the patch grid, heat-map overlays, the preprocessing crop."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ._base import (
    MIN_DISPLAY_PX,
    ON_IMAGE_FONT,
    base_layout,
    blend,
    box_shapes,
    display_scale,
    figure,
    grid_lines,
    image_axes,
    image_trace,
    patch_centres,
    patch_targets,
    to_uint8,
)

SELECTED_COLOR = "#00e5ff"  # cyan: the query / chosen patch
MARKED_COLOR = "#ff3d7f"  # pink: occluded or otherwise marked patches


def patch_box_array(indices: Sequence[int], grid: tuple[int, int], patch_size: float) -> np.ndarray:
    """(m, 4) pixel boxes (x0, y0, x1, y1) of some patches (row-major indices)."""
    gw = int(grid[1])
    idx = np.asarray(list(indices), dtype=np.int64)
    r, c = idx // gw, idx % gw
    return np.stack([c * patch_size, r * patch_size, (c + 1) * patch_size, (r + 1) * patch_size], axis=1).astype(float)


def sharp(image: np.ndarray, min_px: int = MIN_DISPLAY_PX) -> np.ndarray:
    """Upscale a small image pixel-sharp for display (CIFAR's 32 px would be a blur otherwise).

    The integer scale brings the longer side to at least `min_px` pixels; (H, W[, C]) -> uint8.
    """
    a = to_uint8(image)
    s = display_scale(*a.shape[:2], min_px=min_px)
    return np.repeat(np.repeat(a, s, axis=0), s, axis=1) if s > 1 else a


def _marks(grid: tuple[int, int], patch_size: float, selected: int | None, marked: Sequence[int]) -> list[dict]:
    shapes = []
    if len(marked):
        shapes += box_shapes(patch_box_array(marked, grid, patch_size), color=MARKED_COLOR, width=2.5)
    if selected is not None:
        shapes += box_shapes(patch_box_array([selected], grid, patch_size), color=SELECTED_COLOR, width=3)
    return shapes


COLORBAR_PX = 100  # room for a colour bar with its title


def fit_width(layout: dict, height: float, width: float, colorbar: bool = False) -> dict:
    """Set the figure width so an image of `height` x `width` pixels fills its height (no side gaps).

    Streamlit shows such a figure at this width (or narrower, in a narrow column).
    """
    m = layout["margin"]
    plot_h = layout["height"] - m["t"] - m["b"]
    layout["width"] = int(round(plot_h * width / height + m["l"] + m["r"] + (COLORBAR_PX if colorbar else 0)))
    return layout


def image_figure(image: np.ndarray, height: int = 320, title: str | None = None) -> go.Figure:
    """Just the image, pixel-exact, no axes."""
    a = to_uint8(image)
    H, W = a.shape[:2]
    return figure([image_trace(sharp(a), (H, W))], fit_width({**base_layout(height, title), **image_axes(H, W)}, H, W))


def crop_figure(
    original: np.ndarray, crop_box: tuple[float, float, float, float], height: int = 320, title: str | None = None
) -> go.Figure:
    """The original image with the region the model sees outlined (resize + centre crop)."""
    a = to_uint8(original)
    H, W = a.shape[:2]
    shapes = box_shapes(np.asarray(crop_box, dtype=float)[None], color=SELECTED_COLOR, width=3, dash="dash")
    layout = fit_width({**base_layout(height, title), **image_axes(H, W), "shapes": shapes}, H, W)
    return figure([image_trace(sharp(a), (H, W))], layout)


def patch_grid_figure(
    image: np.ndarray,
    grid: tuple[int, int],
    patch_size: int,
    numbers: bool = True,
    selected: int | None = None,
    marked: Sequence[int] = (),
    height: int = 420,
    title: str | None = None,
) -> go.Figure:
    """The model input with its patch grid, the patch numbers, and click targets.

    Args:
        image: (H, W, 3) model input for display, H = gh*P, W = gw*P.
        grid: (gh, gw).
        patch_size: P.
        numbers: write each patch's index (token index minus the prefix) on it.
        selected: a patch outlined in cyan.
        marked: patches outlined in pink (e.g. occluded ones).
    """
    a = to_uint8(image)
    H, W = a.shape[:2]
    gh, gw = int(grid[0]), int(grid[1])
    data: list[dict] = [image_trace(sharp(a), (H, W))]
    if numbers and gh * gw <= 400:
        x, y = patch_centres(grid, patch_size)
        size = int(np.clip(height / max(gh, gw) * 0.36, 7, 14))
        data.append(
            {
                "type": "scatter",
                "x": x,
                "y": y,
                "mode": "text",
                "text": [str(i) for i in range(gh * gw)],
                "textfont": {**ON_IMAGE_FONT, "size": size},
                "hoverinfo": "skip",
            }
        )
    data.append(patch_targets(grid, patch_size))
    layout = {
        **base_layout(height, title),
        **image_axes(H, W),
        "shapes": grid_lines(grid, patch_size) + _marks(grid, patch_size, selected, marked),
        "hoverdistance": -1,
    }
    return figure(data, fit_width(layout, H, W))


def overlay_figure(
    image: np.ndarray,
    heat: np.ndarray,
    grid: tuple[int, int],
    patch_size: int,
    alpha: float = 0.6,
    colorscale: str = "Inferno",
    colorbar_title: str = "",
    value_name: str = "value",
    value_format: str = ".4f",
    vmin: float | None = None,
    vmax: float | None = None,
    selected: int | None = None,
    marked: Sequence[int] = (),
    smooth: bool = True,
    height: int = 420,
    title: str | None = None,
) -> go.Figure:
    """A patch-grid map upsampled to the image and blended over it, with hover values.

    Args:
        image: (H, W, 3) model input for display.
        heat: (gh, gw) values per patch (not rescaled: hover and colour bar show them as they are).
        grid, patch_size: the patch grid and P.
        alpha: weight of the colour map in the blend.
        colorscale: plotly colour scale; the colour bar is labelled `colorbar_title`.
        value_name: what hovering a patch calls the value.
        vmin, vmax: range of the colour scale (default: the map's own range).
        selected: patch outlined in cyan (the query); marked: patches outlined in pink.
        smooth: bilinear upsampling (False: one flat block per patch).
    """
    a = to_uint8(image)
    H, W = a.shape[:2]
    h = np.asarray(heat, dtype=np.float64)
    if h.shape != (int(grid[0]), int(grid[1])):
        raise ValueError(f"heat has shape {h.shape}, expected the grid {tuple(grid)}")
    lo = float(np.nanmin(h)) if vmin is None else float(vmin)
    hi = float(np.nanmax(h)) if vmax is None else float(vmax)
    blended = blend(a, h, alpha=alpha, colorscale=colorscale, vmin=lo, vmax=hi, smooth=smooth)
    hover = (
        "patch %{customdata[0]:.0f} (row %{customdata[1]:.0f}, col %{customdata[2]:.0f})<br>"
        + f"{value_name} %{{customdata[3]:{value_format}}}<extra></extra>"
    )
    targets = patch_targets(grid, patch_size, h.reshape(-1), hover, colorscale, lo, hi, colorbar_title)
    layout = {
        **base_layout(height, title),
        **image_axes(H, W),
        "shapes": _marks(grid, patch_size, selected, marked),
        "hoverdistance": -1,
    }
    return figure([image_trace(blended, (H, W)), targets], fit_width(layout, H, W, colorbar=True))
