"""A small CIFAR ResNet (He et al. 2016, arXiv 1512.03385): the baseline the ViT is compared with.

Kept apart from the ViT code. `ResNet(cfg)` mirrors the ViT's surface where the trainer and
the pages touch it: `cfg`, `class_names`, `num_params()`, `forward(x) -> logits`, and for the
analyses `feature_maps(x)` (the stem's output, then each residual block's, so index 0 is the
first layer as in a ViT's hidden states) with `layer_names()` and `feature_geometry()`.
`build_model(cfg)` makes either model from its config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .config import CIFAR10_MEAN, CIFAR10_STD, CROP_MODES, INTERPOLATIONS, ViTConfig
from .model import VisionTransformer

CNN_ARCH = "resnet"  # the `arch` field that tells a CNN config dict from a ViT's


@dataclass
class CNNConfig:
    """Architecture and preprocessing of a CIFAR-style ResNet of BasicBlocks."""

    img_size: tuple[int, int] = (32, 32)  # (H, W) of the input the model is trained on
    in_chans: int = 3  # input channels C
    num_classes: int = 10  # outputs of the head; 0 means no head (pooled features only)
    stem_width: int = 32  # output channels of the 3x3 stem convolution (the first-layer filters)
    widths: tuple[int, ...] = (32, 64, 128)  # channels of each stage; stages after the first halve H and W
    blocks: tuple[int, ...] = (1, 1, 2)  # BasicBlocks per stage (two 3x3 convs each)
    # Preprocessing, read by vit_core.images exactly as for a ViT.
    mean: tuple[float, ...] = CIFAR10_MEAN  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, ...] = CIFAR10_STD  # per-channel std divided by
    interpolation: str = "bicubic"  # resize filter for a user's image
    crop_pct: float = 1.0  # share of the resized image kept by the center crop, in (0, 1]
    crop_mode: str = "center"  # "center" keeps the aspect ratio, "squash" does not
    name: str = "ResNet"  # a short human name for menus
    arch: str = CNN_ARCH  # fixed; lets a stored config dict say which model it builds
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance

    def __post_init__(self) -> None:
        self.img_size = (self.img_size, self.img_size) if isinstance(self.img_size, int) else tuple(self.img_size)
        self.widths = tuple(self.widths)
        self.blocks = tuple(self.blocks)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.arch != CNN_ARCH:
            raise ValueError(f"arch must be {CNN_ARCH!r}, not {self.arch!r}")
        positive = {"in_chans": self.in_chans, "stem_width": self.stem_width}
        positive.update({f"img_size[{i}]": v for i, v in enumerate(self.img_size)})
        positive.update({f"widths[{i}]": v for i, v in enumerate(self.widths)})
        positive.update({f"blocks[{i}]": v for i, v in enumerate(self.blocks)})
        for name, v in positive.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        if len(self.img_size) != 2:
            raise ValueError(f"img_size must be (H, W), not {self.img_size!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative integer, not {self.num_classes!r}")
        if not self.widths or len(self.widths) != len(self.blocks):
            raise ValueError(f"widths {self.widths} and blocks {self.blocks} need one entry per stage each")
        if not self.mean or len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"mean and std need one value per channel each (std > 0), not {self.mean} and {self.std}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], not {self.crop_pct}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, not {self.crop_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")

    @property
    def depth(self) -> int:
        """Feature maps `feature_maps` returns: the stem plus every residual block."""
        return 1 + sum(self.blocks)

    def replace(self, **changes: Any) -> CNNConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict that `from_dict` turns back into an equal config."""
        d = dataclasses.asdict(self)
        for key in ("img_size", "widths", "blocks", "mean", "std"):
            d[key] = list(d[key])
        return d

    def to_json(self) -> str:
        """`to_dict` as a JSON string (keys sorted)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CNNConfig:
        """Inverse of `to_dict`; unknown fields are an error rather than silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)


# As many residual blocks as the ViT preset of the same name has transformer blocks (4, 4 and 6), so
# `feature_maps` lines up with the ViT's hidden states depth for depth, and widths chosen for the
# same parameter count (10 classes): "demo" 144,542 vs the demo ViT's 142,026 (the pair the shipped
# experiments train on a 2-core CPU); "quick" 545,226 vs the quick ViT's 546,186; "bundled"
# 1,835,038 vs the bundled ViT's 1,806,538 (vit_core.train.PRESETS).
CNN_PRESETS: dict[str, CNNConfig] = {
    "demo": CNNConfig(stem_width=16, widths=(16, 32, 62), blocks=(1, 1, 2), name="ResNet-CIFAR10 (demo)"),
    "quick": CNNConfig(stem_width=32, widths=(32, 64, 120), blocks=(1, 1, 2), name="ResNet-CIFAR10 (quick)"),
    "bundled": CNNConfig(stem_width=52, widths=(52, 104, 208), blocks=(2, 2, 2), name="ResNet-CIFAR10 (bundled)"),
}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm; the input added back (through a 1x1 projection when
    the width or the resolution changes) before the last ReLU. Names as torchvision's."""

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.conv2 = nn.Conv2d(out_chans, out_chans, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chans != out_chans:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_chans)
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(nn.Module):
    """3x3 stem, stages of BasicBlocks, global average pool, linear head."""

    def __init__(self, cfg: CNNConfig, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Conv2d(cfg.in_chans, cfg.stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(cfg.stem_width)
        stages, width = [], cfg.stem_width
        for s, (out, n) in enumerate(zip(cfg.widths, cfg.blocks)):
            stride = 1 if s == 0 else 2
            stages.append(
                nn.Sequential(*[BasicBlock(width if b == 0 else out, out, stride if b == 0 else 1) for b in range(n)])
            )
            width = out
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(width, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.class_names = list(class_names) if class_names else [f"class {i}" for i in range(cfg.num_classes)]
        if len(self.class_names) != cfg.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {cfg.num_classes} classes")
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _blocks(self) -> list[BasicBlock]:
        return [blk for stage in self.stages for blk in stage]

    def layer_names(self) -> list[str]:
        """One name per entry of `feature_maps`: "stem", then "stage s block b" (1-based)."""
        names = ["stem"]
        for s, stage in enumerate(self.stages):
            names += [f"stage {s + 1} block {b + 1}" for b in range(len(stage))]
        return names

    def feature_geometry(self) -> list[tuple[int, float]]:
        """Where each feature map's units sit on the input, one (stride, offset) per map.

        Unit `i` (along either axis) of map `l` is centred on input pixel `offset + stride * i`,
        in pixel-index coordinates (pixel p spans [p - 0.5, p + 0.5]); the centre of the input
        is (H - 1) / 2. Composed from the main path's convolutions: a conv with kernel k, stride
        s and padding p centres output unit i on input position `s * i + (k - 1) / 2 - p`. The
        1x1 projection shortcut reads input `s * i`, the same place. Every conv here has
        padding k // 2, so offsets are 0 and the strides are 1, 2, 4, ...
        """
        stride, offset = 1, 0.0

        def through(conv: nn.Conv2d) -> None:
            nonlocal stride, offset
            k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
            offset += stride * (d * (k - 1) / 2 - p)
            stride *= s

        through(self.stem)
        out = [(stride, offset)]
        for blk in self._blocks():
            through(blk.conv1)
            through(blk.conv2)
            out.append((stride, offset))
        return out

    def stem_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, stem_width, H, W) after the stem's conv, BatchNorm and ReLU."""
        return F.relu(self.stem_bn(self.stem(x)))

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """The stem's output, then each residual block's, in order (depth index 0 = stem).

        Args:
            x: (B, C, H, W) preprocessed images.

        Returns:
            `cfg.depth` tensors (B, C_l, H_l, W_l); H_l = H / stride_l.
        """
        x = self.stem_features(x)
        maps = [x]
        for blk in self._blocks():
            x = blk(x)
            maps.append(x)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, widths[-1]) globally average-pooled features."""
        x = self.stem_features(x)
        for stage in self.stages:
            x = stage(x)
        return x.mean(dim=(-2, -1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> logits (B, classes)."""
        return self.head(self.forward_features(x))


def build_model(cfg: ViTConfig | CNNConfig, class_names: list[str] | None = None) -> nn.Module:
    """The model a config describes: a `VisionTransformer` or a `ResNet`."""
    if isinstance(cfg, CNNConfig):
        return ResNet(cfg, class_names)
    if isinstance(cfg, ViTConfig):
        return VisionTransformer(cfg, class_names)
    raise TypeError(f"expected a ViTConfig or a CNNConfig, not {type(cfg).__name__}")


def config_from_dict(d: dict[str, Any]) -> ViTConfig | CNNConfig:
    """A stored config dict back to its class: `arch == "resnet"` is a CNN, anything else a ViT
    (ViT configs predate the field and do not carry it)."""
    if d.get("arch") == CNN_ARCH:
        return CNNConfig.from_dict(d)
    return ViTConfig.from_dict(d)


def is_cnn(model: nn.Module) -> bool:
    """True for the ResNet baseline (the pages branch on this, not on a class import)."""
    return isinstance(model, ResNet)


__all__ = [
    "CNN_PRESETS",
    "BasicBlock",
    "CNNConfig",
    "ResNet",
    "build_model",
    "config_from_dict",
    "is_cnn",
]
