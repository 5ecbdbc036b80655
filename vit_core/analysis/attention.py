"""Views computed from the attention maps: distances, rollout, relevance, heads, entropy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ._common import check_attentions, check_tokens, class_row

if TYPE_CHECKING:
    from ..model import VisionTransformer, ViTTrace

HEAD_FUSIONS = ("mean", "max", "min")


def grid_distances(grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Euclidean distance between patch cells, in patches.

    Returns:
        (n, n) with n = gh*gw, row-major patch order.
    """
    gh, gw = int(grid[0]), int(grid[1])
    ii, jj = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    cells = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=-1).float()  # (n, 2)
    return torch.cdist(cells, cells)


def mean_attention_distance(
    attentions: Tensor, grid: tuple[int, int], patch_size: int, num_prefix_tokens: int
) -> Tensor:
    """ViT paper Figure 7 right: how far each head looks, in pixels.

    For each patch query the row is restricted to the patch keys and renormalised to sum to
    1; the distance-weighted sum is averaged over patch queries, then over the batch.

    Args:
        attentions: (B, L, heads, N, N) post-softmax.
        grid: (gh, gw).
        patch_size: P, pixels per patch side.
        num_prefix_tokens: k, tokens before the patches.

    Returns:
        (L, heads) mean attention distance in input pixels.
    """
    check_attentions(attentions)
    check_tokens(attentions.shape[-1], grid, num_prefix_tokens)
    k = num_prefix_tokens
    a = attentions[..., k:, k:].float()  # (B, L, h, n, n)
    dist = grid_distances(grid, a.device) * float(patch_size)
    # sum_t (a / sum a) * dist, with the row renormalisation applied after the reduction
    per_query = (a * dist).sum(dim=-1) / a.sum(dim=-1).clamp_min(torch.finfo(a.dtype).tiny)  # (B, L, h, n)
    return per_query.mean(dim=-1).mean(dim=0)


def fuse_heads(attentions: Tensor, head_fusion: str = "mean") -> Tensor:
    """(B, L, heads, N, N) -> (B, L, N, N) by mean, max or min over heads."""
    if head_fusion == "mean":
        return attentions.mean(dim=2)
    if head_fusion == "max":
        return attentions.amax(dim=2)
    if head_fusion == "min":
        return attentions.amin(dim=2)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, not {head_fusion!r}")


def attention_rollout(
    attentions: Tensor,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    num_prefix_tokens: int = 1,
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020), as defined in ALGORITHMS.md.

    Per layer: fuse heads; in each query row set the `int(discard_ratio * n)` smallest
    patch-key weights to 0 (prefix keys never); `Ahat = 0.5 A + 0.5 I`, rows renormalised
    to sum to 1; then `J = Ahat[L-1] @ ... @ Ahat[start_layer]`.

    Args:
        attentions: (B, L, heads, N, N) post-softmax.
        head_fusion: "mean" (the paper), "max" or "min".
        discard_ratio: share in [0, 1) of patch keys dropped per query row.
        start_layer: first layer multiplied in (0-based).
        num_prefix_tokens: k; the last N - k tokens are patches.

    Returns:
        (B, N, N) rollout; every row sums to 1.
    """
    check_attentions(attentions)
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), not {discard_ratio}")
    B, L, _, N, _ = attentions.shape
    if not 0 <= start_layer < L:
        raise ValueError(f"start_layer must be in [0, {L - 1}], not {start_layer}")
    k = num_prefix_tokens
    if not 0 <= k <= N:
        raise ValueError(f"num_prefix_tokens {k} does not fit {N} tokens")
    a = fuse_heads(attentions[:, start_layer:].float(), head_fusion)  # (B, L', N, N)
    n = N - k
    n_drop = int(discard_ratio * n)
    if n_drop > 0:
        patch_cols = a[..., k:]
        if n_drop <= n // 2:
            idx = patch_cols.topk(n_drop, dim=-1, largest=False).indices
            patch_cols = patch_cols.scatter(-1, idx, 0.0)
        else:  # cheaper to find the few that stay
            idx = patch_cols.topk(n - n_drop, dim=-1, largest=True).indices
            patch_cols = torch.zeros_like(patch_cols).scatter(-1, idx, patch_cols.gather(-1, idx))
        a = torch.cat([a[..., :k], patch_cols], dim=-1)
    eye = torch.eye(N, device=a.device, dtype=a.dtype)
    a = 0.5 * a + 0.5 * eye
    a = a / a.sum(dim=-1, keepdim=True)  # keepdim: each row by its own sum
    joint = a[:, 0]
    for layer in range(1, a.shape[1]):
        joint = a[:, layer] @ joint
    return joint


def rollout_cls_map(
    attentions: Tensor,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> Tensor:
    """ViT paper Figure 6: the class token's row of the rollout, on the patch grid.

    Returns:
        (B, gh, gw) `J[0, k:]` (not rescaled; see `map_to_image` for display). With no prefix
        token the mean of the patch rows is used.
    """
    check_tokens(attentions.shape[-1], grid, num_prefix_tokens)
    joint = attention_rollout(attentions, head_fusion, discard_ratio, start_layer, num_prefix_tokens)
    return class_row(joint, grid, num_prefix_tokens)


def chefer_relevance(
    attentions: Tensor, attention_grads: Tensor, num_prefix_tokens: int = 1, start_layer: int = 0
) -> Tensor:
    """Gradient-weighted relevance (Chefer, Gur, Wolf, ICCV 2021).

    `R = I`; for each layer l from `start_layer` in forward order:
    `R = R + mean_heads(clamp(grad[l] * A[l], min=0)) @ R`, pairing each layer's attention
    with the gradient taken at that same layer.

    Args:
        attentions: (B, L, heads, N, N) from a trace with a target.
        attention_grads: (B, L, heads, N, N) d logit[target] / d attention, same trace.
        num_prefix_tokens: k (checked against N only; the matrix covers all tokens).
        start_layer: first layer accumulated (0-based).

    Returns:
        (B, N, N) relevance; the identity when every gradient is zero.
    """
    check_attentions(attentions)
    if attention_grads is None or attention_grads.shape != attentions.shape:
        got = None if attention_grads is None else tuple(attention_grads.shape)
        raise ValueError(f"attention_grads must match attentions {tuple(attentions.shape)}, got {got}")
    B, L, _, N, _ = attentions.shape
    if not 0 <= num_prefix_tokens <= N:
        raise ValueError(f"num_prefix_tokens {num_prefix_tokens} does not fit {N} tokens")
    weighted = (attention_grads.float() * attentions.float()).clamp(min=0).mean(dim=2)  # (B, L, N, N)
    rel = torch.eye(N, device=attentions.device).expand(B, N, N)
    for layer in range(start_layer, L):
        rel = rel + weighted[:, layer] @ rel
    return rel


def class_attention_map_from_trace(trace: ViTTrace, start_layer: int = 0) -> Tensor:
    """Chefer relevance of the class token over the patches, from a trace taken with a target.

    Returns:
        (B, gh, gw) `R[0, k:]` for the trace's target class.
    """
    if trace.attention_grads is None:
        raise ValueError("this trace has no attention gradients; call model.trace(x, target=class_index)")
    rel = chefer_relevance(trace.attentions, trace.attention_grads, trace.num_prefix_tokens, start_layer)
    return class_row(rel, trace.grid, trace.num_prefix_tokens)


def class_attention_map(model: VisionTransformer, images: Tensor, target: int | Tensor, start_layer: int = 0) -> Tensor:
    """Class-specific map (Chefer et al. 2021): one forward + backward for `target`.

    Args:
        model: the ViT.
        images: (B, C, H, W) preprocessed.
        target: class index, or (B,) indices.
        start_layer: first layer accumulated.

    Returns:
        (B, gh, gw) relevance of each patch for the target class (not rescaled).
    """
    return class_attention_map_from_trace(model.trace(images, target=target), start_layer)


def last_layer_heads(
    attentions: Tensor, grid: tuple[int, int], num_prefix_tokens: int, mass: float | None = None
) -> Tensor:
    """DINO-style view: each head's last-layer class-token attention over the patches.

    Args:
        attentions: (B, L, heads, N, N).
        grid: (gh, gw).
        num_prefix_tokens: k (with k = 0 the mean of the patch rows is used).
        mass: optional share t in [0, 1]: per head keep the smallest set of patches whose
            weights hold at least share t of the row's patch total (largest weights first);
            the others are set to 0.

    Returns:
        (B, heads, gh, gw) attention weights (kept ones unchanged).
    """
    check_attentions(attentions)
    gh, gw = check_tokens(attentions.shape[-1], grid, num_prefix_tokens)
    k = num_prefix_tokens
    last = attentions[:, -1].float()  # (B, h, N, N)
    row = last[:, :, 0, k:] if k > 0 else last[:, :, k:, k:].mean(dim=2)  # (B, h, n)
    if mass is not None:
        if not 0.0 <= mass <= 1.0:
            raise ValueError(f"mass must be in [0, 1], not {mass}")
        vals, idx = row.sort(dim=-1, descending=True)
        share = vals / vals.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(vals.dtype).tiny)
        before = share.cumsum(dim=-1) - share  # share held by the larger weights
        keep_sorted = before < mass
        keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
        row = torch.where(keep, row, torch.zeros_like(row))
    return row.reshape(row.shape[0], row.shape[1], gh, gw)


def attention_entropy(attentions: Tensor) -> Tensor:
    """Per head: mean over queries of `-sum_t A[q, t] log A[q, t]`, averaged over the batch.

    Args:
        attentions: (B, L, heads, N, N) post-softmax.

    Returns:
        (L, heads) entropy in nats (0 = one key; log N = uniform).
    """
    check_attentions(attentions)
    a = attentions.float()
    return -torch.special.xlogy(a, a).sum(dim=-1).mean(dim=-1).mean(dim=0)


@torch.no_grad()
def head_computation(
    model: VisionTransformer, trace: ViTTrace, layer: int, head: int, query: int, batch_index: int = 0
) -> dict[str, np.ndarray]:
    """One head's attention for one query, step by step, recomputed from the trace.

    Runs `trace.hidden_states[batch_index, layer]` through what the block's attention reads
    (`Block.attention_input`: `norm1` for pre-norm blocks, the raw stream for post-norm) and
    `attn.qkv`, and takes head `head`'s slice. For a model that attends across the batch (a
    tutorial's code, loaded as written), one image's tokens each attend only to themselves:
    'weights' is then one-hot on the query, as the trace records, whatever the scores say.

    Args:
        model: the ViT that produced `trace`.
        trace: from `model.trace`.
        layer: block index in [0, L).
        head: head index.
        query: token index in [0, N) (0 is the class token; patches start at k).
        batch_index: which image of the batch.

    Returns:
        numpy float32 arrays: 'q' (d,), 'k' (N, d), 'scores' (N,) = q.k / sqrt(d),
        'weights' (N,) softmax of the scores (equals `trace.attentions[b, layer, head, query]`
        to rounding), 'v' (N, d), 'output' (d,) = weights @ v, the head's output before
        the output projection.
    """
    blk = model.blocks[layer]
    x = blk.attention_input(trace.hidden_states[batch_index, layer].to(blk.norm1.weight.dtype))  # (N, D)
    # Only this head's rows of the fused qkv weight, laid out (three h d) as in Attention.
    w = rearrange(blk.attn.qkv.weight, "(three h d) D -> three h d D", three=3, h=blk.attn.num_heads)[:, head]
    bias = blk.attn.qkv.bias
    b = None if bias is None else rearrange(bias, "(three h d) -> three h d", three=3, h=blk.attn.num_heads)[:, head]
    qv = F.linear(x[query], w[0], None if b is None else b[0])  # (d,)
    k = F.linear(x, w[1], None if b is None else b[1])  # (N, d)
    v = F.linear(x, w[2], None if b is None else b[2])  # (N, d)
    d = qv.shape[-1]
    scores = (k @ qv) / d**0.5
    weights = F.softmax(scores.float(), dim=-1)
    if getattr(model, "attends_across_batch", False):
        weights = F.one_hot(torch.tensor(query, device=scores.device), scores.shape[0]).float()
    output = weights @ v.float()
    out = {"q": qv, "k": k, "scores": scores, "weights": weights, "v": v, "output": output}
    return {name: t.detach().float().cpu().numpy() for name, t in out.items()}


def map_to_image(maps: Tensor, size: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """Display helper, as the ViT repository's Figure 6 code: divide by max, upsample.

    Args:
        maps: (B, gh, gw) non-negative maps.
        size: (H, W) of the image.
        mode: "bilinear", "bicubic" or "nearest".

    Returns:
        (B, H, W) in [0, 1].
    """
    m = maps.float()
    m = m / m.flatten(1).amax(dim=1).clamp_min(torch.finfo(m.dtype).tiny)[:, None, None]
    kw = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(m[:, None], size=tuple(size), mode=mode, **kw)[:, 0]
    return up.clamp(0.0, 1.0)
