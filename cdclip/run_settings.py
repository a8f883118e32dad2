"""The settings that made a folder's outputs, stored beside them and compared on every rerun.

A command that resumes into an existing folder skips the work already there. That is only right
when the settings are the same: :func:`compare_settings` reads the stored JSON record and names
every key that differs, so a rerun with ``--refine none`` into a folder of CDA outputs refuses
instead of mixing the two.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdclip.atomic import atomic_write_text

__all__ = [
    "SettingsMismatchError",
    "compare_settings",
    "flatten_settings",
    "read_settings",
    "require_same_settings",
    "write_settings",
]

_SHOWN = 12  # differing keys listed in a message


class SettingsMismatchError(ValueError):
    """Stored and requested settings differ; ``.differences`` lists ``(key, stored, requested)``."""

    def __init__(self, where: Path, differences: list[tuple[str, Any, Any]], hint: str) -> None:
        self.where = where
        self.differences = differences
        lines = [f"  {key}: {old!r} (stored) -> {new!r} (now)" for key, old, new in differences[:_SHOWN]]
        if len(differences) > _SHOWN:
            lines.append(f"  ... and {len(differences) - _SHOWN} more")
        super().__init__(
            f"{where} was made with other settings ({len(differences)} differ):\n" + "\n".join(lines) + f"\n{hint}"
        )


def flatten_settings(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to ``{"section.key": value}``; lists and tuples compare as lists."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_settings(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def read_settings(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The stored record, or ``None`` when there is none (or it is unreadable: it is then rewritten)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_settings(path: str | os.PathLike[str], settings: Mapping[str, Any]) -> None:
    """Store ``settings`` as JSON, atomically."""
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")


def compare_settings(stored: Mapping[str, Any], current: Mapping[str, Any],
                     ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:  # fmt: skip
    """``(key, stored, current)`` for every dotted key whose values differ (``ignore``: key prefixes)."""
    old = json.loads(json.dumps(flatten_settings(stored), default=str))
    new = json.loads(json.dumps(flatten_settings(current), default=str))
    keys = sorted(set(old) | set(new))
    return [
        (key, old.get(key), new.get(key))
        for key in keys
        if old.get(key) != new.get(key) and not any(key == p or key.startswith(f"{p}.") for p in ignore)
    ]


def require_same_settings(path: str | os.PathLike[str], current: Mapping[str, Any], hint: str,
                          ignore: tuple[str, ...] = ()) -> bool:  # fmt: skip
    """Raise :class:`SettingsMismatchError` when the record at ``path`` differs from ``current``.

    Returns whether a record existed.
    """
    stored = read_settings(path)
    if stored is None:
        return False
    differences = compare_settings(stored, current, ignore)
    if differences:
        raise SettingsMismatchError(Path(path).parent, differences, hint)
    return True
