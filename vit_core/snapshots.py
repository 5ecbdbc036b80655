"""Snapshots of a model in training: what the explorer pages show, taken now and kept as numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from .analysis import embedding_pca_components, position_similarity, rollout_cls_map
from .analysis._common import scale01
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


@torch.no_grad()
def take_snapshot(model: VisionTransformer, probe: torch.Tensor, step: int, epoch: float, k: int = 28) -> Snapshot:
    """Position similarity, filter PCA and the probe's [CLS] rollout map of `model` as it is now.

    Args:
        model: the model being trained (its train/eval mode is restored afterwards).
        probe: (1, C, H, W) normalised probe image on the model's device.
    """
    was_training = model.training
    model.eval()
    try:
        sim = position_similarity(model)
        # use_cache=False: the PCA cache is process-wide and other sessions use it from their threads.
        comps, ratio = embedding_pca_components(model, k, use_cache=False)
        P, C = model.patch_size, model.patch_embed.proj.weight.shape[1]
        filters = scale01(rearrange(comps, "k (c p1 p2) -> k p1 p2 c", c=C, p1=P, p2=P), dims=(1, 2, 3))
        trace = model.trace(probe)
        cls_map = rollout_cls_map(trace.attentions.float(), trace.grid, trace.num_prefix_tokens)[0]
        probs = trace.logits.float().softmax(-1)[0]
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
    )
