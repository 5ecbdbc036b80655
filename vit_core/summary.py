"""A model in a few numbers, for menus and captions: sizes, patch grid, tokens, parameters."""

from __future__ import annotations

import math

from .config import ViTConfig
from .model import VisionTransformer


def describe(model: VisionTransformer) -> dict[str, object]:
    """A short summary for menus: sizes, grid, tokens, parameter count."""
    cfg = model.cfg
    gh, gw = cfg.grid_size
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
        "num_classes": cfg.num_classes,
        "attention_flops_share": _attention_share(cfg),
    }


def _attention_share(cfg: ViTConfig) -> float:
    """Share of a forward pass's multiply-adds spent in QK^T and AV (grows with N^2)."""
    N = cfg.num_prefix_tokens + math.prod(cfg.grid_size)
    D = cfg.embed_dim
    attn = 2 * N * N * D
    linear = N * D * D * (4 + 2 * cfg.mlp_ratio)
    return attn / (attn + linear)
