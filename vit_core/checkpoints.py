"""Saving and loading checkpoints: ours (safetensors + metadata), timm and Hugging Face.

Nothing here unpickles arbitrary objects: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ViTConfig
from .errors import CheckpointError
from .model import VisionTransformer

FORMAT_TAG = "vit-explorer/1"


def save_checkpoint(model: VisionTransformer, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write the weights as safetensors with the config and class names in its metadata.

    The file is written to a temporary name beside `path` and renamed, so an interrupted or
    failed save (a full disk) never leaves a half-written checkpoint under `path`.

    Raises:
        CheckpointError: the file could not be written (no space, no permission).
    """
    path = Path(path)
    meta = {
        "format": FORMAT_TAG,
        "config": model.cfg.to_json(),
        "class_names": json.dumps(model.class_names),
    }
    if extra:
        meta["extra"] = json.dumps(extra)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise CheckpointError(f"Could not write {path}: {e.strerror or e}. Free some disk space or choose another folder.") from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def _remove_quietly(p: str | os.PathLike) -> None:
    try:
        os.remove(p)
    except OSError:
        pass


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or CheckpointError if it is damaged."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{Path(path).name} is not a readable safetensors file (truncated or damaged): {e}") from None


def load_own(tensors: dict[str, torch.Tensor], meta: dict[str, str], source: str = "checkpoint") -> VisionTransformer:
    """Build our model from a file `save_checkpoint` wrote."""
    try:
        cfg = ViTConfig.from_dict(json.loads(meta["config"]))
        class_names = json.loads(meta.get("class_names", "null"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: its metadata does not describe a ViT config ({e}).") from None
    if class_names is not None and len(class_names) != cfg.num_classes:
        raise CheckpointError(
            f"{source}: {len(class_names)} class names but the config has {cfg.num_classes} classes."
        )
    model = VisionTransformer(cfg, class_names)
    load_weights(model, tensors, source)
    return model.eval()


def load_weights(model: VisionTransformer, tensors: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy `tensors` into `model`, with a CheckpointError that names what does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(f"{source} does not fit this ViT: " + "; ".join(parts) + ".")
    bad = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if tensors[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch (file vs model): {_few(bad)}.")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k].to(v.dtype))


def _few(items: list[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_checkpoint(path: str | os.PathLike, num_heads: int | None = None) -> VisionTransformer:
    """A ready `VisionTransformer` (eval mode) from a checkpoint file or folder.

    Reads our own safetensors files; timm and Hugging Face formats are added by the
    format readers below.

    Raises:
        CheckpointError: unknown format, missing/extra keys, shape mismatch, unsafe pickle.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {path}.")
    if path.suffix == ".safetensors":
        tensors, meta = read_safetensors(path)
        if meta.get("format") == FORMAT_TAG:
            return load_own(tensors, meta, path.name)
    raise CheckpointError(f"{path.name}: unknown checkpoint format.")
