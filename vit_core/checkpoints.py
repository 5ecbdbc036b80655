"""Saving and loading checkpoints: ours (safetensors + metadata), timm and Hugging Face.

Nothing here unpickles arbitrary objects: weights come from safetensors, or from
`torch.load(weights_only=True)`, which refuses any pickle that would import or call code.
The architecture is read from the file (tensor shapes, and `config.json` where one is
shipped), never given by hand; only the number of heads of a bare timm state dict has to be
inferred (see `infer_num_heads`).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from .catalogue import entry_for_path
from .cnn import CNNConfig, ResNet, config_from_dict
from .config import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD, IMAGENET_MEAN, IMAGENET_STD, ViTConfig
from .errors import CheckpointError
from .families import FAMILIES, convert_family, detect_family
from .families import AnswerNeededError as AnswerNeededError  # re-exported: load_checkpoint raises it
from .fileio import atomic_write
from .limits import Limits, check_model_cost, current_limits, fmt_bytes
from .model import VisionTransformer

FORMAT_TAG = "vit-explorer/1"
IMAGENET_CLASSES_FILE = Path(__file__).resolve().parent.parent / "assets" / "imagenet_classes.txt"

# Weight files of a checkpoint folder, in the order they are looked for.
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
# Wrappers of a state dict in a training checkpoint, in the order timm's loader prefers them.
STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
# Prefixes that wrappers add to every key: DistributedDataParallel, torch.compile, a Lightning
# module holding the network as `self.model`.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")

# Heads of timm's ViTs whose heads are not 64 wide, from the model definitions in
# timm/models/vision_transformer.py and deit.py (`embed_dim`, `num_heads` per model).
# By width: no timm ViT of these widths uses 64-wide heads.
_HEADS_BY_WIDTH = {1152: 16, 1280: 16, 1408: 16, 1664: 16}
# By timm model-name prefix: widths that timm uses with more than one head count.
_HEADS_BY_NAME = (
    ("vit_base_patch16_gap", 16),  # 768 wide, 48-wide heads
    ("vit_giantopt", 16),  # 1536 wide (DINOv2's ViT-g uses 24 heads of 64)
    ("aimv2_large", 8),
    ("aimv2_huge", 12),
    ("aimv2_1b", 16),
    ("aimv2_3b", 24),
)


# ----------------------------------------------------------------------------------------------
# Saving and our own format


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
    writing = False  # False: the folder or the temporary file could not be made
    try:
        with atomic_write(path) as tmp:
            writing = True
            save_file(tensors, str(tmp), metadata=meta)
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk as a SafetensorError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        advice = "Free some disk space or choose another folder." if writing else "Choose another folder."
        raise CheckpointError(f"Could not write {path}: {reason}. {advice}") from None
    return path


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or CheckpointError if it is damaged."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{Path(path).name} is not a readable safetensors file (truncated or damaged: {e}). Download it again."
        ) from None


def load_own(tensors: dict[str, Tensor], meta: dict[str, str], source: str = "checkpoint") -> VisionTransformer:
    """Build our model from a file `save_checkpoint` wrote."""
    try:
        cfg = config_from_dict(json.loads(meta["config"]))
        class_names = json.loads(meta.get("class_names", "null"))
    except (KeyError, ValueError, TypeError, ArithmeticError) as e:
        raise CheckpointError(f"{source}: its metadata does not describe a ViT config ({e}).") from None
    if class_names is not None and (not isinstance(class_names, list) or len(class_names) != cfg.num_classes):
        if not isinstance(class_names, list):
            raise CheckpointError(f"{source}: its class names are not a list.")
        raise CheckpointError(f"{source}: {len(class_names)} class names but the config has {cfg.num_classes} classes.")
    if class_names is not None:
        class_names = [str(n) for n in class_names]
    if isinstance(cfg, CNNConfig):
        return _load_cnn(cfg, class_names, tensors, source)
    pos = tensors.get("pos_embed")
    if pos is not None and pos.dim() == 3:
        gh, gw = cfg.grid_size
        expected = gh * gw + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
        if pos.shape[1] != expected:
            raise CheckpointError(
                f"{source}: the config's image size {cfg.img_size[0]}x{cfg.img_size[1]} needs {expected} position "
                f"embeddings but the weights have {pos.shape[1]}."
            )
    model = _unfilled_model(cfg, class_names, tensors, source)
    load_weights(model, tensors, source)
    return model.eval()


def _load_cnn(cfg: CNNConfig, class_names: list[str] | None, tensors: dict[str, Tensor], source: str) -> ResNet:
    """The ResNet baseline from its own file (BatchNorm's integer step counters included)."""
    try:
        model = ResNet(cfg, class_names)
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as e:
        raise CheckpointError(f"{source}: its config does not describe a buildable ResNet ({e}).") from None
    own = model.state_dict()
    floats = {k: v for k, v in own.items() if v.is_floating_point()}  # not BatchNorm's step counters
    check_fits(floats, {k: v for k, v in tensors.items() if k not in own or k in floats}, source)
    counters = sorted(k for k in own if k not in floats and k not in tensors)
    if counters:
        raise CheckpointError(f"{source} does not fit this ResNet: missing keys {_few(counters)}.")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k].to(v.dtype))
    return model.eval()


def load_weights(model: VisionTransformer, tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Copy `tensors` into `model`, with a CheckpointError that names what does not fit."""
    own = model.state_dict()
    check_fits(own, tensors, source)
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k].to(v.dtype))


def check_fits(own: dict[str, Tensor], tensors: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Raise a CheckpointError naming the keys, shapes or dtypes of `tensors` that do not fit `own`
    (a model's state dict; its tensors may live on the meta device)."""
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise CheckpointError(
            f"{source} does not fit this ViT: " + "; ".join(parts) + ". Is it a plain ViT/DeiT checkpoint "
            "(not CLIP pre-norm, qk-norm, attention-pool or hybrid CNN variants)?"
        )
    bad = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if tensors[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch (file vs model): {_few(bad)}.")
    for k in own:
        if not tensors[k].is_floating_point():
            raise CheckpointError(f"{source}: {k} holds {tensors[k].dtype} values, not floating-point weights.")


def _unfilled_model(
    cfg: ViTConfig, class_names: list[str] | None, tensors: dict[str, Tensor], source: str = "checkpoint"
) -> VisionTransformer:
    """The model with uninitialised weights, for `load_weights` to fill; skipping the random
    init saves seconds on a ViT-B. It is built on the meta device and checked against
    `tensors` first, so a config that claims a far larger model than its weights never
    allocates memory for it. Every ViT loaded from any file passes here, with its config
    known and nothing allocated: the server's token and attention-memory caps are checked
    first (`limits.check_model_cost`), so a small file describing a huge forward pass
    (patch size 1 on a large image) is refused before it costs anything.

    Raises:
        ModelTooLargeError: over the server's caps (a CheckpointError).
    """
    check_model_cost(cfg, source=source)
    try:
        with torch.device("meta"):
            model = VisionTransformer(cfg, class_names)
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as e:
        raise CheckpointError(f"{source}: its config does not describe a buildable ViT ({e}).") from None
    check_fits(model.state_dict(), tensors, source)
    model = model.to_empty(device="cpu")
    model.fill_fixed_buffers()  # to_empty leaves buffers that are not weights uninitialised
    return model


def _few(items: list[str], n: int = 5) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# ----------------------------------------------------------------------------------------------
# The one loader


def load_checkpoint(
    path: str | os.PathLike,
    num_heads: int | None = None,
    *,
    img_size: int | tuple[int, int] | None = None,
    global_pool: str | None = None,
    norm_first: bool | None = None,
    activation: str | None = None,
    attention_axis: str | None = None,
) -> VisionTransformer:
    """A ready `VisionTransformer` (eval mode) from a checkpoint file or folder.

    Reads: our own safetensors files (`save_checkpoint`); timm ViT/DeiT state dicts
    (`.safetensors`, or `.pth`/`.bin`/`.pt` through `torch.load(weights_only=True)`, also
    wrapped in `model`/`state_dict`/`state_dict_ema`, or a timm Hub folder with its
    `config.json`); Hugging Face transformers ViT/DeiT folders (`config.json` with
    `model.safetensors` or `pytorch_model.bin`, sharded or not), or the weight file inside one;
    and the state dicts of the ViTs students write (vit-pytorch's ViT and SimpleViT, the
    tutorials' ViTs, `nn.TransformerEncoderLayer` ViTs; also inside a Lightning checkpoint:
    see `vit_core.families`).

    What a student's weights cannot tell is a keyword; when one is needed and missing, an
    `AnswerNeededError` names it with its likeliest values. The answers are kept in the
    config, so `save_checkpoint` keeps them with the weights.

    Args:
        path: a file, or a folder holding `config.json` and the weights.
        num_heads: heads per layer, for a timm state dict whose width does not tell them
            (otherwise inferred as timm builds its models), or a fused q/k/v projection of a
            student's model; overrides any other source.
        img_size: (H, W) (or one side) the model was built for: needed for a bare timm state
            dict with a non-square patch grid, and for a SimpleViT (positions not stored).
        global_pool: vit-pytorch ViT's `pool`: "cls" or "mean" (of all tokens, class included).
        norm_first: an `nn.TransformerEncoderLayer` ViT's `norm_first`.
        activation: an `nn.TransformerEncoderLayer` ViT's activation, "relu" or "gelu".
        attention_axis: for the `nn.MultiheadAttention` tutorial (or a file saved from it),
            "batch" (default: as its code computes it, each token attends only to itself) or
            "tokens" (as intended; not what its weights were trained with).

    Raises:
        AnswerNeededError: a value the weights cannot tell is missing (a CheckpointError).
        CheckpointError: unknown format, missing/extra keys, shape mismatch, a pickle that
            would run code, a damaged file, or a config that disagrees with the weights.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"No checkpoint at {path}.")
    folder = path if path.is_dir() else path.parent
    weights = _weight_file(path) if path.is_dir() else path
    if not weights.is_file():  # by stat: opening a FIFO would block until a writer came
        raise CheckpointError(f"{weights.name} is not a regular file (a pipe or a device?); nothing was read.")
    tensors, meta = _read_weights(weights)
    if meta.get("format") == FORMAT_TAG:
        model = load_own(tensors, meta, weights.name)
        if attention_axis is not None and attention_axis != model.cfg.attention_axis:
            return _with_attention_axis(model, attention_axis, weights.name)
        return model
    if num_heads is not None and (not isinstance(num_heads, int) or num_heads < 1):
        raise CheckpointError(f"num_heads must be a positive integer, not {num_heads!r}.")
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if _is_hf_state_dict(tensors):
        if config is None or "model_type" not in config:
            raise CheckpointError(
                f"{weights.name} holds Hugging Face transformers weights, which need the config.json they came "
                f"with. Put it beside the weights in {folder} and load the folder."
            )
        preprocessor = folder / "preprocessor_config.json"
        return _load_hf(
            tensors, config, _read_json(preprocessor) if preprocessor.is_file() else None, num_heads, weights
        )
    tensors = _strip_prefixes(tensors)
    if "patch_embed.proj.weight" in tensors:
        timm_config = config if config is not None and "architecture" in config else None
        return _load_timm(tensors, timm_config, num_heads, img_size, weights)
    family = detect_family(tensors)
    if family is not None:
        answers = dict(
            num_heads=num_heads,
            img_size=img_size,
            global_pool=global_pool,
            norm_first=norm_first,
            activation=activation,
            attention_axis=attention_axis,
        )
        return _load_family(tensors, family, answers, weights)
    raise CheckpointError(
        f"{weights.name}: unknown checkpoint format (keys like {_few(sorted(tensors), 4)}). vit_core reads its own "
        "checkpoints, timm ViT/DeiT state dicts, Hugging Face ViT/DeiT folders, and the state dicts of "
        "vit-pytorch, the tutorials' ViTs and nn.TransformerEncoderLayer ViTs."
    )


# ----------------------------------------------------------------------------------------------
# Students' ViTs (vit_core.families)

AS_INTENDED = "as intended: tokens attend to tokens, not what its weights were trained with"


def _load_family(tensors: dict[str, Tensor], family: str, answers: dict[str, Any], weights: Path) -> VisionTransformer:
    """A vit-pytorch / tutorial / nn.TransformerEncoderLayer state dict -> our model."""
    source = weights.name
    sd, fields, class_names = convert_family(tensors, family, answers, source)
    try:
        cfg = ViTConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{source}: its weights do not form a buildable ViT ({e}).") from None
    cfg.name = f"{weights.stem} ({FAMILIES[family]})"
    if cfg.attention_axis == "tokens" and family == "mha-tutorial":
        cfg.name += f" [{AS_INTENDED}]"
    cfg.extra = {
        "format": "family",
        "family": family,
        "source": str(weights),
        "answers": {k: (list(v) if isinstance(v, tuple) else v) for k, v in answers.items() if v is not None},
    }
    model = _unfilled_model(cfg, class_names, sd, source)
    load_weights(model, sd, source)
    return model.eval()


def _with_attention_axis(model: VisionTransformer, axis: str, source: str) -> VisionTransformer:
    """The same weights computed with attention across tokens ("tokens") or as the
    `nn.MultiheadAttention` tutorial's code computes it ("batch")."""
    if axis not in ("tokens", "batch"):
        raise CheckpointError(f"{source}: attention_axis={axis!r}; use 'batch' (as written) or 'tokens'.")
    cfg = _with(model.cfg, attention_axis=axis)
    suffix = f" [{AS_INTENDED}]"
    cfg.name = cfg.name.removesuffix(suffix) + (suffix if axis == "tokens" else "")
    cfg.extra = {**model.cfg.extra, "answers": {**model.cfg.extra.get("answers", {}), "attention_axis": axis}}
    out = _unfilled_model(cfg, model.class_names, model.state_dict(), source)
    load_weights(out, model.state_dict(), source)
    return out.eval()


def _weight_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(
        p for p in folder.iterdir() if p.suffix in (".safetensors", ".pth", ".bin", ".pt") and p.is_file()
    )
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise CheckpointError(f"{folder} holds several weight files ({_few([p.name for p in candidates])}); pick one.")
    raise CheckpointError(
        f"No weights in {folder}: expected model.safetensors or pytorch_model.bin beside config.json."
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path.name} in {path.parent} is not readable JSON ({e}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} in {path.parent} is not a JSON object.")
    return data


# ----------------------------------------------------------------------------------------------
# Reading tensors safely


def _read_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and (safetensors) metadata of a weight file or a sharded index."""
    if path.name.endswith(".index.json"):
        index = _read_json(path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{path.name} has no weight_map; is it a sharded checkpoint index?")
        tensors: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = path.parent / shard
            if not shard_path.is_file():
                raise CheckpointError(f"Shard {shard} listed in {path.name} is missing from {path.parent}.")
            tensors.update(_read_weights(shard_path)[0])
        return tensors, {}
    kind = sniff_format(path)
    if kind == "safetensors":
        return read_safetensors(path)
    if kind == "torch":
        return _torch_load_weights_only(path), {}
    if kind == "npz":
        raise CheckpointError(
            f"{path.name} is a NumPy .npz archive (the original JAX ViT release), which vit_core does not read. "
            "Use the timm or Hugging Face version of the model (a .safetensors file)."
        )
    if kind == "empty":
        raise CheckpointError(f"{path.name} is empty. Download it again.")
    raise CheckpointError(
        f"{path.name}: unknown checkpoint format (neither safetensors nor a PyTorch state dict). vit_core reads "
        "its own checkpoints, timm ViT/DeiT state dicts and Hugging Face ViT/DeiT folders."
    )


def check_checkpoint_bytes(data: bytes, name: str = "checkpoint", limits: Limits | None = None) -> str:
    """Check an uploaded checkpoint while it is still in memory, before anything is written.

    The size against `limits.max_checkpoint_bytes`, the format from the bytes (safetensors or a
    PyTorch file), a safetensors header that fits the file, and, for this app's own format
    (whose config is in the header), the model's cost (`limits.check_model_cost`): a tiny file
    that describes a huge forward pass is refused here. Other formats tell their config only
    through their weights; `load_checkpoint` checks the cost of those before building them.

    Returns:
        The format, "safetensors" or "torch".

    Raises:
        CheckpointError: too large, empty, not a checkpoint, a damaged header, or too costly
            (`ModelTooLargeError`).
    """
    lim = current_limits() if limits is None else limits
    if len(data) > lim.max_checkpoint_bytes:
        raise CheckpointError(
            f"{name} is {fmt_bytes(len(data))}; this server takes checkpoints up to {fmt_bytes(lim.max_checkpoint_bytes)}."
        )
    kind = _sniff(data[:9], len(data), lambda: zipfile.ZipFile(io.BytesIO(data)))
    if kind == "empty":
        raise CheckpointError(f"{name} is empty.")
    if kind == "npz":
        raise CheckpointError(f"{name} is a NumPy .npz archive, which vit_core does not read.")
    if kind not in ("safetensors", "torch"):
        raise CheckpointError(f"{name} is neither a safetensors file nor a PyTorch checkpoint.")
    if kind == "safetensors":
        (header_len,) = struct.unpack("<Q", data[:8])
        try:
            header = json.loads(data[8 : 8 + header_len])
        except (ValueError, UnicodeDecodeError):
            raise CheckpointError(f"{name} is not a readable safetensors file (its header is damaged).") from None
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        if isinstance(meta, dict) and meta.get("format") == FORMAT_TAG and isinstance(meta.get("config"), str):
            try:
                cfg = config_from_dict(json.loads(meta["config"]))
            except (KeyError, ValueError, TypeError, ArithmeticError) as e:
                raise CheckpointError(f"{name}: its metadata does not describe a ViT config ({e}).") from None
            if isinstance(cfg, ViTConfig):
                check_model_cost(cfg, lim, source=name)
    return kind


def sniff_format(path: str | os.PathLike) -> str:
    """What a weight file holds, from its first bytes: "safetensors", "torch" (a zip or a
    legacy pickle from `torch.save`), "npz", "empty" or "unknown"."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"Cannot read {path}: {e.strerror or e}.") from None
    return _sniff(head, size, lambda: zipfile.ZipFile(path))


def _sniff(head: bytes, size: int, open_zip: Callable[[], zipfile.ZipFile]) -> str:
    """`sniff_format` on the first 9 bytes of a file of `size` bytes (`open_zip` reads it as a zip)."""
    if size == 0:
        return "empty"
    # safetensors first: its 8-byte header length can start with 0x80 (a header of 128, 384,
    # 640, ... bytes), which would otherwise pass for a pickle, and torch.load would then read
    # the tensors but drop the metadata that holds our config and class names.
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len and (header_len <= size - 8 or head[:1] != b"\x80"):  # else a pickle, or truncated
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        try:
            with open_zip() as z:
                names = z.namelist()
        except Exception:  # BadZipFile, OSError, UnicodeDecodeError on a garbled name, ...
            return "torch"  # a damaged torch zip; torch.load will say what is wrong
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        return "torch"
    if head[:1] == b"\x80":  # pickle protocol 2+: a legacy torch.save file
        return "torch"
    return "unknown"


def _torch_load_weights_only(path: Path) -> dict[str, Tensor]:
    """`torch.load(weights_only=True)`, with every refusal turned into a CheckpointError."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).strip().splitlines()
        reason = next((line.strip() for line in detail if "global" in line.lower()), detail[0] if detail else "")
        # torch's own advice (allow-list the global) is the opposite of what a stranger's file deserves
        reason = re.sub(r"^WeightsUnpickler error:\s*|\s*Please use .*$", "", reason)
        raise CheckpointError(
            f"{path.name} was not loaded: it contains Python objects that would run code when unpickled "
            f"({reason[:200]}). vit_core only reads plain tensors. If you trust the file, load it in Python and "
            "save just the weights (torch.save(model.state_dict(), ...) or safetensors), then load that."
        ) from None
    except Exception as e:  # a damaged file fails in many ways (zipfile, pickle, torch); none of them runs code
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch file (truncated or damaged: {str(e)[:200]})."
        ) from None
    return unwrap_state_dict(obj, path.name)


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, Tensor]:
    """The tensor dict inside a training checkpoint (`state_dict_ema`, `model_ema`,
    `state_dict`, `model`, as timm prefers them), or the dict itself."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict of named tensors.")
    if _is_tensor_dict(obj):
        return dict(obj)
    for key in STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and _is_tensor_dict(inner):
            return dict(inner)
    keys = _few(sorted(map(str, obj)), 6)
    raise CheckpointError(f"{source}: no state dict of tensors found (top-level keys: {keys}).")


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in d.items())


def _strip_prefixes(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    stripped = True
    while stripped:  # nested wrappers: "model._orig_mod.", "module.model.", ...
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if tensors and all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                stripped = True
    return tensors


@functools.lru_cache(maxsize=1)
def _imagenet_class_names() -> tuple[str, ...]:
    try:
        names = IMAGENET_CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ()
    return tuple(n for n in names if n) if len([n for n in names if n]) == 1000 else ()


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (from assets/imagenet_classes.txt)."""
    names = _imagenet_class_names()
    if not names:
        raise CheckpointError(f"{IMAGENET_CLASSES_FILE} is missing or does not list 1000 class names.")
    return list(names)


# ----------------------------------------------------------------------------------------------
# timm


def infer_num_heads(embed_dim: int, model_name: str | None = None) -> int:
    """Heads per layer of a timm ViT, which its state dict does not record.

    timm builds almost every ViT with 64-wide heads (ViT-Ti/DeiT-tiny 192 -> 3, ViT-S 384 -> 6,
    ViT-B 768 -> 12, ViT-L 1024 -> 16). The exceptions, read from timm's model definitions,
    are the huge/giant/gigantic/so400m widths (16 heads) and a few models named in
    `_HEADS_BY_NAME`, recognised by their timm name when one is known.

    Raises:
        CheckpointError: the width gives no unambiguous answer; pass `num_heads`.
    """
    if model_name:
        base = model_name.rsplit("/", 1)[-1].lower()
        for prefix, heads in _HEADS_BY_NAME:
            if base.startswith(prefix):
                return heads
    if embed_dim in _HEADS_BY_WIDTH:
        return _HEADS_BY_WIDTH[embed_dim]
    if embed_dim % 64 == 0:
        return embed_dim // 64
    raise CheckpointError(
        f"Cannot tell the number of attention heads of a {embed_dim}-wide ViT from its weights (timm's "
        "models use 64-wide heads). Pass num_heads= to load_checkpoint."
    )


def config_from_timm_state_dict(
    tensors: dict[str, Tensor],
    num_heads: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    model_name: str | None = None,
    global_pool: str | None = None,
) -> ViTConfig:
    """The architecture of a timm ViT state dict, read from its tensor shapes.

    Patch size from `patch_embed.proj`, prefix tokens from `cls_token`/`dist_token`/
    `reg_token`, the patch grid from `pos_embed`, depth from `blocks.{i}`, MLP ratio from
    `fc1`, `qkv_bias`, LayerScale (`ls1.gamma`), `fc_norm` (-> average pooling) and the
    head. Preprocessing is left at timm's ImageNet defaults.

    Raises:
        CheckpointError: a tensor that a plain ViT needs is missing or has an odd shape.
    """
    source = model_name or "state dict"

    def need(key: str, ndim: int) -> Tensor:
        t = tensors.get(key)
        if t is None:
            raise CheckpointError(f"{source} does not fit this ViT: missing key {key}.")
        if t.dim() != ndim:
            raise CheckpointError(f"{source}: {key} has shape {tuple(t.shape)}, expected {ndim} dimensions.")
        return t

    proj = need("patch_embed.proj.weight", 4)
    D, C, ph, pw = proj.shape
    if ph != pw:
        raise CheckpointError(f"{source}: non-square patches ({ph}x{pw}) are not supported.")
    class_token = "cls_token" in tensors
    distill_token = "dist_token" in tensors
    reg_tokens = need("reg_token", 3).shape[1] if "reg_token" in tensors else 0
    k = int(class_token) + int(distill_token) + reg_tokens
    if "pos_embed" not in tensors:
        raise CheckpointError(
            f"{source} has no learned position embeddings (pos_embed); models with other position schemes "
            "(RoPE, relative) are not supported."
        )
    L = need("pos_embed", 3).shape[1]
    P = int(ph)
    (gh, gw), no_embed_class = _grid_from_positions(L, k, P, img_size, source)
    block_ids = sorted({int(m.group(1)) for key in tensors if (m := re.match(r"blocks\.(\d+)\.", key))})
    if not block_ids:
        raise CheckpointError(f"{source} does not fit this ViT: no transformer blocks (blocks.0...).")
    if block_ids != list(range(len(block_ids))):
        missing = sorted(set(range(block_ids[-1] + 1)) - set(block_ids))
        raise CheckpointError(f"{source} does not fit this ViT: blocks {missing} are missing.")
    qkv = need("blocks.0.attn.qkv.weight", 2)
    if tuple(qkv.shape) != (3 * D, D):
        raise CheckpointError(
            f"{source}: blocks.0.attn.qkv.weight has shape {tuple(qkv.shape)}, expected {(3 * D, D)}."
        )
    hidden = need("blocks.0.mlp.fc1.weight", 2).shape[0]
    heads = num_heads if num_heads is not None else infer_num_heads(D, model_name)
    if D % heads:
        raise CheckpointError(f"{source}: {heads} heads do not divide the width {D}; pass another num_heads.")
    fc_norm = "fc_norm.weight" in tensors
    pool = global_pool if global_pool in ("token", "avg") else ("avg" if fc_norm or not class_token else "token")
    if pool == "token" and not class_token:
        pool = "avg"
    num_classes = tensors["head.weight"].shape[0] if "head.weight" in tensors else 0
    return ViTConfig(
        img_size=(gh * P, gw * P),
        patch_size=P,
        in_chans=int(C),
        num_classes=int(num_classes),
        embed_dim=int(D),
        depth=len(block_ids),
        num_heads=int(heads),
        mlp_ratio=hidden / D,
        qkv_bias="blocks.0.attn.qkv.bias" in tensors,
        class_token=class_token,
        distill_token=distill_token,
        reg_tokens=int(reg_tokens),
        no_embed_class=no_embed_class,
        global_pool=pool,
        fc_norm=fc_norm,
        init_values=1.0 if "blocks.0.ls1.gamma" in tensors else None,  # the values come from the file
        layer_norm_eps=1e-6,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bicubic",
        crop_pct=0.9,
    )


def _grid_from_positions(
    L: int, k: int, P: int, img_size: int | tuple[int, int] | None, source: str
) -> tuple[tuple[int, int], bool]:
    """Patch grid (gh, gw) and `no_embed_class` from the number of position embeddings L,
    prefix tokens k and patch size P. Without `img_size` the grid is square, as timm assumes."""
    if img_size is not None:
        H, W = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        if H % P or W % P:
            raise CheckpointError(f"{source}: image size {H}x{W} is not a multiple of the patch size {P}.")
        gh, gw = H // P, W // P
        if L == gh * gw + k:
            return (gh, gw), False
        if L == gh * gw:
            return (gh, gw), True
        raise CheckpointError(
            f"{source}: image size {H}x{W} with {P}-pixel patches gives {gh * gw} patches, but the weights have "
            f"{L} position embeddings ({k} prefix tokens). The image size does not belong to these weights."
        )
    for n, no_embed in ((L - k, False), (L, True)):
        side = math.isqrt(n) if n > 0 else 0
        if side > 0 and side * side == n:
            return (side, side), no_embed
    raise CheckpointError(
        f"{source}: {L} position embeddings with {k} prefix tokens do not form a square patch grid. "
        "Pass img_size=(H, W) to load_checkpoint."
    )


def _load_timm(
    tensors: dict[str, Tensor],
    config: dict[str, Any] | None,
    num_heads: int | None,
    img_size: int | tuple[int, int] | None,
    weights: Path,
) -> VisionTransformer:
    """A timm state dict (optionally with the timm Hub `config.json`) -> our model."""
    config = config or {}
    pretrained = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    model_args = config.get("model_args") if isinstance(config.get("model_args"), dict) else {}
    name = str(config.get("architecture") or "") or None
    entry = entry_for_path(weights)  # a catalogue model: its preprocessing, unless config.json says otherwise
    if name is None and entry is not None:
        name = entry.timm_name
    heads = num_heads if num_heads is not None else model_args.get("num_heads")
    if (
        img_size is None
        and isinstance(pretrained.get("input_size"), (list, tuple))
        and len(pretrained["input_size"]) == 3
    ):
        img_size = tuple(int(v) for v in pretrained["input_size"][1:])
    elif img_size is None and model_args.get("img_size") is not None:
        img_size = model_args["img_size"]
    cfg = config_from_timm_state_dict(
        tensors, heads, img_size, model_name=name or weights.name, global_pool=config.get("global_pool")
    )
    prep = entry.preprocessing() if entry is not None else {}
    prep.update(_timm_preprocessing(pretrained))
    cfg = _with(cfg, **prep)
    if cfg.num_classes and config.get("num_classes") not in (None, cfg.num_classes):
        raise CheckpointError(
            f"{weights.name}: config.json says {config['num_classes']} classes but the head has {cfg.num_classes}."
        )
    class_names = _timm_class_names(
        config.get("label_names"), cfg.num_classes, weights.name, config.get("label_descriptions")
    )
    cfg.name = _display_name(name, weights)
    cfg.extra = {
        "format": "timm",
        "source": str(weights),
        "num_heads_from": "argument"
        if num_heads is not None
        else ("config" if "num_heads" in model_args else "inferred"),
    }
    model = _unfilled_model(cfg, class_names, tensors, weights.name)
    load_weights(model, tensors, weights.name)
    return model.eval()


def _timm_preprocessing(pretrained: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(pretrained.get("mean"), (list, tuple)):
        out["mean"] = tuple(float(v) for v in pretrained["mean"])
    if isinstance(pretrained.get("std"), (list, tuple)):
        out["std"] = tuple(float(v) for v in pretrained["std"])
    if pretrained.get("interpolation") in ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"):
        out["interpolation"] = pretrained["interpolation"]
    if isinstance(pretrained.get("crop_pct"), (int, float)) and 0 < pretrained["crop_pct"] <= 1:
        out["crop_pct"] = float(pretrained["crop_pct"])
    if pretrained.get("crop_mode") in ("center", "squash"):
        out["crop_mode"] = pretrained["crop_mode"]
    return out


def _timm_class_names(label_names: Any, num_classes: int, source: str, descriptions: Any = None) -> list[str] | None:
    """Class names for a timm model: its config's `label_names` (WordNet ids such as
    "n01440764" are replaced by their `label_descriptions`, or by our ImageNet-1k names),
    else the ImageNet-1k names for a 1000-class head."""
    if num_classes == 0:
        return None
    if isinstance(label_names, dict):
        label_names = [label_names.get(str(i), label_names.get(i)) for i in range(num_classes)]
    if isinstance(label_names, (list, tuple)) and label_names:
        if len(label_names) != num_classes or any(n is None for n in label_names):
            raise CheckpointError(
                f"{source}: config.json lists {len(label_names)} labels but the head has {num_classes}."
            )
        names = [str(n) for n in label_names]
        if all(re.fullmatch(r"n\d{8}", n) for n in names):
            if isinstance(descriptions, dict) and all(n in descriptions for n in names):
                return [str(descriptions[n]).split(",")[0].strip() for n in names]
            if num_classes == 1000:
                return imagenet_class_names()
        return names
    if num_classes == 1000:
        return imagenet_class_names()
    return None


def _display_name(name: str | None, weights: Path) -> str:
    if name:
        return name
    stem = weights.parent.name if weights.stem in ("model", "pytorch_model") else weights.stem
    return stem or "vit"


def _with(cfg: ViTConfig, **changes: Any) -> ViTConfig:
    d = cfg.to_dict()
    d.update(changes)
    try:
        return ViTConfig.from_dict(d)
    except ValueError as e:
        raise CheckpointError(f"The checkpoint's settings are not usable: {e}.") from None


# ----------------------------------------------------------------------------------------------
# Hugging Face transformers

_HF_MODEL_TYPES = ("vit", "deit")
_HF_LAYER = r"(?:encoder\.layer|layers)\.(\d+)\."
_HF_RENAMES = (
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.distillation_token", "dist_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (_HF_LAYER + r"attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_HF_LAYER + r"attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_HF_LAYER + r"intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_HF_LAYER + r"output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (_HF_LAYER + r"mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (_HF_LAYER + r"layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (_HF_LAYER + r"layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
    (r"cls_classifier\.(weight|bias)", r"head.\1"),
    (r"distillation_classifier\.(weight|bias)", r"head_dist.\1"),
)
_HF_QKV = re.compile(_HF_LAYER + r"attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)")
# Weights a classifier never uses: masked-image-modelling token, the BERT-style pooler, and an
# index buffer some older files carry.
_HF_UNUSED = re.compile(r"(embeddings\.mask_token|embeddings\.position_ids|pooler\.dense\.(weight|bias))")


def _is_hf_state_dict(tensors: dict[str, Tensor]) -> bool:
    return any("embeddings.patch_embeddings.projection" in k for k in tensors)


def timm_state_dict_from_hf(tensors: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Rename a transformers ViT/DeiT state dict to timm's names; query/key/value -> fused qkv.

    Raises:
        CheckpointError: a key that has no place in a plain ViT, or an incomplete q/k/v set.
    """
    prefix = next((p for p in ("vit.", "deit.") if any(k.startswith(p) for k in tensors)), "")
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    unknown = []
    for key, value in tensors.items():
        k = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        if _HF_UNUSED.fullmatch(k):
            continue
        if m := _HF_QKV.fullmatch(k):
            layer, part, kind = int(m.group(1)), (m.group(2) or m.group(3))[0], m.group(4)
            qkv.setdefault((layer, kind), {})[part] = value
            continue
        for pattern, repl in _HF_RENAMES:
            if re.fullmatch(pattern, k):
                out[re.sub(pattern, repl, k)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source} does not fit a plain ViT: unexpected keys {_few(sorted(unknown))}.")
    for (layer, kind), parts in sorted(qkv.items()):
        lost = [p for p in "qkv" if p not in parts]
        if lost:
            names = {"q": "query", "k": "key", "v": "value"}
            raise CheckpointError(
                f"{source} does not fit this ViT: missing keys "
                + ", ".join(f"layer {layer} attention {names[p]}.{kind}" for p in lost)
                + "."
            )
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _load_hf(
    tensors: dict[str, Tensor],
    config: dict[str, Any],
    preprocessor: dict[str, Any] | None,
    num_heads: int | None,
    weights: Path,
) -> VisionTransformer:
    """A transformers ViT/DeiT folder -> our model, checked against its config.json."""
    source = weights.name
    model_type = config.get("model_type")
    if model_type not in _HF_MODEL_TYPES:
        raise CheckpointError(
            f"config.json describes a {model_type!r} model; vit_core reads Hugging Face ViT and DeiT models "
            f"({', '.join(_HF_MODEL_TYPES)})."
        )
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"config.json uses the {act!r} activation; vit_core's ViT uses exact GELU ('gelu').")
    sd = timm_state_dict_from_hf(tensors, source)
    try:
        D = int(config["hidden_size"])
        depth = int(config["num_hidden_layers"])
        heads = int(num_heads if num_heads is not None else config["num_attention_heads"])
        hidden = int(config.get("intermediate_size", 4 * D))
        patch = config.get("patch_size", 16)
        image = config.get("image_size", 224)
        in_chans = int(config.get("num_channels", 3))
        eps = float(config.get("layer_norm_eps", 1e-12))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"config.json lacks or garbles a ViT setting ({e}).") from None
    patch = _pair_of(patch, "patch_size")
    if patch[0] != patch[1]:
        raise CheckpointError(f"config.json: non-square patches {patch} are not supported.")
    P = patch[0]
    H, W = _pair_of(image, "image_size")
    if H % P or W % P:
        raise CheckpointError(f"config.json: image_size {H}x{W} is not a multiple of patch_size {P}.")
    # The config must agree with the weights it came with.
    checks = [
        ("hidden_size", D, sd.get("patch_embed.proj.weight"), 0),
        ("patch_size", P, sd.get("patch_embed.proj.weight"), 3),
        ("num_channels", in_chans, sd.get("patch_embed.proj.weight"), 1),
        ("intermediate_size", hidden, sd.get("blocks.0.mlp.fc1.weight"), 0),
    ]
    for field, value, t, dim in checks:
        if t is not None and t.dim() > dim and t.shape[dim] != value:
            raise CheckpointError(f"{source}: config.json says {field}={value} but the weights have {t.shape[dim]}.")
    n_blocks = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    if n_blocks != depth:
        raise CheckpointError(f"{source}: config.json says {depth} layers but the weights have {n_blocks}.")
    distill = "dist_token" in sd
    k = 1 + int(distill)
    pos = sd.get("pos_embed")
    if pos is not None and pos.dim() == 3 and pos.shape[1] != (H // P) * (W // P) + k:
        raise CheckpointError(
            f"{source}: config.json's image_size {H}x{W} with {P}-pixel patches needs {(H // P) * (W // P) + k} "
            f"position embeddings but the weights have {pos.shape[1]}. The config does not belong to these weights."
        )
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    class_names = None
    id2label = config.get("id2label")
    if num_classes and isinstance(id2label, dict) and id2label:
        try:
            labels = {int(i): str(v) for i, v in id2label.items()}
        except ValueError:
            raise CheckpointError(f"{source}: config.json's id2label has non-integer ids.") from None
        if sorted(labels) != list(range(num_classes)):
            raise CheckpointError(
                f"{source}: config.json's id2label has {len(labels)} classes but the classifier has {num_classes}."
            )
        class_names = [labels[i] for i in range(num_classes)]
    if D % heads:
        raise CheckpointError(f"{source}: {heads} heads do not divide hidden_size {D}.")
    cfg = ViTConfig(
        img_size=(H, W),
        patch_size=P,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=D,
        depth=depth,
        num_heads=heads,
        mlp_ratio=hidden / D,
        qkv_bias=bool(config.get("qkv_bias", True)),
        class_token=True,
        distill_token=distill,
        global_pool="token",
        fc_norm=False,
        layer_norm_eps=eps,
        name=str(config.get("_name_or_path") or weights.parent.name or "vit"),
    )
    cfg = _with(cfg, **hf_preprocessing(preprocessor, (H, W)))
    cfg.extra = {"format": "huggingface", "model_type": model_type, "source": str(weights)}
    model = _unfilled_model(cfg, class_names, sd, source)
    load_weights(model, sd, source)
    return model.eval()


def hf_preprocessing(preprocessor: dict[str, Any] | None, img_size: tuple[int, int]) -> dict[str, Any]:
    """Our preprocessing fields from a transformers `preprocessor_config.json`.

    Without one: the ViTImageProcessor defaults (squash to the input size, bilinear,
    mean = std = 0.5). `size` {"height", "width"} squashes, {"shortest_edge"} keeps the
    aspect ratio; a `crop_size` after it becomes `crop_pct`.
    """
    out: dict[str, Any] = {
        "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    if not preprocessor:
        return out
    if isinstance(preprocessor.get("image_mean"), (list, tuple)):
        out["mean"] = tuple(float(v) for v in preprocessor["image_mean"])
    if isinstance(preprocessor.get("image_std"), (list, tuple)):
        out["std"] = tuple(float(v) for v in preprocessor["image_std"])
    if not preprocessor.get("do_normalize", True):
        out["mean"], out["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
    if preprocessor.get("resample") in resample:
        out["interpolation"] = resample[preprocessor["resample"]]
    size = preprocessor.get("size")
    if isinstance(size, int):
        size = {"height": size, "width": size}
    crop = preprocessor.get("crop_size") if preprocessor.get("do_center_crop") else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if isinstance(size, dict) and "shortest_edge" in size:
        out["crop_mode"] = "center"
        side = float(size["shortest_edge"])
        target = float(crop["height"]) if isinstance(crop, dict) and "height" in crop else float(min(img_size))
        out["crop_pct"] = min(1.0, target / side)
    elif isinstance(size, dict) and "height" in size:
        out["crop_mode"] = "squash"
        if isinstance(crop, dict) and "height" in crop:
            out["crop_pct"] = min(1.0, float(crop["height"]) / float(size["height"]))
    return out


def _pair_of(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, (int, float)):
        return int(v), int(v)
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return int(v[0]), int(v[1])
    raise CheckpointError(f"config.json: {name}={v!r} is neither a number nor a pair.")
