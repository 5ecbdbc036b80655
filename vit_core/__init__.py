"""vit_core: a Vision Transformer you can look inside. No UI code lives here."""

from .checkpoints import imagenet_class_names, infer_num_heads, load_checkpoint, save_checkpoint
from .config import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ViTConfig,
)
from .data import ImageDataset
from .errors import CheckpointError, DataError, ImageError, VitCoreError
from .families import AnswerNeededError
from .images import load_image, preprocess, preprocess_steps
from .model import VisionTransformer, ViTTrace, resample_pos_embed
from .pretrained import (
    CATALOGUE,
    PretrainedModel,
    PretrainedNotAvailableError,
    download_pretrained,
    get_pretrained,
    is_downloaded,
    list_pretrained,
    load_pretrained,
)
from .sources import load_split
from .summary import describe

__all__ = [
    "AnswerNeededError",
    "CIFAR10_CLASSES",
    "ImageDataset",
    "load_split",
    "CATALOGUE",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_INCEPTION_MEAN",
    "IMAGENET_INCEPTION_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "DataError",
    "ImageError",
    "PretrainedModel",
    "PretrainedNotAvailableError",
    "ViTConfig",
    "ViTTrace",
    "VisionTransformer",
    "VitCoreError",
    "describe",
    "download_pretrained",
    "get_pretrained",
    "imagenet_class_names",
    "infer_num_heads",
    "is_downloaded",
    "list_pretrained",
    "load_checkpoint",
    "load_image",
    "load_pretrained",
    "preprocess",
    "preprocess_steps",
    "resample_pos_embed",
    "save_checkpoint",
]
