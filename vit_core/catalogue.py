"""The pretrained catalogue: which timm ViTs the app offers, with their sizes and preprocessing.

Data only, no loading code: `checkpoints` reads it to preprocess a file the catalogue names,
`pretrained` reads it to find, download and check one. Both import this module; it imports
neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .config import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckpointError


@dataclass(frozen=True)
class PretrainedModel:
    """One downloadable ViT; preprocessing and sizes as timm's `pretrained_cfg` gives them."""

    key: str  # short id used in code and URLs, e.g. "vit-b16"
    title: str  # for menus
    timm_name: str  # timm's `architecture.tag`; the Hub repo is timm/<timm_name>
    embed_dim: int  # D, checked against the file
    depth: int  # L, checked against the file
    num_heads: int  # heads per layer (a timm state dict does not record them)
    num_classes: int  # 1000 for ImageNet-1k classifiers, 0 for a self-supervised backbone
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    download_mb: float  # size of model.safetensors
    about: str  # one line on what it is and how it was trained
    interpolation: str = "bicubic"
    crop_pct: float = 0.9
    crop_mode: str = "center"
    filename: str = "model.safetensors"
    revision: str | None = None  # a Hub commit to pin; None follows main

    @property
    def repo_id(self) -> str:
        return f"timm/{self.timm_name}"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"

    def preprocessing(self) -> dict[str, Any]:
        """The `ViTConfig` preprocessing fields of this model."""
        return {
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }


# Repositories and preprocessing from timm's default_cfgs (timm/models/vision_transformer.py,
# deit.py): the AugReg ViTs use mean = std = 0.5, DeiT and DINO ImageNet's mean and std.
CATALOGUE: dict[str, PretrainedModel] = {
    m.key: m
    for m in (
        PretrainedModel(
            key="vit-b16",
            title="ViT-B/16 (AugReg2, ImageNet-21k -> 1k)",
            timm_name="vit_base_patch16_224.augreg2_in21k_ft_in1k",
            embed_dim=768,
            depth=12,
            num_heads=12,
            num_classes=1000,
            mean=IMAGENET_INCEPTION_MEAN,
            std=IMAGENET_INCEPTION_STD,
            download_mb=346,
            about="The ViT paper's base model, pretrained on ImageNet-21k and fine-tuned on ImageNet-1k.",
        ),
        PretrainedModel(
            key="vit-s16",
            title="ViT-S/16 (AugReg, ImageNet-21k -> 1k)",
            timm_name="vit_small_patch16_224.augreg_in21k_ft_in1k",
            embed_dim=384,
            depth=12,
            num_heads=6,
            num_classes=1000,
            mean=IMAGENET_INCEPTION_MEAN,
            std=IMAGENET_INCEPTION_STD,
            download_mb=88,
            about="A small ViT from 'How to train your ViT?' (AugReg), ImageNet-21k then ImageNet-1k.",
        ),
        PretrainedModel(
            key="deit-tiny",
            title="DeiT-tiny/16 (ImageNet-1k)",
            timm_name="deit_tiny_patch16_224.fb_in1k",
            embed_dim=192,
            depth=12,
            num_heads=3,
            num_classes=1000,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            download_mb=23,
            about="Data-efficient image transformer, trained on ImageNet-1k only; the fastest here.",
        ),
        PretrainedModel(
            key="deit-small",
            title="DeiT-small/16 (ImageNet-1k)",
            timm_name="deit_small_patch16_224.fb_in1k",
            embed_dim=384,
            depth=12,
            num_heads=6,
            num_classes=1000,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            download_mb=88,
            about="DeiT at ViT-S size, trained on ImageNet-1k only.",
        ),
        PretrainedModel(
            key="deit-small-distilled",
            title="DeiT-small/16 distilled (ImageNet-1k)",
            timm_name="deit_small_distilled_patch16_224.fb_in1k",
            embed_dim=384,
            depth=12,
            num_heads=6,
            num_classes=1000,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            download_mb=89,
            about="DeiT-small with a distillation token learned from a CNN teacher; two heads averaged.",
        ),
        PretrainedModel(
            key="dino-vits16",
            title="DINO ViT-S/16 (self-supervised, no classifier)",
            timm_name="vit_small_patch16_224.dino",
            embed_dim=384,
            depth=12,
            num_heads=6,
            num_classes=0,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            download_mb=87,
            about="Self-supervised DINO backbone: striking attention maps, features instead of class scores.",
        ),
    )
}


def list_pretrained() -> list[PretrainedModel]:
    """Every catalogue entry, in menu order."""
    return list(CATALOGUE.values())


def get_pretrained(name: str) -> PretrainedModel:
    """The entry for a key ("vit-b16"), a timm name, a repo id ("timm/...") or a title.

    Raises:
        CheckpointError: no such model; the message lists the known keys.
    """
    wanted = name.strip().lower()
    for m in CATALOGUE.values():
        if wanted in (m.key, m.timm_name.lower(), m.repo_id.lower(), m.title.lower()):
            return m
    raise CheckpointError(f"No pretrained model called {name!r}. Known: {', '.join(CATALOGUE)}.")


def entry_for_path(path: str | os.PathLike) -> PretrainedModel | None:
    """The catalogue model whose timm name is in `path` (a by-hand folder `<timm name>/`, a Hub
    cache folder `models--timm--<timm name>`, or a file name), the longest name if several are."""
    text = str(path)
    hits = [m for m in CATALOGUE.values() if m.timm_name in text]
    return max(hits, key=lambda m: len(m.timm_name)) if hits else None
