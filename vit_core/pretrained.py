"""Pretrained ImageNet ViTs by name: find, download and load the models of `vit_core.catalogue`.

Nothing is downloaded unless `download_pretrained` (or `load_pretrained(..., download=True)`)
is called. Models live under the same cache root as the datasets (`vit_core.fetch`):
`models_dir()` is `<cache root>/models`. Downloads go there (in the Hugging Face cache
layout); a file can also be put by hand in `models_dir()/<timm name>/model.safetensors`,
which is looked at first, and a model already in the user's own Hugging Face cache is used too.

Before a download, the Hub's host (or the proxy) is probed with a short timeout: without a
network the answer comes in seconds, not after the Hub client's retries.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .catalogue import CATALOGUE, PretrainedModel, get_pretrained, list_pretrained
from .checkpoints import load_checkpoint
from .errors import CheckpointError
from .fetch import default_cache_dir
from .model import VisionTransformer

__all__ = [  # the catalogue's names too: callers find everything pretrained here
    "CATALOGUE",
    "MODELS_DIR_ENV",
    "PretrainedModel",
    "PretrainedNotAvailableError",
    "download_pretrained",
    "get_pretrained",
    "is_downloaded",
    "list_pretrained",
    "load_pretrained",
    "local_path",
    "manual_path",
    "models_dir",
]

ProgressCallback = Callable[[int, "int | None"], None]  # (bytes done, bytes in all or None)
MODELS_DIR_ENV = "VIT_EXPLORER_MODELS"
STALL_TIMEOUT_S = 60.0  # a download with no progress for this long is given up
PROBE_TIMEOUT_S = 3.0  # how long the connectivity check before a download waits for the host


class PretrainedNotAvailableError(CheckpointError):
    """A catalogue model that is neither on this computer nor downloadable right now."""


def models_dir() -> Path:
    """Where models live: $VIT_EXPLORER_MODELS, else `models/` under the datasets' cache root
    (`vit_core.fetch.default_cache_dir()`: $VIT_EXPLORER_DATA, else ~/.cache/vit-explorer on Linux).

    A file put by hand goes in `<this>/<timm name>/model.safetensors`; downloads land here too,
    in the Hugging Face cache layout (`models--timm--<name>/...`)."""
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else default_cache_dir() / "models"


def manual_path(name: str) -> Path:
    """Where a by-hand download of `name`'s weight file belongs."""
    m = get_pretrained(name)
    return models_dir() / m.timm_name / m.filename


def local_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The weight file of `name` if it is on this computer (by-hand folder first, then the
    download cache: `cache_dir`, else `models_dir()` and the user's own Hugging Face cache),
    else None. Never touches the network."""
    m = get_pretrained(name)
    manual = manual_path(m.key)
    if manual.is_file():
        return manual
    from huggingface_hub import try_to_load_from_cache

    caches = [str(cache_dir)] if cache_dir is not None else [str(models_dir()), None]  # None: the user's HF cache
    for cache in caches:
        found = try_to_load_from_cache(m.repo_id, m.filename, cache_dir=cache, revision=m.revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


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
        cache_dir: a Hugging Face cache folder; None uses `models_dir()`.
        progress: called as `progress(bytes_done, bytes_total_or_None)` while the weights
            arrive, always on the calling thread.
        endpoint: a Hub mirror such as "https://hf-mirror.example"; None uses $HF_ENDPOINT or
            huggingface.co.
        stall_timeout: seconds without progress (no answer, no new bytes) before giving up.

    Returns:
        The path of the cached weight file.

    Raises:
        PretrainedNotAvailableError: offline (HF_HUB_OFFLINE set, or the host does not answer
            within `PROBE_TIMEOUT_S`), the Hub refused, the transfer stalled or broke off, or
            the disk is full; the message says where to put the file by hand.
    """
    m = get_pretrained(name)
    from huggingface_hub import hf_hub_download

    offline = _offline()
    if not offline:
        base = endpoint or os.environ.get("HF_ENDPOINT") or m.url
        unreachable = _probe(base, PROBE_TIMEOUT_S)
        if unreachable:
            raise _not_available(m, unreachable)
    kwargs: dict[str, Any] = {
        "cache_dir": str(cache_dir if cache_dir is not None else models_dir()),
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

    The loader sets the preprocessing and checks it: from timm's config.json beside the file,
    else from the catalogue entry that the file's path names (`catalogue.entry_for_path`).

    Args:
        name: a catalogue key, timm name or title.
        cache_dir: a Hugging Face cache folder; None looks in `models_dir()` and the user's own
            Hugging Face cache, and downloads into `models_dir()`.
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
    cfg.name = m.title
    cfg.extra = {**cfg.extra, "pretrained": m.key, "repo_id": m.repo_id}
    return model


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _probe(url: str, timeout: float) -> str | None:
    """None if a TCP connection to `url`'s host (or to the https proxy, when one is set) opens
    within `timeout` seconds, else why not, in a few words. Name lookup runs inside the same
    time limit (on a helper thread: a lookup with no network can block much longer)."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    parts = urlsplit(proxy or url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    what = f"the proxy {host}" if proxy else host
    result: dict[str, str | None] = {}

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["why"] = None
        except socket.gaierror:
            result["why"] = f"no network: the name {host} could not be looked up"
        except Exception:  # refused, unreachable, timed out
            result["why"] = f"no network: {what} could not be reached"

    worker = threading.Thread(target=connect, name=f"probe {host}", daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    if "why" not in result:
        return f"no network: {what} did not answer within {timeout:.0f} s"
    return result["why"]


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
    if "LocalEntryNotFound" in names or "OfflineModeIsEnabled" in names:
        return "it is not in the download cache, and the Hub client is set to work offline"
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
        f"{m.title} is not on this computer ({reason}). With a network, download it here "
        f"({m.download_mb:.0f} MB). Without one, download {m.url} on a computer that has one and put the file at "
        f"{manual_path(m.key)}: it is found there, offline. To stop trying the network, start the app with "
        "HF_HUB_OFFLINE=1."
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
