"""Presets shipped as YAML files in this folder: the baselines and CD-CLIP, one file each.

A preset is a (partial) :class:`~cdclip.pipeline.config.TrainConfig` dictionary plus three
optional keys of its own: ``description`` (one line for ``--list-presets``), ``extends`` (the
preset it starts from) and ``training`` (``false`` for training-free presets such as ``clip-es``).
Every VOC/COCO difference lives in these files, not in code.

>>> from cdclip.presets import load_preset
>>> load_preset("weclip-voc").data.labels_from
'mask'
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["PresetInfo", "list_presets", "load_preset", "preset_dict", "preset_files"]

_META_KEYS = ("description", "extends", "training")
ALIASES = {"voc": "cdclip-voc", "coco": "cdclip-coco"}  # preset names before 0.2


class PresetInfo(dict):
    """``{"name": ..., "description": ..., "training": bool}`` for one preset."""


def _folder() -> Any:
    return resources.files(__name__)


def preset_files() -> list[Any]:
    """The shipped ``*.yaml`` files (``importlib.resources`` traversables), sorted by name."""
    return sorted((p for p in _folder().iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)


@cache
def _raw(name: str) -> dict[str, Any]:
    import yaml

    path = _folder() / f"{name}.yaml"
    if not path.is_file():
        known = [p.name[:-5] for p in preset_files()]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"preset: unknown preset {name!r} (known: {', '.join(known)}){hint}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"preset {name!r}: expected a mapping at the top of {path.name}")
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def preset_dict(name: str) -> dict[str, Any]:
    """The config dictionary of a preset with its ``extends`` chain applied (meta keys removed)."""
    name = ALIASES.get(name, name)
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    current: str | None = name
    while current is not None:
        if current in seen:
            raise ValueError(f"preset {name!r}: 'extends' forms a cycle through {current!r}")
        seen.add(current)
        raw = _raw(current)
        chain.append(raw)
        current = raw.get("extends")
    merged: dict[str, Any] = {}
    for raw in reversed(chain):
        merged = _merge(merged, {k: v for k, v in raw.items() if k not in _META_KEYS})
    return merged


def load_preset(name: str) -> Any:
    """The :class:`~cdclip.pipeline.config.TrainConfig` of a preset (on top of the defaults)."""
    from cdclip.pipeline.config import TrainConfig

    return TrainConfig.from_dict(preset_dict(name))


def list_presets() -> list[PresetInfo]:
    """Every shipped preset with its description, sorted by name."""
    out = []
    for path in preset_files():
        raw = _raw(path.name[:-5])
        description = " ".join(str(raw.get("description", "")).split())
        out.append(PresetInfo(name=path.name[:-5], description=description, training=bool(raw.get("training", True))))
    return out
