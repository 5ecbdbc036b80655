"""Snapshots of a model in training: what the explorer pages show, taken now and kept as numpy arrays.

A ViT's snapshot holds its Figure 7 structures (and, when measure images are given, the
numbers of `vit_core.analysis.emergence.emergence_measures` for the emergence dashboard); a
CNN (`vit_core.cnn.ResNet`) has no attention and no position embeddings, so its snapshot holds
its first-layer (stem) filters instead and leaves the ViT fields empty (size 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from einops import rearrange

from .analysis import embedding_filters_pca_and_variance, position_similarity, rollout_cls_map
from .analysis._common import scale01
from .analysis.emergence import emergence_measures
from .cnn import is_cnn
from .model import VisionTransformer


@dataclass
class Snapshot:
    """The model's learned structures at one step (numpy, CPU; never changed after creation)."""

    step: int
    epoch: float
    position_similarity: np.ndarray  # (gh, gw, gh, gw) cosine similarity of position embeddings
    filters_pca: np.ndarray  # (k, P, P, C) top principal components of the patch filters, in [0, 1]
    filters_variance: np.ndarray  # (k,) share of the filters' variance each component explains
    cls_map: np.ndarray  # (gh, gw) attention rollout of the [CLS] token on the probe image
    probe_probs: np.ndarray  # (classes,) the model's softmax on the probe image
    stem_filters: np.ndarray | None = None  # a CNN's (k, 3, 3, C) stem filters, each scaled to [0, 1]; None for a ViT
    measures: dict[str, Any] | None = None  # emergence_measures on the measure images (ViT), when given


def stem_filters(model: torch.nn.Module) -> np.ndarray:
    """A CNN's first-layer filters (k, kh, kw, C), each scaled to [0, 1] on its own (raw filters, no PCA)."""
    w = model.stem.weight.detach().float().cpu()  # (k, C, kh, kw)
    return scale01(rearrange(w, "k c h w -> k h w c"), dims=(1, 2, 3)).numpy().astype(np.float32)


@torch.no_grad()
def take_snapshot(
    model: VisionTransformer,
    probe: torch.Tensor,
    step: int,
    epoch: float,
    k: int = 28,
    measure_images: torch.Tensor | None = None,
    measure_labels: torch.Tensor | None = None,
) -> Snapshot:
    """Position similarity, filter PCA and the probe's [CLS] rollout map of `model` as it is now.

    Args:
        model: the model being trained (its train/eval mode is restored afterwards); a
            `ResNet` gets a snapshot of its stem filters and probe prediction only.
        probe: (1, C, H, W) normalised probe image on the model's device.
        measure_images: (N, C, H, W) normalised images on the model's device: a ViT's
            snapshot then also holds `emergence_measures` on them (with `measure_labels` (N,),
            the logit-lens accuracy by depth too).
    """
    was_training = model.training
    model.eval()
    if is_cnn(model):
        try:
            probs = model(probe).float().softmax(-1)[0]
        finally:
            model.train(was_training)
        return Snapshot(
            step=step,
            epoch=round(epoch, 4),
            position_similarity=np.zeros((0, 0, 0, 0), np.float32),
            filters_pca=np.zeros((0, 0, 0, 0), np.float32),
            filters_variance=np.zeros((0,), np.float32),
            cls_map=np.zeros((0, 0), np.float32),
            probe_probs=probs.cpu().numpy().astype(np.float32),
            stem_filters=stem_filters(model),
        )
    try:
        sim = position_similarity(model)
        filters, ratio = embedding_filters_pca_and_variance(model, k)
        trace = model.trace(probe)
        cls_map = rollout_cls_map(trace.attentions.float(), trace.grid, trace.num_prefix_tokens)[0]
        probs = trace.logits.float().softmax(-1)[0]
        measures = None
        if measure_images is not None:
            measures = emergence_measures(model, measure_images, measure_labels)
    finally:
        model.train(was_training)
    return Snapshot(
        step=step,
        epoch=round(epoch, 4),
        position_similarity=sim.cpu().numpy().astype(np.float32),
        filters_pca=filters.cpu().numpy().astype(np.float32),
        filters_variance=ratio.cpu().numpy().astype(np.float32),
        cls_map=cls_map.cpu().numpy().astype(np.float32),
        probe_probs=probs.cpu().numpy().astype(np.float32),
        measures=measures,
    )
