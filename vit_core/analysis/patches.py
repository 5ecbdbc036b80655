"""Patches and the linear projection: cutting an image into tokens, and putting it back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from einops import rearrange
from torch import Tensor

if TYPE_CHECKING:
    from ..model import VisionTransformer


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping P x P patches, each flattened in (c, p1, p2) order.

    Args:
        images: (B, C, H, W); H and W multiples of `patch_size`.
        patch_size: P in pixels.

    Returns:
        (B, n, C*P*P) with n = (H/P)*(W/P), patches in row-major grid order.
    """
    _, _, H, W = images.shape
    P = int(patch_size)
    if H % P or W % P:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {P}")
    return rearrange(images, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=P, p2=P)


def unpatchify(patches: Tensor, grid: tuple[int, int], patch_size: int, channels: int = 3) -> Tensor:
    """Inverse of `patchify`.

    Args:
        patches: (B, gh*gw, C*P*P) in (c, p1, p2) order.
        grid: (gh, gw).
        patch_size: P in pixels.
        channels: C.

    Returns:
        (B, C, gh*P, gw*P).
    """
    gh, gw = int(grid[0]), int(grid[1])
    P = int(patch_size)
    B, n, f = patches.shape
    if n != gh * gw or f != channels * P * P:
        raise ValueError(f"patches {tuple(patches.shape)} do not fit a {gh}x{gw} grid of {channels}x{P}x{P}")
    return rearrange(patches, "b (gh gw) (c p1 p2) -> b c (gh p1) (gw p2)", gh=gh, gw=gw, c=channels, p1=P, p2=P)


def patch_boxes(grid: tuple[int, int], patch_size: int) -> np.ndarray:
    """Pixel boxes of the patches, for drawing the grid.

    Args:
        grid: (gh, gw).
        patch_size: P in pixels.

    Returns:
        (n, 4) int64 `(x0, y0, x1, y1)` per patch in row-major order (token index minus the
        prefix); x1, y1 are exclusive (x1 = x0 + P), as PIL and plotly shapes expect.
    """
    gh, gw = int(grid[0]), int(grid[1])
    P = int(patch_size)
    i, j = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    x0 = (j * P).reshape(-1)
    y0 = (i * P).reshape(-1)
    return np.stack([x0, y0, x0 + P, y0 + P], axis=1).astype(np.int64)


def shuffle_image(images: Tensor, perm: Tensor, patch_size: int) -> Tensor:
    """Rearrange the patches of images: output patch slot i shows input patch `perm[i]`.

    Args:
        images: (B, C, H, W).
        perm: (n,) a permutation of range(n).
        patch_size: P in pixels.

    Returns:
        (B, C, H, W) the shuffled images (what `shuffle_patches` feeds the model, as pixels).
    """
    B, C, H, W = images.shape
    P = int(patch_size)
    patches = patchify(images, P)
    return unpatchify(patches[:, perm.to(images.device).long()], (H // P, W // P), P, C)


@torch.no_grad()
def conv_vs_linear(model: VisionTransformer, x: Tensor) -> dict[str, Tensor | float]:
    """The patch projection computed two ways: the model's strided Conv2d, and patchify + Linear.

    The Linear's weight is the conv weight reshaped to (D, C*P*P); both are the same map.

    Args:
        model: the ViT.
        x: (B, C, H, W) preprocessed images.

    A patch embedding with LayerNorms (vit-pytorch: LayerNorm over each flattened patch, the
    projection, LayerNorm over each token) is compared on the normalised patches, before the
    token norm: the Conv2d runs on the normalised patches laid back into an image.

    Returns:
        'conv' (B, n, D), 'linear' (B, n, D), and 'max_abs_diff' (float, largest absolute
        difference; float rounding only).
    """
    pe = model.patch_embed
    proj, P = pe.proj, model.patch_size
    patches = patchify(x, P)  # (B, n, C*P*P), (c p1 p2) order
    if getattr(pe, "pixel_norm", None) is None:
        conv, _ = pe(x)
    else:
        patches = pe.pixel_norm(patches)
        gh, gw = x.shape[-2] // P, x.shape[-1] // P
        image = rearrange(patches, "b (gh gw) (c p1 p2) -> b c (gh p1) (gw p2)", gh=gh, gw=gw, p1=P, p2=P)
        conv = proj(image).flatten(2).transpose(1, 2)  # (B, n, D)
    weight = proj.weight.reshape(proj.weight.shape[0], -1)  # (D, C*P*P), (c p1 p2) order
    linear = patches @ weight.T
    if proj.bias is not None:
        linear = linear + proj.bias
    return {"conv": conv, "linear": linear, "max_abs_diff": float((conv - linear).abs().max())}
