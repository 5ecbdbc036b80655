"""Test helpers: timm-named state dicts built by hand, and a plain functional ViT forward.

Both are written from the ViT paper and timm's parameter names, independently of
`vit_core.model`, so that tests compare two implementations rather than one with itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def make_timm_state_dict(
    *,
    embed_dim: int = 384,
    depth: int = 2,
    patch_size: int = 16,
    grid: tuple[int, int] = (14, 14),
    in_chans: int = 3,
    num_classes: int = 1000,
    mlp_ratio: float = 4.0,
    class_token: bool = True,
    dist_token: bool = False,
    reg_tokens: int = 0,
    no_embed_class: bool = False,
    fc_norm: bool = False,
    layer_scale: bool = False,
    qkv_bias: bool = True,
    scale: float = 0.1,
    seed: int = 0,
) -> dict[str, Tensor]:
    """A random state dict with the exact keys and shapes of timm's VisionTransformer (and
    VisionTransformerDistilled when `dist_token`), as `model.state_dict()` would list them."""
    g = torch.Generator().manual_seed(seed)
    D, P = embed_dim, patch_size
    hidden = int(D * mlp_ratio)

    def rnd(*shape: int, s: float = scale) -> Tensor:
        return torch.randn(*shape, generator=g) * s

    def ln_weight() -> Tensor:
        return 1.0 + rnd(D, s=0.1)

    sd: dict[str, Tensor] = {}
    if class_token:
        sd["cls_token"] = rnd(1, 1, D, s=0.5)
    if dist_token:
        sd["dist_token"] = rnd(1, 1, D, s=0.5)
    if reg_tokens:
        sd["reg_token"] = rnd(1, reg_tokens, D, s=0.5)
    n_prefix = int(class_token) + int(dist_token) + reg_tokens
    embed_len = grid[0] * grid[1] + (0 if no_embed_class else n_prefix)
    sd["pos_embed"] = rnd(1, embed_len, D, s=0.5)
    sd["patch_embed.proj.weight"] = rnd(D, in_chans, P, P, s=1.0 / math.sqrt(in_chans * P * P))
    sd["patch_embed.proj.bias"] = rnd(D)
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = ln_weight(), rnd(D)
        sd[b + "attn.qkv.weight"] = rnd(3 * D, D, s=1.0 / math.sqrt(D))
        if qkv_bias:
            sd[b + "attn.qkv.bias"] = rnd(3 * D)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = rnd(D, D, s=1.0 / math.sqrt(D)), rnd(D)
        if layer_scale:
            sd[b + "ls1.gamma"] = 0.5 + rnd(D)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = ln_weight(), rnd(D)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = rnd(hidden, D, s=1.0 / math.sqrt(D)), rnd(hidden)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = rnd(D, hidden, s=1.0 / math.sqrt(hidden)), rnd(D)
        if layer_scale:
            sd[b + "ls2.gamma"] = 0.5 + rnd(D)
    if fc_norm:
        sd["fc_norm.weight"], sd["fc_norm.bias"] = ln_weight(), rnd(D)
    else:
        sd["norm.weight"], sd["norm.bias"] = ln_weight(), rnd(D)
    if num_classes:
        sd["head.weight"], sd["head.bias"] = rnd(num_classes, D, s=1.0 / math.sqrt(D)), rnd(num_classes)
        if dist_token:
            sd["head_dist.weight"] = rnd(num_classes, D, s=1.0 / math.sqrt(D))
            sd["head_dist.bias"] = rnd(num_classes)
    return sd


def _layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def reference_forward(
    sd: dict[str, Tensor],
    x: Tensor,
    *,
    num_heads: int,
    global_pool: str = "token",
    no_embed_class: bool = False,
    eps: float = 1e-6,
    pos_embed: Tensor | None = None,
    attn_offsets: list[Tensor] | None = None,
    record: list[Tensor] | None = None,
) -> Tensor:
    """Logits of a timm-named ViT state dict for images x (B, C, H, W), in x's dtype.

    Args:
        pos_embed: position embeddings to use instead of sd["pos_embed"] (already resampled).
        attn_offsets: per layer, a tensor added to the post-softmax attention (B, h, N, N);
            the gradient of the logits with respect to it is the gradient with respect to the
            attention map.
        record: if given, each layer's attention (with its offset) is appended to it.
    """
    dt = x.dtype
    sd = {k: v.to(dt) for k, v in sd.items()}
    B, C, H, W = x.shape
    w = sd["patch_embed.proj.weight"]
    D, P = w.shape[0], w.shape[-1]
    gh, gw = H // P, W // P
    # Each patch flattened in (c, p1, p2) order, then one matrix product: the Conv2d's map.
    patches = x.reshape(B, C, gh, P, gw, P).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, C * P * P)
    t = patches @ w.reshape(D, -1).T + sd["patch_embed.proj.bias"]
    prefix = [sd[k].expand(B, -1, -1) for k in ("cls_token", "dist_token", "reg_token") if k in sd]
    k = sum(p.shape[1] for p in prefix)
    pos = sd["pos_embed"] if pos_embed is None else pos_embed.to(dt)
    if no_embed_class:
        t = torch.cat([*prefix, t + pos], dim=1)
    else:
        t = torch.cat([*prefix, t], dim=1) + pos
    N = t.shape[1]
    d = D // num_heads
    depth = len({key.split(".")[1] for key in sd if key.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        h = _layer_norm(t, sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps)
        qkv = h @ sd[b + "attn.qkv.weight"].T
        if b + "attn.qkv.bias" in sd:
            qkv = qkv + sd[b + "attn.qkv.bias"]
        qkv = qkv.reshape(B, N, 3, num_heads, d).permute(2, 0, 3, 1, 4)
        q, kk, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ kk.transpose(-1, -2) / math.sqrt(d), dim=-1)
        if attn_offsets is not None:
            a = a + attn_offsets[i]
        if record is not None:
            record.append(a)
        o = (a @ v).transpose(1, 2).reshape(B, N, D) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        if b + "ls1.gamma" in sd:
            o = o * sd[b + "ls1.gamma"]
        t = t + o
        h = _layer_norm(t, sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps)
        m = _gelu(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        m = m @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        if b + "ls2.gamma" in sd:
            m = m * sd[b + "ls2.gamma"]
        t = t + m
    if "norm.weight" in sd:
        t = _layer_norm(t, sd["norm.weight"], sd["norm.bias"], eps)
    if global_pool == "avg":
        pooled = t[:, k:].mean(dim=1)
    else:
        pooled = t[:, 0]
    if "fc_norm.weight" in sd:
        pooled = _layer_norm(pooled, sd["fc_norm.weight"], sd["fc_norm.bias"], eps)
    if "head.weight" not in sd:
        return pooled
    logits = pooled @ sd["head.weight"].T + sd["head.bias"]
    if "head_dist.weight" in sd:
        dist = t[:, 1] @ sd["head_dist.weight"].T + sd["head_dist.bias"]
        logits = (logits + dist) / 2
    return logits
