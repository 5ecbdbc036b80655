"""An uploaded file, written once to a temporary folder so that library code can open it by path."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

from vit_core.fileio import atomic_write

UPLOAD_DIR = Path(tempfile.gettempdir()) / "vit-explorer-uploads"


def save_upload(name: str, data: bytes, folder: Path = UPLOAD_DIR) -> Path:
    """Write `data` to `folder/<content hash>-<safe name>` (once: the same bytes reuse the file) and return the path.

    Args:
        name: the name the user's file had; only letters, digits, '.', '_' and '-' are kept.
        data: the file's bytes.
        folder: where uploads go (created if needed).
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)
    path = Path(folder) / f"{hashlib.sha256(data).hexdigest()[:16]}-{safe}"
    if not path.exists():
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
    return path
