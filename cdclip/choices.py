"""The option values a configuration key and the component behind it both accept, defined once.

Each choice is a ``Literal`` type (for signatures and type checkers); the tuple next to it is
``typing.get_args`` of it, the one list :func:`check_choice` reads, so the configuration
(:mod:`cdclip.pipeline.config`) and the component never disagree. Importing this module costs
nothing (no torch): the configuration and a replayed ``cdclip cams`` run read it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

__all__ = [
    "AFFINITY_KINDS",
    "AMPS",
    "BACKGROUND_AT",
    "BOX_RULES",
    "CAM_METHODS",
    "CAM_TARGETS",
    "DATASETS",
    "FEATURE_RESOLUTIONS",
    "LABEL_SOURCES",
    "PAD_FILLS",
    "PAD_LABELS",
    "POS_INTERPS",
    "PRECISIONS",
    "PROTOTYPE_WEIGHTINGS",
    "REFINE_METHODS",
    "RESIZE_MODES",
    "SIMILARITIES",
    "AffinityKind",
    "Amp",
    "BackgroundAt",
    "BoxRule",
    "CAMMethod",
    "CAMTarget",
    "DatasetName",
    "FeatureResolution",
    "LabelSource",
    "PadFill",
    "PadLabel",
    "PosInterp",
    "Precision",
    "PrototypeWeighting",
    "RefineMethod",
    "ResizeMode",
    "Similarity",
    "check_choice",
]


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    """Raise a ValueError naming ``name``, the allowed ``choices`` and the value received."""
    if value not in tuple(choices):
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")

DatasetName = Literal["voc", "coco"]
DATASETS: tuple[str, ...] = get_args(DatasetName)

# CAMs and their refinement
CAMMethod = Literal["gradcam", "patch_text"]
CAM_METHODS: tuple[str, ...] = get_args(CAMMethod)
CAMTarget = Literal["ln1_out", "block_in"]
CAM_TARGETS: tuple[str, ...] = get_args(CAMTarget)
RefineMethod = Literal["none", "attn", "mean", "replace", "product"]
REFINE_METHODS: tuple[str, ...] = get_args(RefineMethod)
AffinityKind = Literal["exp", "power", "linear"]
AFFINITY_KINDS: tuple[str, ...] = get_args(AffinityKind)
BoxRule = Literal["inclusive", "clip-es"]
BOX_RULES: tuple[str, ...] = get_args(BoxRule)
BackgroundAt = Literal["image", "patch"]
BACKGROUND_AT: tuple[str, ...] = get_args(BackgroundAt)
ResizeMode = Literal["pil_bicubic", "bilinear"]
RESIZE_MODES: tuple[str, ...] = get_args(ResizeMode)

# the frozen CLIP
PosInterp = Literal["bilinear", "bicubic"]
POS_INTERPS: tuple[str, ...] = get_args(PosInterp)
Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# SBE
PrototypeWeighting = Literal["mask", "cam"]
PROTOTYPE_WEIGHTINGS: tuple[str, ...] = get_args(PrototypeWeighting)
FeatureResolution = Literal["cam", "native"]
FEATURE_RESOLUTIONS: tuple[str, ...] = get_args(FeatureResolution)

# training data, losses, mixed precision
PadFill = Literal["mean", "black"]
PAD_FILLS: tuple[str, ...] = get_args(PadFill)
PadLabel = Literal["void", "pseudo"]
PAD_LABELS: tuple[str, ...] = get_args(PadLabel)
LabelSource = Literal["file", "mask"]
LABEL_SOURCES: tuple[str, ...] = get_args(LabelSource)
Similarity = Literal["sigmoid", "cosine"]
SIMILARITIES: tuple[str, ...] = get_args(Similarity)
Amp = Literal["none", "bf16", "fp16"]
AMPS: tuple[str, ...] = get_args(Amp)
