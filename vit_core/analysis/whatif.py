"""What-ifs: run the model again on a changed input (occluded or shuffled patches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .patches import patchify, unpatchify

if TYPE_CHECKING:
    from ..model import VisionTransformer

OCCLUSION_MODES = ("mean", "zero", "drop")


def forward_tokens(model: VisionTransformer, tokens: Tensor) -> Tensor:
    """Run the blocks, final norm and head on an already-embedded sequence.

    Args:
        tokens: (B, N', D), prefix tokens first; N' may differ from the model's N (dropped
            or reordered patch tokens).

    Returns:
        (B, classes) logits.
    """
    for blk in model.blocks:
        tokens, _ = blk(tokens)
    return model.forward_head(model.norm(tokens))


def _check_patch_indices(patches: Sequence[int], n: int) -> list[int]:
    idx = sorted({int(p) for p in patches})
    if idx and (idx[0] < 0 or idx[-1] >= n):
        raise ValueError(f"patch indices must be in [0, {n - 1}], got {idx[0]}..{idx[-1]}")
    return idx


def occlude_image(images: Tensor, patches: Sequence[int], patch_size: int, mode: str = "mean") -> Tensor:
    """Images with the chosen patches painted over (what `occlude_patches` feeds the model).

    Args:
        images: (B, C, H, W) preprocessed (normalised) images.
        patches: patch indices, row-major (token index minus the prefix).
        patch_size: P.
        mode: "mean": each image's mean colour (per channel, over all its pixels);
            "zero": 0 in normalised space, i.e. the dataset mean colour.

    Returns:
        (B, C, H, W).
    """
    if mode not in ("mean", "zero"):
        raise ValueError(f"mode must be 'mean' or 'zero' for pixels, not {mode!r}")
    B, C, H, W = images.shape
    P = int(patch_size)
    flat = patchify(images, P)  # (B, n, C*P*P)
    idx = _check_patch_indices(patches, flat.shape[1])
    if not idx:
        return images.clone()
    if mode == "mean":
        fill = images.mean(dim=(2, 3))  # (B, C)
    else:
        fill = images.new_zeros(B, C)
    fill = fill[:, :, None].expand(B, C, P * P).reshape(B, 1, C * P * P)
    flat = flat.clone()
    flat[:, idx] = fill.to(flat.dtype)
    return unpatchify(flat, (H // P, W // P), P, C)


@torch.no_grad()
def occlude_patches(model: VisionTransformer, x: Tensor, patches: Sequence[int], mode: str = "mean") -> Tensor:
    """The model's prediction with some patches hidden.

    Args:
        model: the ViT.
        x: (B, C, H, W) preprocessed images.
        patches: patch indices, row-major (token index minus the prefix).
        mode: "mean" (paint each image's mean colour), "zero" (paint 0 in normalised space)
            or "drop" (remove those patch tokens from the sequence; the remaining tokens keep
            their own position embeddings).

    Returns:
        (B, classes) logits.
    """
    if mode not in OCCLUSION_MODES:
        raise ValueError(f"mode must be one of {OCCLUSION_MODES}, not {mode!r}")
    if mode != "drop":
        return model(occlude_image(x, patches, model.patch_size, mode))
    tokens, patch_tokens, _ = model.embed(x)
    n, k = patch_tokens.shape[1], model.num_prefix_tokens
    drop = set(_check_patch_indices(patches, n))
    keep = list(range(k)) + [k + p for p in range(n) if p not in drop]
    return forward_tokens(model, tokens[:, keep])


@torch.no_grad()
def shuffle_patches(
    model: VisionTransformer,
    x: Tensor,
    perm: Tensor | None = None,
    keep_positions: bool = True,
    seed: int = 0,
    use_pos_embed: bool = True,
) -> tuple[Tensor, Tensor]:
    """The model's prediction with the patch tokens shuffled.

    Sequence slot i (after the prefix tokens) receives the content (patch projection) of
    patch `perm[i]`; what it is told about position depends on the flags:

    - `keep_positions=True`: it gets `pos[perm[i]]`, the position of the patch it shows. The
      tokens are only reordered in the sequence; attention does not depend on order, so the
      logits equal the unshuffled ones to rounding. This shows that order is carried by the
      position embeddings alone.
    - `keep_positions=False`: it gets `pos[i]`, the position of the slot. This is the same as
      feeding `shuffle_image(x, perm, P)`: the content is seen at the wrong place.
    - `use_pos_embed=False`: no position embedding is added at all (prefix tokens neither).
      Such a model is permutation-invariant: the logits do not depend on `perm`.

    Args:
        model: the ViT.
        x: (B, C, H, W) preprocessed images.
        perm: (n,) permutation of range(n); random from `seed` when None.
        keep_positions: see above.
        seed: seed of the random permutation.
        use_pos_embed: add position embeddings at all.

    Returns:
        logits (B, classes) and the permutation used (n,) (int64, on the CPU).
    """
    patch_tokens, grid = model.patch_embed(x)  # (B, n, D)
    B, n, _ = patch_tokens.shape
    if perm is None:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    perm = torch.as_tensor(perm).long().cpu()
    if perm.shape != (n,) or not torch.equal(perm.sort().values, torch.arange(n)):
        raise ValueError(f"perm must be a permutation of range({n})")
    p = perm.to(x.device)
    content = patch_tokens[:, p]
    prefix = [t.expand(B, -1, -1) for t in (model.cls_token, model.dist_token, model.reg_token) if t is not None]
    if use_pos_embed:
        pos = model.pos_embed_for(grid)
        k_pos = 0 if model.cfg.no_embed_class else model.num_prefix_tokens
        pos_prefix, pos_patch = pos[:, :k_pos], pos[:, k_pos:]
        content = content + (pos_patch[:, p] if keep_positions else pos_patch)
        if k_pos:
            prefix = [torch.cat(prefix, dim=1) + pos_prefix]
    tokens = torch.cat([*prefix, content], dim=1)
    return forward_tokens(model, tokens), perm
