"""CIFAR-10 and image folders as uint8 tensors in memory, with batch-wise augmentation.

Three sources give the same `ImageDataset` (images `(N, C, H, W)` uint8, labels `(N,)` int64):

* the official "python version" archive `cifar-10-python.tar.gz` (Krizhevsky 2009), downloaded
  on request into a cache folder (`download_cifar10`), MD5-checked, written atomically and
  extracted safely;
* a local copy of that archive, or of its extracted folder `cifar-10-batches-py/`;
* an image folder `<root>/<split>/<class>/*.jpg|png` (`load_image_folder`), decoded once and
  cached as an `.npz` so a second load takes a fraction of a second.

`load_cifar10(source, split)` picks the reader from what `source` is. Augmentation
(`augment_batch`: random crop with zero padding, horizontal flip) and normalisation
(`normalize_batch`) work on whole batches of tensors on the training device, so data loading
costs a gather per step instead of a Python loop over images.

The official batches are Python pickles. Unpickling runs whatever functions the file names,
so a tampered download could run code; they are read with a restricted unpickler that only
builds dicts, lists, bytes, strings, ints and plain numpy arrays (`read_cifar_batch`), and
never with `pickle.load`.

Errors a user can meet (no network, checksum mismatch, truncated batch, empty or unbalanced
folder) are `DataError`s with a message that says what to do. Nothing half-written is used:
downloads and caches go to a temporary name and are renamed into place when complete, and
archives are extracted into a temporary folder that is renamed when extraction has finished.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .config import CIFAR10_CLASSES
from .errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the CIFAR page beside the link
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
CACHE_ENV = "VIT_EXPLORER_DATA"  # environment variable that overrides the cache folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_FOLDER_CACHE_VERSION = 1

ProgressFn = Callable[[int, int], None]  # (bytes_done, bytes_total); total is 0 when unknown


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
# Where data lives
# --------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The folder datasets are downloaded and cached in.

    `$VIT_EXPLORER_DATA` if set, else `$XDG_CACHE_HOME/vit-explorer` (Linux), `~/Library/Caches/
    vit-explorer` (macOS) or `%LOCALAPPDATA%/vit-explorer` (Windows).
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vit-explorer"


def _resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


# --------------------------------------------------------------------------------------
# Download, checksum, safe extraction
# --------------------------------------------------------------------------------------


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    progress: ProgressFn | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download `url` to `dest` atomically, checking the MD5 while the bytes arrive.

    The bytes go to a temporary file beside `dest`, which is renamed to `dest` only when the
    download is complete and its checksum matches; on any failure it is removed.

    Args:
        url: http(s) or file URL.
        dest: final path.
        md5: expected hex digest, or None to skip the check.
        progress: called as `progress(bytes_done, bytes_total)` after each chunk
            (`bytes_total` is 0 if the server does not say).
        timeout: seconds to wait for the connection and for each read.

    Raises:
        DataError: no network, an HTTP error, an interrupted transfer or a checksum mismatch.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    h = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (the URL is ours or the user's)
            except urllib.error.HTTPError as e:
                raise DataError(f"Could not download {url}: the server answered {e.code} {e.reason}.") from None
            except (TimeoutError, urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise DataError(
                    f"Could not reach {url} ({reason}). Check the network connection, or download the "
                    f"file elsewhere and pass its path (or put it in {dest.parent})."
                ) from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                if progress:
                    progress(0, total)
                while True:
                    try:
                        block = resp.read(1 << 16)
                    except (TimeoutError, OSError) as e:
                        raise DataError(
                            f"The download of {url} broke off after {done} bytes ({e}). Try again."
                        ) from None
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
            if total and done != total:
                raise DataError(f"The download of {url} stopped at {done} of {total} bytes. Try again.")
        if md5 is not None and h.hexdigest() != md5.lower():
            raise DataError(
                f"The file downloaded from {url} has MD5 {h.hexdigest()}, not the published {md5}: "
                "it is damaged or not the official file. It was deleted; try again."
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, dest)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return dest


def download_cifar10(
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    url: str = CIFAR10_URL,
) -> Path:
    """The official CIFAR-10 python archive in `cache_dir`, downloaded if it is not there yet.

    An archive already in the cache is re-checked against the published MD5 and downloaded
    again if it does not match.

    Returns:
        Path of `cifar-10-python.tar.gz` in the cache folder.

    Raises:
        DataError: no network, HTTP error or checksum mismatch.
    """
    cache = _resolve_cache_dir(cache_dir)
    archive = cache / CIFAR10_ARCHIVE
    if archive.is_file() and file_md5(archive) == CIFAR10_MD5:
        return archive
    return download_file(url, archive, md5=CIFAR10_MD5, progress=progress)


def extract_tar_safely(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar archive into the folder `dest`, refusing anything that could escape it.

    Only regular files and folders are accepted; absolute names, `..` components, symbolic
    and hard links and device files raise a `DataError`. Extraction happens in a temporary
    folder beside `dest` that is renamed to `dest` at the end, so an interrupted extraction
    never leaves a partial `dest`. An existing `dest` is replaced.

    Raises:
        DataError: unreadable archive or an unsafe member.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
                root = tmp.resolve()
                for m in members:
                    _check_member(m, root)
                for m in members:
                    if m.isdir():
                        (root / m.name).mkdir(parents=True, exist_ok=True)
                        continue
                    target = root / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    if src is None:  # pragma: no cover - regular files always have data
                        raise DataError(f"{Path(archive).name}: member {m.name!r} has no data.")
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(f"{Path(archive).name} is not a readable tar archive (truncated or damaged): {e}") from None
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _check_member(m: tarfile.TarInfo, root: Path) -> None:
    if not (m.isfile() or m.isdir()):
        kind = "link" if (m.issym() or m.islnk()) else "special file"
        raise DataError(f"The archive contains a {kind} ({m.name!r}); refusing to extract it.")
    name = m.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in Path(name).parts:
        raise DataError(f"The archive member {name!r} would be written outside the target folder; refusing.")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise DataError(f"The archive member {name!r} would be written outside the target folder; refusing.")


# --------------------------------------------------------------------------------------
# The official pickled batches, read without running arbitrary pickles
# --------------------------------------------------------------------------------------


def _safe_reconstruct(subtype: type, shape: tuple, dtype: object) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to build an array of type {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _safe_dtype(spec: object, align: bool = False, copy: bool = False) -> np.dtype:
    dt = np.dtype(spec, align, copy)
    if dt.hasobject:
        raise pickle.UnpicklingError("refusing an object array")
    return dt


def _safe_frombuffer(buf: bytes, dtype: object, shape: tuple, order: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise pickle.UnpicklingError("refusing an object array")
    return np.frombuffer(buf, dtype=dt).reshape(shape, order=order).copy()


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes at pickle protocol 2 as _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return text.encode("latin1")


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can only build the things a CIFAR batch holds.

    A pickle is a program: `pickle.load` on a file from the network would import and call
    whatever the file names (`os.system` included). The official batches contain only a dict
    of bytes, strings, ints, lists and one uint8 numpy array, so every global other than
    numpy's array and dtype reconstruction (and the latin-1 decoding Python 3 uses for bytes
    at protocol 2) is refused, and those are wrapped to refuse object arrays.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _safe_dtype,
        ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def read_cifar_batch(data: bytes, name: str = "batch") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one official CIFAR-10 batch (the pickled bytes of the file).

    Returns:
        images (n, 3, 32, 32) uint8 and labels (n,) int64.

    Raises:
        DataError: truncated or damaged, or not a CIFAR-10 batch.
    """
    try:
        d = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(
            f"{name} is truncated or damaged ({type(e).__name__}: {e}). Download the archive again."
        ) from None
    if not isinstance(d, dict):
        raise DataError(f"{name} is not a CIFAR-10 batch (it holds a {type(d).__name__}, not a dict).")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    raw, labels = d.get("data"), d.get("labels")
    if not isinstance(raw, np.ndarray) or raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] != 3 * 32 * 32:
        shape = getattr(raw, "shape", None)
        raise DataError(f"{name} is not a CIFAR-10 batch: 'data' should be (n, 3072) uint8, got {shape}.")
    if not isinstance(labels, list) or len(labels) != raw.shape[0]:
        raise DataError(f"{name} is damaged: {raw.shape[0]} images but {len(labels or [])} labels.")
    lab = np.asarray(labels, dtype=np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{name} is damaged: labels outside 0-9.")
    return raw.reshape(-1, 3, 32, 32), lab


def _read_meta(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    try:
        d = _BatchUnpickler(io.BytesIO(meta.read_bytes()), encoding="bytes").load()
        names = d.get(b"label_names", d.get("label_names"))
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except Exception as e:  # noqa: BLE001 - any damage to the meta file is reported the same way
        raise DataError(f"{meta} is damaged ({e}). Download the archive again.") from None
    if len(names) != len(CIFAR10_CLASSES):
        raise DataError(f"{meta} lists {len(names)} classes, not 10.")
    return names


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
        _read_meta(folder),
        f"CIFAR-10 official batches ({folder}, {split})",
    )


def _split_batches(split: str) -> tuple[str, ...]:
    if split == "train":
        return CIFAR10_TRAIN_BATCHES
    if split == "test":
        return CIFAR10_TEST_BATCHES
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")


def prepare_cifar10_archive(
    archive: str | os.PathLike, cache_dir: str | os.PathLike | None = None, check_md5: bool = True
) -> Path:
    """Extract an official archive into `cache_dir` (once) and return the batches folder.

    Raises:
        DataError: checksum mismatch (with `check_md5`), damaged archive, unsafe members.
    """
    archive = Path(archive)
    cache = _resolve_cache_dir(cache_dir)
    folder = cache / CIFAR10_FOLDER
    stamp = folder / ".source-md5"
    digest = file_md5(archive)
    if check_md5 and digest != CIFAR10_MD5:
        raise DataError(
            f"{archive.name} has MD5 {digest}, not the published {CIFAR10_MD5}: it is damaged or not the "
            "official CIFAR-10 python archive. Download it again."
        )
    if folder.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        return folder
    tmp_root = extract_tar_safely(archive, cache / f".extract-{digest[:12]}")
    try:
        inner = tmp_root / CIFAR10_FOLDER
        if not inner.is_dir():
            raise DataError(f"{archive.name} has no {CIFAR10_FOLDER}/ folder: not the CIFAR-10 python archive.")
        (inner / ".source-md5").write_text(digest)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(inner, folder)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


def _list_folder(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
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

    Raises:
        DataError: missing or empty folder or class, unreadable image, mixed sizes, a class
            imbalance above `max_imbalance`, or classes that do not match `class_names`.
    """
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir} does not exist: expected <root>/{split}/<class>/*.jpg.")
    found, files = _list_folder(split_dir)
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
    labels = np.repeat(np.arange(len(class_names), dtype=np.int64), counts)

    key = hashlib.sha1(usedforsecurity=False)
    key.update(f"v{_FOLDER_CACHE_VERSION}|{split_dir.resolve()}|{image_size}|{list(class_names)}".encode())
    for p in paths:
        st = p.stat()
        key.update(f"|{p.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache_file = _resolve_cache_dir(cache_dir) / "folders" / f"{split_dir.name}-{key.hexdigest()[:16]}.npz"
    source = f"image folder {split_dir}"
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                images = z["images"]
                if images.shape[0] == len(paths):
                    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), list(class_names), source)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache is decoded again below and overwritten

    images = _decode_images(paths, image_size)
    if use_cache:
        _save_npz_atomic(cache_file, images=images)
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), list(class_names), source)


def _decode_images(paths: list[Path], image_size: int | None) -> np.ndarray:
    size: tuple[int, int] | None = (image_size, image_size) if image_size else None
    out: np.ndarray | None = None
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
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
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"{p} is not a readable image ({e}). Remove or replace it.") from None
        if out is None:
            out = np.empty((len(paths), 3, arr.shape[0], arr.shape[1]), dtype=np.uint8)
        out[i] = arr.transpose(2, 0, 1)
    assert out is not None
    return out


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared
            os.replace(tmp, path)
        except BaseException:
            _remove_quietly(tmp)
            raise
    except OSError:
        pass  # a cache that cannot be written only costs the next load some time


def _remove_quietly(p: str | os.PathLike) -> None:
    try:
        os.remove(p)
    except OSError:
        pass


# --------------------------------------------------------------------------------------
# One entry point
# --------------------------------------------------------------------------------------


def load_cifar10(
    source: str | os.PathLike | None = None,
    split: str = "train",
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
) -> ImageDataset:
    """CIFAR-10 (or any image folder) as an `ImageDataset`, from whatever `source` is.

    Args:
        source: None (the cache folder: extracted batches, else the archive there), the
            official archive `cifar-10-python.tar.gz`, its extracted `cifar-10-batches-py/`
            folder (or a folder that contains it), or an image-folder root with
            `<split>/<class>/*.jpg|png`.
        split: "train" or "test".
        download: with `source=None`, download the official archive if the cache lacks it.
        cache_dir: the cache folder; default `default_cache_dir()` (`$VIT_EXPLORER_DATA`).
        progress: download progress callback `(bytes_done, bytes_total)`.

    Raises:
        DataError: not found (with what to do), no network, checksum mismatch, damaged data.
    """
    cache = _resolve_cache_dir(cache_dir)
    if source is None:
        folder = cache / CIFAR10_FOLDER
        if folder.is_dir():
            return load_cifar10_batches(folder, split)
        archive = cache / CIFAR10_ARCHIVE
        if not archive.is_file():
            if not download:
                raise DataError(
                    f"CIFAR-10 is not in {cache}. Download it (download=True, 170 MB), set "
                    f"${CACHE_ENV} to a folder that has it, or pass the path of a local copy."
                )
            archive = download_cifar10(cache, progress)
        return load_cifar10_batches(prepare_cifar10_archive(archive, cache), split)

    path = Path(source).expanduser()
    if path.is_file():
        return load_cifar10_batches(prepare_cifar10_archive(path, cache), split)
    if not path.is_dir():
        raise DataError(f"{path} does not exist.")
    if (path / "data_batch_1").is_file() or (path / "test_batch").is_file():
        return load_cifar10_batches(path, split)
    if (path / CIFAR10_FOLDER).is_dir():
        return load_cifar10_batches(path / CIFAR10_FOLDER, split)
    if (path / split).is_dir():
        train_classes = None
        if split != "train" and (path / "train").is_dir():
            train_classes, _ = _list_folder(path / "train")
        return load_image_folder(path, split, class_names=train_classes, cache_dir=cache)
    raise DataError(
        f"{path} is neither the CIFAR-10 archive, its extracted folder, nor an image folder with {split}/<class>/*.jpg."
    )


# --------------------------------------------------------------------------------------
# Batches on the training device
# --------------------------------------------------------------------------------------


def augment_batch(
    images: Tensor, generator: torch.Generator | None = None, padding: int = 4, flip: bool = True
) -> Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once.

    Each image is padded by `padding` pixels of zeros on every side and cropped back to its
    size at a random offset; with `flip`, half the images are mirrored. Both are done by one
    `gather` over the flattened padded planes, on whatever device `images` is on.

    Args:
        images: (B, C, H, W), any dtype (uint8 keeps the gather cheap).
        generator: a CPU generator for the random offsets and flips (reproducible runs).
        padding: pixels added on each side before cropping; 0 disables the crop.
        flip: mirror a random half of the images left-right.

    Returns:
        (B, C, H, W) of the same dtype and device.
    """
    B, C, H, W = images.shape
    dev = images.device
    P = max(0, padding)
    Hp, Wp = H + 2 * P, W + 2 * P
    x = torch.nn.functional.pad(images, (P, P, P, P)) if P else images
    oy = torch.randint(0, 2 * P + 1, (B, 1, 1), generator=generator)
    ox = torch.randint(0, 2 * P + 1, (B, 1, 1), generator=generator)
    cols = torch.arange(W).view(1, 1, W)
    if flip:
        mirrored = torch.rand(B, 1, 1, generator=generator) < 0.5
        cols = torch.where(mirrored, (W - 1) - cols, cols)  # (B, 1, W)
    # flat index into each padded (Hp, Wp) plane of the pixel that lands at (i, j)
    idx = ((oy + torch.arange(H).view(1, H, 1)) * Wp + ox + cols).to(dev)  # (B, H, W)
    idx = idx.view(B, 1, H * W).expand(B, C, H * W)
    return x.reshape(B, C, Hp * Wp).gather(2, idx).view(B, C, H, W)


def mix_batch(
    images: Tensor,
    generator: torch.Generator | None = None,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    switch_prob: float = 0.5,
) -> tuple[Tensor, float]:
    """Mixup or CutMix of a batch with the same batch reversed, one draw for the whole batch.

    Image i is mixed with image B-1-i (its partner's label is `labels.flip(0)`). The mixing
    weight lam ~ Beta(alpha, alpha). Mixup: lam * x_i + (1 - lam) * x_partner. CutMix: a box
    of area (1 - lam) * H * W at a uniform random centre, clipped to the image, is pasted
    from the partner, and lam becomes the share of image i's own pixels that is left. The
    matching loss is lam * CE(logits, labels) + (1 - lam) * CE(logits, labels.flip(0)).

    Args:
        images: (B, C, H, W); floating point for Mixup (CutMix only copies pixels).
        generator: CPU generator for every random draw (reproducible, exactly resumable runs).
        mixup_alpha, cutmix_alpha: Beta parameters; 0 turns that kind off.
        switch_prob: with both on, the chance that the batch gets CutMix rather than Mixup.

    Returns:
        (mixed images, lam).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0")
    u = torch.rand(3, generator=generator).tolist()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or u[0] < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    partner = images.flip(0)
    if not use_cutmix:
        if not images.is_floating_point():
            raise TypeError("Mixup needs floating-point images (normalise first)")
        return torch.lerp(partner, images, lam), lam
    H, W = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(H * cut), int(W * cut)
    cy, cx = int(u[1] * H), int(u[2] * W)
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, H)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, W)
    out = images.clone()
    out[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (H * W)


def normalize_batch(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 (B, C, H, W) in 0-255 -> float32 (B, C, H, W), (x / 255 - mean) / std per channel."""
    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
    return torch.addcmul(-m / s, images.float(), 1.0 / (255.0 * s))  # one fused pass over the batch


def iterate_batches(
    dataset: ImageDataset, batch_size: int, order: Tensor | None = None, start: int = 0, drop_last: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (images uint8 (B, C, H, W), labels (B,)) in `order` (default: as stored), from batch `start`."""
    n = len(dataset)
    idx = order if order is not None else torch.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for i in range(start * batch_size, stop, batch_size):
        j = idx[i : i + batch_size]
        yield dataset.images[j], dataset.labels[j]


def compute_mean_std(dataset: ImageDataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the images in [0, 1] (for a new dataset's normalisation)."""
    x = dataset.images.float() / 255.0
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())
