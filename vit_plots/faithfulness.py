"""Which map to trust: deletion/insertion curves, agreement matrices, the randomisation strip,
the clickable head-importance grid and the per-patch logit lens. numpy in, `go.Figure` out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from ._base import (
    base_layout,
    colorscale_lut,
    display_scale,
    figure,
    image_axes,
    image_trace,
    named_colorscale,
    normalise,
    patch_centres,
    png_data_uri,
    to_uint8,
    upsample,
)

# One colour per method, the same in every figure of the lab; the random baseline is grey.
METHOD_COLORS = {
    "raw attention": "#636efa",
    "rollout": "#ef553b",
    "class-specific": "#00cc96",
    "occlusion": "#ab63fa",
    "input x gradient": "#ffa15a",
    "random": "#888888",
}
OTHER_COLORS = ("#19d3f3", "#ff6692", "#b6e880", "#ff97ff", "#fecb52")
# Categorical colours for the classes of the per-patch lens (plotly's Dark24, then repeats).
CLASS_COLORS = (
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B", "#511CFB",
    "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042",
    "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038", "#222A2A",
)  # fmt: skip


def method_color(name: str, i: int = 0) -> str:
    """The lab's colour for a method ("random" grey); unknown names get a colour by position."""
    return METHOD_COLORS.get(name, OTHER_COLORS[i % len(OTHER_COLORS)])


def _hex_rgb(colour: str) -> tuple[int, int, int]:
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)


def _band(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, name: str, axes: dict) -> dict:
    """A filled band between two curves (one closed polygon)."""
    return {
        "type": "scatter",
        "x": np.concatenate([x, x[::-1]]),
        "y": np.concatenate([hi, lo[::-1]]),
        "fill": "toself",
        "fillcolor": "rgba(136,136,136,0.22)",
        "line": {"width": 0},
        "hoverinfo": "skip",
        "name": name,
        "showlegend": False,
        **axes,
    }


def curves_figure(
    fractions: np.ndarray,
    deletion: Mapping[str, np.ndarray],
    insertion: Mapping[str, np.ndarray],
    random_deletion: np.ndarray | None = None,
    random_insertion: np.ndarray | None = None,
    height: int = 380,
    y_title: str = "probability of the class (%)",
) -> go.Figure:
    """Deletion (left) and insertion (right) curves of several maps on one chart.

    Args:
        fractions: (S,) hidden (deletion) or restored (insertion) share of the patches.
        deletion, insertion: method name -> (S,) probabilities in [0, 1], the same methods.
        random_deletion, random_insertion: (R, S) one row per random seed: drawn as their mean
            (dashed grey) and the band from the lowest to the highest seed.
    """
    x = np.asarray(fractions, dtype=np.float64) * 100
    data: list[dict] = []
    panels = (("x", "y", deletion, random_deletion), ("x2", "y2", insertion, random_insertion))
    for p, (xa, ya, curves, rand) in enumerate(panels):
        axes = {"xaxis": xa, "yaxis": ya}
        what = "hidden" if p == 0 else "restored"
        if rand is not None and len(rand):
            r = np.asarray(rand, dtype=np.float64) * 100
            data.append(_band(x, r.min(0), r.max(0), "random spread", axes))
            data.append(
                {
                    "type": "scatter",
                    "x": x,
                    "y": r.mean(0),
                    "mode": "lines",
                    "name": f"random (mean of {len(r)})",
                    "legendgroup": "random",
                    "showlegend": p == 0,
                    "line": {"color": METHOD_COLORS["random"], "dash": "dash", "width": 2},
                    "hovertemplate": f"random, mean of {len(r)}<br>%{{x:.0f}}% {what}: %{{y:.1f}}%<extra></extra>",
                    **axes,
                }
            )
        for i, (name, c) in enumerate(curves.items()):
            data.append(
                {
                    "type": "scatter",
                    "x": x,
                    "y": np.asarray(c, dtype=np.float64) * 100,
                    "mode": "lines",
                    "name": name,
                    "legendgroup": name,
                    "showlegend": p == 0,
                    "line": {
                        "color": method_color(name, i),
                        "width": 2.5,
                        "dash": "dash" if name == "random" else None,
                    },
                    "hovertemplate": f"{name}<br>%{{x:.0f}}% {what}: %{{y:.1f}}%<extra></extra>",
                    **axes,
                }
            )
    layout = {
        **base_layout(height, showlegend=True, margin={"l": 60, "r": 10, "t": 30, "b": 90}),
        "legend": {"orientation": "h", "y": -0.22, "x": 0, "yanchor": "top"},
        "xaxis": {"domain": [0, 0.47], "title": {"text": "patches hidden, most salient first (%)"}, "range": [0, 100]},
        "xaxis2": {
            "domain": [0.53, 1],
            "title": {"text": "patches restored, most salient first (%)"},
            "range": [0, 100],
        },
        "yaxis": {"title": {"text": y_title}, "range": [0, 101]},
        "yaxis2": {"anchor": "x2", "range": [0, 101], "matches": "y", "showticklabels": False},
        "annotations": [
            _title("Deletion: lower area is better", 0.235),
            _title("Insertion: higher area is better", 0.765),
        ],
    }
    return figure(data, layout)


def _title(text: str, x: float) -> dict:
    return {
        "text": text,
        "x": x,
        "y": 1.0,
        "xref": "paper",
        "yref": "paper",
        "yanchor": "bottom",
        "showarrow": False,
        "font": {"size": 13},
    }


def agreement_figure(
    spearman: np.ndarray, top_overlap: np.ndarray, names: Sequence[str], height: int = 360
) -> go.Figure:
    """The agreement matrices between maps: Spearman (-1..1) left, top-10% overlap (0..1) right."""
    rho = np.asarray(spearman, dtype=np.float64)
    over = np.asarray(top_overlap, dtype=np.float64)
    M = len(names)
    if rho.shape != (M, M) or over.shape != (M, M):
        raise ValueError(f"{len(names)} names for matrices {rho.shape} and {over.shape}")
    labels = list(names)
    data = []
    for p, (mat, lo, scale, fmt) in enumerate(((rho, -1.0, "RdBu_r", ".2f"), (over, 0.0, "Viridis", ".0%"))):
        suffix = "" if p == 0 else "2"
        text = [["n/a" if np.isnan(v) else format(v, fmt) for v in row] for row in mat]
        data.append(
            {
                "type": "heatmap",
                "z": mat,
                "x": labels,
                "y": labels,
                "zmin": lo,
                "zmax": 1.0,
                "colorscale": named_colorscale(scale),
                "text": text,
                "texttemplate": "%{text}",
                "hovertemplate": "%{y} vs %{x}: %{text}<extra></extra>",
                "colorbar": {"x": 0.41 if p == 0 else 0.99, "thickness": 12, "len": 0.9},
                "xaxis": f"x{suffix}",
                "yaxis": f"y{suffix}",
            }
        )
    layout = {
        **base_layout(height, margin={"l": 10, "r": 10, "t": 30, "b": 10}),
        "xaxis": {"domain": [0.0, 0.36], "automargin": True, "tickangle": -30},
        "yaxis": {"autorange": "reversed", "automargin": True},
        "xaxis2": {"domain": [0.56, 0.92], "automargin": True, "tickangle": -30},
        "yaxis2": {"anchor": "x2", "autorange": "reversed", "showticklabels": False},
        "annotations": [_title("rank correlation (Spearman)", 0.18), _title("top-10% overlap", 0.74)],
    }
    return figure(data, layout)


def cascade_figure(
    maps: np.ndarray,
    methods: Sequence[str],
    steps: Sequence[str],
    correlations: np.ndarray,
    colorscale: str = "Inferno",
    tile_px: int = 56,
) -> go.Figure:
    """The randomisation sanity check: one row of maps per method, one column per cascade step.

    Each tile is scaled to its own range (a randomised model's map can be far smaller), and
    captioned with its Spearman correlation to the trained model's map (the first column).

    Args:
        maps: (M, S, gh, gw) each method's map after each step.
        correlations: (M, S) Spearman correlation with column 0 (NaN: a constant map).
    """
    m = np.asarray(maps, dtype=np.float64)
    M, S, gh, gw = m.shape
    rho = np.asarray(correlations, dtype=np.float64)
    if len(methods) != M or len(steps) != S or rho.shape != (M, S):
        raise ValueError(f"maps {m.shape}, {len(methods)} methods, {len(steps)} steps, correlations {rho.shape}")
    s = max(1, int(round(tile_px / max(gh, gw))))
    th, tw = gh * s, gw * s
    gap, label = max(2, tw // 12), max(14, th // 3)
    Hc, Wc = M * (th + label), S * (tw + gap) - gap
    canvas = np.zeros((Hc, Wc, 4), np.uint8)  # transparent between tiles
    lut = colorscale_lut(colorscale)
    ann = []
    for i in range(M):
        for j in range(S):
            t, _, _ = normalise(m[i, j])
            rgb = lut[np.round(np.nan_to_num(t) * (len(lut) - 1)).astype(np.int64)]
            y, x = i * (th + label) + label, j * (tw + gap)
            canvas[y : y + th, x : x + tw, :3] = np.repeat(np.repeat(rgb, s, 0), s, 1)
            canvas[y : y + th, x : x + tw, 3] = 255
            r = rho[i, j]
            ann.append(
                {
                    "x": x + tw / 2,
                    "y": y,
                    "yanchor": "bottom",
                    "text": "ρ n/a" if np.isnan(r) else f"ρ {r:.2f}",
                    "showarrow": False,
                    "font": {"size": 11},
                }
            )
    img = {
        "type": "image",
        "source": png_data_uri(canvas),
        "x0": 0.5,
        "y0": 0.5,
        "hoverinfo": "skip",
        "name": "maps",
    }
    # hover per tile: the method, the step and the correlation
    cx = np.array([j * (tw + gap) + tw / 2 for _ in range(M) for j in range(S)], dtype=float)
    cy = np.array([i * (th + label) + label + th / 2 for i in range(M) for _ in range(S)], dtype=float)
    hover = [
        f"{methods[i]} after randomising {'nothing' if steps[j] == 'trained' else 'down to ' + steps[j]}<br>"
        + (
            "Spearman with the trained map: n/a"
            if np.isnan(rho[i, j])
            else f"Spearman with the trained map: {rho[i, j]:.3f}"
        )
        for i in range(M)
        for j in range(S)
    ]
    points = {
        "type": "scatter",
        "x": cx,
        "y": cy,
        "mode": "markers",
        "marker": {"size": max(8, tw * 0.8), "symbol": "square", "opacity": 0.0},
        "text": hover,
        "hovertemplate": "%{text}<extra></extra>",
        "showlegend": False,
        "name": "tiles",
    }
    left = 130
    layout = {
        **base_layout(int(Hc * 1.0) + 60, margin={"l": left, "r": 10, "t": 50, "b": 10}),
        **image_axes(Hc, Wc),
        "annotations": ann
        + [
            {
                "x": j * (tw + gap) + tw / 2,
                "y": 0,
                "yanchor": "bottom",
                "yshift": 18,
                "text": steps[j],
                "showarrow": False,
            }
            for j in range(S)
        ]
        + [
            {
                "x": 0,
                "y": i * (th + label) + label + th / 2,
                "xanchor": "right",
                "xshift": -6,
                "text": f"<b>{methods[i]}</b>",
                "showarrow": False,
            }
            for i in range(M)
        ],
        "hoverdistance": -1,
    }
    layout["width"] = int(Wc + left + 10)
    return figure([img, points], layout)


def cascade_correlation_figure(
    correlations: np.ndarray, methods: Sequence[str], steps: Sequence[str], height: int = 300
) -> go.Figure:
    """Spearman correlation with the trained model's map after each randomisation step, per method."""
    rho = np.asarray(correlations, dtype=np.float64)
    data = [
        {
            "type": "scatter",
            "x": list(steps),
            "y": rho[i],
            "mode": "lines+markers",
            "name": name,
            "line": {"color": method_color(name, i), "width": 2.5},
            "marker": {"color": method_color(name, i)},
            "hovertemplate": f"{name}<br>%{{x}}: ρ %{{y:.2f}}<extra></extra>",
        }
        for i, name in enumerate(methods)
    ]
    layout = {
        **base_layout(height, showlegend=True, margin={"l": 60, "r": 10, "t": 30, "b": 50}),
        "legend": {"orientation": "h", "y": 1.15},
        "yaxis": {"title": {"text": "Spearman with trained map"}, "range": [-1.05, 1.05], "zeroline": True},
        "xaxis": {"title": {"text": "randomised down to"}},
    }
    return figure(data, layout)


def head_grid_figure(
    values: np.ndarray,
    knocked: Iterable[tuple[int, int]] = (),
    value_name: str = "importance",
    value_format: str = ".3f",
    colorscale: str = "RdBu_r",
    height: int | None = None,
    show_values: bool = True,
) -> go.Figure:
    """A clickable layer x head grid: one cell per head coloured by `values`, knocked-out heads crossed.

    Rows are layers (1-based, as the Attention page counts them), columns heads (0-based).
    Clicks land on invisible markers whose `customdata[0]` is `layer * heads + head` (0-based
    layer), the index `ui.page.clickable_chart` passes on.

    Args:
        values: (L, h) e.g. the log-probability drop when that head alone is knocked out.
        knocked: (layer, head) pairs, 0-based, drawn with a cross.
        colorscale: diverging by default, centred on 0 (a head whose loss helps shows blue).
        show_values: write each value in its cell (False: an unmeasured grid, clicks only).
    """
    v = np.asarray(values, dtype=np.float64)
    L, H = v.shape
    span = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
    span = span if span > 0 else 1.0
    rows = [f"layer {i + 1}" for i in range(L)]
    cols = [f"head {j}" for j in range(H)]
    text = [[format(x, value_format) if show_values else "" for x in row] for row in v]
    heat = {
        "type": "heatmap",
        "z": v,
        "x": cols,
        "y": rows,
        "zmin": -span,
        "zmax": span,
        "colorscale": named_colorscale(colorscale),
        "text": text,
        "texttemplate": "%{text}",
        "hoverinfo": "skip",
        "colorbar": {"title": {"text": value_name, "side": "right"}, "thickness": 12, "len": 0.9},
        "xgap": 2,
        "ygap": 2,
    }
    li, hi = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    li, hi = li.reshape(-1), hi.reshape(-1)
    cell = max(14.0, min(60.0, ((height or 60 * L + 60) - 60) / L))
    targets = {
        "type": "scatter",
        "x": [cols[j] for j in hi],
        "y": [rows[i] for i in li],
        "mode": "markers",
        "marker": {"size": cell, "symbol": "square", "opacity": 0.0, "color": "rgba(0,0,0,0)"},
        "customdata": np.stack([li * H + hi, li + 1, hi, v.reshape(-1)], axis=1),
        "hovertemplate": "layer %{customdata[1]:.0f}, head %{customdata[2]:.0f}<br>"
        + f"{value_name} %{{customdata[3]:{value_format}}}<br>click to knock it out or back in<extra></extra>",
        "selected": {"marker": {"opacity": 0.0}},
        "unselected": {"marker": {"opacity": 0.0}},
        "showlegend": False,
        "name": "heads",
    }
    ko = sorted({(int(a), int(b)) for a, b in knocked})
    crosses = {
        "type": "scatter",
        "x": [cols[b] for _, b in ko],
        "y": [rows[a] for a, _ in ko],
        "mode": "markers",
        "marker": {"symbol": "x-thin", "size": cell * 0.45, "line": {"width": 3, "color": "#111111"}},
        "hoverinfo": "skip",
        "showlegend": False,
        "name": "knocked out",
    }
    layout = {
        **base_layout(height or int(60 * L + 60), margin={"l": 10, "r": 10, "t": 10, "b": 30}),
        "yaxis": {"autorange": "reversed", "automargin": True, "type": "category"},
        "xaxis": {"automargin": True, "type": "category", "side": "top"},
        "hoverdistance": -1,
        "meta": {"knocked": [list(p) for p in ko]},
    }
    row_px = (layout["height"] - 40) / L
    layout["width"] = int(min(1000, H * max(row_px, 40) + 170))  # cells about square
    return figure([heat, targets, crosses], layout)


def patch_class_figure(
    image: np.ndarray,
    top_class: np.ndarray,
    top_prob: np.ndarray,
    class_names: Sequence[str],
    patch_size: int,
    alpha: float = 0.65,
    height: int = 380,
    title: str | None = None,
) -> go.Figure:
    """Each patch's top class (per-patch logit lens) as a colour over the image, with a legend.

    Args:
        image: (H, W, 3) model input for display.
        top_class: (gh, gw) class index per patch.
        top_prob: (gh, gw) that class's probability at the patch (hover).
        class_names: all the model's classes (colours follow the class index, the same at every depth).
    """
    a = to_uint8(image)[..., :3]
    H, W = a.shape[:2]
    tc = np.asarray(top_class, dtype=np.int64)
    gh, gw = tc.shape
    palette = np.array([_hex_rgb(CLASS_COLORS[c % len(CLASS_COLORS)]) for c in range(len(class_names))], np.float32)
    s = display_scale(H, W)
    img = np.repeat(np.repeat(a, s, 0), s, 1).astype(np.float32)
    cols = palette[tc]  # (gh, gw, 3)
    big = np.stack([upsample(cols[..., c], (H * s, W * s), smooth=False) for c in range(3)], -1)
    blended = np.clip(np.round((1 - alpha) * img + alpha * big), 0, 255).astype(np.uint8)
    x, y = patch_centres((gh, gw), patch_size)
    flat = tc.reshape(-1)
    prob = np.asarray(top_prob, dtype=np.float64).reshape(-1)
    idx = np.arange(flat.size)
    points = {
        "type": "scatter",
        "x": x,
        "y": y,
        "mode": "markers",
        "marker": {"size": 18, "symbol": "square", "opacity": 0.0},
        "text": [
            f"patch {i} (row {i // gw}, col {i % gw})<br>{class_names[c]}: {p * 100:.1f}%"
            for i, c, p in zip(idx, flat, prob)
        ],
        "hovertemplate": "%{text}<extra></extra>",
        "showlegend": False,
        "name": "patches",
    }
    present = sorted(set(flat.tolist()), key=lambda c: -int((flat == c).sum()))
    legend = [
        {
            "type": "scatter",
            "x": [None],
            "y": [None],
            "mode": "markers",
            "marker": {"size": 12, "symbol": "square", "color": CLASS_COLORS[c % len(CLASS_COLORS)]},
            "name": f"{class_names[c]} ({int((flat == c).sum())})",
            "showlegend": True,
        }
        for c in present[:12]
    ]
    layout = {
        **base_layout(height, title, showlegend=True, margin={"l": 10, "r": 10, "t": 30 if title else 10, "b": 10}),
        **image_axes(H, W),
        "legend": {"x": 1.02, "y": 1, "font": {"size": 11}},
        "hoverdistance": -1,
    }
    plot_h = height - layout["margin"]["t"] - layout["margin"]["b"]
    layout["width"] = int(plot_h * W / H + 190)
    return figure([image_trace(blended, (H, W)), points, *legend], layout)


def area_bars_figure(
    names: Sequence[str],
    deletion: np.ndarray,
    insertion: np.ndarray,
    height: int = 300,
) -> go.Figure:
    """Mean deletion and insertion areas per method over a set of images, with the standard error.

    Args:
        names: the methods ("random" among them).
        deletion, insertion: (B, M) areas, one row per image.
    """
    d = np.asarray(deletion, dtype=np.float64)
    ins = np.asarray(insertion, dtype=np.float64)
    B = d.shape[0]
    se = (lambda a: a.std(0, ddof=1) / np.sqrt(B)) if B > 1 else (lambda a: np.zeros(a.shape[1]))
    data = []
    for p, (a, what) in enumerate(((d, "deletion area (lower is better)"), (ins, "insertion area (higher is better)"))):
        data.append(
            {
                "type": "bar",
                "x": list(names),
                "y": a.mean(0),
                "error_y": {"type": "data", "array": se(a), "visible": True},
                "marker": {"color": [method_color(n, i) for i, n in enumerate(names)]},
                "name": what,
                "hovertemplate": f"%{{x}}<br>{what}: %{{y:.3f}}<extra></extra>",
                "xaxis": "x" if p == 0 else "x2",
                "yaxis": "y" if p == 0 else "y2",
            }
        )
    layout = {
        **base_layout(height, margin={"l": 60, "r": 10, "t": 30, "b": 60}),
        "xaxis": {"domain": [0, 0.47], "tickangle": -25},
        "xaxis2": {"domain": [0.53, 1], "tickangle": -25},
        "yaxis": {"title": {"text": "mean area"}, "rangemode": "tozero"},
        "yaxis2": {"anchor": "x2", "rangemode": "tozero"},
        "annotations": [
            _title(f"Deletion, mean of {B} (lower is better)", 0.235),
            _title(f"Insertion, mean of {B} (higher is better)", 0.765),
        ],
    }
    return figure(data, layout)
