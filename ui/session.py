"""What every page starts from: the selected model and image, and their cached forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from vit_core import VisionTransformer, ViTConfig
from vit_core.threads import use_inference_threads

from . import compute
from .images import ImageChoice, image_picker
from .models import LoadedModel, model_picker

_SELECTION = "_selection"  # (LoadedModel, ImageChoice) chosen in the sidebar
_DRAWN = "_sidebar_drawn"  # set while a run that has drawn the sidebar is in progress


@dataclass
class Current:
    """The model, the image and the one forward pass every page shows."""

    loaded: LoadedModel
    image: ImageChoice
    prep: compute.Prepared

    @property
    def model(self) -> VisionTransformer:
        return self.loaded.model

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def image_key(self) -> str:
        return self.image.key

    @property
    def cfg(self) -> ViTConfig:
        return self.loaded.model.cfg

    @property
    def grid(self) -> tuple[int, int]:
        return self.prep.trace.grid

    @property
    def patch_size(self) -> int:
        return self.prep.trace.patch_size

    @property
    def num_prefix(self) -> int:
        return self.prep.trace.num_prefix_tokens

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def num_layers(self) -> int:
        return self.prep.trace.num_layers

    @property
    def num_heads(self) -> int:
        return self.prep.trace.attentions.shape[2]

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def has_head(self) -> bool:
        """False for a backbone without a classifier (e.g. DINO): no classes, no prediction."""
        return self.cfg.num_classes > 0

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.prep.probs))

    def prediction_text(self) -> str:
        """'cat (87.1%)'."""
        if not self.has_head:
            return "none (this model has no classifier head)"
        c = self.predicted
        return f"{self.class_names[c]} ({self.prep.probs[c] * 100:.1f}%)"

    def attention(self, layer: int) -> np.ndarray:
        """(heads, N, N) post-softmax attention of one layer."""
        return self.prep.trace.attentions[0, layer].numpy()


def sidebar() -> tuple[LoadedModel, ImageChoice]:
    """Draw the model and image pickers (app.py calls this once per run, for every page).

    Call `end_of_run()` when the page is done: `current()` draws the sidebar itself when it
    was not drawn in this run (a page run on its own, or Streamlit's AppTest, which re-runs
    only the page script of an `st.navigation` app after its first run).
    """
    st.session_state[_DRAWN] = True
    st.sidebar.header("Model")
    loaded = model_picker()
    st.sidebar.header("Image")
    image = image_picker()
    st.session_state[_SELECTION] = (loaded, image)
    use_inference_threads(loaded.model)  # this script run's thread: 1 for small models
    try:
        prep = compute.prepare(loaded.model, loaded.model_id, image.key, image.data)
    except Exception as e:  # a model/image mismatch must not take the whole app down
        st.sidebar.error(f"This model cannot run on this image: {str(e)[:200]}")
        return loaded, image
    c1, c2 = st.sidebar.columns(2)
    c1.image(
        compute.png_bytes(_sharp(prep.thumbnail)),
        caption=f"{image.name} ({prep.original_size[0]}x{prep.original_size[1]})",
    )
    h, w = prep.resized.shape[:2]
    c2.image(compute.png_bytes(_sharp(prep.resized)), caption=f"model input {w}x{h}")
    return loaded, image


def _sharp(a: np.ndarray, min_px: int = 128) -> np.ndarray:
    s = max(1, -(-min_px // max(a.shape[:2])))
    return np.repeat(np.repeat(a, s, axis=0), s, axis=1) if s > 1 else a


def end_of_run() -> None:
    """Mark the end of a run that drew the sidebar (see `sidebar`)."""
    st.session_state.pop(_DRAWN, None)


def current() -> Current:
    """The selected model and image with their cached forward pass (draws the sidebar if needed)."""
    sel = st.session_state.get(_SELECTION)
    if sel is None or not st.session_state.pop(_DRAWN, False):  # call once per run
        sel = sidebar()
        st.session_state.pop(_DRAWN, None)
    loaded, image = sel
    try:
        prep = compute.prepare(loaded.model, loaded.model_id, image.key, image.data)
    except Exception as e:  # the sidebar has said so too; the page cannot go on without a forward pass
        st.error(f"The model could not run on this image ({str(e)[:200]}). Pick another model or image in the sidebar.")
        st.stop()
    return Current(loaded, image, prep)
