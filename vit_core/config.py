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
    num_heads: int = 12  # attention heads h; head width d = D / h
    mlp_ratio: float = 4.0  # MLP hidden width / D
    qkv_bias: bool = True  # bias on the fused query/key/value projection
    class_token: bool = True  # prepend a learned [CLS] token
    distill_token: bool = False  # DeiT: a second, distillation token with its own head
    reg_tokens: int = 0  # register tokens (Darcet et al. 2023) after the class/dist tokens
    no_embed_class: bool = False  # position embeddings cover patches only, not prefix tokens
    global_pool: str = "token"  # "token": classify the CLS token; "avg": mean of patch tokens
    fc_norm: bool | None = None  # norm after pooling instead of before; None: timm's default
    init_values: float | None = None  # LayerScale initial value; None disables LayerScale
    layer_norm_eps: float = 1e-6  # epsilon of every LayerNorm (timm 1e-6, transformers 1e-12)
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
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', not {self.global_pool!r}")
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
        """Width d = D / h of one attention head."""
        return self.embed_dim // self.num_heads

    @property
    def use_fc_norm(self) -> bool:
        """True when the final norm is applied after pooling (timm's `fc_norm`)."""
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

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
