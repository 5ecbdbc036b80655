"""A dataset archive uploaded on the Train page: checked in memory, then kept once for everyone.

The bytes are checked while still in memory (`fetch.check_archive_bytes`: a readable tar,
member count and unpacked size within the server's limits, safe names, a layout the trainer
reads); nothing is written for a refused file. An accepted archive is stored through
`vit_core.uploads.UploadStore.save_shared`, by content hash: the same CIFAR-10 archive
uploaded by 30 students is one file. Each session's uploads count against its own quota, and
when the last session that uploaded a file ends, the file is removed (the unpacked data stays
in the data cache, which has its own size cap); `sweep` removes what sessions that vanished
left behind after the upload time limit.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from pathlib import Path

from vit_core.fetch import check_archive_bytes
from vit_core.limits import current_limits, fmt_bytes
from vit_core.uploads import UploadError, UploadStore

UPLOAD_DIR = Path(tempfile.gettempdir()) / "vit-explorer-uploads"
SUFFIXES = (".tar.gz", ".tgz", ".tar")

_REFS_LOCK = threading.Lock()
_REFS: dict[Path, set[str]] = {}  # stored file -> sessions that uploaded it (process-wide)


def store(root: Path | None = None) -> UploadStore:
    """The upload store of the Train page (one root for the process)."""
    return UploadStore(UPLOAD_DIR if root is None else root)


def session_key(session_id: str) -> str:
    """A folder-safe form of a Streamlit session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:32]


class SessionUploads:
    """The dataset archives one browser session uploaded: its quota, and cleanup when it ends."""

    def __init__(self, session_id: str, root: Path | None = None) -> None:
        self.session = session_key(session_id)
        self.store = store(root)
        self.files: dict[Path, int] = {}  # stored path -> size

    def used_bytes(self) -> int:
        return sum(self.files.values())

    def save(self, name: str, data: bytes) -> Path:
        """Check `data` in memory and store it once; returns the stored path.

        Raises:
            DataError: not an archive the trainer reads, unsafe, or over an archive limit.
            UploadError: over the upload size, the session quota or the server quota.
        """
        lim = current_limits()
        if len(data) > lim.upload_quota_session_bytes:
            raise UploadError(
                f"{name} is {fmt_bytes(len(data))}; this server keeps at most {fmt_bytes(lim.upload_quota_session_bytes)} "
                "of uploads per session. Put the file on the server and type its path instead."
            )
        check_archive_bytes(data, name, lim)  # nothing is written for a refused file
        digest = hashlib.sha256(data).hexdigest()
        known = [p for p in self.files if p.name.startswith(digest)]
        if not known and self.used_bytes() + len(data) > lim.upload_quota_session_bytes:
            raise UploadError(
                f"{name} ({fmt_bytes(len(data))}) would take this session's uploads past "
                f"{fmt_bytes(lim.upload_quota_session_bytes)}. Start a new session (reload the page) to upload another."
            )
        self.store.sweep()
        suffix = next((s for s in SUFFIXES if name.lower().endswith(s)), ".tar")
        path = self.store.save_shared(data, suffix)
        self.files[path] = len(data)
        with _REFS_LOCK:
            _REFS.setdefault(path, set()).add(self.session)
        return path

    def release(self) -> None:
        """The session ended: remove its folder, and every file no other live session uploaded."""
        self.store.remove_session(self.session)
        with _REFS_LOCK:
            for path in self.files:
                owners = _REFS.get(path, set())
                owners.discard(self.session)
                if not owners:
                    _REFS.pop(path, None)
                    path.unlink(missing_ok=True)
        self.files = {}
