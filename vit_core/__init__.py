"""vit_core: a Vision Transformer you can look inside. No UI code lives here."""

from .checkpoints import load_checkpoint, save_checkpoint
from .config import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, ViTConfig
from .errors import CheckpointError, DataError, ImageError, VitCoreError
from .images import load_image, preprocess, preprocess_steps
from .model import VisionTransformer, ViTTrace, describe, resample_pos_embed

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "DataError",
    "ImageError",
    "ViTConfig",
    "ViTTrace",
    "VisionTransformer",
    "VitCoreError",
    "describe",
    "load_checkpoint",
    "load_image",
    "preprocess",
    "preprocess_steps",
    "resample_pos_embed",
    "save_checkpoint",
]
