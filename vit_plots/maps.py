"""Patch-grid maps drawn over any picture of the input: the model input, or the original photo.

The model sees a region of the photo (`crop_box`, in the photo's pixels: `resize` + centre crop,
or a squash) resized to its input size. A map over its `gh x gw` patch grid is therefore drawn
over the photo by stretching the grid onto that region: patch (i, j) covers
x in [left + j*bw/gw, left + (j+1)*bw/gw], y in [top + i*bh/gh, top + (i+1)*bh/gh], with
bw, bh the box's width and height. Outside the box the photo is dimmed (the model never saw it).
With the box covering the whole image the same code draws over the model input.

Figures are in the picture's own pixel coordinates; the patch markers (hover, clicks) sit at
the mapped patch centres.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from ._base import (
    base_layout,
    box_shapes,
    colorscale_lut,
    display_scale,
    figure,
    image_axes,
    named_colorscale,
    normalise,
    patch_targets,
    png_data_uri,
    to_uint8,
    upsample,
)

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in image pixels
COLORSCALES = ("Inferno", "Viridis", "Turbo", "Hot", "Blues", "Greys")  # choices offered to users
OUTSIDE_DIM = 0.55  # share of brightness taken from the photo outside the crop
JPEG_ABOVE_PX = 256  # blended photos larger than this go out as JPEG (a tenth of a PNG's bytes)
COLORBAR_PX = 100


def jpeg_data_uri(image: np.ndarray, quality: int = 88) -> str:
    """An (H, W, 3) image as a `data:image/jpeg;base64,...` URI (photos: far smaller than PNG)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)[..., :3]).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _data_uri(image: np.ndarray) -> str:
    return jpeg_data_uri(image) if max(image.shape[:2]) > JPEG_ABOVE_PX else png_data_uri(image)


def patch_boxes_on(grid: tuple[int, int], box: Box) -> np.ndarray:
    """(n, 4) boxes (x0, y0, x1, y1) of the grid's patches, row-major, stretched onto `box`."""
    gh, gw = int(grid[0]), int(grid[1])
    left, top, right, bottom = (float(v) for v in box)
    pw, ph = (right - left) / gw, (bottom - top) / gh
    i, j = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    return np.stack([left + j * pw, top + i * ph, left + (j + 1) * pw, top + (i + 1) * ph], axis=1)


def _pixel_box(box: Box, scale: float, height: int, width: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = (float(v) * scale for v in box)
    x0, y0 = int(np.clip(round(left), 0, width)), int(np.clip(round(top), 0, height))
    x1, y1 = int(np.clip(round(right), x0, width)), int(np.clip(round(bottom), y0, height))
    return x0, y0, x1, y1


def heat_on_image(
    image: np.ndarray,
    heat: np.ndarray,
    box: Box | None = None,
    alpha: float = 0.6,
    colorscale: str = "Inferno",
    vmin: float | None = None,
    vmax: float | None = None,
    smooth: bool = True,
    dim: float = OUTSIDE_DIM,
    scale: int | None = None,
) -> np.ndarray:
    """A patch-grid map stretched onto `box` of an image and blended there; the rest dimmed.

    Args:
        image: (H, W, 3) float in [0, 1] or uint8: the model input or the original photo.
        heat: (gh, gw) values per patch (any range).
        box: (left, top, right, bottom) in image pixels that the model saw (default: all of it).
        alpha: weight of the colour map inside the box, 0 (image only) to 1 (map only).
        colorscale: plotly colour scale name.
        vmin, vmax: values at the ends of the colour scale (default: the map's own range).
        smooth: bilinear upsampling; False draws one flat block per patch (the raw grid).
        dim: share of brightness removed outside the box.
        scale: integer pixel-sharp upscale of the image (default: small images to ~128 px).

    Returns:
        (H*scale, W*scale, 3) uint8.
    """
    img = to_uint8(image)[..., :3]
    H, W = img.shape[:2]
    s = display_scale(H, W) if scale is None else int(scale)
    if s > 1:
        img = np.repeat(np.repeat(img, s, axis=0), s, axis=1)
    x0, y0, x1, y1 = _pixel_box((0, 0, W, H) if box is None else box, s, H * s, W * s)
    out = img.astype(np.float32)
    if dim > 0:
        out *= 1.0 - float(dim)
    if x1 > x0 and y1 > y0:
        big = upsample(np.asarray(heat, dtype=np.float32), (y1 - y0, x1 - x0), smooth=smooth)
        t, _, _ = normalise(big, vmin, vmax)
        lut = colorscale_lut(colorscale)
        col = lut[np.round(t * (len(lut) - 1)).astype(np.int64)].astype(np.float32)
        out[y0:y1, x0:x1] = (1.0 - alpha) * img[y0:y1, x0:x1].astype(np.float32) + alpha * col
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _image_trace(pixels: np.ndarray, height: int, width: int, **kw) -> dict:
    """A blended picture (maybe upscaled) placed over x in [0, width], y in [0, height]."""
    h, w = pixels.shape[:2]
    dx, dy = width / w, height / h
    return {
        "type": "image",
        "source": _data_uri(pixels),
        "x0": dx / 2,
        "y0": dy / 2,
        "dx": dx,
        "dy": dy,
        "hoverinfo": "skip",
        "name": "map",
        **kw,
    }


def _targets(grid: tuple[int, int], box: Box, heat: np.ndarray, hover: str, **kw) -> dict:
    """Invisible patch markers at the centres of the stretched patches (hover and clicks)."""
    t = patch_targets(grid, 1.0, np.asarray(heat).reshape(-1), hover, **kw)
    b = patch_boxes_on(grid, box)
    t["x"], t["y"] = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    return t


def _hover(value_name: str, value_format: str) -> str:
    return (
        "patch %{customdata[0]:.0f} (row %{customdata[1]:.0f}, col %{customdata[2]:.0f})<br>"
        + f"{value_name} %{{customdata[3]:{value_format}}}<extra></extra>"
    )


def shared_range(
    heats: Sequence[np.ndarray], vmin: float | None = None, vmax: float | None = None
) -> tuple[float, float]:
    """One (vmin, vmax) for several maps: the smallest and largest value over all of them."""
    lo = min(float(np.nanmin(h)) for h in heats) if vmin is None else float(vmin)
    hi = max(float(np.nanmax(h)) for h in heats) if vmax is None else float(vmax)
    return lo, hi if hi > lo else lo + 1e-12


def map_figure(
    image: np.ndarray,
    heat: np.ndarray,
    grid: tuple[int, int],
    box: Box | None = None,
    alpha: float = 0.6,
    colorscale: str = "Inferno",
    smooth: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_title: str = "",
    value_name: str = "value",
    value_format: str = ".4f",
    selected: int | None = None,
    height: int = 420,
    title: str | None = None,
    max_width: int = 640,
) -> go.Figure:
    """A map over any picture of the input (`heat_on_image`), with hover values, clicks and a colour bar.

    Args:
        image: (H, W, 3) the picture, e.g. the original photo (at most ~1024 px is plenty).
        heat: (gh, gw) values per patch.
        grid: (gh, gw).
        box: the region of `image` the model saw (dashed outline when it is not all of it).
        selected: a patch outlined in cyan (the query).
        height, max_width: the figure's size at most; a wide picture makes the figure lower rather
            than wider than `max_width` (a narrower column shrinks it further, keeping its height).
        others: as `heat_on_image` and `vit_plots.overlay_figure`.
    """
    a = to_uint8(image)
    H, W = a.shape[:2]
    h = np.asarray(heat, dtype=np.float64)
    if h.shape != (int(grid[0]), int(grid[1])):
        raise ValueError(f"heat has shape {h.shape}, expected the grid {tuple(grid)}")
    b = (0.0, 0.0, float(W), float(H)) if box is None else tuple(float(v) for v in box)
    lo, hi = shared_range([h], vmin, vmax)
    pixels = heat_on_image(a, h, b, alpha, colorscale, lo, hi, smooth)
    shapes = []
    if b != (0.0, 0.0, float(W), float(H)):
        shapes += box_shapes(np.asarray(b)[None], color="#00e5ff", width=2, dash="dash")
    if selected is not None:
        shapes += box_shapes(patch_boxes_on(grid, b)[[int(selected)]], color="#00e5ff", width=3)
    targets = _targets(
        grid,
        b,
        h,
        _hover(value_name, value_format),
        colorscale=colorscale,
        cmin=lo,
        cmax=hi,
        colorbar_title=colorbar_title,
    )
    # markers as large as the patches on screen, so that a click anywhere on a patch hits it
    layout = {**base_layout(height, title), **image_axes(H, W), "shapes": shapes, "hoverdistance": -1}
    m = layout["margin"]
    plot_h = min(height - m["t"] - m["b"], (max_width - m["l"] - m["r"] - COLORBAR_PX) * H / W)
    layout["height"] = int(round(plot_h + m["t"] + m["b"]))
    targets["marker"]["size"] = float(np.clip(plot_h * (b[3] - b[1]) / H / int(grid[0]), 6, 60))
    layout["width"] = int(round(plot_h * W / H + m["l"] + m["r"] + COLORBAR_PX))
    return figure([_image_trace(pixels, H, W), targets], layout)


def compare_maps_figure(
    image: np.ndarray,
    heats: Sequence[np.ndarray],
    titles: Sequence[str],
    grid: tuple[int, int],
    box: Box | None = None,
    alpha: float = 0.6,
    colorscale: str = "Inferno",
    smooth: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_title: str = "",
    value_name: str = "value",
    value_format: str = ".4f",
    height: int = 360,
    max_width: int = 900,
) -> go.Figure:
    """Several maps of one picture side by side on ONE colour scale (one vmin/vmax, one colour bar).

    The same value has the same colour in every panel, so brightness compares across panels
    (with a scale per map, a weak map would look as bright as a strong one).

    Args:
        heats: (gh, gw) maps, one per panel; titles: one per panel.
        vmin, vmax: the shared range (default: `shared_range` over all the maps).
        height, max_width: the figure's size at most (wide pictures make it lower).
        others: as `map_figure`.
    """
    a = to_uint8(image)
    H, W = a.shape[:2]
    hs = [np.asarray(h, dtype=np.float64) for h in heats]
    if len(hs) != len(titles) or not hs:
        raise ValueError(f"{len(hs)} maps and {len(titles)} titles")
    for h in hs:
        if h.shape != (int(grid[0]), int(grid[1])):
            raise ValueError(f"a map has shape {h.shape}, expected the grid {tuple(grid)}")
    b = (0.0, 0.0, float(W), float(H)) if box is None else tuple(float(v) for v in box)
    lo, hi = shared_range(hs, vmin, vmax)
    k = len(hs)
    m = {"l": 10, "r": 10, "t": 30, "b": 10}
    gap = 16.0
    plot_h = min(height - m["t"] - m["b"], (max_width - m["l"] - m["r"] - COLORBAR_PX - (k - 1) * gap) / k * H / W)
    pw = plot_h * W / H
    height = int(round(plot_h + m["t"] + m["b"]))
    total = k * pw + (k - 1) * gap
    data, layout = [], {**base_layout(height, margin=m), "hoverdistance": -1}
    ann = []
    for i, (h, name) in enumerate(zip(hs, titles)):
        suffix = "" if i == 0 else str(i + 1)
        x0, x1 = i * (pw + gap) / total, (i * (pw + gap) + pw) / total
        axes = image_axes(H, W, suffix)
        axes[f"xaxis{suffix}"]["domain"] = [x0, x1]
        axes[f"yaxis{suffix}"]["domain"] = [0, 1]
        if i:
            axes[f"xaxis{suffix}"]["anchor"] = f"y{suffix}"
            axes[f"yaxis{suffix}"]["anchor"] = f"x{suffix}"
        layout.update(axes)
        ref = {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}
        data.append(_image_trace(heat_on_image(a, h, b, alpha, colorscale, lo, hi, smooth), H, W, **ref))
        bar = {"colorscale": colorscale, "cmin": lo, "cmax": hi, "colorbar_title": colorbar_title} if i == 0 else {}
        t = _targets(grid, b, h, _hover(value_name, value_format), name=f"patches {i}", **bar)
        data.append({**t, **ref})
        ann.append(  # in the panel's data coordinates: just above its picture, however the figure is sized
            {
                "text": name,
                "x": W / 2,
                "y": 0,
                "xref": f"x{suffix}",
                "yref": f"y{suffix}",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 13},
            }
        )
    layout["annotations"] = ann
    layout["width"] = int(round(total + m["l"] + m["r"] + COLORBAR_PX))
    layout["meta"] = {"vmin": lo, "vmax": hi}
    return figure(data, layout)


def heads_on_image_figure(
    image: np.ndarray,
    maps: np.ndarray,
    box: Box | None = None,
    alpha: float = 0.6,
    colorscale: str = "Inferno",
    smooth: bool = True,
    cols: int | None = None,
    tile_px: int = 220,
    height: int | None = None,
) -> go.Figure:
    """One map per head (e.g. DINO-style last-layer heads) over the picture, small multiples.

    Each tile is scaled to its own head's maximum (heads differ a lot in range), as in
    `vit_plots.heads_figure`; the colour bar is the share of that maximum.

    Args:
        image: (H, W, 3) the picture; maps: (h, gh, gw); box: as `map_figure`.
        tile_px: longer side of a tile in pixels (the picture is shrunk to it, keeping the figure light).
    """
    a = to_uint8(image)
    H, W = a.shape[:2]
    m = np.asarray(maps, dtype=np.float64)
    nh = m.shape[0]
    cols = cols or int(np.ceil(np.sqrt(nh)))
    b = (0.0, 0.0, float(W), float(H)) if box is None else tuple(float(v) for v in box)
    f = min(1.0, tile_px / max(H, W))
    if f < 1.0:  # shrink the picture to the tile once, and the box with it
        a = np.asarray(Image.fromarray(a[..., :3]).resize((max(1, round(W * f)), max(1, round(H * f))), Image.BILINEAR))
        b = tuple(v * f for v in b)
    up = max(1, tile_px // max(a.shape[:2]))  # a small input (CIFAR's 32 px) is upscaled pixel-sharp
    tiles = []
    for i in range(nh):
        peak = float(m[i].max())
        tiles.append(heat_on_image(a, m[i], b, alpha, colorscale, 0.0, peak if peak > 0 else 1.0, smooth, scale=up))
    th, tw = tiles[0].shape[:2]
    label = max(24, th // 5)  # room for the 12 px head label once the mosaic is shrunk to the column
    rows = int(np.ceil(nh / cols))
    gap = max(2, tw // 40)
    Hm, Wm = rows * (th + label), cols * (tw + gap) - gap
    canvas = np.zeros((Hm, Wm, 4), np.uint8)  # transparent gaps
    ann = []
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = r * (th + label) + label, c * (tw + gap)
        canvas[y : y + th, x : x + tw, :3] = t
        canvas[y : y + th, x : x + tw, 3] = 255
        ann.append({"x": x + tw / 2, "y": y, "yanchor": "bottom", "text": f"head {i}", "showarrow": False})
    img = {"type": "image", "source": png_data_uri(canvas), "x0": 0.5, "y0": 0.5, "hoverinfo": "skip", "name": "heads"}
    bar = {
        "type": "scatter",
        "x": [0, 0],
        "y": [0, 0],
        "mode": "markers",
        "marker": {
            "size": 0.1,
            "opacity": 0,
            "color": [0, 1],
            "colorscale": named_colorscale(colorscale),
            "cmin": 0,
            "cmax": 1,
            "showscale": True,
            "colorbar": {"title": {"text": "share of the<br>head's max"}, "thickness": 14, "len": 0.9},
        },
        "hoverinfo": "skip",
        "showlegend": False,
    }
    layout = {**base_layout(height or int(rows * 170 + 30)), **image_axes(Hm, Wm), "annotations": ann}
    return figure([img, bar], layout)
