"""Small shared pieces of page layout: headers, the prediction line, clickable charts."""

from __future__ import annotations

from collections.abc import Callable

import plotly.graph_objects as go
import streamlit as st

from .compute import png_bytes
from .picker import grid_picker
from .predictions import class_note
from .selection import Current

PLOTLY_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d", "autoScale2d"]}


def header(title: str, intro: str) -> None:
    """Page title and a few sentences on what the page shows."""
    st.title(title)
    st.markdown(intro)


def section(title: str, text: str, latex: str | None = None) -> None:
    """A section's heading (an h3, as st.subheader draws it), its text and an optional display
    formula as ONE markdown element: every element on a page costs the browser time on every
    rerun of any part of the page (a fragment's slider step included), so static text is kept in
    as few elements as it reads well in."""
    body = f"### {title}\n\n{text}"
    if latex:
        body += f"\n\n$$\n{latex}\n$$"
    st.markdown(body)


def prediction_line(cur: Current) -> None:
    """One line: the model's prediction for the current image (with a warning for random weights)."""
    text = f"**Prediction:** {cur.prediction_text()} · model: {cur.loaded.label} · image: {cur.image.name}"
    if not cur.has_head:
        st.info(text + " — a self-supervised backbone: it gives features, not classes; the attention views still work.")
    elif cur.loaded.untrained:
        st.warning(text + " — random weights, so the prediction means nothing yet.")
    else:
        st.info(text)
    note = class_note(cur)  # a model with few classes: its list, and what that means for a photo
    if note:
        st.caption(note)


def needs_head(cur: Current, what: str) -> bool:
    """True if the model has a classifier; otherwise say that `what` needs one and return False."""
    if cur.has_head:
        return True
    st.caption(f"{what} needs class scores; this model is a backbone without a classifier head.")
    return False


def _width(fig: go.Figure) -> str:
    """Figures that set their own width (images) keep it; the others stretch to the column."""
    return "content" if fig.layout.width else "stretch"


def chart(fig: go.Figure, key: str | None = None) -> None:
    """A plotly figure with a quiet mode bar."""
    st.plotly_chart(fig, width=_width(fig), config=PLOTLY_CONFIG, key=key)


def encoded(images) -> list[bytes]:
    """Pictures (uint8 arrays) as PNG bytes for `pictures`: encode them before drawing, so that a
    section's elements leave the server together rather than one encoding apart."""
    return [png_bytes(im) for im in images]


def pictures(images, captions, width: int, key: str | None = None) -> None:
    """Pictures in a row (wrapping), each with its caption: the light way to show maps that redraw
    on every slider step (`vit_plots.pictures`); `key` names the container (tests find it by it)."""
    with st.container(key=key):
        st.image(list(images), caption=list(captions), width=int(width))


def clickable_map(view: dict, key: str, on_patch: Callable[[int], None]) -> None:
    """A map (`vit_plots.pictures.picker_view`) whose patches take clicks: `on_patch(index)` runs
    before the rerun. One image instead of a plotly figure: the light choice for a map that
    redraws on every slider step."""
    grid_picker(view, key, on_patch)


def clicked_patch(chart_key: str) -> int | None:
    """The patch index (customdata[0]) of the point last clicked in a chart, or None."""
    state = st.session_state.get(chart_key)
    try:
        points = state["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        cd = p.get("customdata")
        if isinstance(cd, dict):  # a typed array arrives from the browser as {"0": ..., "1": ...}
            cd = [cd[k] for k in sorted(cd, key=int)]
        if cd is not None and len(cd) >= 1:
            return int(round(float(cd[0])))
    return None


def clickable_chart(fig: go.Figure, key: str, on_patch: Callable[[int], None]) -> None:
    """A chart whose invisible patch markers report clicks: `on_patch(patch_index)` runs before the rerun."""

    def _cb() -> None:
        patch = clicked_patch(key)
        if patch is not None:
            on_patch(patch)

    st.plotly_chart(fig, width=_width(fig), config=PLOTLY_CONFIG, key=key, on_select=_cb, selection_mode="points")


def keep_in(key: str, allowed, default) -> None:
    """Reset a widget's stored value when it is no longer allowed (e.g. another model has fewer layers)."""
    if key in st.session_state and st.session_state[key] not in allowed:
        st.session_state[key] = default
