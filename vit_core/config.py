"""The configuration of a Vision Transformer, its preprocessing included."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)  # the original JAX ViTs and Hugging Face's ViT defaults
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
CROP_MODES = ("center", "squash")
GLOBAL_POOLS = ("token", "avg", "avg_all")
NORM_PLACEMENTS = ("pre", "post", "stream")
ACTIVATIONS = ("gelu", "relu")
POS_EMBED_TYPES = ("learned", "sincos", "none")
ATTENTION_AXES = ("tokens", "batch")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")


@dataclass
class ViTConfig:
    """Architecture and preprocessing of a ViT (arXiv 2010.11929), in timm's terms."""

    img_size: tuple[int, int] = (224, 224)  # (H, W) the position embeddings were learned for
    patch_size: int = 16  # side P of a square patch, in pixels
    in_chans: int = 3  # input channels C
    num_classes: int = 1000  # outputs of the head; 0 means no head (features only)
    embed_dim: int = 768  # token width D
    depth: int = 12  # number of transformer blocks L
    num_heads: int = 12  # attention heads h; head width d = D / h unless dim_head says otherwise
    dim_head: int | None = None  # head width d when h * d != D (vit-pytorch's dim_head); None: D / h
    mlp_ratio: float = 4.0  # MLP hidden width / D
    qkv_bias: bool = True  # bias on the fused query/key/value projection
    class_token: bool = True  # prepend a learned [CLS] token
    distill_token: bool = False  # DeiT: a second, distillation token with its own head
    reg_tokens: int = 0  # register tokens (Darcet et al. 2023) after the class/dist tokens
    no_embed_class: bool = False  # position embeddings cover patches only, not prefix tokens
    global_pool: str = "token"  # "token": the CLS token; "avg": mean of patch tokens; "avg_all": of all tokens
    fc_norm: bool | None = None  # norm after pooling instead of before; None: timm's default
    init_values: float | None = None  # LayerScale initial value; None disables LayerScale
    layer_norm_eps: float = 1e-6  # epsilon of every LayerNorm (timm 1e-6, transformers 1e-12)
    # Options of the ViTs students write (vit-pytorch, tutorials, nn.TransformerEncoderLayer); the
    # defaults are timm's ViT, so every config written before these fields existed reads the same.
    norm_placement: str = "pre"  # "pre": x + f(LN(x)); "post": LN(x + f(x)); "stream": x = LN(x); x = x + f(x)
    activation: str = "gelu"  # MLP nonlinearity: "gelu" (exact, erf) or "relu"
    patch_norm: bool = False  # vit-pytorch: LayerNorm over each flattened patch before the projection, and over D after
    pos_embed_type: str = "learned"  # "learned" (pos_embed weights) or "sincos": fixed 2-D sine-cosine from the grid
    # ("none": no positions at all, a zero buffer; the model is then permutation-invariant over patches)
    final_norm: bool = True  # LayerNorm after the last block (timm's `norm`); False: none (unless fc_norm)
    attention_axis: str = "tokens"  # "batch": as code that hands (B, N, D) to a sequence-first nn.MultiheadAttention
    # computes it (attention across the images of a batch); run one image at a time, each token attends to itself
    drop_path_rate: float = 0.0  # stochastic depth of the last block (training only); block i gets rate * i / (L - 1)
    # Preprocessing: how a user's image becomes the model's input tensor.
    mean: tuple[float, ...] = IMAGENET_MEAN  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, ...] = IMAGENET_STD  # per-channel std divided by
    interpolation: str = "bicubic"  # resize filter: "bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"
    crop_pct: float = 0.9  # share of the resized image kept by the center crop, in (0, 1]
    crop_mode: str = "center"  # timm's eval crop: "center" keeps the aspect ratio, "squash" does not
    name: str = "vit"  # a short human name for menus
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance

    def __post_init__(self) -> None:
        self.img_size = _pair(self.img_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        sizes = {"patch_size": self.patch_size, "in_chans": self.in_chans, "embed_dim": self.embed_dim}
        sizes.update({"depth": self.depth, "num_heads": self.num_heads, "img_size": min(self.img_size)})
        for name, v in sizes.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        for name, v in (("num_classes", self.num_classes), ("reg_tokens", self.reg_tokens)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, not {v!r}")
        if not self.mean or len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"mean and std need one value per channel each (std > 0), not {self.mean} and {self.std}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, not {self.mlp_ratio!r}")
        if self.dim_head is not None and (
            not isinstance(self.dim_head, int) or isinstance(self.dim_head, bool) or self.dim_head < 1
        ):
            raise ValueError(f"dim_head must be a positive integer or None, not {self.dim_head!r}")
        if self.dim_head is None and self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        choices = (
            ("norm_placement", self.norm_placement, NORM_PLACEMENTS),
            ("activation", self.activation, ACTIVATIONS),
            ("pos_embed_type", self.pos_embed_type, POS_EMBED_TYPES),
            ("attention_axis", self.attention_axis, ATTENTION_AXES),
        )
        for name, v, allowed in choices:
            if v not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {v!r}")
        if self.pos_embed_type == "sincos" and (self.embed_dim % 4 or self.embed_dim < 8):
            raise ValueError(f"sine-cosine positions need a width divisible by 4 (at least 8), not {self.embed_dim}")
        if self.pos_embed_type == "sincos" and self.num_prefix_tokens and not self.no_embed_class:
            raise ValueError(
                "sine-cosine positions are defined for patch tokens only: with class or other prefix tokens, "
                "set no_embed_class=True (the prefix tokens then get no position)"
            )
        if self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, not {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], not {self.crop_pct}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, not {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (gh, gw) at the native image size."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class, distillation and register tokens."""
        return int(self.class_token) + int(self.distill_token) + self.reg_tokens

    @property
    def head_dim(self) -> int:
        """Width d of one attention head: `dim_head`, else D / h."""
        return self.dim_head if self.dim_head is not None else self.embed_dim // self.num_heads

    @property
    def inner_dim(self) -> int:
        """Width h * d of all heads together: the qkv projection's output per q/k/v and the
        output projection's input (D unless `dim_head` says otherwise)."""
        return self.num_heads * self.head_dim

    @property
    def use_fc_norm(self) -> bool:
        """True when the final norm is applied after pooling (timm's `fc_norm`)."""
        return self.global_pool in ("avg", "avg_all") if self.fc_norm is None else self.fc_norm

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict that `from_dict` turns back into an equal config."""
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    def to_json(self) -> str:
        """`to_dict` as a JSON string (keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        """Inverse of `to_dict`; unknown fields are an error rather than silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))
