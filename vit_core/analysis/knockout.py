"""Head knockout (Michel et al. 2019, arXiv 1905.10650): what the prediction loses without a head.

Head `h` of layer `l` is knocked out by zeroing its slice `h*d:(h+1)*d` of the concatenated
head outputs, the input of `blocks[l].attn.proj` (or, as an option, replacing that slice by
its mean over reference images). This is done with forward pre-hooks on `attn.proj`, which
are always removed again: the model is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..model import VisionTransformer

IMPORTANCE_BATCH = 256  # sequences per forward pass of `head_importance`


def _heads_by_layer(model: VisionTransformer, heads: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    L, H = len(model.blocks), model.cfg.num_heads
    by_layer: dict[int, list[int]] = {}
    for pair in heads:
        layer, head = (int(v) for v in pair)
        if not (0 <= layer < L and 0 <= head < H):
            raise ValueError(f"head ({layer}, {head}) does not exist: the model has {L} layers of {H} heads")
        by_layer.setdefault(layer, [])
        if head not in by_layer[layer]:
            by_layer[layer].append(head)
    return by_layer


def _check_means(model: VisionTransformer, means: Tensor | None) -> None:
    if means is None:
        return
    L, D = len(model.blocks), model.cfg.inner_dim  # the width of attn.proj's input: h * d
    if means.dim() != 3 or means.shape[0] != L or means.shape[2] != D:
        raise ValueError(
            f"means must have shape (L={L}, N, D={D}) (from `head_output_means`), got {tuple(means.shape)}"
        )


@contextmanager
def heads_knocked_out(
    model: VisionTransformer, heads: Iterable[tuple[int, int]], means: Tensor | None = None
) -> Iterator[VisionTransformer]:
    """Within the `with` block, every forward of `model` (`model(x)`, `model.trace`) runs
    with the given heads knocked out, all in the same pass.

    Args:
        model: the ViT; its hooks are removed on exit, even on an error.
        heads: (layer, head) pairs; repeats are ignored.
        means: (L, N, D) from `head_output_means` to replace each head's output by its mean
            over reference images (mean-ablation); None zeroes it.

    Yields:
        The same model.
    """
    by_layer = _heads_by_layer(model, heads)
    _check_means(model, means)
    d = model.cfg.head_dim
    handles = []
    try:
        for layer, hs in by_layer.items():
            keep = torch.ones(model.cfg.inner_dim, dtype=torch.bool)
            for h in hs:
                keep[h * d : (h + 1) * d] = False
            fill = None if means is None else means[layer]
            handles.append(model.blocks[layer].attn.proj.register_forward_pre_hook(_replace_hook(keep, fill)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _replace_hook(keep: Tensor, fill: Tensor | None) -> Callable:
    """Pre-hook of `attn.proj`: where `keep` is False, the head outputs become 0 (or `fill`).

    `keep` broadcasts against the input (B, N, D); `fill`, when given, is (N, D).
    """

    def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (inp,) = args
        k = keep.to(inp.device)
        if fill is None:
            return (torch.where(k, inp, torch.zeros((), dtype=inp.dtype, device=inp.device)),)
        if fill.shape[0] != inp.shape[-2]:
            raise ValueError(f"the means cover {fill.shape[0]} tokens, this input has {inp.shape[-2]}")
        return (torch.where(k, inp, fill.to(inp.device, inp.dtype)),)

    return hook


@torch.no_grad()
def knockout_heads(
    model: VisionTransformer, x: Tensor, heads: Iterable[tuple[int, int]], means: Tensor | None = None
) -> Tensor:
    """The model's logits with the given heads knocked out in one forward pass.

    Args:
        model: the ViT; left exactly as it was.
        x: (B, C, H, W) preprocessed images.
        heads: (layer, head) pairs; none gives the plain logits.
        means: see `heads_knocked_out` (None: zero-ablation, ALGORITHMS.md's default).

    Returns:
        (B, classes) logits.
    """
    with heads_knocked_out(model, heads, means):
        return model(x)


@torch.no_grad()
def head_output_means(model: VisionTransformer, images: Tensor, batch_size: int = 64) -> Tensor:
    """Mean concatenated head outputs (the input of each `attn.proj`) over reference images.

    Args:
        images: (R, C, H, W) preprocessed reference images, all of the same size.

    Returns:
        (L, N, D) per layer and token position, for mean-ablation.
    """
    L = len(model.blocks)
    sums: list[Tensor | None] = [None] * L

    def capture(layer: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
            s = args[0].double().sum(dim=0)
            sums[layer] = s if sums[layer] is None else sums[layer] + s

        return hook

    handles = [blk.attn.proj.register_forward_pre_hook(capture(i)) for i, blk in enumerate(model.blocks)]
    try:
        for start in range(0, images.shape[0], batch_size):
            model(images[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    if images.shape[0] == 0:
        raise ValueError("head_output_means needs at least one reference image")
    return (torch.stack(sums) / images.shape[0]).to(model.pos_embed.dtype)


@dataclass
class HeadImportance:
    """What each head is worth on a labelled image set (Michel et al. 2019)."""

    accuracy_drop: Tensor  # (L, h) accuracy with all heads minus with that head knocked out (fraction)
    logprob_drop: Tensor  # (L, h) mean correct-class log-probability, all heads minus knocked out (nats)
    accuracy: float  # accuracy with all heads, in [0, 1]
    logprob: float  # mean correct-class log-probability with all heads (nats, <= 0)
    num_images: int


@torch.no_grad()
def head_importance(
    model: VisionTransformer,
    images: Tensor,
    labels: Tensor,
    progress: Callable[[int, int], None] | None = None,
    means: Tensor | None = None,
    batch_size: int = IMPORTANCE_BATCH,
) -> HeadImportance:
    """Accuracy and log-probability lost when each head alone is knocked out.

    Knocking out a head of layer l leaves the residual stream before block l unchanged, so
    each chunk of images runs the clean forward once and then, per layer, blocks l..L-1 for
    all that layer's heads together (one copy of the chunk per head): about (L+1)/2 blocks
    per knockout instead of L.

    Args:
        model: the ViT; left exactly as it was.
        images: (M, C, H, W) preprocessed images.
        labels: (M,) class indices.
        progress: called as `progress(images_done, M)` after each chunk (and once with 0).
        means: (L, N, D) from `head_output_means` for mean-ablation; None zeroes the head.
        batch_size: sequences per forward pass; a chunk holds `batch_size // h` images.

    Returns:
        `HeadImportance` with (L, h) drops; positive means the head helped.
    """
    M = images.shape[0]
    labels = torch.as_tensor(labels).long().reshape(-1)
    if M == 0 or labels.shape[0] != M:
        raise ValueError(
            f"head_importance needs images and one label each, got {M} images and {labels.shape[0]} labels"
        )
    C = model.cfg.num_classes
    if C == 0:
        raise ValueError("this model has no classifier head: accuracy is not defined")
    if (labels < 0).any() or (labels >= C).any():
        raise ValueError(f"labels must be class indices in [0, {C - 1}]")
    _check_means(model, means)
    L, H, d, D = len(model.blocks), model.cfg.num_heads, model.cfg.head_dim, model.cfg.inner_dim
    keep = torch.ones(H, 1, D, dtype=torch.bool)  # replica j has head j knocked out
    for j in range(H):
        keep[j, :, j * d : (j + 1) * d] = False
    p = next(model.parameters())
    chunk = max(1, batch_size // H)
    correct = torch.zeros(L, H, dtype=torch.float64)
    logprob = torch.zeros(L, H, dtype=torch.float64)
    base_correct = base_logprob = 0.0
    if progress is not None:
        progress(0, M)
    for start in range(0, M, chunk):
        x = images[start : start + chunk].to(p.device, p.dtype)
        y = labels[start : start + chunk].to(p.device)
        b = x.shape[0]
        tokens, _, _ = model.embed(x)
        hidden = [tokens]
        for blk in model.blocks:
            tokens, _ = blk(tokens)
            hidden.append(tokens)
        c, lp = _score(model.forward_head(model.norm(tokens)), y)
        base_correct += float(c.sum())
        base_logprob += float(lp.sum())
        y_rep = y.repeat(H)
        keep_rep = keep.repeat_interleave(b, dim=0)  # (H*b, 1, D), replica-major like `repeat`
        for layer in range(L):
            fill = None if means is None else means[layer]
            handle = model.blocks[layer].attn.proj.register_forward_pre_hook(_replace_hook(keep_rep, fill))
            try:
                t = hidden[layer].repeat(H, 1, 1)  # (H*b, N, D)
                for blk in model.blocks[layer:]:
                    t, _ = blk(t)
            finally:
                handle.remove()
            c, lp = _score(model.forward_head(model.norm(t)), y_rep)
            correct[layer] += c.reshape(H, b).sum(dim=1).double().cpu()
            logprob[layer] += lp.reshape(H, b).sum(dim=1).double().cpu()
        if progress is not None:
            progress(min(start + chunk, M), M)
    acc, mlp = base_correct / M, base_logprob / M
    return HeadImportance(
        accuracy_drop=acc - correct / M,
        logprob_drop=mlp - logprob / M,
        accuracy=acc,
        logprob=mlp,
        num_images=M,
    )


def _score(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per image: 1.0 if the top class is the label, and the label's log-probability."""
    correct = (logits.argmax(dim=-1) == labels).double()
    logprob = logits.double().log_softmax(dim=-1).gather(1, labels[:, None])[:, 0]
    return correct, logprob
