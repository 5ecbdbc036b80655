"""The Experiments page's data: the shipped results, the shipped CNN, and the live comparisons
(receptive field vs attention distance, first-layer filters), cached per process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
import torch

from vit_core import experiments as ex
from vit_core.analysis import embedding_filters_pca
from vit_core.analysis.emergence import mean_attention_distance_by_depth
from vit_core.analysis.receptive_field import effective_receptive_field
from vit_core.checkpoints import load_checkpoint
from vit_core.cnn import CNN_PRESETS, ResNet, build_model
from vit_core.errors import CheckpointError
from vit_core.images import load_image, preprocess
from vit_core.snapshots import stem_filters

SHIPPED_CNN = ex.RESULTS_DIR / "resnet_demo_n10000.safetensors"  # the demo ResNet of the 10,000-image run
CIFAR_SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples" / "cifar10"


def results(folder: str | None = None) -> dict[str, dict]:
    """The shipped result files (assets/experiments/*.json), read fresh (a few small files)."""
    return ex.load_results(folder)


def shipped_cnn() -> ResNet | None:
    """The shipped demo ResNet (float16 on disk, used in float32), or None when the file is not there."""
    return _cnn_file(str(SHIPPED_CNN))


@st.cache_resource(show_spinner=False, max_entries=2)
def _cnn_file(path: str) -> ResNet | None:
    if not Path(path).is_file():
        return None
    try:
        model = load_checkpoint(path)
    except CheckpointError:
        return None
    return model.float().eval() if isinstance(model, ResNet) else None


@st.cache_resource(max_entries=1, show_spinner=False)
def untrained_cnn() -> ResNet:
    """A randomly initialised demo ResNet (seed 0): the stand-in when no trained CNN is at hand."""
    torch.manual_seed(0)
    return build_model(CNN_PRESETS["demo"].replace(name="ResNet (random weights)")).eval()


def sample_batch(model: torch.nn.Module) -> torch.Tensor:
    """The ten bundled CIFAR-10 samples, preprocessed for `model`: (10, C, H, W)."""
    files = sorted(CIFAR_SAMPLES.glob("*.jpg"))
    return torch.cat([preprocess(load_image(p), model) for p in files])


@st.cache_data(show_spinner=False, max_entries=8)
def attention_distance(_model: torch.nn.Module, model_id: str) -> list[float]:
    """The ViT's mean attention distance per block (px) on the ten CIFAR-10 samples."""
    with torch.inference_mode():
        return [float(v) for v in mean_attention_distance_by_depth(_model, sample_batch(_model))]


@st.cache_data(show_spinner=False, max_entries=8)
def receptive_field(_model: torch.nn.Module, model_id: str) -> tuple[list[float], list[str]]:
    """The CNN's effective-receptive-field distance per layer (px) on the ten CIFAR-10 samples."""
    _, dist = effective_receptive_field(_model, sample_batch(_model))
    return [float(v) for v in dist], _model.layer_names()


def vit_filters(model: torch.nn.Module, k: int = 16) -> np.ndarray:
    """The ViT's top `k` principal components of its patch-embedding filters, (k, P, P, C) in [0, 1]."""
    return embedding_filters_pca(model, k).cpu().numpy()


def cnn_filters(model: ResNet) -> np.ndarray:
    """The CNN's raw stem filters, (k, 3, 3, C), each scaled to [0, 1]."""
    return stem_filters(model)
