"""The Vision Transformer (arXiv 2010.11929) as timm builds it, with an observable path.

Module and parameter names follow timm (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.{i}.attn.qkv`, ...) so that timm checkpoints load without a translation table.
`model(x)` runs the fast path (`scaled_dot_product_attention`); `model.trace(x)` runs the
explicit-softmax path and returns every attention map and hidden state.

Beyond timm's ViT, `ViTConfig` selects the few options of the ViTs students write themselves
(vit-pytorch, the tutorials, `nn.TransformerEncoderLayer`; see `vit_core.families`): where the
LayerNorms sit in a block, ReLU, a head width independent of D, LayerNorms around the patch
projection, fixed sine-cosine positions, mean pooling over all tokens, no final norm, and the
attention across the batch of the `nn.MultiheadAttention` tutorial. Each is computed the same
way by `forward` and `trace`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .config import ViTConfig


class PatchEmbed(nn.Module):
    """Cut the image into P x P patches and project each to D dims (a strided Conv2d).

    With `norm` (vit-pytorch's patch embedding), each flattened patch is layer-normed before the
    projection (`pixel_norm`) and each token after it (`norm`). The projection is then applied as
    the Linear map it is, to the normed patch; its weight keeps the Conv2d layout (D, C, P, P),
    and `pixel_norm`'s weight the matching (c p1 p2) order of a flattened patch.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.pixel_norm = nn.LayerNorm(in_chans * patch_size * patch_size, eps=eps) if norm else None
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim, eps=eps) if norm else None

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, gh*gw, D) and the grid (gh, gw)."""
        _, _, H, W = x.shape
        P = self.patch_size
        if H % P or W % P:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {P}")
        grid = (H // P, W // P)
        if self.pixel_norm is None:
            x = self.proj(x)  # (B, D, gh, gw)
            return x.flatten(2).transpose(1, 2), grid
        patches = rearrange(x, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=P, p2=P)
        tokens = F.linear(self.pixel_norm(patches), self.proj.weight.flatten(1), self.proj.bias)  # (B, n, D)
        return self.norm(tokens), grid


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    `head_dim` (default D / h) sets the width of each head; qkv maps D -> 3 h d and proj
    h d -> D. `across_batch` computes what code computes that hands (B, N, D) to a
    sequence-first `nn.MultiheadAttention`: attention across the images of the batch at each
    token position. Run on one image, as here (each image of a batch on its own), the softmax
    has one entry: every token attends only to itself and the output is its own value.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        head_dim: int | None = None,
        across_batch: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim if head_dim is not None else dim // num_heads
        self.scale = self.head_dim**-0.5
        self.across_batch = across_batch
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: Tensor, observe: bool = False) -> tuple[Tensor, Tensor | None]:
        """(B, N, D) -> (B, N, D); with `observe`, also the post-softmax map (B, h, N, N)."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)  # each (B, h, N, d)
        if self.across_batch:
            return self._each_token_alone(v, observe)
        if observe:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, h, N, N)
            out = attn @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), attn

    def _each_token_alone(self, v: Tensor, observe: bool) -> tuple[Tensor, Tensor | None]:
        """`across_batch` for one image: a softmax over one key is 1, so the map is the identity."""
        if not observe:
            return self.proj(rearrange(v, "b h n d -> b n (h d)")), None
        B, h, N, _ = v.shape
        attn = torch.eye(N, dtype=v.dtype, device=v.device).expand(B, h, N, N).clone()
        if torch.is_grad_enabled():
            attn.requires_grad_(True)  # a leaf the output depends on, so that attention_grads exist
        return self.proj(rearrange(attn @ v, "b h n d -> b n (h d)")), attn


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT); `gamma` as timm names it."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear -> GELU (or ReLU) -> Linear."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
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
    """Transformer block; where its LayerNorms sit is `cfg.norm_placement`:

    - "pre" (timm, ViT paper): x = x + attn(norm1(x)); x = x + mlp(norm2(x))
    - "post" (the 2017 Transformer, `nn.TransformerEncoderLayer` default):
      x = norm1(x + attn(x)); x = norm2(x + mlp(x))
    - "stream" (the walkthrough's mini-ViT normalises the residual stream itself):
      x = norm1(x); x = x + attn(x); x = norm2(x); x = x + mlp(x)
    """

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.norm_placement = cfg.norm_placement
        self.norm1 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias, cfg.head_dim, cfg.attention_axis == "batch")
        self.ls1 = LayerScale(D, cfg.init_values) if cfg.init_values is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(D, int(D * cfg.mlp_ratio), cfg.activation)
        self.ls2 = LayerScale(D, cfg.init_values) if cfg.init_values is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)  # no parameters: the state dict is timm's

    def attention_input(self, x: Tensor) -> Tensor:
        """What the attention's qkv projection reads, given the block's input x (B, N, D)."""
        return x if self.norm_placement == "post" else self.norm1(x)

    def forward(self, x: Tensor, observe: bool = False) -> tuple[Tensor, Tensor | None]:
        if self.norm_placement == "pre":
            a, attn = self.attn(self.norm1(x), observe)
            x = x + self.drop_path(self.ls1(a))
            x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        elif self.norm_placement == "post":
            a, attn = self.attn(x, observe)
            x = self.norm1(x + self.drop_path(self.ls1(a)))
            x = self.norm2(x + self.drop_path(self.ls2(self.mlp(x))))
        else:  # "stream"
            x = self.norm1(x)
            a, attn = self.attn(x, observe)
            x = x + self.drop_path(self.ls1(a))
            x = self.norm2(x)
            x = x + self.drop_path(self.ls2(self.mlp(x)))
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


def sincos_pos_embed(
    grid: tuple[int, int], dim: int, temperature: float = 10000.0, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Fixed 2-D sine-cosine position embeddings (Beyer et al. 2022, "Better plain ViT
    baselines"; vit-pytorch's SimpleViT): computed from the grid, never learned or stored.

    A quarter of the D channels each holds sin(x w), cos(x w), sin(y w), cos(y w), where (y, x)
    is the patch's row and column and the D / 4 frequencies w_k = temperature^(-k / (D/4 - 1))
    fall geometrically from 1 to 1 / temperature. Computed in float32, then cast to `dtype`.

    Returns:
        (1, gh*gw, D), patches in row-major order.
    """
    gh, gw = grid
    quarter = dim // 4
    if dim % 4 or quarter < 2:
        raise ValueError(f"sine-cosine positions need a width divisible by 4 (at least 8), not {dim}")
    freqs = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / (quarter - 1))  # (D/4,)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    y = rows.reshape(-1, 1).float() * freqs  # (n, D/4)
    x = cols.reshape(-1, 1).float() * freqs
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).unsqueeze(0).to(dtype)


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
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, D, cfg.patch_norm, cfg.layer_norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distill_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None
        gh, gw = cfg.grid_size
        embed_len = gh * gw + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
        if cfg.pos_embed_type == "sincos":  # fixed: a buffer for inspection, not in the state dict
            self.register_buffer("pos_embed", sincos_pos_embed(cfg.grid_size, D), persistent=False)
        elif cfg.pos_embed_type == "none":  # no positions: zeros, so adding them changes nothing, exactly
            self.register_buffer("pos_embed", torch.zeros(1, embed_len, D), persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, D))
        # stochastic depth rising linearly with depth, 0 for the first block (timm's schedule)
        rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([Block(cfg, rate) for rate in rates])
        final = cfg.final_norm and not cfg.use_fc_norm
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps) if final else nn.Identity()
        self.fc_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps) if cfg.use_fc_norm else nn.Identity()
        self.head = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        if cfg.distill_token:
            self.head_dist = nn.Linear(D, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(cfg.num_classes)]
        if len(self.class_names) != cfg.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {cfg.num_classes} classes")
        self._init_weights()

    def _init_weights(self) -> None:
        if isinstance(self.pos_embed, nn.Parameter):
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

    @property
    def attends_across_batch(self) -> bool:
        """True for a model loaded as its code computes it when that code hands (B, N, D) to a
        sequence-first `nn.MultiheadAttention`: on one image every token attends only to itself."""
        return self.cfg.attention_axis == "batch"

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fill_fixed_buffers(self) -> None:
        """Recompute the buffers that are not weights (the sine-cosine `pos_embed`), e.g. after
        `to_empty` left them uninitialised."""
        if self.cfg.pos_embed_type == "sincos":
            fixed = sincos_pos_embed(self.cfg.grid_size, self.cfg.embed_dim)
            with torch.no_grad():
                self.pos_embed.copy_(fixed.to(self.pos_embed.dtype))
        elif self.cfg.pos_embed_type == "none":
            with torch.no_grad():
                self.pos_embed.zero_()

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """Position embeddings for a patch grid: the learned ones, resampled if needed, or the
        fixed sine-cosine ones computed for that grid."""
        if self.cfg.pos_embed_type == "sincos":
            p = self.pos_embed
            return sincos_pos_embed(grid, self.cfg.embed_dim, dtype=p.dtype).to(p.device)
        k = 0 if self.cfg.no_embed_class else self.num_prefix_tokens
        if self.cfg.pos_embed_type == "none":
            return self.pos_embed.new_zeros(1, k + grid[0] * grid[1], self.cfg.embed_dim)
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
        if self.cfg.global_pool in ("avg", "avg_all"):
            first = self.num_prefix_tokens if self.cfg.global_pool == "avg" else 0
            pooled = tokens[:, first:].mean(dim=1)
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
