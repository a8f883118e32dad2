"""cdclip: CD-CLIP for weakly supervised semantic segmentation.

Composable components (importable directly or by name through the registry)::

    from cdclip import CDAModule, JSDivergence, SuperClassPrototypes, BoundaryEnhancedLoss
    refine = cdclip.create("cda", fusion="mean")

``import cdclip`` is light: it imports torch and the registry only. Everything else, and in
particular open_clip and timm, is imported on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdclip._lazy import lazy_attributes
from cdclip.registry import create, get, list_components, register, registry

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first access (PEP 562)
_LAZY: dict[str, str] = {
    # kernels
    "JSDivergence": "cdclip.kernels.js",
    "js_divergence": "cdclip.kernels.js",
    "pairwise_js": "cdclip.kernels.js",
    # affinity / CDA
    "TransitionMatrix": "cdclip.affinity.transition",
    "transition_matrix": "cdclip.affinity.transition",
    "box_mask": "cdclip.affinity.boxes",
    "CDAAffinity": "cdclip.affinity.cda",
    "CDAModule": "cdclip.affinity.cda",
    "cda_affinity": "cdclip.affinity.cda",
    "cda_refine": "cdclip.affinity.cda",
    "class_probs_from_cams": "cdclip.affinity.cda",
    "class_probs_from_features": "cdclip.affinity.cda",
    # SBE
    "SuperClassPrototypes": "cdclip.prototypes.superclass",
    "superclass_prototypes": "cdclip.prototypes.superclass",
    "SBEOutput": "cdclip.prototypes.superclass",
    "boundary_band": "cdclip.prototypes.superclass",
    "superclass_grouping": "cdclip.data.superclasses",
    "SuperClassGrouping": "cdclip.data.superclasses",
    "BoundaryEnhancedLoss": "cdclip.losses.boundary",
    "boundary_enhanced_loss": "cdclip.losses.boundary",
    "BalancedCrossEntropy": "cdclip.losses.segmentation",
    "balanced_cross_entropy": "cdclip.losses.segmentation",
    "AffinityLoss": "cdclip.losses.affinity",
    "affinity_loss": "cdclip.losses.affinity",
    # backbones (open_clip / timm are imported only when one is built)
    "DinoBackbone": "cdclip.backbones.dino",
    "OpenCLIPBackbone": "cdclip.backbones.openclip",
    "build_text_classifier": "cdclip.backbones.text",
    # CLIP CAMs, refinement glue and training-free pseudo labels
    "CLIPGradCAM": "cdclip.cam.gradcam",
    "clip_gradcam": "cdclip.cam.gradcam",
    "PatchTextCAM": "cdclip.cam.patch_text",
    "patch_text_cam": "cdclip.cam.patch_text",
    "CAMRefiner": "cdclip.cam.refine",
    "refine_cams": "cdclip.cam.refine",
    "PseudoLabeler": "cdclip.pipeline.pseudo_labels",
    # training pipeline
    "CDCLIP": "cdclip.pipeline.model",
    "WeCLIPDecoder": "cdclip.pipeline.decoder",
    "Trainer": "cdclip.pipeline.trainer",
    "TrainConfig": "cdclip.pipeline.config",
    "Evaluator": "cdclip.pipeline.evaluator",
    "evaluate_labels": "cdclip.pipeline.evaluator",
    "multiscale_logits": "cdclip.pipeline.evaluator",
    # refinement, metrics
    "PAR": "cdclip.refine.par",
    "par": "cdclip.refine.par",
    "DenseCRF": "cdclip.refine.crf",
    "ConfusionMatrix": "cdclip.metrics",
    # data
    "VOCSegmentation": "cdclip.data.voc",
    "COCOSegmentation": "cdclip.data.coco",
}

_SUBMODULES = {
    "functional", "kernels", "affinity", "prototypes", "losses", "refine", "backbones", "cam",
    "data", "pipeline", "metrics", "registry", "cli",
}

__all__ = [
    "__version__",
    "create",
    "get",
    "list_components",
    "register",
    "registry",
    *sorted(_LAZY),
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, _SUBMODULES)


if TYPE_CHECKING:  # static type checkers and IDEs see the real symbols
    from cdclip.affinity.boxes import box_mask
    from cdclip.affinity.cda import (
        CDAAffinity,
        CDAModule,
        cda_affinity,
        cda_refine,
        class_probs_from_cams,
        class_probs_from_features,
    )
    from cdclip.affinity.transition import TransitionMatrix, transition_matrix
    from cdclip.backbones.dino import DinoBackbone
    from cdclip.backbones.openclip import OpenCLIPBackbone
    from cdclip.backbones.text import build_text_classifier
    from cdclip.cam.gradcam import CLIPGradCAM, clip_gradcam
    from cdclip.cam.patch_text import PatchTextCAM, patch_text_cam
    from cdclip.cam.refine import CAMRefiner, refine_cams
    from cdclip.data.coco import COCOSegmentation
    from cdclip.data.superclasses import SuperClassGrouping, superclass_grouping
    from cdclip.data.voc import VOCSegmentation
    from cdclip.kernels.js import JSDivergence, js_divergence, pairwise_js
    from cdclip.losses.affinity import AffinityLoss, affinity_loss
    from cdclip.losses.boundary import BoundaryEnhancedLoss, boundary_enhanced_loss
    from cdclip.losses.segmentation import BalancedCrossEntropy, balanced_cross_entropy
    from cdclip.metrics import ConfusionMatrix
    from cdclip.pipeline.config import TrainConfig
    from cdclip.pipeline.decoder import WeCLIPDecoder
    from cdclip.pipeline.evaluator import Evaluator, evaluate_labels, multiscale_logits
    from cdclip.pipeline.model import CDCLIP
    from cdclip.pipeline.pseudo_labels import PseudoLabeler
    from cdclip.pipeline.trainer import Trainer
    from cdclip.prototypes.superclass import (
        SBEOutput,
        SuperClassPrototypes,
        boundary_band,
        superclass_prototypes,
    )
    from cdclip.refine.crf import DenseCRF
    from cdclip.refine.par import PAR, par
