"""Writing files so that a reader never sees half of one: the one way the library does it."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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


class SingleFlight:
    """Run one call per key at a time; callers that arrive meanwhile share its result.

    Five "Download" clicks (in one session or in five) make one download: the first caller runs
    `fn`, the others wait and get the same return value or the same exception. A later call,
    after the first has finished, runs `fn` again (callers check "already there?" themselves).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call] = {}

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        assert call is not None
        if leader:
            try:
                call.result = fn()
            except BaseException as e:
                call.error = e
            finally:
                with self._lock:
                    del self._calls[key]
                call.done.set()
        else:
            call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def in_flight(self, key: Hashable) -> bool:
        """True while a call for `key` is running."""
        with self._lock:
            return key in self._calls


class _Call:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
