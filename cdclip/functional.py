"""Pure functions behind the modules, in one namespace (like ``torch.nn.functional``).

``import cdclip.functional as CF``; ``CF.pairwise_js(p)``. Names resolve lazily so that importing
this module costs nothing until a function is used.
"""

from __future__ import annotations

from cdclip._lazy import lazy_attributes

_LAZY: dict[str, str] = {
    "js_divergence": "cdclip.kernels.js",
    "pairwise_js": "cdclip.kernels.js",
    "transition_matrix": "cdclip.affinity.transition",
    "box_mask": "cdclip.affinity.boxes",
    "cda_affinity": "cdclip.affinity.cda",
    "cda_refine": "cdclip.affinity.cda",
    "class_probs_from_cams": "cdclip.affinity.cda",
    "class_probs_from_features": "cdclip.affinity.cda",
    "superclass_prototypes": "cdclip.prototypes.superclass",
    "boundary_band": "cdclip.prototypes.superclass",
    "boundary_enhanced_loss": "cdclip.losses.boundary",
    "balanced_cross_entropy": "cdclip.losses.segmentation",
    "affinity_loss": "cdclip.losses.affinity",
    "resample_features": "cdclip.feature_maps",
    "clip_gradcam": "cdclip.cam.gradcam",
    "patch_text_cam": "cdclip.cam.patch_text",
    "refine_cams": "cdclip.cam.refine",
    "background_score": "cdclip.pipeline.pseudo_labels",
    "cams_to_labels": "cdclip.pipeline.pseudo_labels",
    "par": "cdclip.refine.par",
    "par_affinity": "cdclip.refine.par",
    "dense_crf": "cdclip.refine.crf",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
