"""Shared test pieces: tiny seeded Vision Transformers and timm state dicts, small enough that
a CPU builds and runs them in milliseconds.

The fixtures are factories (`make_vit(depth=2, num_classes=3)`), so that each test says what
it needs beyond the tiny defaults and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from tests.vit_reference import make_timm_state_dict
from vit_core import VisionTransformer, ViTConfig

# The smallest ViT worth looking at: a 4x4 grid of 8-pixel patches, one block of two heads.
TINY = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=2)
# Parameters whose timm init is 1, not 0: LayerNorm weights and LayerScale's gamma.
_UNIT_INIT = ("norm1.weight", "norm2.weight", "norm.weight", "fc_norm.weight", "gamma")


def tiny_config(**overrides: object) -> ViTConfig:
    """`TINY` with `overrides` (any `ViTConfig` field)."""
    return ViTConfig(**{**TINY, **overrides})


def tiny_vit(
    seed: int = 0,
    class_names: list[str] | None = None,
    *,
    weight_std: float | None = None,
    dtype: torch.dtype = torch.float32,
    **overrides: object,
) -> VisionTransformer:
    """A tiny ViT in eval mode, the same for the same arguments; the global RNG is left as it was.

    Args:
        seed: seeds the weights.
        class_names: as `VisionTransformer` takes them (None: "class 0", ...).
        weight_std: None keeps timm's init (biases and tokens 0, attention near uniform);
            a value redraws every parameter from a normal around its init centre (1 for norm
            weights and LayerScale, else 0), so that attention is peaked and every path matters.
        dtype: of the parameters.
        overrides: `ViTConfig` fields that differ from `TINY`.
    """
    cfg = tiny_config(**overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionTransformer(cfg, class_names)
        if weight_std is not None:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.normal_(1.0 if name.endswith(_UNIT_INIT) else 0.0, weight_std)
    return model.eval().to(dtype)


def tiny_timm_state_dict(**overrides: object) -> dict[str, torch.Tensor]:
    """A random timm ViT state dict: width 64, 2 blocks, 8-pixel patches on a 4x4 grid, 5 classes
    (see `tests.vit_reference.make_timm_state_dict` for the other options)."""
    return make_timm_state_dict(
        **{**dict(embed_dim=64, depth=2, patch_size=8, grid=(4, 4), num_classes=5), **overrides}
    )


@pytest.fixture(scope="session")
def make_config() -> Callable[..., ViTConfig]:
    """Factory: `make_config(**overrides)`, see `tiny_config`."""
    return tiny_config


@pytest.fixture(scope="session")
def make_vit() -> Callable[..., VisionTransformer]:
    """Factory: `make_vit(seed=0, class_names=None, *, weight_std=None, dtype=..., **overrides)`,
    see `tiny_vit`."""
    return tiny_vit


@pytest.fixture(scope="session")
def make_timm_sd() -> Callable[..., dict[str, torch.Tensor]]:
    """Factory: `make_timm_sd(**overrides)`, see `tiny_timm_state_dict`."""
    return tiny_timm_state_dict


@pytest.fixture(scope="session")
def deit_tiny_state_dict() -> dict[str, torch.Tensor]:
    """A random state dict of DeiT-tiny's shapes (width 192, 12 blocks, 14x14 grid, 1000 classes),
    to stand in for the catalogue's `deit-tiny` download. Read-only: shared by the session."""
    return make_timm_state_dict(embed_dim=192, depth=12, patch_size=16, grid=(14, 14), num_classes=1000, scale=0.02)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module, for the real-browser tests (tests/_browser_kit.py
    says which binary and flags; without Playwright the module is skipped unless CI requires it)."""
    from tests._browser_kit import CHROMIUM, CHROMIUM_ARGS, import_playwright

    with import_playwright().sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
