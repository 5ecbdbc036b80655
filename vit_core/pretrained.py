"""Pretrained ImageNet ViTs by name: a small catalogue of timm's Hugging Face Hub repositories.

Nothing is downloaded unless `download_pretrained` (or `load_pretrained(..., download=True)`)
is called. Weights go to the user's Hugging Face cache; a file can also be put by hand in
`models_dir()/<timm name>/model.safetensors`, which is looked at first.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .checkpoints import load_checkpoint
from .config import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, IMAGENET_MEAN, IMAGENET_STD
from .errors import CheckpointError
from .model import VisionTransformer

ProgressCallback = Callable[[int, "int | None"], None]  # (bytes done, bytes in all or None)
MODELS_DIR_ENV = "VIT_EXPLORER_MODELS"
STALL_TIMEOUT_S = 60.0  # a download with no progress for this long is given up


class PretrainedNotAvailableError(CheckpointError):
    """A catalogue model that is neither on this computer nor downloadable right now."""


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


def models_dir() -> Path:
    """Where files put by hand are looked for: $VIT_EXPLORER_MODELS, else
    ~/.cache/vit_explorer/models. A model's file goes in `<this>/<timm name>/model.safetensors`."""
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vit_explorer" / "models"


def manual_path(name: str) -> Path:
    """Where a by-hand download of `name`'s weight file belongs."""
    m = get_pretrained(name)
    return models_dir() / m.timm_name / m.filename


def local_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The weight file of `name` if it is on this computer (by-hand folder first, then the
    Hugging Face cache), else None. Never touches the network."""
    m = get_pretrained(name)
    manual = manual_path(m.key)
    if manual.is_file():
        return manual
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        m.repo_id, m.filename, cache_dir=None if cache_dir is None else str(cache_dir), revision=m.revision
    )
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def is_downloaded(name: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when `load_pretrained(name)` will work offline."""
    return local_path(name, cache_dir) is not None


def download_pretrained(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    *,
    endpoint: str | None = None,
    stall_timeout: float = STALL_TIMEOUT_S,
) -> Path:
    """Download `name`'s weights (and timm's small config.json) into the Hugging Face cache.

    The Hub client writes to a temporary file that is renamed into the cache only when it is
    complete, so a download that fails leaves nothing that `is_downloaded` or `load_pretrained`
    would use. The transfer runs on a helper thread and is given up, with a clear error, when no
    byte has arrived for `stall_timeout` seconds: the client's own timeouts do not end every
    hang (a server that accepts the connection and never answers).

    Args:
        name: a catalogue key, timm name or title (see `get_pretrained`).
        cache_dir: a Hugging Face cache folder; None uses the user's default cache.
        progress: called as `progress(bytes_done, bytes_total_or_None)` while the weights
            arrive, always on the calling thread.
        endpoint: a Hub mirror such as "https://hf-mirror.example"; None uses $HF_ENDPOINT or
            huggingface.co.
        stall_timeout: seconds without progress (no answer, no new bytes) before giving up.

    Returns:
        The path of the cached weight file.

    Raises:
        PretrainedNotAvailableError: offline (HF_HUB_OFFLINE set, or no network), the Hub
            refused, the transfer stalled or broke off, or the disk is full; the message says
            where to put the file by hand.
    """
    m = get_pretrained(name)
    from huggingface_hub import hf_hub_download

    offline = _offline()
    kwargs: dict[str, Any] = {
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "revision": m.revision,
        "local_files_only": offline,
        "endpoint": endpoint,
        "etag_timeout": min(10.0, stall_timeout),
    }
    lock = threading.Lock()
    state: dict[str, Any] = {"done": 0, "total": None, "last": time.monotonic()}

    def seen(done: int, total: int | None) -> None:  # on the helper thread
        with lock:
            state.update(done=done, total=total, last=time.monotonic())

    def fetch() -> None:
        try:
            path = hf_hub_download(m.repo_id, m.filename, tqdm_class=_progress_class(seen), **kwargs)
        except Exception as e:  # network, Hub and disk errors all mean the same to a user
            with lock:
                state["error"] = e
            return
        with lock:
            state.update(weights=Path(path), last=time.monotonic())
        try:
            hf_hub_download(m.repo_id, "config.json", **kwargs)  # timm's preprocessing and labels
        except Exception:
            pass  # optional: the catalogue carries the same preprocessing

    worker = threading.Thread(target=fetch, name=f"download {m.key}", daemon=True)
    worker.start()
    reported = None
    while True:
        worker.join(0.1)
        with lock:
            snap = dict(state)
        if progress is not None and (snap["done"], snap["total"]) != reported:
            reported = (snap["done"], snap["total"])
            try:
                progress(*reported)
            except Exception:  # a failing progress display must not abort the download
                pass
        if "error" in snap:
            raise _not_available(m, _reason(snap["error"], offline)) from None
        idle = time.monotonic() - snap["last"]
        if "weights" in snap and (not worker.is_alive() or idle > min(10.0, stall_timeout)):
            return snap["weights"]  # config.json is optional: do not wait long for it
        if not worker.is_alive():  # pragma: no cover - the worker always leaves a result
            raise _not_available(m, "the download ended without a file")
        if idle > stall_timeout:
            # The helper thread is left to the client's own timeouts; whatever it fetches later
            # lands in the cache whole or not at all.
            host = urlsplit(endpoint or m.url).netloc or "the Hub"
            raise _not_available(
                m, f"no data from {host} for {stall_timeout:.0f} s; the network may be down or blocked"
            )


def load_pretrained(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    progress: ProgressCallback | None = None,
) -> VisionTransformer:
    """A catalogue model, ready (eval mode), from this computer; offline first.

    Args:
        name: a catalogue key, timm name or title.
        cache_dir: a Hugging Face cache folder; None uses the user's default cache.
        download: fetch it from the Hub when it is not here (otherwise raise).
        progress: download progress callback, see `download_pretrained`.

    Raises:
        PretrainedNotAvailableError: not here and not downloadable (or `download` is False);
            the message names the file and where to put it.
        CheckpointError: the file here is damaged or is not this model.
    """
    m = get_pretrained(name)
    path = local_path(m.key, cache_dir)
    if path is None:
        if not download:
            raise _not_available(m, "it has not been downloaded yet")
        path = download_pretrained(m.key, cache_dir, progress)
    try:
        model = load_checkpoint(path, num_heads=m.num_heads)
    except CheckpointError as e:
        raise CheckpointError(f"{path} could not be loaded as {m.title}: {e} Delete it and download again.") from None
    cfg = model.cfg
    if (cfg.embed_dim, cfg.depth, cfg.num_classes) != (m.embed_dim, m.depth, m.num_classes):
        raise CheckpointError(
            f"{path} is not {m.title}: it has width {cfg.embed_dim}, {cfg.depth} blocks and {cfg.num_classes} "
            f"classes, expected {m.embed_dim}, {m.depth} and {m.num_classes}. Delete it and download again."
        )
    if not (path.parent / "config.json").is_file():
        for field, value in m.preprocessing().items():
            setattr(cfg, field, value)
    cfg.name = m.title
    cfg.extra = {**cfg.extra, "pretrained": m.key, "repo_id": m.repo_id}
    return model


def find_entry_for_path(path: str | os.PathLike) -> dict[str, Any] | None:
    """Preprocessing and timm name of the catalogue model whose timm name is in `path`
    (a by-hand folder, a Hub cache folder `models--timm--<name>`, or a file name)."""
    text = str(path)
    hits = [m for m in CATALOGUE.values() if m.timm_name in text]
    if not hits:
        return None
    m = max(hits, key=lambda e: len(e.timm_name))
    return {"timm_name": m.timm_name, **m.preprocessing()}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _reason(e: Exception, offline: bool) -> str:
    """A few words on why a download failed, from the error and the errors it wraps."""
    if offline:
        return "HF_HUB_OFFLINE is set and it is not in the cache"
    chain: list[BaseException] = []
    err: BaseException | None = e
    while err is not None and err not in chain and len(chain) < 8:
        chain.append(err)
        err = err.__cause__ or err.__context__
    names = " ".join(type(x).__name__ for x in chain)
    codes = [getattr(getattr(x, "response", None), "status_code", None) for x in chain]
    status = next((c for c in codes if isinstance(c, int)), None)
    if "ConnectError" in names or "ConnectionRefused" in names or "NameResolution" in names:
        return "could not connect to the Hub"
    if "Timeout" in names:
        return "the Hub did not answer in time"
    if any(k in names for k in ("RemoteProtocolError", "ReadError", "IncompleteRead", "ChunkedEncoding")):
        return "the connection broke off during the transfer"
    if status is not None:
        return f"the Hub answered HTTP {status}"
    disk = next(
        (
            x
            for x in chain
            if isinstance(x, OSError)
            and x.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
        ),
        None,
    )
    if disk is not None:
        return f"could not write it: {disk.strerror or disk}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def _not_available(m: PretrainedModel, reason: str) -> PretrainedNotAvailableError:
    return PretrainedNotAvailableError(
        f"{m.title} is not on this computer ({reason}). When online, download it from the model menu or with "
        f"download_pretrained({m.key!r}) ({m.download_mb:.0f} MB). Without a network, fetch {m.url} on another "
        f"machine and put it at {manual_path(m.key)}."
    )


def _progress_class(callback: ProgressCallback | None) -> type | None:
    """A tqdm class for `hf_hub_download` that reports byte counts to `callback`."""
    if callback is None:
        return None
    from huggingface_hub.utils import tqdm as hub_tqdm

    class _Progress(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            self._report()

        def _report(self) -> None:
            total = getattr(self, "total", None)
            try:
                callback(self._done, int(total) if total else None)
            except Exception:  # a failing progress display must not abort the download
                pass

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            self._report()
            return super().update(n)

    return _Progress
