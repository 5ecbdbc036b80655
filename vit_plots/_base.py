"""Shared pieces of the figure builders: images as PNG data URIs, colour maps, mosaics, layout.

Images are drawn as `go.Image(source=<png>)` traces placed in model-input pixel coordinates
(pixel (r, c) covers x in [c, c+1], y in [r, r+1]), so that patch boxes and patch centres
from `vit_core.analysis.patch_boxes` land on them exactly. Figures are theme-neutral: no
backgrounds are painted, so Streamlit's light and dark themes both apply.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import get_colorscale, hex_to_rgb, sample_colorscale, unlabel_rgb

TRANSPARENT = "rgba(0,0,0,0)"
# White text with a dark halo reads on any image and in both themes.
ON_IMAGE_FONT = {"color": "white", "shadow": "0px 0px 3px black"}
MIN_DISPLAY_PX = 128  # smaller images (CIFAR: 32 px) are upscaled for blending; plotly draws them pixelated


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3|4) float in [0, 1] or uint8 -> uint8; (H, W) grey -> (H, W, 3)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    return a


def png_data_uri(image: np.ndarray) -> str:
    """An (H, W, 3|4) image as a `data:image/png;base64,...` URI (RGBA keeps transparency)."""
    a = to_uint8(image)
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA" if a.shape[-1] == 4 else "RGB").save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@lru_cache(maxsize=32)
def named_colorscale(name: str) -> list[list]:
    """A named plotly colour scale (e.g. "Inferno", "RdBu_r") as the explicit [[pos, colour], ...] list.

    Figures are built without plotly's validation, which is what would otherwise resolve the
    name; plotly.js alone knows only a few names, and some (RdBu) differently from Python.
    """
    # Colours go out as "rgb(...)": Streamlit's chart theme treats a few hex codes as placeholders
    # ("#000001".."#00000c") and repaints them, and Inferno starts at "#000004".
    return [[float(p), f"rgb({r}, {g}, {b})"] for p, (r, g, b) in zip(*_stops(name))]


def _stops(name: str) -> tuple[list[float], np.ndarray]:
    scale = get_colorscale(name)
    pos = [float(p) for p, _ in scale]
    cols = np.asarray(
        [unlabel_rgb(c) if str(c).startswith("rgb") else hex_to_rgb(c) for _, c in scale], dtype=np.float64
    )
    return pos, np.clip(np.round(cols), 0, 255).astype(int)


@lru_cache(maxsize=32)
def colorscale_lut(name: str, n: int = 256) -> np.ndarray:
    """A plotly colour scale sampled at `n` points: (n, 3) uint8, the same colours its colour bar shows."""
    scale = get_colorscale(name)
    cols = sample_colorscale(scale, list(np.linspace(0.0, 1.0, n)), colortype="tuple")
    arr = np.asarray(cols, dtype=np.float64)
    if arr.max() > 1.0:  # some scales are given in 0..255
        arr = arr / 255.0
    return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)


def upsample(values: np.ndarray, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """(h, w) float map -> (H, W), bilinear (or nearest), keeping values (no rescaling)."""
    v = np.asarray(values, dtype=np.float32)
    H, W = int(size[0]), int(size[1])
    if v.shape == (H, W):
        return v.copy()
    resample = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(v, mode="F").resize((W, H), resample=resample), dtype=np.float32)


def normalise(
    values: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> tuple[np.ndarray, float, float]:
    """Scale to [0, 1] over [vmin, vmax] (defaults: the data range); returns the range used."""
    v = np.asarray(values, dtype=np.float64)
    lo = float(np.nanmin(v)) if vmin is None else float(vmin)
    hi = float(np.nanmax(v)) if vmax is None else float(vmax)
    if not hi > lo:
        hi = lo + 1e-12
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0), lo, hi


def display_scale(height: int, width: int, min_px: int = MIN_DISPLAY_PX) -> int:
    """Integer upscale so that an image's longer side reaches about `min_px` pixels."""
    return max(1, int(np.ceil(min_px / max(height, width, 1))))


def blend(
    image: np.ndarray,
    heat: np.ndarray,
    alpha: float = 0.6,
    colorscale: str = "Inferno",
    vmin: float | None = None,
    vmax: float | None = None,
    scale: int | None = None,
    smooth: bool = True,
) -> np.ndarray:
    """A heat map upsampled to the image and alpha-blended over it.

    Args:
        image: (H, W, 3) float in [0, 1] or uint8.
        heat: (h, w) values, any range (a patch grid, or already image-sized).
        alpha: weight of the colour map, 0 (image only) to 1 (map only).
        colorscale: plotly colour scale name.
        vmin, vmax: value range mapped to the ends of the colour scale (default: the data's).
        scale: integer display upscale of the image (default: `display_scale`); the image is
            upscaled pixel-sharp, the map bilinearly (`smooth`) or as blocks.

    Returns:
        (H*scale, W*scale, 3) uint8.
    """
    img = to_uint8(image)[..., :3]
    H, W = img.shape[:2]
    s = display_scale(H, W) if scale is None else int(scale)
    if s > 1:
        img = np.repeat(np.repeat(img, s, axis=0), s, axis=1)
    big = upsample(heat, (H * s, W * s), smooth=smooth)
    t, _, _ = normalise(big, vmin, vmax)
    lut = colorscale_lut(colorscale)
    col = lut[np.round(t * (len(lut) - 1)).astype(np.int64)]
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * col.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def figure(data: list[dict], layout: dict | None = None, frames: list[dict] | None = None) -> go.Figure:
    """A `go.Figure` from plain dicts, without plotly's per-property validation.

    Validation costs 10-150 ms per figure, more than everything else on a page; the builders
    are checked against plotly's full validation in tests/test_plots.py instead.
    """
    return go.Figure(data=data, layout=layout or {}, frames=frames, _validate=False)


def image_trace(image: np.ndarray, extent: tuple[float, float] | None = None, name: str = "image", **kw) -> dict:
    """An image trace covering x in [0, W], y in [0, H] of `extent` (H, W) (default: its own size).

    An image bigger than `extent` (an upscaled display copy) is shrunk to fit by the trace's
    pixel size, so that overlays can stay in model-input pixel coordinates.
    """
    a = to_uint8(image)
    h, w = a.shape[:2]
    H, W = (h, w) if extent is None else extent
    dx, dy = W / w, H / h
    return {
        "type": "image",
        "source": png_data_uri(a),
        "x0": dx / 2,
        "y0": dy / 2,
        "dx": dx,
        "dy": dy,
        "hoverinfo": "skip",
        "name": name,
        **kw,
    }


def image_axes(height: float, width: float, suffix: str = "", top: float = 0.0) -> dict:
    """Layout entries for an image panel: axes hidden, range [0, W] x [H, top], square pixels."""
    return {
        f"xaxis{suffix}": {"range": [0, width], "visible": False, "constrain": "domain"},
        f"yaxis{suffix}": {
            "range": [height, top],
            "visible": False,
            "scaleanchor": f"x{suffix}",
            "constrain": "domain",
        },
    }


def base_layout(height: int = 420, title: str | None = None, **kw) -> dict:
    """Transparent backgrounds, small margins, closest-point hover; `kw` adds or overrides."""
    layout = {
        "height": height,
        "margin": {"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        "paper_bgcolor": TRANSPARENT,
        "plot_bgcolor": TRANSPARENT,
        "hovermode": "closest",
        "showlegend": False,
    }
    if title:
        layout["title"] = {"text": title}
    layout.update(kw)
    return layout


def mosaic(tiles: np.ndarray, cols: int, gap: int = 1, fill: float = np.nan) -> tuple[np.ndarray, np.ndarray]:
    """Lay (k, h, w[, c]) tiles out in rows of `cols`, `gap` cells of `fill` between them.

    Returns:
        the mosaic (R*(h+gap)-gap, cols*(w+gap)-gap[, c]) and the tiles' top-left corners
        (k, 2) as (row, col) in mosaic cells.
    """
    t = np.asarray(tiles)
    k, h, w = t.shape[:3]
    rows = int(np.ceil(k / cols))
    shape = (rows * (h + gap) - gap, cols * (w + gap) - gap, *t.shape[3:])
    out = np.full(shape, fill, dtype=np.result_type(t.dtype, np.asarray(fill).dtype))
    corners = np.zeros((k, 2), dtype=np.int64)
    for i in range(k):
        r, c = divmod(i, cols)
        y, x = r * (h + gap), c * (w + gap)
        out[y : y + h, x : x + w] = t[i]
        corners[i] = (y, x)
    return out, corners


def patch_centres(grid: tuple[int, int], patch_size: float) -> tuple[np.ndarray, np.ndarray]:
    """x and y of every patch centre in row-major order, in pixels."""
    gh, gw = int(grid[0]), int(grid[1])
    i, j = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    return ((j.reshape(-1) + 0.5) * patch_size).astype(float), ((i.reshape(-1) + 0.5) * patch_size).astype(float)


def patch_targets(
    grid: tuple[int, int],
    patch_size: float,
    values: np.ndarray | None = None,
    hovertemplate: str | None = None,
    colorscale: str | None = None,
    cmin: float | None = None,
    cmax: float | None = None,
    colorbar_title: str | None = None,
    name: str = "patches",
) -> dict:
    """Invisible markers at the patch centres: they carry hover values and report clicks.

    Plotly heatmaps and images do not report clicks to Streamlit; a scatter point does.
    `customdata` rows are (patch index, row, col, value). With `values` and `colorscale`,
    the markers also draw the colour bar of an overlay.
    """
    x, y = patch_centres(grid, patch_size)
    n = x.size
    idx = np.arange(n)
    gw = int(grid[1])
    marker: dict = {"size": 18, "symbol": "square", "opacity": 0.0, "color": TRANSPARENT}
    vals = np.zeros(n) if values is None else np.asarray(values, dtype=float).reshape(-1)
    if values is not None and colorscale is not None:
        marker.update(
            color=vals,
            colorscale=named_colorscale(colorscale),
            cmin=cmin,
            cmax=cmax,
            showscale=True,
            colorbar={"title": {"text": colorbar_title or "", "side": "right"}, "thickness": 14, "len": 0.9},
        )
    return {
        "type": "scatter",
        "x": x,
        "y": y,
        "mode": "markers",
        "marker": marker,
        "customdata": np.stack([idx, idx // gw, idx % gw, vals], axis=1),
        "hovertemplate": hovertemplate
        or "patch %{customdata[0]:.0f} (row %{customdata[1]:.0f}, col %{customdata[2]:.0f})<extra></extra>",
        "selected": {"marker": {"opacity": 0.0}},
        "unselected": {"marker": {"opacity": 0.0}},
        "name": name,
        "showlegend": False,
    }


def box_shapes(
    boxes: np.ndarray,
    color: str = "#00e5ff",
    width: float = 2.5,
    dash: str | None = None,
    xref: str = "x",
    yref: str = "y",
) -> list[dict]:
    """Rectangles (x0, y0, x1, y1) as plotly layout shapes."""
    line = {"color": color, "width": width}
    if dash:
        line["dash"] = dash
    return [
        {
            "type": "rect",
            "xref": xref,
            "yref": yref,
            "x0": float(b[0]),
            "y0": float(b[1]),
            "x1": float(b[2]),
            "y1": float(b[3]),
            "line": line,
            "layer": "above",
        }
        for b in np.asarray(boxes).reshape(-1, 4)
    ]


def grid_lines(
    grid: tuple[int, int], patch_size: float, color: str = "rgba(255,255,255,0.7)", width: float = 1.0
) -> list[dict]:
    """The patch grid as thin lines (one shape per line)."""
    gh, gw = int(grid[0]), int(grid[1])
    H, W = gh * patch_size, gw * patch_size
    line = {"color": color, "width": width}
    shapes = [
        {"type": "line", "x0": c * patch_size, "x1": c * patch_size, "y0": 0, "y1": H, "line": line}
        for c in range(1, gw)
    ]
    shapes += [
        {"type": "line", "y0": r * patch_size, "y1": r * patch_size, "x0": 0, "x1": W, "line": line}
        for r in range(1, gh)
    ]
    return shapes
