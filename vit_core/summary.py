"""A model in a few numbers, for menus and captions: sizes, patch grid, tokens, parameters, and
plain sentences on how its architecture differs from the ViT paper's."""

from __future__ import annotations

import math

from .config import ViTConfig
from .families import FAMILIES
from .model import VisionTransformer


def describe(model: VisionTransformer) -> dict[str, object]:
    """A short summary for menus: sizes, grid, tokens, parameter count, and the architecture
    options (`family` is None for timm / Hugging Face / this app's own models; `notes` are
    sentences for the pages, see `architecture_notes`)."""
    cfg = model.cfg
    gh, gw = cfg.grid_size
    family = cfg.extra.get("family") if isinstance(cfg.extra, dict) else None
    return {
        "name": cfg.name,
        "params": model.num_params(),
        "img_size": cfg.img_size,
        "patch_size": cfg.patch_size,
        "grid": (gh, gw),
        "tokens": cfg.num_prefix_tokens + gh * gw,
        "embed_dim": cfg.embed_dim,
        "depth": cfg.depth,
        "num_heads": cfg.num_heads,
        "head_dim": cfg.head_dim,
        "num_classes": cfg.num_classes,
        "attention_flops_share": _attention_share(cfg),
        "family": FAMILIES.get(family, family) if family else None,
        "norm_placement": cfg.norm_placement,
        "activation": cfg.activation,
        "attends_across_batch": cfg.attention_axis == "batch",
        "notes": architecture_notes(cfg),
    }


def architecture_notes(cfg: ViTConfig) -> list[str]:
    """Plain sentences on where this model departs from the ViT paper's (timm's) architecture,
    most important first; empty for a standard ViT. The first one, for a model whose attention
    runs across the batch, belongs on every page."""
    notes = []
    if cfg.attention_axis == "batch":
        notes.append(
            "As its code is written, this model's attention runs across the images of a batch, not across "
            "the tokens of an image (it hands (batch, tokens, dim) to an nn.MultiheadAttention that reads "
            "(tokens, batch, dim)). With one image, as here, every token attends only to itself: the "
            "attention maps are the identity and no token reads another."
            + (
                " Its class token never reads a patch, so it predicts the same for every image."
                if cfg.global_pool == "token"
                else ""
            )
        )
    placement = {
        "post": "Post-norm blocks (the 2017 Transformer's): x = LN(x + attention(x)), then x = LN(x + MLP(x)).",
        "stream": "Its blocks normalise the residual stream itself: x = LN1(x); x = x + attention(x); "
        "x = LN2(x); x = x + MLP(x).",
    }
    if cfg.norm_placement in placement:
        notes.append(placement[cfg.norm_placement])
    if cfg.activation == "relu":
        notes.append("Its MLPs use ReLU, not GELU.")
    if cfg.inner_dim != cfg.embed_dim:
        notes.append(
            f"Its {cfg.num_heads} heads are {cfg.head_dim} wide ({cfg.inner_dim} together, not D = {cfg.embed_dim}): "
            f"q, k and v are {cfg.inner_dim} wide and the output projection maps {cfg.inner_dim} back to {cfg.embed_dim}."
        )
    if cfg.patch_norm:
        notes.append(
            "Its patch embedding layer-normalises each flattened patch before the projection and each token after "
            "it (vit-pytorch): the projection sees normalised pixels, so it equals a Conv2d on the image only "
            "after that LayerNorm."
        )
    if cfg.pos_embed_type == "sincos":
        notes.append("Its positions are fixed 2-D sine-cosine waves computed from the patch grid, not learned.")
    if cfg.global_pool == "avg_all":
        notes.append("It classifies the mean of all tokens, the class token included.")
    elif cfg.global_pool == "avg":
        notes.append("It classifies the mean of the patch tokens.")
    if not cfg.final_norm and not cfg.use_fc_norm:
        notes.append("It has no LayerNorm after the last block.")
    return notes


def _attention_share(cfg: ViTConfig) -> float:
    """Share of a forward pass's multiply-adds spent in QK^T and AV (grows with N^2)."""
    N = cfg.num_prefix_tokens + math.prod(cfg.grid_size)
    D, inner = cfg.embed_dim, cfg.inner_dim
    attn = 2 * N * N * inner
    linear = N * D * (4 * inner + 2 * cfg.mlp_ratio * D)
    return attn / (attn + linear)
