"""The one way images come in, and the one way they become a model's input tensor."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .config import ViTConfig
from .errors import ImageError

if TYPE_CHECKING:
    from .model import VisionTransformer

MAX_PIXELS = 40_000_000  # larger than any phone photo; a "decompression bomb" is refused
MAX_BYTES = 50 * 1024 * 1024
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def load_image(source: str | os.PathLike | bytes | IO[bytes]) -> Image.Image:
    """Open an image as an upright RGB `PIL.Image`.

    EXIF orientation is applied, transparency is composited on white, 16-bit and CMYK are
    converted, and an animated image gives its first frame.

    Raises:
        ImageError: empty, not an image, truncated, or over `MAX_PIXELS` pixels.
    """
    data = _read_bytes(source)
    if not data:
        raise ImageError("The file is empty.")
    if len(data) > MAX_BYTES:
        raise ImageError(f"The file is {len(data) / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageError(
                    f"The image is {w}x{h} pixels ({w * h / 1e6:.0f} MP); the limit is {MAX_PIXELS / 1e6:.0f} MP."
                )
            if w < 1 or h < 1:
                raise ImageError("The image has no pixels.")
            img.seek(0)  # first frame of an animation
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"The image is too large to open safely ({e}).") from None
    except UnidentifiedImageError:
        raise ImageError("This is not an image file Pillow can read (png, jpg, webp, bmp, gif, tiff).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"The image file is damaged or truncated ({str(e)[:80]}).") from None


def _read_bytes(source: str | os.PathLike | bytes | IO[bytes]) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            size = os.path.getsize(source)
            if size > MAX_BYTES:
                raise ImageError(f"The file is {size / 2**20:.0f} MB; the limit is {MAX_BYTES // 2**20} MB.")
            with open(source, "rb") as f:
                return f.read()
        except OSError as e:
            raise ImageError(f"Cannot read {os.fspath(source)!r}: {e.strerror or e}.") from None
    if hasattr(source, "read"):
        if hasattr(source, "seek"):
            source.seek(0)
        return source.read(MAX_BYTES + 1)
    raise TypeError(f"load_image takes a path, bytes or a file object, not {type(source).__name__}")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


@dataclass
class PreprocessSteps:
    """The stages between a user's image and the model input, for display."""

    original: Image.Image  # upright RGB as loaded
    crop_box: tuple[float, float, float, float]  # (left, top, right, bottom) in original pixels
    resized: Image.Image  # the cropped region resized to the model's input size
    tensor: torch.Tensor  # (1, C, H, W) normalised with the model's mean and std


def preprocess_steps(image: Image.Image, cfg: ViTConfig) -> PreprocessSteps:
    """timm-style eval transform: resize the shorter side to img_size / crop_pct, centre-crop
    img_size, scale to [0, 1], normalise. The crop is taken in original coordinates and resized
    once, so a 10000x10 image never becomes a huge intermediate."""
    H, W = cfg.img_size
    w, h = image.size
    # Scale so that the crop (H, W) is crop_pct of the resized shorter side.
    scale = max(H / cfg.crop_pct / h, W / cfg.crop_pct / w)
    crop_w, crop_h = W / scale, H / scale  # crop size in original pixels
    left, top = (w - crop_w) / 2, (h - crop_h) / 2
    box = (left, top, left + crop_w, top + crop_h)
    resample = _RESAMPLE.get(cfg.interpolation, Image.Resampling.BICUBIC)
    resized = image.convert("RGB").resize((W, H), resample=resample, box=box)
    arr = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()) / 255.0  # (H, W, C)
    mean = torch.tensor(cfg.mean).view(1, 1, -1)
    std = torch.tensor(cfg.std).view(1, 1, -1)
    tensor = ((arr - mean) / std).permute(2, 0, 1).unsqueeze(0).contiguous()
    if cfg.in_chans == 1:
        tensor = tensor.mean(dim=1, keepdim=True)
    return PreprocessSteps(original=image, crop_box=box, resized=resized, tensor=tensor)


def preprocess(image: Image.Image, model: VisionTransformer | ViTConfig) -> torch.Tensor:
    """A loaded image -> the (1, C, H, W) tensor the model expects."""
    cfg = model if isinstance(model, ViTConfig) else model.cfg
    return preprocess_steps(image, cfg).tensor


def denormalize(tensor: torch.Tensor, cfg: ViTConfig) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) model input -> (H, W, C) float image in [0, 1] for display."""
    t = tensor[0] if tensor.dim() == 4 else tensor
    mean = torch.tensor(cfg.mean[: t.shape[0]]).view(-1, 1, 1)
    std = torch.tensor(cfg.std[: t.shape[0]]).view(-1, 1, 1)
    return (t * std + mean).clamp(0, 1).permute(1, 2, 0).cpu().numpy()


# Truncated files must fail loudly, never load half an image silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
