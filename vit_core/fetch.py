"""Fetching CIFAR-10: download, checksum, safe tar extraction, and reading the pickled batches safely.

* `download_cifar10` puts the official "python version" archive `cifar-10-python.tar.gz`
  (Krizhevsky 2009) into a cache folder, MD5-checked while the bytes arrive and written whole
  (`download_file`); `prepare_cifar10_archive` extracts it there once.
* `extract_tar_safely` refuses links, device files and names that would land outside the
  target folder, and renames the folder into place only when extraction has finished.
* The official batches are Python pickles. Unpickling runs whatever functions the file names,
  so a tampered download could run code; they are read with a restricted unpickler that only
  builds dicts, lists, bytes, strings, ints and plain numpy arrays (`read_cifar_batch`), and
  never with `pickle.load`.

Errors a user can meet (no network, checksum mismatch, truncated batch) are `DataError`s with
a message that says what to do.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .config import CIFAR10_CLASSES
from .errors import DataError
from .fileio import atomic_write
from .limits import Limits, current_limits, fmt_bytes
from .uploads import evict_lru, mark_owned

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published on the CIFAR page beside the link
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_DOWNLOAD_MB = 163  # size of cifar-10-python.tar.gz (170,498,071 bytes)
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
CACHE_ENV = "VIT_EXPLORER_DATA"  # environment variable that overrides the cache folder

ProgressFn = Callable[[int, int], None]  # (bytes_done, bytes_total); total is 0 when unknown


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


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
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
    h = hashlib.md5(usedforsecurity=False)
    with atomic_write(dest) as tmp, open(tmp, "wb") as out:
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
                    raise DataError(f"The download of {url} broke off after {done} bytes ({e}). Try again.") from None
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
    cache = resolve_cache_dir(cache_dir)
    archive = cache / CIFAR10_ARCHIVE
    if archive.is_file() and file_md5(archive) == CIFAR10_MD5:
        return archive
    return download_file(url, archive, md5=CIFAR10_MD5, progress=progress)


def extract_tar_safely(archive: str | os.PathLike, dest: str | os.PathLike, limits: Limits | None = None) -> Path:
    """Extract a tar archive into the folder `dest`, refusing anything that could escape it or is too big.

    Only regular files and folders are accepted; absolute names, `..` components, symbolic
    and hard links and device files raise a `DataError`. Members are read one at a time and
    counted as they arrive: the archive stops being read at the server's member count or total
    uncompressed size (`limits.max_archive_members`, `limits.max_archive_bytes`), before the
    member that would pass a cap is written. Extraction happens in a temporary folder beside
    `dest` that is renamed to `dest` at the end, so a refused or interrupted extraction leaves
    nothing behind. An existing `dest` is replaced.

    Raises:
        DataError: unreadable archive, an unsafe member, or over a limit.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent))
    name = Path(archive).name
    try:
        try:
            with tarfile.open(archive, "r:*") as tf:
                root = tmp.resolve()
                for m in members_within_limits(tf, name, limits):
                    _check_member(m, root)
                    if m.isdir():
                        (root / m.name).mkdir(parents=True, exist_ok=True)
                        continue
                    target = root / m.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tf.extractfile(m)
                    if src is None:  # pragma: no cover - regular files always have data
                        raise DataError(f"{name}: member {m.name!r} has no data.")
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(f"{name} is not a readable tar archive (truncated or damaged): {e}") from None
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def members_within_limits(tf: tarfile.TarFile, name: str, limits: Limits | None = None) -> Iterator[tarfile.TarInfo]:
    """The members of an open archive, read one header at a time, until a limit would be passed.

    Counts every member and adds up the sizes its headers declare (what extraction writes),
    and raises before yielding the member that passes `max_archive_members` or
    `max_archive_bytes`, so a 1 MB archive that unpacks to 1 GB costs one header read, not 1 GB.

    Raises:
        DataError: over a limit, with the limit and what to do.
    """
    lim = current_limits() if limits is None else limits
    count = total = 0
    for m in tf:
        count += 1
        if count > lim.max_archive_members:
            raise DataError(
                f"{name} holds more than {lim.max_archive_members:,} files and folders, this server's limit "
                "(VIT_EXPLORER_MAX_ARCHIVE_MEMBERS). Nothing from it was kept; use a smaller dataset."
            )
        total += max(0, int(m.size)) if m.isfile() else 0
        if total > lim.max_archive_bytes:
            raise DataError(
                f"{name} unpacks to more than {fmt_bytes(lim.max_archive_bytes)}, this server's limit "
                "(VIT_EXPLORER_MAX_ARCHIVE_MB). Nothing from it was kept; use a smaller dataset."
            )
        yield m
        tf.members = []  # TarFile keeps every header it read; the caller needs only this one


def check_archive_bytes(data: bytes, name: str, limits: Limits | None = None) -> str:
    """What an uploaded dataset archive holds, checked in memory before anything is written.

    Reads the (compressed) bytes as a tar stream without writing a file: member count and
    total size within the limits, every member safe to extract, images within
    `max_dataset_images`, and a layout the trainer reads.

    Returns:
        "cifar10" (the official python layout) or "image folder" (`[top/]train/<class>/*.jpg`).

    Raises:
        DataError: not a readable tar archive, unsafe, over a limit, or another layout.
    """
    lim = current_limits() if limits is None else limits
    cifar = False
    images = 0
    splits: set[str] = set()
    root = Path("/nonexistent-root")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for m in members_within_limits(tf, name, lim):
                _check_member(m, root)
                parts = [p for p in Path(m.name).parts if p not in (".", "")]
                if parts and parts[0] == CIFAR10_FOLDER:
                    cifar = True
                if m.isfile() and Path(m.name).suffix.lower() in (".jpg", ".jpeg", ".png"):
                    images += 1
                    if images > lim.max_dataset_images:
                        raise DataError(
                            f"{name} holds more than {lim.max_dataset_images:,} images, this server's limit "
                            "(VIT_EXPLORER_MAX_DATASET_IMAGES). Nothing was kept; use a smaller dataset."
                        )
                    for i, part in enumerate(parts[:2]):
                        if part in ("train", "test") and len(parts) == i + 3:
                            splits.add(part)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(f"{name} is not a readable tar archive (truncated or damaged): {e}") from None
    if cifar:
        return "cifar10"
    if splits == {"train", "test"}:
        return "image folder"
    raise DataError(
        f"{name} holds neither CIFAR-10's {CIFAR10_FOLDER}/ nor an image folder with train/<class>/*.jpg "
        "and test/<class>/*.jpg (at the top or inside one folder). Nothing was kept."
    )


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


def read_cifar_meta(folder: Path) -> list[str]:
    """The class names in `batches.meta` of an extracted official folder (the published ten if it is absent)."""
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


def prepare_cifar10_archive(
    archive: str | os.PathLike, cache_dir: str | os.PathLike | None = None, check_md5: bool = True
) -> Path:
    """Extract an official archive into `cache_dir` (once) and return the batches folder.

    Raises:
        DataError: checksum mismatch (with `check_md5`), damaged archive, unsafe members.
    """
    archive = Path(archive)
    cache = resolve_cache_dir(cache_dir)
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


def is_cifar10_archive(archive: str | os.PathLike, limits: Limits | None = None) -> bool:
    """Whether a tar archive holds CIFAR-10's `cifar-10-batches-py/` folder (by member names; no checksum).

    Stops at the first CIFAR-10 member, and at the archive limits (`members_within_limits`).

    Raises:
        DataError: not a readable tar archive, or over a limit.
    """
    name = Path(archive).name
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in members_within_limits(tf, name, limits):
                if m.name.split("/")[0] == CIFAR10_FOLDER or m.name.startswith(f"./{CIFAR10_FOLDER}"):
                    return True
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name} is not a readable tar archive (truncated or damaged): {e}") from None
    return False


def archive_image_counts(archive: str | os.PathLike, limits: Limits | None = None) -> tuple[dict[str, int], list[str]]:
    """Images per split and the train classes of a tarred image folder, from member names (nothing written).

    Raises:
        DataError: not a readable tar archive, or over a limit.
    """
    name = Path(archive).name
    counts: dict[str, int] = {}
    classes: set[str] = set()
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in members_within_limits(tf, name, limits):
                parts = [p for p in Path(m.name).parts if p not in (".", "")]
                if not m.isfile() or Path(m.name).suffix.lower() not in (".jpg", ".jpeg", ".png"):
                    continue
                for i, part in enumerate(parts[:2]):
                    if part in ("train", "test") and len(parts) == i + 3:
                        counts[part] = counts.get(part, 0) + 1
                        if part == "train":
                            classes.add(parts[i + 1])
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{name} is not a readable tar archive (truncated or damaged): {e}") from None
    return counts, sorted(classes)


ARCHIVES_DIR = "archives"  # <cache>/archives/<content hash>: unpacked archives, least recently used evicted
COMPLETE = ".complete"  # written into an unpacked archive's folder when it is whole


def unpack_archive(
    archive: str | os.PathLike, cache_dir: str | os.PathLike | None = None, limits: Limits | None = None
) -> Path:
    """Extract any tar archive (safely, within the limits) once into `<cache_dir>/archives/<content hash>`.

    The archives folder is kept under `limits.data_cache_bytes`: after an unpack, the least
    recently used other entries are removed (`uploads.evict_lru`); a reused entry is touched.

    Raises:
        DataError: damaged archive, unsafe members or over a limit (nothing is left behind).
    """
    lim = current_limits() if limits is None else limits
    archive = Path(archive)
    parent = resolve_cache_dir(cache_dir) / ARCHIVES_DIR
    dest = parent / file_md5(archive)[:16]
    if (dest / COMPLETE).is_file():
        os.utime(dest / COMPLETE)  # recently used: last to be evicted
        return dest
    mark_owned(parent)
    extract_tar_safely(archive, dest, lim)
    (dest / COMPLETE).write_text(archive.name)
    evict_lru(parent, lim.data_cache_bytes, keep=(dest.name,))
    return dest


def archive_entry(folder: str | os.PathLike) -> Path | None:
    """The `<cache>/archives/<hash>` folder that `folder` lies in (an unpacked archive), or None."""
    p = Path(folder)
    for q in (p, *p.parents):
        if q.parent.name == ARCHIVES_DIR and (q / COMPLETE).is_file():
            return q
    return None
