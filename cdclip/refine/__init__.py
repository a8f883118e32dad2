"""Mask refinement: PAR (pixel-adaptive refinement) and the optional dense CRF.

These refine class masks and probabilities along image edges. Refining CAMs (the MHSA baseline,
CDA: the ``model.refine`` config key) is :mod:`cdclip.cam.refine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdclip._lazy import lazy_attributes

_LAZY: dict[str, str] = {
    "PAR": "cdclip.refine.par",
    "par": "cdclip.refine.par",
    "par_affinity": "cdclip.refine.par",
    "DenseCRF": "cdclip.refine.crf",
    "dense_crf": "cdclip.refine.crf",
}

__all__ = ["PAR", "DenseCRF", "dense_crf", "par", "par_affinity"]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from cdclip.refine.crf import DenseCRF, dense_crf
    from cdclip.refine.par import PAR, par, par_affinity
