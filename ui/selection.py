"""What every page works on: the selected model, the selected image and their forward pass.

Plain data, built once per script run by `ui.session.sidebar`. A page hands its `Current`
to `ui.compute`, whose caches key it by `cache_key` (the model's id and the image's hash),
never by its tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vit_core import VisionTransformer, ViTConfig, ViTTrace

from .images import ImageChoice
from .models import LoadedModel


@dataclass
class Prepared:
    """An image made ready for one model, and the model's observed forward pass on it."""

    thumbnail: np.ndarray  # (h, w, 3) uint8: the original, downscaled to <= compute.THUMB_PX
    crop_box: tuple[float, float, float, float]  # the region the model sees, in thumbnail pixels
    original_size: tuple[int, int]  # (w, h) of the uploaded image
    resized: np.ndarray  # (H, W, 3) uint8: resized + centre-cropped, before normalisation
    x: torch.Tensor  # (1, C, H, W) normalised model input
    display: np.ndarray  # (H, W, 3) float in [0, 1]: the model input, de-normalised for display
    trace: ViTTrace  # everything the forward pass produced (batch of 1)
    probs: np.ndarray  # (classes,) softmax of the logits


@dataclass
class Current:
    """The model, the image and the one forward pass every page shows."""

    loaded: LoadedModel
    image: ImageChoice
    prep: Prepared

    @property
    def cache_key(self) -> tuple[str, str]:
        """What identifies everything computed from this selection: the model's id, the image's hash."""
        return (self.loaded.model_id, self.image.key)

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
