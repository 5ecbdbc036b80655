"""A clickable grid picture: a map (or a layer x head grid) as one image that reports the cell clicked.

Why not plotly: a plotly figure costs the browser 0.1-0.3 s to redraw on each rerun (two redraws
for a selectable chart), so a slider step on Attention took 0.7-1.0 s to settle in headless
Chromium. This component swaps one image and moves a few boxes instead (about 0.2 s in total,
`benchmarks/bench_browser.py`). Its content comes from `vit_plots.pictures.picker_view`:

- `src`: the picture as a data URI; `width`: its width on the page (CSS px);
- `grid` (rows, cols) and `box` (left, top, right, bottom as fractions of the picture): where the
  cells are; a click inside the box reports `row * cols + col` as the trigger value `cell`;
- `hover`: one line per cell, shown next to the pointer;
- `frame`: draw the box dashed (the part of a photo the model saw);
- `outlined`: cells drawn with a cyan box (the query); `crossed`: cells framed dark with a small
  cross in the corner (knocked out), so that the cell's value stays readable;
- `text`: one short label per cell written on it ("" for none), white on the cells in `light`;
- `rows`/`cols`: optional axis labels; `key`: an optional colour key (src, low, high, label).

The picture, labels and texts are produced by this project from numbers; nothing a user typed
reaches the HTML (labels are set as text, not markup).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import streamlit as st

_JS = """
export default function(component) {
  const { data, setTriggerValue, parentElement } = component;
  let root = parentElement.querySelector('.vx-picker');
  if (!root) {
    root = document.createElement('div');
    root.className = 'vx-picker';
    root.innerHTML = '<div class="vx-body"><span></span><div class="vx-cols"></div><div class="vx-rows"></div>' +
      '<div class="vx-stage"><img draggable="false" alt=""/><div class="vx-marks"></div><div class="vx-tip"></div></div></div>' +
      '<div class="vx-key"><span class="vx-lo"></span><img alt=""/><span class="vx-hi"></span><span class="vx-label"></span></div>';
    parentElement.appendChild(root);
  }
  const stage = root.querySelector('.vx-stage'), img = stage.querySelector('img');
  const marks = stage.querySelector('.vx-marks'), tip = stage.querySelector('.vx-tip');
  if (img.getAttribute('src') !== data.src) img.setAttribute('src', data.src);
  img.style.width = data.width + 'px';
  img.style.imageRendering = data.pixelated ? 'pixelated' : 'auto';
  root.setAttribute('data-cells', String(data.grid[0] * data.grid[1]));
  const [gh, gw] = data.grid, [l, t, r, b] = data.box;
  const pct = (v) => (100 * v) + '%';
  const place = (el, i, j) => {
    el.style.left = pct(l + (r - l) * j / gw); el.style.top = pct(t + (b - t) * i / gh);
    el.style.width = pct((r - l) / gw); el.style.height = pct((b - t) / gh);
  };
  const frag = document.createDocumentFragment();
  const light = new Set(data.light || []);
  (data.text || []).forEach((s, p) => {
    if (!s) return;
    const el = document.createElement('div'); el.className = light.has(p) ? 'vx-text vx-light' : 'vx-text'; el.textContent = s;
    place(el, Math.floor(p / gw), p % gw); frag.appendChild(el);
  });
  (data.crossed || []).forEach((p) => {
    const el = document.createElement('div'); el.className = 'vx-cross'; el.textContent = '\\u2715';
    el.setAttribute('data-cell', String(p)); place(el, Math.floor(p / gw), p % gw); frag.appendChild(el);
  });
  (data.outlined || []).forEach((p) => {
    const el = document.createElement('div'); el.className = 'vx-outline';
    el.setAttribute('data-cell', String(p)); place(el, Math.floor(p / gw), p % gw); frag.appendChild(el);
  });
  if (data.frame) {
    const el = document.createElement('div'); el.className = 'vx-frame';
    el.style.left = pct(l); el.style.top = pct(t); el.style.width = pct(r - l); el.style.height = pct(b - t);
    frag.appendChild(el);
  }
  marks.replaceChildren(frag);
  const labels = (box, names, vertical) => {
    if (!names || !names.length) { box.replaceChildren(); box.removeAttribute('data-names'); return; }
    if (box.getAttribute('data-names') !== names.join('|')) {
      box.setAttribute('data-names', names.join('|'));
      box.replaceChildren(...names.map((n) => { const s = document.createElement('span'); s.textContent = n; return s; }));
    }
    if (!vertical) { box.style.paddingLeft = pct(l); box.style.paddingRight = pct(1 - r); }
  };
  labels(root.querySelector('.vx-cols'), data.cols, false);
  labels(root.querySelector('.vx-rows'), data.rows, true);
  const key = root.querySelector('.vx-key');
  if (data.key) {
    key.style.display = '';
    const ki = key.querySelector('img');
    if (ki.getAttribute('src') !== data.key.src) ki.setAttribute('src', data.key.src);
    key.querySelector('.vx-lo').textContent = data.key.low;
    key.querySelector('.vx-hi').textContent = data.key.high;
    key.querySelector('.vx-label').textContent = data.key.label;
  } else key.style.display = 'none';
  const cellAt = (e) => {
    const q = img.getBoundingClientRect();
    const fx = ((e.clientX - q.left) / q.width - l) / (r - l), fy = ((e.clientY - q.top) / q.height - t) / (b - t);
    if (!(fx >= 0 && fx < 1 && fy >= 0 && fy < 1)) return null;
    return Math.floor(fy * gh) * gw + Math.floor(fx * gw);
  };
  stage.onclick = (e) => { const p = cellAt(e); if (p !== null) setTriggerValue('cell', p); };
  stage.onmousemove = (e) => {
    const p = cellAt(e);
    if (p === null || !data.hover) { tip.style.display = 'none'; return; }
    tip.textContent = data.hover[p];
    const q = stage.getBoundingClientRect(), x = e.clientX - q.left, y = e.clientY - q.top;
    tip.style.display = 'block';
    tip.style.left = (x > q.width / 2 ? x - tip.offsetWidth - 12 : x + 14) + 'px';
    tip.style.top = (y + 14) + 'px';
  };
  stage.onmouseleave = () => { tip.style.display = 'none'; };
}
"""

_CSS = """
.vx-picker { display: inline-block; max-width: 100%; font-family: var(--st-font, sans-serif); color: var(--st-text-color, inherit); }
.vx-body { display: grid; grid-template-columns: auto auto; }
/* the stage is exactly as wide as its picture (a grid item would stretch to its column): the marks
   and texts are placed in percent of it */
.vx-stage { position: relative; display: inline-block; cursor: crosshair; line-height: 0; justify-self: start; }
.vx-stage img { display: block; user-select: none; max-width: 100%; height: auto; }
.vx-marks { position: absolute; inset: 0; pointer-events: none; }
.vx-frame { position: absolute; box-sizing: border-box; border: 2px dashed #00e5ff; }
.vx-outline { position: absolute; box-sizing: border-box; border: 3px solid #00e5ff; }
.vx-cross, .vx-text { position: absolute; display: flex; align-items: center; justify-content: center; line-height: 1; }
.vx-cross { align-items: flex-start; justify-content: flex-end; box-sizing: border-box; padding: 1px 3px;
  border: 2px solid #111; font-size: 11px; font-weight: 700; color: #111; text-shadow: 0 0 3px #fff; }
.vx-text { font-size: 12px; color: #111; }
.vx-text.vx-light { color: #fff; }
.vx-tip { position: absolute; display: none; z-index: 5; background: rgba(20, 20, 20, 0.88); color: #fff;
  font-size: 12px; line-height: 1.35; padding: 3px 7px; border-radius: 4px; pointer-events: none; white-space: pre; }
.vx-rows { display: flex; flex-direction: column; justify-content: space-around; padding-right: 6px; font-size: 12px; }
.vx-rows span { white-space: nowrap; }
.vx-rows:empty, .vx-cols:empty { padding: 0; }
/* width 0, min-width 100%: the column labels take the picture's width and never widen the column */
.vx-cols { display: flex; justify-content: space-around; font-size: 12px; padding-bottom: 3px; width: 0;
  min-width: 100%; box-sizing: border-box; }
.vx-cols span { white-space: nowrap; }
.vx-key { display: flex; align-items: center; gap: 6px; margin-top: 6px; font-size: 12px; }
.vx-key img { width: 160px; height: 10px; }
.vx-label { opacity: 0.8; }
"""

_picker = None


def _component():
    global _picker
    if _picker is None:  # registered once per process, on first use
        _picker = st.components.v2.component("vit_explorer.grid_picker", js=_JS, css=_CSS)
    return _picker


def valid_cell(value, view: dict) -> int | None:
    """The clicked cell as an index of `view`'s grid, or None. The value comes from the browser, so
    anything but a whole number within the grid (a forged message, a stale view) is ignored."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value != int(value):
        return None
    rows, cols = (int(v) for v in view["grid"])
    return int(value) if 0 <= value < rows * cols else None


def grid_picker(view: dict, key: str, on_cell: Callable[[int], None]) -> None:
    """Shows `view` (`vit_plots.pictures.picker_view` / `head_grid_view`); a click on a cell calls
    `on_cell(index)` before the rerun. The page finds it as `.st-key-{key}`."""

    def _cb() -> None:
        cell = valid_cell(getattr(st.session_state.get(key), "cell", None), view)
        if cell is not None:
            on_cell(cell)

    _component()(key=key, data=view, on_cell_change=_cb, width="content")
