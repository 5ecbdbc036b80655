"""Writing files so that a reader never sees half of one: the one way the library does it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step.

    The caller writes the whole file to the yielded path. If the block raises (a full disk,
    an interrupt), the temporary file is removed and `path` keeps its old content, if any.
    `mode` is applied before the rename (mkstemp makes files private; caches may be shared).
    The parent folder is created if needed; OSError from that or from mkstemp propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def remove_quietly(path: str | os.PathLike) -> None:
    """Remove a file if it is there; a file that is already gone is not an error."""
    try:
        os.remove(path)
    except OSError:
        pass
