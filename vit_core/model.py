"""The Vision Transformer (arXiv 2010.11929) as timm builds it, with an observable path.

Module and parameter names follow timm (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.{i}.attn.qkv`, ...) so that timm checkpoints load without a translation table.
`model(x)` runs the fast path (`scaled_dot_product_attention`); `model.trace(x)` runs the
explicit-softmax path and returns every attention map and hidden state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import ViTConfig


class PatchEmbed(nn.Module):
    """Cut the image into P x P patches and project each to D dims (a strided Conv2d)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, gh*gw, D) and the grid (gh, gw)."""
        _, _, H, W = x.shape
        P = self.patch_size
        if H % P or W % P:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {P}")
        x = self.proj(x)  # (B, D, gh, gw)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, observe: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, N, D) -> (B, N, D); with `observe`, also the post-softmax map (B, h, N, N)."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)  # each (B, h, N, d)
        if observe:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
            out = attn @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), attn


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT); `gamma` as timm names it."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016), timm's `DropPath`: a training-only regulariser.

    In train mode each sample skips the residual branch with probability `drop_prob`, and kept
    branches are scaled by 1 / (1 - p) so the expectation is unchanged. Eval mode is the identity.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, branch: Tensor) -> Tensor:
        p = self.drop_prob
        if p <= 0.0 or not self.training:
            return branch
        keep = torch.empty(branch.shape[0], *([1] * (branch.dim() - 1)), device=branch.device, dtype=branch.dtype)
        return branch * keep.bernoulli_(1.0 - p).div_(1.0 - p)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:g}"


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.norm1 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias)
        self.ls1 = LayerScale(D, cfg.init_values) if cfg.init_values is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(D, int(D * cfg.mlp_ratio))
        self.ls2 = LayerScale(D, cfg.init_values) if cfg.init_values is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)  # no parameters: the state dict is timm's

    def forward(self, x: Tensor, observe: bool = False) -> tuple[Tensor, Tensor | None]:
        a, attn = self.attn(self.norm1(x), observe)
        x = x + self.drop_path(self.ls1(a))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x, attn


@dataclass
class ViTTrace:
    """Everything one observed forward pass produced. N = prefix tokens + gh*gw."""

    logits: Tensor  # (B, classes)
    attentions: Tensor  # (B, L, heads, N, N), post-softmax, rows sum to 1
    hidden_states: Tensor  # (B, L+1, N, D): after the embedding, then after each block
    patch_embeddings: Tensor  # (B, gh*gw, D): the patch projection before positions are added
    grid: tuple[int, int]  # (gh, gw)
    num_prefix_tokens: int  # class + distillation + register tokens
    patch_size: int  # P, in input pixels
    attention_grads: Tensor | None = None  # (B, L, heads, N, N): d logit[target] / d attention
    target: Tensor | None = None  # (B,) class index the gradients are taken for

    @property
    def num_layers(self) -> int:
        return self.attentions.shape[1]

    @property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)


def resample_pos_embed(
    pos_embed: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix_tokens: int
) -> Tensor:
    """Resample patch position embeddings over the 2-D grid (bicubic); prefix rows kept apart.

    Args:
        pos_embed: (1, num_prefix_tokens + gh*gw, D).
        new_grid: target (gh, gw).
        old_grid: grid the embedding was learned for.
        num_prefix_tokens: leading rows that belong to prefix tokens (0 if none are embedded).
    """
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    gh, gw = old_grid
    if patches.shape[1] != gh * gw:
        raise ValueError(f"position embedding has {patches.shape[1]} patch rows, not {gh}x{gw}")
    patches = rearrange(patches, "1 (gh gw) d -> 1 d gh gw", gh=gh, gw=gw)
    orig_dtype = patches.dtype
    work_dtype = orig_dtype if orig_dtype in (torch.float32, torch.float64) else torch.float32  # no half bicubic
    patches = F.interpolate(
        patches.to(work_dtype), size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False
    )
    patches = rearrange(patches.to(orig_dtype), "1 d gh gw -> 1 (gh gw) d")
    return torch.cat([prefix, patches], dim=1)


class VisionTransformer(nn.Module):
    """ViT with timm's parameter names; `trace` exposes attention and hidden states."""

    def __init__(self, cfg: ViTConfig, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distill_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None
        gh, gw = cfg.grid_size
        embed_len = gh * gw + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, D))
        # stochastic depth rising linearly with depth, 0 for the first block (timm's schedule)
        rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([Block(cfg, rate) for rate in rates])
        self.norm = nn.Identity() if cfg.use_fc_norm else nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.fc_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps) if cfg.use_fc_norm else nn.Identity()
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        if cfg.distill_token:
            self.head_dist = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(cfg.num_classes)]
        if len(self.class_names) != cfg.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {cfg.num_classes} classes")
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for tok in (self.cls_token, self.dist_token, self.reg_token):
            if tok is not None:
                nn.init.normal_(tok, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def num_prefix_tokens(self) -> int:
        return self.cfg.num_prefix_tokens

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """Position embeddings for a patch grid, resampled from the learned one if needed."""
        k = 0 if self.cfg.no_embed_class else self.num_prefix_tokens
        return resample_pos_embed(self.pos_embed, grid, self.cfg.grid_size, k)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Image (B, C, H, W) -> tokens (B, N, D) with prefix tokens and positions; also the
        bare patch projection (B, n, D) and the grid."""
        patches, grid = self.patch_embed(x)
        B = patches.shape[0]
        pos = self.pos_embed_for(grid)
        prefix = [t.expand(B, -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        if self.cfg.no_embed_class:
            tokens = torch.cat([*prefix, patches + pos], dim=1)
        else:
            tokens = torch.cat([*prefix, patches], dim=1) + pos
        return tokens, patches, grid

    def forward_head(self, tokens: Tensor) -> Tensor:
        """Final-normed tokens (B, N, D) -> logits (B, classes)."""
        if self.cfg.global_pool == "avg":
            pooled = tokens[:, self.num_prefix_tokens :].mean(dim=1)
            return self.head(self.fc_norm(pooled))
        logits = self.head(self.fc_norm(tokens[:, 0]))
        if self.cfg.distill_token:
            logits = (logits + self.head_dist(self.fc_norm(tokens[:, 1]))) / 2
        return logits

    def logits_from_hidden(self, hidden: Tensor) -> Tensor:
        """Apply the final norm and the head to any block's output (B, N, D) (logit lens)."""
        return self.forward_head(self.norm(hidden))

    def forward_features(self, x: Tensor) -> Tensor:
        tokens, _, _ = self.embed(x)
        for blk in self.blocks:
            tokens, _ = blk(tokens)
        return self.norm(tokens)

    def forward(self, x: Tensor) -> Tensor:
        """Fast path: (B, C, H, W) -> logits (B, classes)."""
        return self.forward_head(self.forward_features(x))

    def trace(self, x: Tensor, target: int | Tensor | None = None) -> ViTTrace:
        """Observed path: the same function as `forward`, with everything recorded.

        Args:
            x: (B, C, H, W) preprocessed images; H and W multiples of the patch size.
            target: class index (or (B,) indices); when given, `attention_grads` holds the
                gradient of that logit with respect to every layer's attention map, from the
                same forward pass.
        """
        if target is not None and torch.is_inference_mode_enabled():
            # Gradients cannot flow through inference tensors; leave inference mode for this call.
            with torch.inference_mode(False):
                return self.trace(x.clone(), target if not isinstance(target, Tensor) else target.clone())
        with torch.set_grad_enabled(target is not None):
            tokens, patches, grid = self.embed(x)
            B, N, D = tokens.shape
            L, h = len(self.blocks), self.cfg.num_heads
            # Written layer by layer into preallocated outputs: no list of maps to stack afterwards,
            # so without gradients the peak holds the outputs plus one layer's working tensors.
            attentions = tokens.new_empty(B, L, h, N, N)
            hidden = tokens.new_empty(B, L + 1, N, D)
            hidden[:, 0] = tokens.detach()
            graph_attns = []  # with a target: each layer's map, still in the autograd graph
            for i, blk in enumerate(self.blocks):
                tokens, attn = blk(tokens, observe=True)
                attentions[:, i] = attn.detach()
                hidden[:, i + 1] = tokens.detach()
                if target is not None:
                    graph_attns.append(attn)
                del attn
            logits = self.forward_head(self.norm(tokens))
            grads, target_t = (None, None) if target is None else self._attention_grads(logits, graph_attns, target)
        return ViTTrace(
            logits=logits.detach(),
            attentions=attentions,
            hidden_states=hidden,
            patch_embeddings=patches.detach().contiguous(),
            grid=grid,
            num_prefix_tokens=self.num_prefix_tokens,
            patch_size=self.patch_size,
            attention_grads=grads,
            target=target_t,
        )

    def _attention_grads(self, logits: Tensor, attns: list[Tensor], target: int | Tensor) -> tuple[Tensor, Tensor]:
        """d logit[target] / d attention (B, L, heads, N, N), and the target as (B,) indices."""
        B, C = logits.shape
        if self.cfg.num_classes == 0:
            raise ValueError("this model has no classifier head: there is no class logit to explain")
        target_t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
        if target_t.numel() not in (1, B):
            raise ValueError(f"target has {target_t.numel()} entries for a batch of {B}")
        if ((target_t < 0) | (target_t >= C)).any():
            raise ValueError(f"target {target_t.tolist()} is outside the {C} classes")
        target_t = target_t.expand(B)
        score = logits.gather(1, target_t[:, None]).sum()
        return torch.stack(torch.autograd.grad(score, attns), dim=1), target_t
