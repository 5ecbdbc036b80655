"""Where a run's images come from: the one data-source resolver of the app and the CLI.

A source is any of

* nothing (`None`, `DataSource("cache")`): the official CIFAR-10 in the download cache
  (`default_cache_dir()`), downloaded on request;
* the official archive `cifar-10-python.tar.gz` (MD5-checked), or a folder that holds it;
* its extracted folder `cifar-10-batches-py/`, or a folder that contains it;
* an image folder `<root>/{train,test}/<class>/*.jpg|png`, or a folder whose only sub-folder is one;
* a tar archive of such an image folder (like `cifar10_jpeg.tar.gz`), unpacked once into the cache.

`resolve_source` turns a source into the folder its splits are read from, `load_split` reads
one split, `load_source` gives the app both splits (shared by the runs of the process), and
`inspect_source` says what a source holds from file names alone, fast enough for every page run.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import fetch
from .config import CIFAR10_CLASSES
from .data import IMAGE_SUFFIXES, ImageDataset, list_image_folder, load_cifar10_batches, load_image_folder
from .errors import DataError
from .fetch import (
    ARCHIVES_DIR,
    CACHE_ENV,
    CIFAR10_ARCHIVE,
    CIFAR10_DOWNLOAD_MB,
    CIFAR10_FOLDER,
    COMPLETE,
    ProgressFn,
    archive_entry,
    default_cache_dir,
)
from .limits import current_limits

LoadProgressFn = Callable[[str, int, int], None]  # (what is being done, done, total)
ACCEPTED = (
    f"the official `{CIFAR10_ARCHIVE}` or its extracted `{CIFAR10_FOLDER}/` folder; an image folder "
    "`train/<class>/*.jpg|png` with `test/<class>/` beside it (at the top or inside one folder); or a "
    ".tar/.tar.gz/.tgz of such a folder, like the CIFAR-10 JPEG archive `cifar10_jpeg.tar.gz`"
)

CIFAR10_PAGE = "https://www.cs.toronto.edu/~kriz/cifar-10.html"


# --------------------------------------------------------------------------------------
# The resolver
# --------------------------------------------------------------------------------------


def image_folder_root(path: Path) -> Path | None:
    """`path` or its only sub-folder, whichever holds the split folders `train/` or `test/`."""

    def has_splits(p: Path) -> bool:
        return (p / "train").is_dir() or (p / "test").is_dir()

    if has_splits(path):
        return path
    subs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")] if path.is_dir() else []
    if len(subs) == 1 and has_splits(subs[0]):
        return subs[0]
    return None


def resolve_source(
    source: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """The folder the splits of `source` are read from: CIFAR-10's batches folder or an image-folder root.

    Args:
        source: None (the cache: extracted batches, else the archive there), an archive (the
            official one, or a tar of an image folder), the extracted official folder (or a
            folder that contains it or the archive), or an image folder.
        cache_dir: where archives are unpacked and downloads go; default `default_cache_dir()`.
        download: with `source=None`, download the official archive if the cache lacks it.
        progress: download progress callback `(bytes_done, bytes_total)`.

    Raises:
        DataError: not found (with what to do), no network, checksum mismatch, damaged data.
    """
    cache = fetch.resolve_cache_dir(cache_dir)
    if source is None:
        if (cache / CIFAR10_FOLDER).is_dir():
            return cache / CIFAR10_FOLDER
        archive = cache / CIFAR10_ARCHIVE
        if not archive.is_file():
            if not download:
                raise DataError(
                    f"CIFAR-10 is not in {cache}. Download it (download=True, 170 MB), set "
                    f"${CACHE_ENV} to a folder that has it, or pass the path of a local copy."
                )
            archive = fetch.download_cifar10(cache, progress)
        return fetch.prepare_cifar10_archive(archive, cache)

    path = Path(source).expanduser()
    if path.is_dir() and not (path / CIFAR10_FOLDER).is_dir() and (path / CIFAR10_ARCHIVE).is_file():
        path = path / CIFAR10_ARCHIVE  # a folder that holds only the downloaded archive
    if path.is_file():
        if fetch.file_md5(path) == fetch.CIFAR10_MD5 or fetch.is_cifar10_archive(path):
            return fetch.prepare_cifar10_archive(path, cache)  # a CIFAR-10 layout fails its checksum here
        root = image_folder_root(fetch.unpack_archive(path, cache))
        if root is None:
            raise DataError(
                f"{path.name} holds neither CIFAR-10's {CIFAR10_FOLDER}/ nor an image folder with "
                "train/<class>/ and test/<class>/."
            )
        return root
    if not path.is_dir():
        raise DataError(f"{path} does not exist.")
    if (path / "data_batch_1").is_file() or (path / "test_batch").is_file():
        return path
    if (path / CIFAR10_FOLDER).is_dir():
        return path / CIFAR10_FOLDER
    root = image_folder_root(path)
    if root is None:
        raise DataError(
            f"{path} is neither the CIFAR-10 archive, its extracted folder, nor an image folder with "
            "train/<class>/*.jpg and test/<class>/*.jpg."
        )
    return root


def load_split(
    source: str | os.PathLike | None,
    split: str = "train",
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressFn | None = None,
    decode_progress: ProgressFn | None = None,
) -> ImageDataset:
    """One split ("train" or "test") of any source `resolve_source` accepts, as an `ImageDataset`.

    The test split of an image folder takes its class list from `train/`, so labels agree.
    Images are checked against the server's limits before decoding (count, pixels, and the
    side of a training run); an image folder unpacked from an archive keeps its decoded
    `.npz` inside the unpacked folder, so evicting one removes both.

    Raises:
        DataError: not found (with what to do), no network, checksum mismatch, damaged data,
            over a limit.
    """
    folder = resolve_source(source, cache_dir, download, progress)
    if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
        return load_cifar10_batches(folder, split)
    train_classes = None
    if split != "train" and (folder / "train").is_dir():
        train_classes, _ = list_image_folder(folder / "train")
    entry = archive_entry(folder)
    return load_image_folder(
        folder,
        split,
        class_names=train_classes,
        cache_dir=entry if entry is not None else cache_dir,
        max_side=current_limits().max_train_img_size,
        progress=decode_progress,
    )


# --------------------------------------------------------------------------------------
# The app's view of a source
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """Where a run's images come from.

    kind "cache": the official CIFAR-10 in the download cache (`default_cache_dir()`);
    kind "path": anything `resolve_source` accepts (an archive, the extracted official folder,
    an image folder `<path>/train/<class>/*.png` with a `test/` beside it).
    """

    kind: str
    path: str | None = None

    def label(self) -> str:
        if self.kind == "cache":
            return f"CIFAR-10 from the download cache ({default_cache_dir()})"
        return str(self.path)


@dataclass
class DataInfo:
    """What a source holds, found without decoding the images."""

    description: str
    train_size: int
    test_size: int
    class_names: list[str]
    image_size: int = 32


def cifar10_cached(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """CIFAR-10 that this machine already has in the cache, or None.

    In order: the official extracted folder, the official archive, then an image-folder
    archive the app unpacked before (any session, e.g. `cifar10_jpeg.tar.gz`) whose `train/`
    has the ten CIFAR-10 class folders; the newest such one.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (cache / CIFAR10_FOLDER / "data_batch_1").is_file():
        return cache / CIFAR10_FOLDER
    if (cache / CIFAR10_ARCHIVE).is_file():
        return cache / CIFAR10_ARCHIVE
    return unpacked_cifar10(cache)


def unpacked_cifar10(cache: Path) -> Path | None:
    """The newest complete unpacked archive under `<cache>/archives/` that is CIFAR-10 as an image folder."""
    parent = cache / ARCHIVES_DIR
    if not parent.is_dir():
        return None
    found = []
    for entry in parent.iterdir():
        try:
            if not (entry / COMPLETE).is_file():
                continue
            root = image_folder_root(entry)
            if root is None or not (root / "train").is_dir() or not (root / "test").is_dir():
                continue
            classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
            if classes == sorted(CIFAR10_CLASSES):
                found.append(((entry / COMPLETE).stat().st_mtime, root))
        except OSError:
            continue
    return max(found)[1] if found else None


def missing_data_help(cache_dir: str | os.PathLike | None = None) -> str:
    """What to fetch and where to put it, for a machine without CIFAR-10 (and maybe without network)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return (
        f"No copy of CIFAR-10 was found on this machine. To train without a network connection, fetch "
        f"`{CIFAR10_ARCHIVE}` (about {CIFAR10_DOWNLOAD_MB} MB, the 'python version' from {CIFAR10_PAGE}) "
        f"on a machine that has one, then either put it in `{cache}` (the app finds it there), set "
        f"`{CACHE_ENV}` to the folder that holds it, or type its path on this page. The page takes {ACCEPTED}."
    )


def _count_images(folder: Path) -> tuple[list[str], int, Path | None]:
    if not folder.is_dir():
        return [], 0, None
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    n, first = 0, None
    for c in classes:
        for e in os.scandir(folder / c):
            if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                n += 1
                if first is None:
                    first = Path(e.path)
    return classes, n, first


def inspect_source(source: DataSource) -> DataInfo:
    """What `source` holds (sizes, classes), from file names only; fast enough for every page run.

    Raises:
        DataError: nothing usable there, with what to do.
    """
    cifar = DataInfo("", 50_000, 10_000, list(CIFAR10_CLASSES))
    if source.kind == "cache":
        found = cifar10_cached()
        if found is None:
            raise DataError(missing_data_help())
        if found.name == CIFAR10_FOLDER:
            cifar.description = f"CIFAR-10 (extracted in {found.parent})"
        elif found.is_file():
            cifar.description = f"CIFAR-10 (archive in {found.parent})"
        else:
            cifar.description = "CIFAR-10 (an image folder this server unpacked earlier)"
        return cifar
    if not source.path:
        raise DataError("No path given: type the path of a CIFAR-10 archive or an image folder.")
    path = Path(source.path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist.")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise DataError(
                f"{path.name} is not a tar archive: expected {CIFAR10_ARCHIVE} or a .tar.gz of an image folder."
            )
        size = f"{path.stat().st_size / 2**20:.0f} MB"
        if fetch.is_cifar10_archive(path):
            cifar.description = f"CIFAR-10 archive {path.name} ({size}; checked and unpacked when training starts)"
            return cifar
        counts, classes = fetch.archive_image_counts(path)
        if not counts.get("train") or not counts.get("test"):
            raise DataError(
                f"{path.name} holds neither CIFAR-10's {CIFAR10_FOLDER}/ nor an image folder with train/<class>/*.jpg "
                "and test/<class>/*.jpg."
            )
        return DataInfo(
            f"archive {path.name} ({size}, an image folder; unpacked when training starts)",
            counts["train"],
            counts["test"],
            classes,
        )
    if (path / "data_batch_1").is_file() or (path / CIFAR10_FOLDER / "data_batch_1").is_file():
        cifar.description = f"CIFAR-10 official batches in {path}"
        return cifar
    if (path / CIFAR10_ARCHIVE).is_file():
        return inspect_source(DataSource("path", str(path / CIFAR10_ARCHIVE)))
    root = image_folder_root(path)
    if root is None:
        raise DataError(
            f"{path} is neither the CIFAR-10 archive, its extracted folder, nor an image folder with "
            "train/<class>/*.png and test/<class>/*.png."
        )
    classes, n_train, first = _count_images(root / "train")
    test_classes, n_test, _ = _count_images(root / "test")
    if not classes or n_train == 0:
        raise DataError(f"{root / 'train'} has no class folders with .jpg/.png images.")
    if n_test == 0:
        raise DataError(f"{root / 'test'} has no images: the run needs a test split to measure accuracy.")
    extra = sorted(set(test_classes) - set(classes))
    if extra:
        raise DataError(f"{root / 'test'} has classes {extra} that train/ does not have.")
    size = 32
    if first is not None:
        from PIL import Image

        try:
            with Image.open(first) as im:
                size = int(im.size[0]) if im.size[0] == im.size[1] else -1
        except OSError:
            size = 32
    if size < 0:
        raise DataError(f"{first} is not square: the trainer needs square images of one size.")
    return DataInfo(f"image folder {root}: {len(classes)} classes", n_train, n_test, classes, size)


_DATA_CACHE: OrderedDict[tuple, tuple[ImageDataset, ImageDataset]] = OrderedDict()
_DATA_CACHE_LOCK = threading.Lock()
_DATA_CACHE_SIZE = 2  # datasets are shared read-only by all runs of the process


def _source_key(source: DataSource) -> tuple:
    if source.kind == "cache":
        found = cifar10_cached()
        return ("cache", str(found), found.stat().st_mtime_ns if found else 0)
    p = Path(source.path or "").expanduser().resolve()
    return ("path", str(p), p.stat().st_mtime_ns if p.exists() else 0)


def load_source(
    source: DataSource, progress: ProgressFn | None = None, on_load: LoadProgressFn | None = None
) -> tuple[ImageDataset, ImageDataset]:
    """The train and test splits of `source`, shared with other runs that use the same data.

    Args:
        progress: download progress `(bytes done, total)`.
        on_load: called as `on_load(what, done, total)` while an archive is unpacked ("unpacking",
            0, 0) and images are decoded ("train images" / "test images", decoded, all).

    Raises:
        DataError: missing, damaged or unreadable data, or over a limit, with what to do. An
            archive unpacked for a refused dataset is removed again.
    """
    key = _source_key(source)
    with _DATA_CACHE_LOCK:
        hit = _DATA_CACHE.get(key)
        if hit is not None:
            _DATA_CACHE.move_to_end(key)
            return hit
    if source.kind == "cache":
        found = cifar10_cached()
        if found is None:
            raise DataError(missing_data_help())
        path = None if found.name in (CIFAR10_FOLDER, CIFAR10_ARCHIVE) else found
    else:
        if not source.path:
            raise DataError("No path given: type the path of a CIFAR-10 archive or an image folder.")
        path = source.path
    if on_load is not None:
        on_load("unpacking", 0, 0)
    folder = resolve_source(path, progress=progress)

    def decoded(split: str) -> ProgressFn | None:
        return None if on_load is None else (lambda done, total: on_load(f"{split} images", done, total))

    try:
        pair = (
            load_split(folder, "train", decode_progress=decoded("train")),
            load_split(folder, "test", decode_progress=decoded("test")),
        )
    except DataError:
        entry = archive_entry(folder)
        if entry is not None and source.kind != "cache":
            shutil.rmtree(entry, ignore_errors=True)  # what was unpacked for a refused dataset
        raise
    with _DATA_CACHE_LOCK:
        _DATA_CACHE[key] = pair
        while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
            _DATA_CACHE.popitem(last=False)
    return pair
