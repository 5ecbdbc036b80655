"""Image datasets in memory: `ImageDataset` and the two readers that fill it.

An `ImageDataset` holds images `(N, C, H, W)` uint8 and labels `(N,)` int64. It is read from

* the extracted official CIFAR-10 folder `cifar-10-batches-py/` (`load_cifar10_batches`, through
  the restricted unpickler of `vit_core.fetch`), or
* an image folder `<root>/<split>/<class>/*.jpg|png` (`load_image_folder`), decoded once and
  cached as an `.npz` so a second load takes a fraction of a second.

Which one a path is (an archive, a folder, the download cache) is decided in `vit_core.sources`;
what happens to a batch on the training device is in `vit_core.batches`.

Errors a user can meet (truncated batch, empty or unbalanced folder, unreadable image) are
`DataError`s with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import DataError
from .fetch import (
    CIFAR10_TEST_BATCHES,
    CIFAR10_TRAIN_BATCHES,
    read_cifar_batch,
    read_cifar_meta,
    resolve_cache_dir,
)
from .fileio import atomic_write
from .limits import Limits, current_limits

ProgressFn = Callable[[int, int], None]  # (images decoded, images in the split)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_FOLDER_CACHE_VERSION = 1


@dataclass
class ImageDataset:
    """Images and labels held in memory.

    Attributes:
        images: (N, C, H, W) uint8, RGB, values 0-255.
        labels: (N,) int64 class indices into `class_names`.
        class_names: one name per class.
        source: where the data came from, for provenance notes.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.labels.shape[0]} labels for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def class_counts(self) -> list[int]:
        """Images per class, in `class_names` order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices: Tensor | list[int] | slice) -> ImageDataset:
        """A dataset of the selected images (a view where indexing allows one)."""
        if isinstance(indices, list):
            indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[indices], self.labels[indices], list(self.class_names), self.source)


# --------------------------------------------------------------------------------------
# The official batches
# --------------------------------------------------------------------------------------


def load_cifar10_batches(folder: str | os.PathLike, split: str = "train") -> ImageDataset:
    """Read the extracted official folder (`data_batch_1` ... `test_batch`, `batches.meta`).

    Raises:
        DataError: a batch is missing, truncated or damaged.
    """
    folder = Path(folder)
    names = _split_batches(split)
    imgs, labs = [], []
    for n in names:
        p = folder / n
        if not p.is_file():
            raise DataError(f"{folder} has no {n}: the CIFAR-10 folder is incomplete. Extract the archive again.")
        x, y = read_cifar_batch(p.read_bytes(), n)
        imgs.append(x)
        labs.append(y)
    return ImageDataset(
        torch.from_numpy(np.concatenate(imgs)),
        torch.from_numpy(np.concatenate(labs)),
        read_cifar_meta(folder),
        f"CIFAR-10 official batches ({folder}, {split})",
    )


def _split_batches(split: str) -> tuple[str, ...]:
    if split == "train":
        return CIFAR10_TRAIN_BATCHES
    if split == "test":
        return CIFAR10_TEST_BATCHES
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


def list_image_folder(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    """The class sub-folders of `split_dir` (sorted) and, for each, its image files (sorted)."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [
        sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for c in classes
    ]
    return classes, files


def load_image_folder(
    root: str | os.PathLike,
    split: str = "train",
    class_names: list[str] | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    max_imbalance: float = 10.0,
    limits: Limits | None = None,
    max_side: int | None = None,
    progress: ProgressFn | None = None,
) -> ImageDataset:
    """Read `<root>/<split>/<class>/*.jpg|png` into memory, cached as an `.npz` after the first read.

    Args:
        root: the folder holding one sub-folder per split.
        split: the sub-folder to read ("train", "test", ...).
        class_names: the classes in label order; default: the sorted sub-folder names. Another
            split's class list can be passed so that labels agree between splits.
        image_size: resize every image to this square size (bicubic); default: all images
            must have the size of the first one.
        cache_dir: where the decoded `.npz` is kept; default `default_cache_dir()`.
        use_cache: read and write the decoded cache (keyed by the files' names, sizes and
            modification times, so a changed folder is decoded again).
        max_imbalance: refuse folders whose largest class has more than this many times the
            images of the smallest.
        limits: the server's caps (default `current_limits()`): at most `max_dataset_images`
            images, counted from the file names, and at most `max_dataset_image_pixels` per
            image, read from each file's header before it is decoded.
        max_side: also refuse images wider or taller than this (a training run's cap).
        progress: called as `progress(images decoded, images)` while decoding.

    Raises:
        DataError: missing or empty folder or class, unreadable image, mixed sizes, a class
            imbalance above `max_imbalance`, classes that do not match `class_names`, or more
            images or pixels than the limits allow (before any image is decoded).
    """
    lim = current_limits() if limits is None else limits
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist: expected <root>/{split}/<class>/*.jpg.")
    found, files = list_image_folder(split_dir)
    if not found:
        raise DataError(f"{split_dir} has no class folders: expected {split}/<class>/*.jpg.")
    by_class = dict(zip(found, files))
    if class_names is None:
        class_names = found
    else:
        extra = sorted(set(found) - set(class_names))
        if extra:
            raise DataError(f"{split_dir} has classes {extra} that are not among {list(class_names)}.")
    counts = [len(by_class.get(c, [])) for c in class_names]
    empty = [c for c, n in zip(class_names, counts) if n == 0]
    if empty:
        raise DataError(f"{split_dir}: no .jpg/.png images for class(es) {empty}. Every class needs images.")
    if max(counts) > max_imbalance * min(counts):
        detail = ", ".join(f"{c}: {n}" for c, n in zip(class_names, counts))
        raise DataError(
            f"{split_dir} is unbalanced ({detail}): the largest class has more than {max_imbalance:g}x the "
            "images of the smallest. Add images to the small classes or remove some from the large ones."
        )
    paths = [p for c in class_names for p in by_class[c]]
    if len(paths) > lim.max_dataset_images:
        raise DataError(
            f"{split_dir} has {len(paths):,} images; this server reads at most {lim.max_dataset_images:,} "
            "(VIT_EXPLORER_MAX_DATASET_IMAGES). Use fewer images."
        )
    labels = np.repeat(np.arange(len(class_names), dtype=np.int64), counts)

    key = hashlib.sha1(usedforsecurity=False)
    key.update(f"v{_FOLDER_CACHE_VERSION}|{split_dir.resolve()}|{image_size}|{list(class_names)}".encode())
    for p in paths:
        st = p.stat()
        key.update(f"|{p.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache_file = resolve_cache_dir(cache_dir) / "folders" / f"{split_dir.name}-{key.hexdigest()[:16]}.npz"
    source = f"image folder {split_dir}"
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                images = z["images"]
                if images.shape[0] == len(paths):
                    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), list(class_names), source)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache is decoded again below and overwritten

    images = _decode_images(paths, image_size, lim.max_dataset_image_pixels, max_side, progress)
    if use_cache:
        _save_npz_atomic(cache_file, images=images)
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), list(class_names), source)


def _decode_images(
    paths: list[Path],
    image_size: int | None,
    max_pixels: int,
    max_side: int | None = None,
    progress: ProgressFn | None = None,
) -> np.ndarray:
    size: tuple[int, int] | None = (image_size, image_size) if image_size else None
    out: np.ndarray | None = None
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                _check_header(p, im.size, max_pixels, max_side)  # from the header: nothing decoded yet
                im = im.convert("RGB")
                if size is None:
                    size = im.size
                if im.size != size:
                    if image_size is None:
                        raise DataError(
                            f"{p} is {im.size[0]}x{im.size[1]} but earlier images are {size[0]}x{size[1]}; "
                            "pass image_size to resize them all."
                        )
                    im = im.resize(size, Image.Resampling.BICUBIC)
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{p} is not a readable image ({e}). Remove or replace it.") from None
        if out is None:
            out = np.empty((len(paths), 3, arr.shape[0], arr.shape[1]), dtype=np.uint8)
        out[i] = arr.transpose(2, 0, 1)
        if progress is not None and (i % 500 == 0 or i + 1 == len(paths)):
            progress(i + 1, len(paths))
    assert out is not None
    return out


def _check_header(p: Path, size: tuple[int, int], max_pixels: int, max_side: int | None) -> None:
    w, h = size
    if w * h > max_pixels:
        raise DataError(
            f"{p.name} is {w}x{h} pixels; this server reads training images of at most {max_pixels:,} pixels "
            "(VIT_EXPLORER_MAX_DATASET_IMAGE_PIXELS). Use smaller images, such as CIFAR-10's 32x32."
        )
    if max_side is not None and max(w, h) > max_side:
        raise DataError(
            f"{p.name} is {w}x{h} pixels; this server trains on images of at most {max_side}x{max_side} "
            "(VIT_EXPLORER_MAX_TRAIN_IMG_SIZE). Use smaller images, such as CIFAR-10's 32x32."
        )


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError:
        pass  # a cache that cannot be written only costs the next load some time
