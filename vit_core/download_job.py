"""Downloading (and unpacking) the official CIFAR-10 into the cache on a background thread, for the app.

Five "Download" clicks, in one session or in five, make one download: every job for the same
cache folder and URL joins the one in flight (`fileio.SingleFlight`) and shows its progress, so
there is one temporary file and one unpacking.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .errors import DataError
from .fetch import CIFAR10_DOWNLOAD_MB, CIFAR10_URL, default_cache_dir, download_cifar10, prepare_cifar10_archive
from .fileio import SingleFlight


class _Cancelled(Exception):
    pass


_FLIGHT = SingleFlight()
_PROGRESS: dict[tuple[str, str], tuple[str, int, int]] = {}  # key -> (status, done, total) of the shared download
_PROGRESS_LOCK = threading.Lock()


class DownloadJob:
    """Download (and unpack) the official CIFAR-10 into the cache on a background thread.

    `view()` returns (status, bytes done, bytes total, message); status is "new",
    "downloading", "unpacking", "done", "failed" or "cancelled".
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, url: str | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.url = url or CIFAR10_URL
        self.lock = threading.Lock()
        self._status = "new"
        self._done = 0
        self._total = CIFAR10_DOWNLOAD_MB * 2**20
        self._message = ""
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self.lock:
            if self._thread is not None:
                return
            self._status = "downloading"
            self._thread = threading.Thread(target=self._main, name="vit-cifar-download", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        self._cancel.set()

    release = cancel  # an owner that goes away cancels its download

    @property
    def alive(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        t = self._thread
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def view(self) -> tuple[str, int, int, str]:
        with self.lock:
            status, done, total, message = self._status, self._done, self._total, self._message
        if status in ("downloading", "unpacking"):
            with _PROGRESS_LOCK:
                shared = _PROGRESS.get(self._key)
            if shared is not None:  # the download this job joined (its own, or another session's)
                status, done, total = shared
        return status, done, total, message

    @property
    def _key(self) -> tuple[str, str]:
        return (str(self.cache_dir.resolve()), self.url)

    def _progress(self, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise _Cancelled
        with self.lock:
            self._done = done
            if total:
                self._total = total
        with _PROGRESS_LOCK:
            _PROGRESS[self._key] = ("downloading", done, total or self._total)

    def _fetch_and_unpack(self) -> None:
        """The one download of this cache and URL: only the job that leads it runs this."""
        try:
            archive = download_cifar10(self.cache_dir, self._progress, url=self.url)
            with _PROGRESS_LOCK:
                old = _PROGRESS.get(self._key, ("", 0, self._total))
                _PROGRESS[self._key] = ("unpacking", old[1], old[2])
            with self.lock:
                self._status = "unpacking"
            prepare_cifar10_archive(archive, self.cache_dir)
        finally:
            with _PROGRESS_LOCK:
                _PROGRESS.pop(self._key, None)

    def _main(self) -> None:
        try:
            while True:
                try:
                    _FLIGHT.do(self._key, self._fetch_and_unpack)
                    break
                except _Cancelled:
                    if self._cancel.is_set():
                        raise
                    # another session cancelled the download this job had joined: lead a new one
            with self.lock:
                self._status, self._message = "done", f"CIFAR-10 is in {self.cache_dir}."
        except _Cancelled:
            with self.lock:
                self._status, self._message = "cancelled", "The download was cancelled."
        except DataError as e:
            with self.lock:
                self._status, self._message = "failed", str(e)
        except Exception as e:  # noqa: BLE001
            with self.lock:
                self._status, self._message = "failed", f"The download failed: {type(e).__name__}: {e}"
