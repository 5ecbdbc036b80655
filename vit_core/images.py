"""The one way images come in, and the one way they become a model's input tensor."""

from __future__ import annotations

import io
import math
import os
import struct
import warnings
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .config import ViTConfig
from .errors import ImageError
from .limits import current_limits

if TYPE_CHECKING:
    from .model import VisionTransformer

MAX_PIXELS = 40_000_000  # larger than any phone photo; a "decompression bomb" is refused (limits may lower it)
MAX_BYTES = 50 * 1024 * 1024
_MAX_INTERMEDIATE_PIXELS = 16_000_000  # above this, resample the crop straight from the original
_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def load_image(source: str | os.PathLike | bytes | IO[bytes]) -> Image.Image:
    """Open an image as an upright RGB `PIL.Image`.

    EXIF orientation is applied, transparency is composited on white, 16-bit and CMYK are
    converted, and an animated image gives its first frame.

    Raises:
        ImageError: empty, not an image, truncated, or over the pixel limit (`MAX_PIXELS`, or the
            server's `max_image_pixels` if lower), checked from the header before decoding.
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
            cap = min(MAX_PIXELS, current_limits().max_image_pixels)
            if w * h > cap:
                raise ImageError(
                    f"The image is {w}x{h} pixels ({w * h / 1e6:.0f} MP); the limit is {cap / 1e6:.0f} MP. "
                    "Make it smaller and try again."
                )
            if w < 1 or h < 1:
                raise ImageError("The image has no pixels.")
            img.seek(0)  # first frame of an animation
            img.load()
            img = _upright(img)
            return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            "The image is too large to open safely (a possible decompression bomb); the limit is "
            f"{min(MAX_PIXELS, current_limits().max_image_pixels) / 1e6:.0f} MP."
        ) from None
    except UnidentifiedImageError:
        raise ImageError("This is not an image file Pillow can read (png, jpg, webp, bmp, gif, tiff).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"The image file is damaged or truncated ({str(e)[:80]}).") from None


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; an unreadable EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return img


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
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = Image.fromarray(_gray_to_uint8(np.asarray(img)))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    try:
        return img.convert("RGB")
    except ValueError:
        raise ImageError(f"Images in the {img.mode} colour mode are not supported; save it as RGB.") from None


def _gray_to_uint8(arr: np.ndarray) -> np.ndarray:
    """A high-bit-depth grey image (h, w) -> uint8, keeping absolute brightness where the range
    is known (8- or 16-bit integers, floats in [0, 1]) and stretching min..max otherwise."""
    a = arr.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if arr.dtype.kind == "f":
        scale, offset = (255.0, 0.0) if 0.0 <= lo and hi <= 1.0 else (None, lo)
    elif arr.dtype == np.uint16 or (lo >= 0 and 255 < hi <= 65535):
        scale, offset = 255.0 / 65535.0, 0.0
    elif lo >= 0 and hi <= 255:
        scale, offset = 1.0, 0.0
    else:
        scale, offset = None, lo
    if scale is None:
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.round((a - offset) * scale), 0, 255).astype(np.uint8)


@dataclass
class PreprocessSteps:
    """The stages between a user's image and the model input, for display."""

    original: Image.Image  # upright RGB as loaded
    crop_box: tuple[float, float, float, float]  # (left, top, right, bottom) in original pixels
    resized: Image.Image  # the cropped region resized to the model's input size
    tensor: torch.Tensor  # (1, C, H, W) normalised with the model's mean and std


def resize_and_crop_plan(size: tuple[int, int], cfg: ViTConfig) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Where timm's eval transform resizes an image of `size` (w, h) to, and what it crops.

    timm: `scale = floor(img_size / crop_pct)`; "center" resizes the shorter side to `scale`
    (torchvision `Resize(int)`, or `ResizeKeepRatio` for a non-square input) and "squash"
    resizes both sides to `scale`; then `CenterCrop(img_size)`.

    Returns:
        (rw, rh): the resized image size; (left, top, right, bottom): the crop in it, in pixels.
    """
    w, h = size
    H, W = cfg.img_size
    sh, sw = math.floor(H / cfg.crop_pct), math.floor(W / cfg.crop_pct)
    if cfg.crop_mode == "squash":
        rw, rh = sw, sh
    elif sh == sw:  # torchvision Resize(int): shorter side to `sh`, longer side truncated
        if w <= h:
            rw, rh = sh, int(sh * h / w)
        else:
            rw, rh = int(sh * w / h), sh
    else:  # timm ResizeKeepRatio: the side that is relatively shorter reaches its target
        ratio = min(h / sh, w / sw)
        rw, rh = round(w / ratio), round(h / ratio)
    top, left = int(round((rh - H) / 2.0)), int(round((rw - W) / 2.0))
    return (rw, rh), (left, top, left + W, top + H)


def preprocess_steps(image: Image.Image, cfg: ViTConfig) -> PreprocessSteps:
    """timm's eval transform: resize (`crop_mode`, `crop_pct`, `interpolation`), center-crop
    `img_size`, scale to [0, 1], normalise with `mean` and `std`.

    The result equals timm/torchvision's (resize the whole image, then crop). When that
    intermediate would be huge (a 10000x10 strip), the crop is resampled straight from the
    original instead, which agrees to a grey level or two.
    """
    H, W = cfg.img_size
    w, h = image.size
    (rw, rh), (left, top, right, bottom) = resize_and_crop_plan((w, h), cfg)
    box = (left * w / rw, top * h / rh, right * w / rw, bottom * h / rh)  # in original pixels
    resample = _RESAMPLE[cfg.interpolation]
    image = image.convert("RGB")
    if rw * rh <= _MAX_INTERMEDIATE_PIXELS:
        resized = image.resize((rw, rh), resample=resample).crop((left, top, right, bottom))
    else:
        resized = image.resize((W, H), resample=resample, box=box)
    arr = torch.from_numpy(np.asarray(resized, dtype=np.float32).copy()) / 255.0  # (H, W, C)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 1, -1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 1, -1)
    tensor = ((arr - mean) / std).permute(2, 0, 1).unsqueeze(0).contiguous()  # (1, 3, H, W)
    if cfg.in_chans == 1:
        tensor = tensor.mean(dim=1, keepdim=True)
    return PreprocessSteps(original=image, crop_box=box, resized=resized, tensor=tensor)


def preprocess(image: Image.Image, model: VisionTransformer | ViTConfig) -> torch.Tensor:
    """A loaded image -> the (1, C, H, W) tensor the model (or config) expects."""
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
