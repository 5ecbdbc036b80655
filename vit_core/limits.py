"""Server limits: every cap that an anonymous user's action is checked against, in one place.

The app may be served to a whole class. Anything a browser user can trigger (an upload, a
checkpoint, a training run, a dataset archive) is checked against these numbers on the server
before the memory, disk or CPU is spent. Each limit has a default for a person running the app
on their own machine, a stricter classroom default that `VIT_EXPLORER_PUBLIC=1` applies, and an
environment variable that overrides either. `README.md` ("Serving a class") lists them all.

    from vit_core.limits import current_limits
    lim = current_limits()            # read from the environment on each call (cheap)
    if size > lim.max_image_bytes: ...
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import CheckpointError

if TYPE_CHECKING:
    from .config import ViTConfig

PUBLIC_ENV = "VIT_EXPLORER_PUBLIC"
_MB = 1024 * 1024
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Limits:
    """Caps on what one user can make the server do. Sizes in bytes, times in seconds."""

    public: bool = False  # classroom mode: no checkpoint paths or uploads, no error details
    # images
    max_image_bytes: int = 20 * _MB  # one uploaded image file
    max_image_pixels: int = 40_000_000  # width x height, checked from the header before decoding
    # models (any source: bundled, catalogue, uploaded, by path, trained in the app)
    max_tokens: int = 4097  # tokens of one forward pass (prefix + patches)
    max_trace_bytes: int = 1024 * _MB  # float32 attention maps of one traced image: L * h * N^2 * 4
    max_checkpoint_bytes: int = 1024 * _MB  # one checkpoint file, uploaded or by path
    # uploads kept on the server (checkpoints, dataset archives)
    upload_quota_session_bytes: int = 1024 * _MB  # all files of one session
    upload_quota_server_bytes: int = 8192 * _MB  # all sessions together
    upload_ttl_s: float = 24 * 3600.0  # an upload folder older than this is removed
    # datasets (archives and image folders)
    max_archive_bytes: int = 2048 * _MB  # uncompressed total, counted while reading
    max_archive_members: int = 200_000  # files and folders in one archive
    max_dataset_images: int = 200_000  # images of one training set
    max_dataset_image_pixels: int = 512 * 512  # one image of a training set (before decoding)
    data_cache_bytes: int = 8192 * _MB  # the unpacked-data cache; least recently used evicted
    # training runs
    max_train_img_size: int = 128  # input side of a model trained in the app
    max_epochs: float = 500.0  # length of one run's schedule
    max_run_seconds: float = 0.0  # wall-clock cap of one run; 0 = none
    paused_release_s: float = 0.0  # a paused run gives its slot up after this; 0 = never

    def replace(self, **changes: object) -> Limits:
        return dataclasses.replace(self, **changes)


# What `VIT_EXPLORER_PUBLIC=1` changes: sized for a class of 20-200 on one 2-16 core machine.
CLASSROOM = {
    "public": True,
    "max_image_pixels": 16_000_000,
    "max_tokens": 1025,  # e.g. ViT-B/16 at 384 px has 577; a 32 px image at patch 1 has 1025
    "max_trace_bytes": 128 * _MB,
    "max_checkpoint_bytes": 400 * _MB,  # ViT-B/16 in float32 is 346 MB
    "upload_quota_session_bytes": 250 * _MB,
    "upload_quota_server_bytes": 4096 * _MB,
    "upload_ttl_s": 3 * 3600.0,
    "max_archive_bytes": 512 * _MB,
    "max_archive_members": 100_000,
    "max_dataset_images": 70_000,
    "max_dataset_image_pixels": 128 * 128,
    "data_cache_bytes": 2048 * _MB,
    "max_train_img_size": 64,
    "max_epochs": 50.0,
    "max_run_seconds": 30 * 60.0,
    "paused_release_s": 10 * 60.0,
}

# field -> (environment variable, unit multiplier of the value written there)
ENV = {
    "max_image_bytes": ("VIT_EXPLORER_MAX_IMAGE_MB", _MB),
    "max_image_pixels": ("VIT_EXPLORER_MAX_IMAGE_PIXELS", 1),
    "max_tokens": ("VIT_EXPLORER_MAX_TOKENS", 1),
    "max_trace_bytes": ("VIT_EXPLORER_MAX_TRACE_MB", _MB),
    "max_checkpoint_bytes": ("VIT_EXPLORER_MAX_CHECKPOINT_MB", _MB),
    "upload_quota_session_bytes": ("VIT_EXPLORER_UPLOAD_QUOTA_SESSION_MB", _MB),
    "upload_quota_server_bytes": ("VIT_EXPLORER_UPLOAD_QUOTA_SERVER_MB", _MB),
    "upload_ttl_s": ("VIT_EXPLORER_UPLOAD_TTL_S", 1),
    "max_archive_bytes": ("VIT_EXPLORER_MAX_ARCHIVE_MB", _MB),
    "max_archive_members": ("VIT_EXPLORER_MAX_ARCHIVE_MEMBERS", 1),
    "max_dataset_images": ("VIT_EXPLORER_MAX_DATASET_IMAGES", 1),
    "max_dataset_image_pixels": ("VIT_EXPLORER_MAX_DATASET_IMAGE_PIXELS", 1),
    "data_cache_bytes": ("VIT_EXPLORER_DATA_CACHE_MB", _MB),
    "max_train_img_size": ("VIT_EXPLORER_MAX_TRAIN_IMG_SIZE", 1),
    "max_epochs": ("VIT_EXPLORER_MAX_EPOCHS", 1),
    "max_run_seconds": ("VIT_EXPLORER_MAX_RUN_S", 1),
    "paused_release_s": ("VIT_EXPLORER_PAUSED_RELEASE_S", 1),
}


def is_public(environ: Mapping[str, str] | None = None) -> bool:
    """True when the server runs in classroom mode (`VIT_EXPLORER_PUBLIC=1`)."""
    env = os.environ if environ is None else environ
    return env.get(PUBLIC_ENV, "").strip().lower() in _TRUE


def current_limits(environ: Mapping[str, str] | None = None) -> Limits:
    """The limits in force: defaults, then classroom defaults if public, then each variable set.

    Raises:
        ValueError: a variable that is set but not a non-negative number (naming it), so that a
            typo in a server's settings fails at start-up instead of silently lifting a cap.
    """
    env = os.environ if environ is None else environ
    lim = Limits()
    if is_public(env):
        lim = lim.replace(**CLASSROOM)
    changes: dict[str, object] = {}
    for name, (var, unit) in ENV.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{var}={raw!r} is not a number") from None
        if not value >= 0:
            raise ValueError(f"{var}={raw!r} must be >= 0")
        kind = type(getattr(lim, name))
        changes[name] = kind(value * unit) if kind is float else int(round(value * unit))
    return lim.replace(**changes) if changes else lim


def trace_bytes(depth: int, num_heads: int, num_tokens: int) -> int:
    """Bytes of the float32 attention maps of one traced image: L * h * N^2 * 4."""
    return 4 * int(depth) * int(num_heads) * int(num_tokens) ** 2


class ModelTooLargeError(CheckpointError):
    """A model whose forward pass on one image would cost more than the server allows."""


def check_model_cost(cfg: ViTConfig, limits: Limits | None = None, source: str = "This model") -> None:
    """Refuse a ViT whose tokens or traced attention maps exceed the limits, before it is built.

    Call it with the configuration read from a checkpoint (or a training form), so that a tiny
    file that describes a huge model (patch size 1 on a large image) costs nothing.

    Raises:
        ModelTooLargeError: with the model's figures and the limit it breaks.
    """
    lim = current_limits() if limits is None else limits
    gh, gw = cfg.grid_size
    tokens = gh * gw + cfg.num_prefix_tokens
    if tokens > lim.max_tokens:
        raise ModelTooLargeError(
            f"{source} makes {tokens:,} tokens per image ({gh}x{gw} patches of {cfg.patch_size} px); "
            f"this server allows {lim.max_tokens:,}. Use a larger patch size or a smaller image size."
        )
    need = trace_bytes(cfg.depth, cfg.num_heads, tokens)
    if need > lim.max_trace_bytes:
        raise ModelTooLargeError(
            f"{source} needs {fmt_bytes(need)} for the attention maps of one image ({cfg.depth} layers x "
            f"{cfg.num_heads} heads x {tokens:,}^2); this server allows {fmt_bytes(lim.max_trace_bytes)}."
        )


def fmt_bytes(n: float) -> str:
    """'20 MB', '1.5 GB' (binary units, as the limits are set)."""
    if n >= 1024 * _MB:
        return f"{n / (1024 * _MB):.1f} GB"
    if n >= _MB:
        return f"{n / _MB:.0f} MB"
    return f"{n / 1024:.0f} KB"
