"""The ViT paper's Figure 7 structures as numbers, for any ViT: lines over training snapshots,
and one row per variant in a comparison table.

Every measure is in ALGORITHMS.md: mean attention distance (pixels), attention entropy (nats),
the position structure score, and the logit lens's accuracy by depth. Each `*_by_depth`
function traces the images in batches in eval mode and restores the model's mode afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .attention import attention_entropy, mean_attention_distance
from .embeddings import position_similarity
from .receptive_field import evaluating
from .tokens import logit_lens

if TYPE_CHECKING:
    from ..model import VisionTransformer, ViTTrace


def neighbour_pairs(grid: tuple[int, int]) -> Tensor:
    """(n, n) bool: True where patches i and j are 4-neighbours on the (gh, gw) grid (row-major)."""
    gh, gw = int(grid[0]), int(grid[1])
    ii, jj = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    cells = torch.stack([ii.reshape(-1), jj.reshape(-1)], dim=-1)  # (n, 2)
    manhattan = (cells[:, None, :] - cells[None, :, :]).abs().sum(dim=-1)
    return manhattan == 1


def position_structure_score(similarity: Tensor, grid: tuple[int, int]) -> float:
    """Mean similarity of 4-neighbour patch pairs minus the mean over all pairs i != j.

    Args:
        similarity: (n, n) cosine similarities of the patch position embeddings, row-major
            patch order, or the (gh, gw, gh, gw) tiles of `position_similarity`.
        grid: (gh, gw), n = gh * gw; at least two patches.

    Returns:
        The score (a cosine difference): near 0 for random embeddings and exactly 0 for absent
        (all-zero) ones; positive, and growing as training goes on, when neighbouring positions
        are more alike than positions in general. NaN for a grid with no neighbour pair (1x1).
    """
    gh, gw = int(grid[0]), int(grid[1])
    n = gh * gw
    if similarity.numel() != n * n:
        raise ValueError(f"similarity of shape {tuple(similarity.shape)} does not fit a {gh}x{gw} grid")
    s = similarity.reshape(n, n).double().cpu()
    if n < 2:
        return float("nan")
    off_diag = ~torch.eye(n, dtype=torch.bool)
    neighbours = neighbour_pairs((gh, gw))
    if not neighbours.any():
        return float("nan")
    return float(s[neighbours].mean() - s[off_diag].mean())


def model_position_structure_score(model: VisionTransformer) -> float:
    """`position_structure_score` of the model's learned patch position embeddings (native grid)."""
    grid = model.cfg.grid_size
    return position_structure_score(position_similarity(model, grid), grid)


def _traces(model: VisionTransformer, images: Tensor, batch_size: int) -> Iterator[tuple[slice, ViTTrace]]:
    """(rows of `images`, their trace) per batch, in eval mode."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    p = model.pos_embed
    with evaluating(model):
        for start in range(0, images.shape[0], batch_size):
            rows = slice(start, min(start + batch_size, images.shape[0]))
            yield rows, model.trace(images[rows].to(p.device, p.dtype))


# Each measure gives the sum over a batch's images; `_image_means` divides by the image count.
BatchSum = Callable[["ViTTrace", slice], Tensor]


def _mad_sum(t: ViTTrace, rows: slice) -> Tensor:
    mad = mean_attention_distance(t.attentions, t.grid, t.patch_size, t.num_prefix_tokens)  # (L, h) batch mean
    return mad.double() * t.logits.shape[0]


def _entropy_sum(t: ViTTrace, rows: slice) -> Tensor:
    return attention_entropy(t.attentions).double() * t.logits.shape[0]  # (L, h)


def _lens_hits(model: VisionTransformer, labels: Tensor) -> BatchSum:
    def hits(t: ViTTrace, rows: slice) -> Tensor:
        pred = logit_lens(model, t).argmax(dim=-1).cpu()  # (b, L+1)
        return (pred == labels[rows, None]).sum(dim=0).double()

    return hits


def _check_labels(model: VisionTransformer, images: Tensor, labels: Tensor) -> Tensor:
    labels = torch.as_tensor(labels).long().reshape(-1).cpu()
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images")
    if model.cfg.num_classes == 0:
        raise ValueError("this model has no classifier head: the logit lens has no classes to read")
    return labels


def _image_means(
    model: VisionTransformer, images: Tensor, batch_size: int, measures: dict[str, BatchSum]
) -> dict[str, Tensor]:
    """Every measure averaged over the images, from one trace per batch."""
    sums: dict[str, Tensor] = {}
    for rows, trace in _traces(model, images, batch_size):
        for name, batch_sum in measures.items():
            v = batch_sum(trace, rows)
            sums[name] = v if name not in sums else sums[name] + v
    return {name: (v / images.shape[0]).float().cpu() for name, v in sums.items()}


def mean_attention_distance_by_depth(
    model: VisionTransformer, images: Tensor, batch_size: int = 64, reduce_heads: bool = True
) -> Tensor:
    """Mean attention distance per layer, in input pixels (`mean_attention_distance`), averaged
    over the images.

    Args:
        model: the ViT.
        images: (N, C, H, W) preprocessed; the paper uses 128.
        batch_size: images traced at once.
        reduce_heads: mean over heads (L,); False keeps them, (L, heads).

    Returns:
        (L,) or (L, heads) float32 pixels.
    """
    mad = _image_means(model, images, batch_size, {"mad": _mad_sum})["mad"]
    return mad.mean(dim=-1) if reduce_heads else mad


def attention_entropy_by_depth(
    model: VisionTransformer, images: Tensor, batch_size: int = 64, reduce_heads: bool = True
) -> Tensor:
    """Attention entropy per layer (`attention_entropy`: every query row, prefix tokens
    included), in nats, averaged over the images.

    Returns:
        (L,) or, with `reduce_heads=False`, (L, heads) float32.
    """
    ent = _image_means(model, images, batch_size, {"entropy": _entropy_sum})["entropy"]
    return ent.mean(dim=-1) if reduce_heads else ent


def logit_lens_accuracy_by_depth(
    model: VisionTransformer, images: Tensor, labels: Tensor, batch_size: int = 64
) -> Tensor:
    """Top-1 accuracy of the logit lens (`logit_lens`: the final norm and head applied to the
    hidden states) after the embedding and after each block.

    The read-out is the one the head uses: the [CLS] token, or with `global_pool="avg"` the
    mean of the patch tokens. The last entry is the model's own accuracy on the images.

    Args:
        model: the ViT (with a head).
        images: (N, C, H, W) preprocessed.
        labels: (N,) class indices.
        batch_size: images traced at once.

    Returns:
        (L+1,) float32 in [0, 1]; index 0 after the embedding, l after block l.
    """
    labels = _check_labels(model, images, labels)
    return _image_means(model, images, batch_size, {"lens": _lens_hits(model, labels)})["lens"]


def emergence_measures(
    model: VisionTransformer, images: Tensor, labels: Tensor | None = None, batch_size: int = 64
) -> dict[str, object]:
    """All the Figure 7 numbers of one model (or snapshot), from one trace per batch: the same
    values as the functions above, for a dashboard row or a JSON results file.

    Returns:
        "mean_attention_distance" (L,) pixels, "attention_entropy" (L,) nats,
        "position_structure_score" a float, and with labels "logit_lens_accuracy" (L+1,) in
        [0, 1]; plain lists of floats.
    """
    measures: dict[str, BatchSum] = {"mean_attention_distance": _mad_sum, "attention_entropy": _entropy_sum}
    if labels is not None:
        measures["logit_lens_accuracy"] = _lens_hits(model, _check_labels(model, images, labels))
    means = _image_means(model, images, batch_size, measures)
    out: dict[str, object] = {
        "mean_attention_distance": means["mean_attention_distance"].mean(dim=-1).tolist(),
        "attention_entropy": means["attention_entropy"].mean(dim=-1).tolist(),
        "position_structure_score": model_position_structure_score(model),
    }
    if labels is not None:
        out["logit_lens_accuracy"] = means["logit_lens_accuracy"].tolist()
    return out
