"""Atomic file writes: a file is either absent or complete, never half-written.

Every output of a long command (checkpoints, CAM archives, label PNGs, metrics) is written to a
temporary file in the same folder and then moved over the final name with :func:`os.replace`,
which POSIX and Windows perform atomically. A process killed mid-write leaves only a temporary
``.<name>.tmp<pid><suffix>`` file, which :func:`remove_stale_temps` deletes on the next start
(the folder lock of :mod:`cdclip.folder_lock` makes sure no live writer owns it).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "is_temp_name", "remove_stale_temps"]

# ".<name>.tmp<pid>" optionally followed by the target's suffix (".png", ".npz", ...)
_TEMP = re.compile(r"^\..+\.tmp\d+(\.[A-Za-z0-9]+)?$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file left by :func:`atomic_path`."""
    return bool(_TEMP.match(name))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path`` atomically.

    The temporary name keeps ``path``'s suffix, so writers that pick a format from the suffix
    (PIL, ``np.savez``) behave as with the final name. On any exception the temporary file is
    removed and the final path is left untouched.

    Args:
        path: the final file; its parent folder is created.
        fsync: flush the file to disk before the rename (checkpoints: survive a power cut too).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}{target.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike[str], recursive: bool = True,
                       keep: Callable[[Path], bool] | None = None) -> list[Path]:  # fmt: skip
    """Delete the temporary files a killed writer left in ``folder``; returns what was removed.

    Call it only while holding the folder's lock: a live writer's temporary file looks the same.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    candidates = root.rglob(".*.tmp*") if recursive else root.glob(".*.tmp*")
    removed = []
    for path in candidates:
        if path.is_file() and is_temp_name(path.name) and not (keep is not None and keep(path)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
