"""Maps as pictures (vit_plots.pictures) and the clickable picker's view, against direct computations."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import tomllib
from PIL import Image

import vit_plots.pictures as vpp
from vit_plots._base import colorscale_lut

ROOT = Path(__file__).resolve().parent.parent


def decode(uri: str) -> np.ndarray:
    head, data = uri.split(",", 1)
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def test_grid_picture_colours_each_patch_as_the_scale_says():
    v = np.array([[0.0, 1.0], [0.5, 0.25]])
    img = vpp.grid_picture(v, "Viridis", 0.0, 1.0, px=40)
    assert img.shape == (40, 40, 3) and img.dtype == np.uint8
    lut = colorscale_lut("Viridis")
    for (r, c), x in np.ndenumerate(v):
        block = img[r * 20 : (r + 1) * 20, c * 20 : (c + 1) * 20]
        assert (block == lut[int(round(x * 255))]).all()  # one flat block per patch, the scale's colour


def test_grid_picture_outlines_the_selected_patch_only():
    img = vpp.grid_picture(np.zeros((4, 4)), "Greys", 0.0, 1.0, px=80, selected=6)  # row 1, col 2
    cyan = (img == vpp.OUTLINE).all(axis=-1)
    ys, xs = np.nonzero(cyan)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20, 39, 40, 59)
    assert not cyan[25:35, 45:55].any()  # the inside of the box keeps the map


def test_head_pictures_scale_each_head_to_its_own_maximum():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 4, 4)) * np.array([1.0, 0.1, 0.01])[:, None, None]
    pics, peaks = vpp.head_pictures(maps, "Greys", px=40)
    np.testing.assert_allclose(peaks, maps.reshape(3, -1).max(axis=1))
    top = colorscale_lut("Greys")[-1]
    for pic, m in zip(pics, maps):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        assert (pic[r * 10, c * 10] == top).all()  # every head's peak gets the top colour, however small


def test_vector_picture_is_symmetric_around_zero_and_wraps_into_rows():
    v = np.array([-2.0, 0.0, 1.0, 2.0, -1.0, 0.5])
    img = vpp.vector_picture(v, "RdBu_r", px=60, rows=2)
    assert img.shape == (40, 60, 3)  # 2 rows of 3 cells, 20 px each
    lut = colorscale_lut("RdBu_r")
    assert (img[0, 0] == lut[0]).all() and (img[20, 0] == lut[255]).all()  # -2 blue end, +2 red end
    assert (img[0, 20] == lut[int(round(0.5 * 255))]).all()  # 0 in the middle
    with pytest.raises(ValueError):
        vpp.vector_picture(v, rows=4)


def test_picker_view_maps_the_photo_box_and_carries_the_values():
    photo = np.zeros((60, 120, 3), dtype=np.uint8)
    heat = np.arange(16, dtype=float).reshape(4, 4)
    view = vpp.picker_view(photo, heat, (4, 4), box=(30.0, 0.0, 90.0, 60.0), selected=5, width=480, vmin=0)
    assert view["grid"] == [4, 4] and view["outlined"] == [5] and view["frame"] is True
    assert view["box"] == [0.25, 0.0, 0.75, 1.0]
    assert view["values"] == list(heat.reshape(-1)) and view["range"] == [0.0, 15.0]
    assert view["hover"][6].startswith("patch 6 (row 1, col 2)") and "6.0000" in view["hover"][6]
    pic = decode(view["src"])
    assert pic.shape[1] / pic.shape[0] == pytest.approx(2.0, rel=0.02)  # the photo's own aspect
    assert view["width"] == 480 and view["key"]["low"] == "0" and view["key"]["high"] == "15"
    # a tall photo is narrowed so that it stays within max_height
    tall = vpp.picker_view(np.zeros((200, 100, 3)), heat, (4, 4), width=480, max_height=300)
    assert tall["width"] == 150 and tall["frame"] is False
    with pytest.raises(ValueError):
        vpp.picker_view(photo, heat[:3], (4, 4))


def test_head_grid_view_cells_crosses_and_labels():
    v = np.array([[0.5, -0.25, 0.0], [1.0, 0.1, -1.0]])
    view = vpp.head_grid_view(v, knocked=[(1, 2), (0, 0)], cell_px=20, gap_px=2)
    assert view["grid"] == [2, 3] and view["crossed"] == [0, 5]  # layer * heads + head
    assert view["rows"] == ["layer 1", "layer 2"] and view["cols"] == ["head 0", "head 1", "head 2"]
    assert view["text"][1] == "-0.250" and view["range"] == [-1.0, 1.0]
    pic = decode(view["src"])
    assert pic.shape == (44, 66, 4)
    lut = colorscale_lut("RdBu_r")
    assert (pic[0, 0, :3] == lut[int(round(0.75 * 255))]).all()  # 0.5 on a -1..1 scale
    assert pic[20, 0, 3] == 0 and pic[0, 20, 3] == 0  # transparent gaps between the cells
    assert "click to knock it out" in view["hover"][4]
    assert 3 in view["light"] and 5 in view["light"] and 2 not in view["light"]  # white text on the dark ends only
    blank = vpp.head_grid_view(np.zeros((2, 3)), show_values=False)
    assert blank["key"] is None and set(blank["text"]) == {""}


def test_map_pictures_share_one_range():
    img = np.zeros((32, 32, 3))
    a, b = np.zeros((4, 4)), np.full((4, 4), 2.0)
    a[0, 0] = 1.0
    pics, (lo, hi) = vpp.map_pictures(img, [a, b], alpha=1.0, colorscale="Greys", smooth=False)
    assert (lo, hi) == (0.0, 2.0)
    lut = colorscale_lut("Greys")
    assert (pics[1][-1, -1] == lut[-1]).all()  # 2 is the top of the shared scale
    assert (pics[0][0, 0] == lut[int(round(0.5 * 255))]).all()  # 1 is its middle, not a's own top


def test_a_clicked_cell_from_the_browser_is_checked_against_the_grid():
    from ui.picker import valid_cell

    view = {"grid": [2, 3]}
    assert [valid_cell(v, view) for v in (0, 5, 5.0)] == [0, 5, 5]
    for forged in (6, -1, 2.5, "3", None, True, float("nan"), 10**12):
        assert valid_cell(forged, view) is None, forged


def test_streamlit_skips_the_full_collection_after_each_run():
    """A full gc.collect(2) after every script run held the GIL for 0.3-0.5 s per slider step
    (py-spy, 2-core machine); the app's config turns it off."""
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["runner"]["postScriptGC"] is False
