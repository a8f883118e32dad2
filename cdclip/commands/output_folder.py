"""What every command that writes per-image outputs shares: the integrity check of a file it would
skip, the settings record of the folder, and the label id → class name table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SETTINGS_NAME", "check_folder_settings", "classes_table", "is_complete"]

SETTINGS_NAME = "settings.json"
_PNG_END = b"IEND\xaeB`\x82"


def is_complete(path: Path) -> bool:
    """A cheap check that a file was written completely: a PNG ends with IEND, an npz's CRCs hold, an npy loads."""
    import zipfile

    try:
        if path.suffix == ".png":
            size = path.stat().st_size
            with open(path, "rb") as handle:
                handle.seek(max(0, size - len(_PNG_END)))
                return size > 8 + len(_PNG_END) and handle.read() == _PNG_END
        if path.suffix == ".npy":
            np.load(path, allow_pickle=True)
            return True
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


def check_folder_settings(out: Path, settings: dict[str, Any], overwrite: bool, output_dirs: Sequence[str],
                          ignore: tuple[str, ...] = ()) -> bool:  # fmt: skip
    """Refuse outputs made with other settings (unless ``overwrite``); returns whether they differ.

    A folder holding outputs (PNG / npz files in ``output_dirs``) but no settings record is refused
    too: whatever made them, whether they match is unknown.
    """
    from cdclip.run_settings import SettingsMismatchError, require_same_settings

    hint = "use another --out, or pass --overwrite to recompute every image with the new settings"
    try:
        recorded = require_same_settings(out / SETTINGS_NAME, settings, hint, ignore=ignore)
    except SettingsMismatchError:
        if not overwrite:
            raise
        return True
    if not recorded and any(any((out / d).glob("*.png")) or any((out / d).glob("*.npz")) for d in output_dirs):
        if not overwrite:
            raise ValueError(
                f"--out: {out} holds outputs but no {SETTINGS_NAME} (an older cdclip or another tool made them), so "
                f"whether they match these settings is unknown; {hint}"
            )
        return True
    return False


def classes_table(class_names: Sequence[str]) -> str:
    """``classes.json``: ``{"0": "background", "1": first class, ...}``."""
    return json.dumps({"0": "background", **{str(i + 1): n for i, n in enumerate(class_names)}}, indent=2) + "\n"
