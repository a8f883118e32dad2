"""An exclusive, non-blocking lock on an output folder, so two runs never write into one folder.

The lock is an ``flock`` on a small file in the folder; the operating system releases it when the
process ends, however it ends (SIGKILL included), so a crashed run never leaves a stale lock. On
systems without ``fcntl`` (Windows) the lock is a no-op and a warning says so.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

__all__ = ["FolderLockedError", "folder_lock"]


class FolderLockedError(RuntimeError):
    """Another process holds the lock of the folder; ``.path`` is the lock file."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        who = f" (process {holder})" if holder else ""
        super().__init__(
            f"{path.parent} is in use by another run{who}; wait for it to finish or use another output folder"
        )


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], name: str = ".lock") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) for the ``with`` block.

    Raises:
        FolderLockedError: another live process holds it.
    """
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        warnings.warn("folder_lock: no fcntl on this system; concurrent runs are not prevented", stacklevel=2)
        yield path
        return
    handle = open(path, "a+", encoding="utf-8")  # held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise FolderLockedError(path, handle.read().strip()) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        handle.close()
