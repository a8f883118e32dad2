"""Mask refinement: PAR (pixel-adaptive refinement) and the optional dense CRF."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "PAR": "cdclip.refine.par",
    "par": "cdclip.refine.par",
    "par_affinity": "cdclip.refine.par",
    "DenseCRF": "cdclip.refine.crf",
    "dense_crf": "cdclip.refine.crf",
}

__all__ = ["PAR", "DenseCRF", "dense_crf", "par", "par_affinity"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cdclip.refine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from cdclip.refine.crf import DenseCRF, dense_crf
    from cdclip.refine.par import PAR, par, par_affinity
