"""What every page starts from: the sidebar's model and image pickers, and their forward pass."""

from __future__ import annotations

import functools
import logging

import streamlit as st
from torch import nn

from vit_core.devices import DEVICE_ENV, device_label, model_device, server_device
from vit_core.threads import use_inference_threads
from vit_plots.images import sharp

from . import compute, models
from .images import choose_sample_by_slug, image_picker, refused_upload_message, sample_slug
from .models import model_picker
from .selection import Current
from .state import end_url_run, read_link, set_url, take_link_param
from .training.badge import running_badge

_CURRENT = "_current"  # set by sidebar(): this run's Current, or why the model cannot run on the image


def sidebar() -> Current | None:
    """Draw the model and image pickers, run the model on the image once: this run's `Current`.

    app.py calls this once per run, for every page, and `end_of_run()` when the page is done;
    `current()` then returns the same object. A run without app.py (a page run on its own, or
    Streamlit's AppTest, which re-runs only the page script of an `st.navigation` app after
    its first run) gets its sidebar drawn by `current()`. None if the model cannot run on the
    image (the sidebar says why).

    Messages for the user (a link naming what is not here, a file that is not an image) go to
    the top of the main area, above the page, where the user is looking.
    """
    read_link()
    notes = _apply_link()
    running_badge()  # while this session's training run is active: a link back to the Train page
    st.sidebar.header("Model")
    loaded = model_picker()
    threads = use_inference_threads(loaded.model)  # this script run's thread: 1 for small models
    _device_line(loaded.model, threads)
    st.sidebar.header("Image")
    image = image_picker()
    refused = refused_upload_message()
    if refused:
        st.error(refused, icon=":material/image_not_supported:")
    for note in notes:
        st.warning(note, icon=":material/link_off:")
    set_url("model", loaded.key)
    set_url("image", sample_slug(image.name) if image.source == "sample" else image.source)
    try:
        prep = compute.prepare(loaded, image)
    except Exception as e:  # a model/image mismatch must not take the whole app down
        st.session_state[_CURRENT] = e
        st.sidebar.error(f"This model cannot run on this image: {str(e)[:200]}")
        return None
    cur = st.session_state[_CURRENT] = Current(loaded, image, prep)
    c1, c2 = st.sidebar.columns(2)
    c1.image(
        compute.png_bytes(sharp(prep.thumbnail, min_px=128)),
        caption=f"{image.name} ({prep.original_size[0]}x{prep.original_size[1]})",
    )
    h, w = prep.resized.shape[:2]
    c2.image(compute.png_bytes(sharp(prep.resized, min_px=128)), caption=f"model input {w}x{h}")
    return cur


def _device_line(model: nn.Module, threads: int) -> None:
    """Which device runs the model ("Model runs on: CPU (1 thread)", "... CUDA: <name>"), and, when the
    server's `VIT_EXPLORER_DEVICE` could not be met, why (in the tooltip and, once, in the server log)."""
    choice = server_device()
    if choice.note:
        _log_once(choice.note)
    unmet = f" · {DEVICE_ENV}={choice.setting} could not be used" if choice.note else ""
    st.sidebar.caption(
        f"Model runs on: {device_label(model_device(model), threads)}{unmet}",
        help=choice.note or "Set by the server (`VIT_EXPLORER_DEVICE`: auto, cpu, cuda, mps; auto by default).",
    )


@functools.lru_cache(maxsize=8)
def _log_once(note: str) -> None:
    logging.getLogger("vit_explorer").warning(note)


def _apply_link() -> list[str]:
    """Select the model and the sample a shared link names (first run only); what could not be, said plainly."""
    notes = []
    model = take_link_param("model")
    if model:
        why = models.select_from_link(model)
        if why:
            notes.append(f"This link asks for a model that is not available here ({why}). Showing the default model.")
    image = take_link_param("image")
    if image and not choose_sample_by_slug(image):
        if image in ("upload", "camera"):
            what = "an uploaded image" if image == "upload" else "a camera photo"
            notes.append(f"This link was made with {what}, which links cannot carry. Showing a sample image instead.")
        else:
            notes.append(f"This link asks for a sample image “{image}” that is not here. Showing the default image.")
    return notes


def end_of_run() -> None:
    """Forget this run's `Current` (see `sidebar`): the next run builds its own; tidy the address."""
    st.session_state.pop(_CURRENT, None)
    end_url_run()


def current() -> Current:
    """This run's model, image and forward pass (draws the sidebar if this run has not)."""
    if _CURRENT not in st.session_state:  # no app.py in this run: draw the sidebar here
        sidebar()
        cur = st.session_state.pop(_CURRENT)  # and keep nothing for the next run
    else:
        cur = st.session_state[_CURRENT]
    if isinstance(cur, Exception):  # the sidebar has said so too; the page cannot go on without a forward pass
        st.error(
            f"The model could not run on this image ({str(cur)[:200]}). Pick another model or image in the sidebar."
        )
        st.stop()
    return cur
