"""Files that browser users leave on the server: per-session folders, quotas, expiry, dedupe.

A served app must not let one student fill the disk or reach another student's files. This
module is the one place that writes user files:

* `UploadStore.save(session, name, data)` writes a file that was already validated in memory
  into that session's own folder, after checking the per-session and server-wide quotas.
  The stored name is a safe form of the user's name (shown back to them), never a path they
  chose. `remove_session` deletes the folder when the session ends; `sweep` removes folders
  older than the time limit (sessions that vanished without saying so).
* `UploadStore.save_shared(data, suffix)` stores content by its SHA-256 once for everyone
  (30 students uploading the same CIFAR-10 archive store it once).
* `check_regular_file(path)` refuses FIFOs, devices and folders before anything opens them.
* `evict_lru(root, cap)` keeps a cache folder under a size cap, least recently used first.

Only folders this module created (they carry a marker file) are ever removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path

from .errors import VitCoreError
from .fileio import atomic_write
from .limits import Limits, current_limits, fmt_bytes

MARKER = ".vit-explorer-uploads"  # written into every folder this module owns
_SAFE = re.compile(r"[^A-Za-z0-9._ -]+")
_SESSION = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UploadError(VitCoreError):
    """An upload the server will not keep (over a quota, not a regular file, ...)."""


def safe_name(name: str, default: str = "upload") -> str:
    """The base name of `name` with anything but letters, digits, '.', '_', '-' and spaces removed."""
    base = _SAFE.sub("", os.path.basename(str(name).replace("\\", "/"))).strip(" .")
    return base[:100] or default


def check_regular_file(path: str | os.PathLike, max_bytes: int | None = None, what: str = "file") -> Path:
    """The path, if it names a regular file (not a FIFO, device or folder) within `max_bytes`.

    Uses `os.stat`, which never blocks, before anything opens the file: opening a FIFO for
    reading blocks until a writer appears.

    Raises:
        UploadError: no such file, not a regular file, or too large. The message does not say
            which folders exist on the server.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError:
        raise UploadError(f"There is no readable {what} at that path.") from None
    if not stat.S_ISREG(st.st_mode):
        raise UploadError(f"That path is not a regular {what} (a folder, pipe or device); nothing was read.")
    if max_bytes is not None and st.st_size > max_bytes:
        raise UploadError(f"The {what} is {fmt_bytes(st.st_size)}; the limit is {fmt_bytes(max_bytes)}.")
    return p


def folder_bytes(folder: str | os.PathLike) -> int:
    """Total size of the regular files under `folder` (0 if it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            try:
                st = os.lstat(os.path.join(dirpath, f))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _mark(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).touch()


def is_ours(folder: str | os.PathLike) -> bool:
    """True if `folder` was created by this module (it carries the marker file)."""
    return (Path(folder) / MARKER).is_file()


class UploadStore:
    """Per-session upload folders under one root, with quotas and expiry.

    Layout: `root/sessions/<session id>/<safe name>` and `root/shared/<sha256><suffix>`.
    Thread-safe within one process (the Streamlit server runs every session as a thread).
    """

    def __init__(self, root: str | os.PathLike, limits: Limits | None = None) -> None:
        self.root = Path(root)
        self._limits = limits
        self._lock = threading.Lock()

    @property
    def limits(self) -> Limits:
        return self._limits if self._limits is not None else current_limits()

    def session_dir(self, session: str) -> Path:
        if not _SESSION.match(session):
            raise ValueError(f"not a session id: {session!r}")
        return self.root / "sessions" / session

    def session_bytes(self, session: str) -> int:
        return folder_bytes(self.session_dir(session))

    def server_bytes(self) -> int:
        return folder_bytes(self.root)

    def _check_quota(self, session: str | None, size: int) -> None:
        lim = self.limits
        if session is not None:
            used = self.session_bytes(session)
            if used + size > lim.upload_quota_session_bytes:
                raise UploadError(
                    f"This file ({fmt_bytes(size)}) would take your uploads past {fmt_bytes(lim.upload_quota_session_bytes)} "
                    "on this server. Remove an earlier upload (or start a new session) and try again."
                )
        if self.server_bytes() + size > lim.upload_quota_server_bytes:
            raise UploadError(
                "The server's space for uploads is full right now. Try again later, or ask the person running it."
            )

    def save(self, session: str, name: str, data: bytes) -> Path:
        """Write `data` (already validated by the caller) as `name` in the session's folder.

        An earlier file of the same name in that session is replaced (and not counted twice).

        Raises:
            UploadError: over the session or server quota; nothing is written.
        """
        folder = self.session_dir(session)
        dest = folder / safe_name(name)
        with self._lock:
            old = dest.stat().st_size if dest.is_file() else 0
            self._check_quota(session, len(data) - old)
            _mark(self.root)
            _mark(folder)
            with atomic_write(dest, mode=0o600) as tmp:
                tmp.write_bytes(data)
        return dest

    def save_shared(self, data: bytes, suffix: str = "") -> Path:
        """Store `data` once for all sessions, named by its SHA-256; a second copy costs nothing."""
        digest = hashlib.sha256(data).hexdigest()
        suffix = "".join(c for c in suffix if c.isalnum() or c == ".")[:16]
        dest = self.root / "shared" / f"{digest}{suffix}"
        with self._lock:
            if dest.is_file() and dest.stat().st_size == len(data):
                os.utime(dest)  # recently used: last to be swept
                return dest
            self._check_quota(None, len(data))
            _mark(self.root)
            _mark(dest.parent)
            with atomic_write(dest, mode=0o600) as tmp:
                tmp.write_bytes(data)
        return dest

    def remove_session(self, session: str) -> None:
        """Delete the session's folder (when the session ends)."""
        folder = self.session_dir(session)
        with self._lock:
            if is_ours(folder):
                shutil.rmtree(folder, ignore_errors=True)

    def sweep(self, now: float | None = None) -> list[Path]:
        """Remove session folders and shared files untouched for longer than the upload time limit."""
        now = time.time() if now is None else now
        ttl = self.limits.upload_ttl_s
        removed: list[Path] = []
        with self._lock:
            sessions = self.root / "sessions"
            if is_ours(sessions.parent) and sessions.is_dir():
                for folder in sessions.iterdir():
                    if folder.is_dir() and is_ours(folder) and now - _last_touched(folder) > ttl:
                        shutil.rmtree(folder, ignore_errors=True)
                        removed.append(folder)
            shared = self.root / "shared"
            if is_ours(shared):
                for f in shared.iterdir():
                    if f.is_file() and f.name != MARKER and now - f.stat().st_mtime > ttl:
                        f.unlink(missing_ok=True)
                        removed.append(f)
        return removed


def _last_touched(folder: Path) -> float:
    times = [folder.stat().st_mtime]
    for p in folder.iterdir():
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    return max(times)


def evict_lru(root: str | os.PathLike, cap_bytes: int, keep: tuple[str, ...] = ()) -> list[Path]:
    """Remove the least recently used entries of `root` until it holds at most `cap_bytes`.

    Entries are the folder's direct children (files or folders); "used" is the newest
    modification time inside an entry (callers touch an entry when they use it). Entries named
    in `keep` (in use right now) are never removed, nor is anything in a folder without the
    marker of this module.
    """
    root = Path(root)
    if not is_ours(root):
        return []
    entries = []
    for p in root.iterdir():
        if p.name == MARKER or p.name in keep:
            continue
        size = folder_bytes(p) if p.is_dir() else p.stat().st_size
        used = _last_touched(p) if p.is_dir() else p.stat().st_mtime
        entries.append((used, size, p))
    total = folder_bytes(root)
    removed: list[Path] = []
    for _used, size, p in sorted(entries):
        if total <= cap_bytes:
            break
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        total -= size
        removed.append(p)
    return removed


def mark_owned(folder: str | os.PathLike) -> None:
    """Put this module's marker in `folder` (a cache root the app creates), making it evictable."""
    _mark(Path(folder))
