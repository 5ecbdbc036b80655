"""Maps as plain pictures (uint8 arrays) instead of plotly figures.

A plotly figure costs a browser about 0.1 s to redraw on every rerun (measured in headless
Chromium, `benchmarks/bench_browser.py`); a picture costs next to nothing. Sections that redraw
on every slider step or click therefore show their secondary maps as pictures (`st.image`) and
keep plotly for the one map that takes clicks. What a plotly hover gave (the values) goes into
the captions: each picture's range, and a colour key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._base import colorscale_lut, normalise, png_data_uri, to_uint8
from .maps import Box, _data_uri, heat_on_image, shared_range

OUTLINE = (0, 229, 255)  # the cyan of the selected patch in the plotly maps


def _colour(values: np.ndarray, colorscale: str, vmin: float | None, vmax: float | None) -> np.ndarray:
    t, _, _ = normalise(values, vmin, vmax)
    lut = colorscale_lut(colorscale)
    return lut[np.round(np.nan_to_num(t) * (len(lut) - 1)).astype(np.int64)]


def _outline(img: np.ndarray, y0: int, x0: int, y1: int, x1: int, width: int) -> None:
    """Draws a box (in place) on the pixels [y0, y1) x [x0, x1), `width` pixels thick, inside."""
    w = max(1, min(width, (y1 - y0) // 2, (x1 - x0) // 2))
    img[y0 : y0 + w, x0:x1] = OUTLINE
    img[y1 - w : y1, x0:x1] = OUTLINE
    img[y0:y1, x0 : x0 + w] = OUTLINE
    img[y0:y1, x1 - w : x1] = OUTLINE


def grid_picture(
    values: np.ndarray,
    colorscale: str = "Inferno",
    vmin: float | None = None,
    vmax: float | None = None,
    px: int = 160,
    selected: int | None = None,
) -> np.ndarray:
    """A (gh, gw) patch map as a picture, one flat block per patch, the longer side about `px`.

    Args:
        values: (gh, gw) values per patch.
        colorscale: plotly colour scale name; vmin, vmax: its ends (default: the map's range).
        px: size of the longer side in pixels (rounded to whole blocks).
        selected: a patch index (row-major) outlined in cyan.

    Returns:
        (gh * s, gw * s, 3) uint8 with s = max(1, px // max(gh, gw)).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"expected a (gh, gw) map, got shape {v.shape}")
    gh, gw = v.shape
    s = max(1, int(px) // max(gh, gw))
    img = np.repeat(np.repeat(_colour(v, colorscale, vmin, vmax), s, axis=0), s, axis=1)
    if selected is not None:
        r, c = divmod(int(selected), gw)
        _outline(img, r * s, c * s, (r + 1) * s, (c + 1) * s, max(1, s // 6))
    return img


def head_pictures(
    maps: np.ndarray, colorscale: str = "Inferno", px: int = 120, selected: int | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """One picture per head, each scaled to its own maximum (as `vit_plots.heads_figure`).

    Args:
        maps: (h, gh, gw) one map per head; selected: the query patch, outlined in every picture.

    Returns:
        (the h pictures, the (h,) maxima each picture's brightest colour stands for).
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise ValueError(f"expected (heads, gh, gw) maps, got shape {m.shape}")
    peaks = m.reshape(m.shape[0], -1).max(axis=1)
    pics = [
        grid_picture(m[i], colorscale, 0.0, float(peaks[i]) if peaks[i] > 0 else 1.0, px, selected)
        for i in range(m.shape[0])
    ]
    return pics, peaks


def vector_picture(values: np.ndarray, colorscale: str = "RdBu_r", px: int = 320, rows: int = 1) -> np.ndarray:
    """A vector as a strip of coloured cells, symmetric around 0 (blue < 0 < red), `px` wide.

    Args:
        values: (d,) numbers; rows: the strip wraps into this many rows (d must divide by it).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if rows < 1 or v.size % rows:
        raise ValueError(f"{v.size} values do not fill {rows} rows")
    lim = float(np.abs(v).max()) or 1.0
    cells = v.reshape(rows, -1)
    s = max(1, int(px) // cells.shape[1])
    img = _colour(cells, colorscale, -lim, lim)
    return np.repeat(np.repeat(img, s if rows > 1 else max(s, 12), axis=0), s, axis=1)


def colour_key(colorscale: str, px: int = 256, height: int = 10) -> np.ndarray:
    """The colour scale from its low end (left) to its high end (right): (height, px, 3) uint8."""
    lut = colorscale_lut(colorscale)
    idx = np.round(np.linspace(0, len(lut) - 1, int(px))).astype(np.int64)
    return np.repeat(lut[idx][None], int(height), axis=0)


def map_pictures(
    image: np.ndarray,
    heats: Sequence[np.ndarray],
    box: Box | None = None,
    alpha: float = 0.6,
    colorscale: str = "Inferno",
    smooth: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[list[np.ndarray], tuple[float, float]]:
    """Several maps over one picture on ONE colour scale, as pictures (`compare_maps_figure` without plotly).

    Returns:
        (the blended pictures, (vmin, vmax) the shared range they are coloured over).
    """
    hs = [np.asarray(h, dtype=np.float64) for h in heats]
    if not hs:
        raise ValueError("no maps")
    lo, hi = shared_range(hs, vmin, vmax)
    a = to_uint8(image)
    W = a.shape[1]
    box = (0.0, 0.0, float(W), float(a.shape[0])) if box is None else box
    return [heat_on_image(a, h, box, alpha, colorscale, lo, hi, smooth) for h in hs], (lo, hi)


def key_view(colorscale: str, low: float, high: float, label: str, fmt: str = ".3g") -> dict:
    """The colour key of a picker: a strip of the scale and its two ends written out."""
    return {
        "src": png_data_uri(colour_key(colorscale, 160, 10)),
        "low": format(low, fmt),
        "high": format(high, fmt),
        "label": label,
    }


def picker_view(
    image: np.ndarray,
    heat: np.ndarray,
    grid: tuple[int, int],
    box: Box | None = None,
    alpha: float = 0.6,
    colorscale: str = "Inferno",
    smooth: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    value_name: str = "value",
    value_format: str = ".4f",
    selected: int | None = None,
    width: int = 400,
    max_height: int | None = None,
) -> dict:
    """What `ui.picker.grid_picker` shows for a patch map over a picture (`map_figure` as one image).

    Args:
        image: (H, W, 3) the model input or the original photo; heat: (gh, gw) values per patch.
        box: the region of `image` the model saw, in its pixels (default: all of it).
        selected: a patch outlined in cyan (the query).
        width: the picture's width on the page in CSS px (lowered so that the height stays
            within `max_height`, for tall photos).
        others: as `heat_on_image`.

    Returns:
        the view: `src`, `width`, `pixelated`, `grid`, `box` (fractions), `hover` (one line per
        patch), `frame`, `outlined`, `crossed`, `text`, `key` (the colour key), `range` (vmin,
        vmax) and `values` (the map, row-major).
    """
    a = to_uint8(image)
    H, W = a.shape[:2]
    gh, gw = int(grid[0]), int(grid[1])
    h = np.asarray(heat, dtype=np.float64)
    if h.shape != (gh, gw):
        raise ValueError(f"heat has shape {h.shape}, expected the grid {(gh, gw)}")
    b = (0.0, 0.0, float(W), float(H)) if box is None else tuple(float(v) for v in box)
    (pixels,), (lo, hi) = map_pictures(a, [h], b, alpha, colorscale, smooth, vmin, vmax)
    w = int(width)
    if max_height is not None and w * H / W > max_height:
        w = max(120, int(max_height * W / H))
    flat = h.reshape(-1)
    return {
        "src": _data_uri(pixels),
        "width": w,
        "pixelated": pixels.shape[1] < w,
        "grid": [gh, gw],
        "box": [b[0] / W, b[1] / H, b[2] / W, b[3] / H],
        "hover": [
            f"patch {p} (row {p // gw}, col {p % gw})\n{value_name} {format(float(flat[p]), value_format)}"
            for p in range(gh * gw)
        ],
        "frame": b != (0.0, 0.0, float(W), float(H)),
        "outlined": [] if selected is None else [int(selected)],
        "crossed": [],
        "text": [],
        "light": [],
        "key": key_view(colorscale, lo, hi, value_name),
        "range": [lo, hi],
        "values": [float(x) for x in flat],
    }


def head_grid_view(
    values: np.ndarray,
    knocked: Sequence[tuple[int, int]] = (),
    value_name: str = "importance",
    value_format: str = ".3f",
    colorscale: str = "RdBu_r",
    show_values: bool = True,
    cell_px: int = 44,
    gap_px: int = 2,
) -> dict:
    """What `ui.picker.grid_picker` shows for the layer x head grid of the knockout lab
    (`vit_plots.faithfulness.head_grid_figure` as one image).

    Rows are layers (1-based labels), columns heads (0-based); cell `layer * heads + head`
    (0-based layer) is what a click reports. Colours are centred on 0 (a head whose loss helps
    shows blue); knocked-out heads are crossed.

    Args:
        values: (L, h); knocked: (layer, head) pairs, 0-based.
        show_values: write each value in its cell (False: an unmeasured grid, clicks only).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"expected (layers, heads) values, got shape {v.shape}")
    L, H = v.shape
    finite = v[np.isfinite(v)]
    span = float(np.abs(finite).max()) if finite.size else 1.0
    span = span if span > 0 else 1.0
    s, g = int(cell_px), int(gap_px)
    cells = _colour(v, colorscale, -span, span)
    img = np.zeros((L * (s + g), H * (s + g), 4), dtype=np.uint8)  # transparent gaps
    for i in range(L):
        for j in range(H):
            img[i * (s + g) : i * (s + g) + s, j * (s + g) : j * (s + g) + s, :3] = cells[i, j]
            img[i * (s + g) : i * (s + g) + s, j * (s + g) : j * (s + g) + s, 3] = 255
    flat = v.reshape(-1)
    text = [format(float(x), value_format) if show_values and np.isfinite(x) else "" for x in flat]
    luma = cells.reshape(-1, 3).astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    return {
        "src": png_data_uri(img),
        "width": int(img.shape[1]),
        "pixelated": False,
        "grid": [L, H],
        "box": [0.0, 0.0, 1.0, 1.0],
        "frame": False,
        "hover": [
            f"layer {p // H + 1}, head {p % H}\n{value_name} {text[p] or 'not measured'}\n"
            "click to knock it out or back in"
            for p in range(L * H)
        ],
        "outlined": [],
        "crossed": sorted({int(a) * H + int(c) for a, c in knocked}),
        "text": text,
        "light": [int(p) for p in np.flatnonzero(luma < 0.5)],  # dark cells: their text is written white
        "rows": [f"layer {i + 1}" for i in range(L)],
        "cols": [f"head {j}" for j in range(H)],
        "key": key_view(colorscale, -span, span, value_name) if show_values else None,
        "range": [-span, span],
        "values": [float(x) if np.isfinite(x) else None for x in flat],
    }
