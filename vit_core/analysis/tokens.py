"""Views of the token stream: the logit lens and token PCA."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._common import check_tokens, pca, scale01

if TYPE_CHECKING:
    from ..model import VisionTransformer, ViTTrace


@torch.no_grad()
def logit_lens(model: VisionTransformer, trace: ViTTrace) -> Tensor:
    """The final norm and head applied after the embedding and after every block.

    Args:
        model: the ViT that produced `trace`.
        trace: from `model.trace`.

    Returns:
        (B, L+1, classes) class probabilities; index 0 is the embedding output, index l the
        output of block l; the last equals `trace.probs`.
    """
    hs = trace.hidden_states  # (B, L+1, N, D)
    B, S, N, D = hs.shape
    logits = model.logits_from_hidden(hs.reshape(B * S, N, D).to(model.pos_embed.dtype))
    return logits.float().softmax(dim=-1).reshape(B, S, -1)


def _patch_tokens(hidden_states: Tensor, layer: int, num_prefix_tokens: int) -> Tensor:
    if hidden_states.dim() != 4:
        raise ValueError(f"hidden_states must have shape (B, L+1, N, D), got {tuple(hidden_states.shape)}")
    return hidden_states[:, layer, num_prefix_tokens:].float()  # (B, n, D)


def token_pca(hidden_states: Tensor, layer: int, num_prefix_tokens: int = 1, k: int = 2) -> Tensor:
    """Per image, the patch tokens at depth `layer` projected on their top k principal components.

    Args:
        hidden_states: (B, L+1, N, D); `layer` 0 is after the embedding, l after block l
            (negative indices count from the end).
        layer: depth index into `hidden_states`.
        num_prefix_tokens: k tokens skipped before the patches.
        k: components; a component that cannot exist (k > min(n, D)) is returned as zeros.

    Returns:
        (B, n, k) coordinates of the centred tokens (sign fixed: each component's largest
        loading is positive), row-major patch order, for a scatter plot.
    """
    x = _patch_tokens(hidden_states, layer, num_prefix_tokens)
    _, coords, _ = pca(x, k)
    if coords.shape[-1] < k:
        coords = torch.cat([coords, coords.new_zeros(*coords.shape[:-1], k - coords.shape[-1])], dim=-1)
    return coords


def token_pca_rgb(hidden_states: Tensor, layer: int, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Patch tokens at depth `layer` coloured by their top 3 principal components.

    Args:
        hidden_states: (B, L+1, N, D).
        layer: depth index (0 = after the embedding, l = after block l).
        grid: (gh, gw).
        num_prefix_tokens: k.

    Returns:
        (B, gh, gw, 3) in [0, 1]: component c min-max scaled over the image's patches is
        channel c.
    """
    gh, gw = check_tokens(hidden_states.shape[2], grid, num_prefix_tokens)
    coords = token_pca(hidden_states, layer, num_prefix_tokens, k=3)  # (B, n, 3)
    rgb = scale01(coords, dims=(1,))
    return rgb.reshape(rgb.shape[0], gh, gw, 3)


def token_pca_by_depth(hidden_states: Tensor, num_prefix_tokens: int = 1, k: int = 3) -> Tensor:
    """`token_pca` at every depth, each component's sign matched to the previous depth's.

    PCA defines a component only up to its sign, and the per-depth rule (largest loading
    positive) can pick opposite signs at neighbouring depths for nearly the same direction, so
    the colours of `token_pca_rgb` would swap for no reason. Here depth 0 keeps that rule and
    each later component is flipped when its coordinates correlate negatively with the same
    component's (already aligned) coordinates one depth before. Components that change order
    between depths are not matched.

    Args:
        hidden_states: (B, L+1, N, D).
        num_prefix_tokens: k tokens skipped before the patches.
        k: components per depth.

    Returns:
        (B, L+1, n, k) coordinates of the centred patch tokens.
    """
    depths = [token_pca(hidden_states, d, num_prefix_tokens, k) for d in range(hidden_states.shape[1])]
    for d in range(1, len(depths)):
        agree = (depths[d] * depths[d - 1]).sum(dim=1, keepdim=True)  # (B, 1, k): sum over patches
        depths[d] = torch.where(agree < 0, -depths[d], depths[d])
    return torch.stack(depths, dim=1)


def token_pca_rgb_by_depth(hidden_states: Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """`token_pca_rgb` at every depth, with the signs of `token_pca_by_depth`.

    Returns:
        (B, L+1, gh, gw, 3) in [0, 1]: component c, min-max scaled over the image's patches at
        that depth, is channel c.
    """
    gh, gw = check_tokens(hidden_states.shape[2], grid, num_prefix_tokens)
    coords = token_pca_by_depth(hidden_states, num_prefix_tokens, k=3)  # (B, S, n, 3)
    rgb = scale01(coords, dims=(2,))
    return rgb.reshape(*rgb.shape[:2], gh, gw, 3)


def variance_explained_by(coords: Tensor, features: Tensor) -> Tensor:
    """Share of the variance of `coords` that a linear function of `features` explains (R²).

    E.g. how much of the token-PCA colours at each depth a patch's mean pixel colour predicts:
    near 1 when the tokens still encode the pixels, lower when they encode something else.

    Args:
        coords: (..., n, k) per-sample values (e.g. `token_pca_by_depth(...)[0]`, (S, n, k)).
        features: (n, f) per-sample features (e.g. mean RGB of each patch); a bias is added.

    Returns:
        (...,) R² in [0, 1] over all k columns together (0 when `coords` is constant).
    """
    y = coords.double()
    x = features.double().reshape(features.shape[0], -1)
    x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # (n, f+1)
    n, k = y.shape[-2], y.shape[-1]
    flat = y.reshape(-1, n, k).transpose(0, 1).reshape(n, -1)  # (n, M*k): one least-squares fit for all
    fit = (x @ torch.linalg.lstsq(x, flat).solution).reshape(n, -1, k).transpose(0, 1).reshape(y.shape)
    total = (y - y.mean(dim=-2, keepdim=True)).square().sum(dim=(-2, -1))
    resid = (y - fit).square().sum(dim=(-2, -1))
    return torch.where(total > 0, 1.0 - resid / total.clamp_min(1e-300), torch.zeros_like(total)).clamp(0.0, 1.0)
