"""What the embedding layers learned: patch filters and position embeddings (ViT Figure 7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ._common import pca, scale01

if TYPE_CHECKING:
    from ..model import VisionTransformer


@torch.no_grad()
def embedding_filters(model: VisionTransformer) -> Tensor:
    """The raw patch-projection filters, each min-max scaled to [0, 1] for display.

    This is the weaker view (keras-io probing_vits); Figure 7 left shows principal
    components, see `embedding_filters_pca`.

    Returns:
        (D, P, P, C) in [0, 1].
    """
    w = model.patch_embed.proj.weight.detach().float()  # (D, C, P, P)
    return scale01(rearrange(w, "d c p1 p2 -> d p1 p2 c"), dims=(1, 2, 3))


@torch.no_grad()
def embedding_pca_components(model: VisionTransformer, k: int = 28) -> tuple[Tensor, Tensor]:
    """Top principal components of the D projection filters, as samples of dimension C*P*P.

    (About 0.1-0.3 s for ViT-B/16 on a CPU; the app caches it per model, the library does not.)

    Args:
        model: the ViT.
        k: components wanted; min(k, D, C*P*P) are returned.

    Returns:
        components (k, C*P*P) orthonormal rows in (c, p1, p2) order, sign fixed so that the
        largest-magnitude entry is positive; explained variance ratio (k,) (share of the
        filters' total variance).
    """
    wf = model.patch_embed.proj.weight.detach().float()
    comps, _, ratio = pca(wf.reshape(wf.shape[0], -1), k)
    return comps, ratio


@torch.no_grad()
def embedding_filters_pca(model: VisionTransformer, k: int = 28) -> Tensor:
    """ViT paper Figure 7 left: the top principal components of the patch filters.

    Args:
        model: the ViT.
        k: components (the paper shows 28); min(k, D, C*P*P) are returned.

    Returns:
        (k, P, P, C), each component min-max scaled to [0, 1].
    """
    return embedding_filters_pca_and_variance(model, k)[0]


@torch.no_grad()
def embedding_filters_pca_and_variance(model: VisionTransformer, k: int = 28) -> tuple[Tensor, Tensor]:
    """`embedding_filters_pca` and the explained variance ratio (k,) of each component, from one PCA."""
    comps, ratio = embedding_pca_components(model, k)
    P, C = model.patch_size, model.patch_embed.proj.weight.shape[1]
    comps = rearrange(comps, "k (c p1 p2) -> k p1 p2 c", c=C, p1=P, p2=P)
    return scale01(comps, dims=(1, 2, 3)), ratio


@torch.no_grad()
def position_similarity(model: VisionTransformer, grid: tuple[int, int] | None = None) -> Tensor:
    """ViT paper Figure 7 centre: cosine similarity between patch position embeddings.

    Args:
        model: the ViT.
        grid: (gh, gw) to show; the learned embedding is resampled to it if it differs from
            the model's native grid. Default: the native grid.

    Returns:
        (gh, gw, gh, gw): `[i, j]` is the tile for patch (i, j): its cosine similarity with
        every patch position. The diagonal `[i, j, i, j]` is 1.
    """
    gh, gw = grid if grid is not None else model.cfg.grid_size
    pos = model.pos_embed_for((gh, gw))[0].detach().float()  # (prefix? + n, D)
    if not model.cfg.no_embed_class:
        pos = pos[model.num_prefix_tokens :]  # prefix rows are not positions on the grid
    e = F.normalize(pos, dim=-1)
    return (e @ e.T).reshape(gh, gw, gh, gw)
