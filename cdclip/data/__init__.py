"""Datasets (PASCAL VOC, MS COCO), class names, transforms and label PNGs.

Light on import: every name resolves on first access (PEP 562), so ``import cdclip.data`` does
not import torchvision's transforms or pycocotools.

    from cdclip.data import VOCSegmentation, train_transform
    ds = VOCSegmentation("VOC2012", "train_aug", transform=train_transform())
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdclip._lazy import lazy_attributes

# public name -> module that defines it
_LAZY: dict[str, str] = {
    # class names
    "VOC_CLASSES": "cdclip.data.classnames",
    "VOC_CLASSES_WITH_BG": "cdclip.data.classnames",
    "COCO_CLASSES": "cdclip.data.classnames",
    "COCO_CLASSES_WITH_BG": "cdclip.data.classnames",
    "COCO_CATEGORY_IDS": "cdclip.data.classnames",
    "COCO_ID_TO_INDEX": "cdclip.data.classnames",
    "class_names": "cdclip.data.classnames",
    # datasets
    "VOCSegmentation": "cdclip.data.voc",
    "voc_labels_from_xml": "cdclip.data.voc",
    "COCOSegmentation": "cdclip.data.coco",
    "coco_semantic_mask": "cdclip.data.coco",
    "coco_labels": "cdclip.data.coco",
    "ImageFolder": "cdclip.data.folder",
    "DataFileError": "cdclip.data._io",
    "MissingFilesError": "cdclip.data._io",
    "read_image": "cdclip.data._io",
    "read_mask": "cdclip.data._io",
    "read_split": "cdclip.data._io",
    # transforms
    "CLIP_MEAN": "cdclip.data.transforms",
    "CLIP_STD": "cdclip.data.transforms",
    "RandomRescale": "cdclip.data.transforms",
    "train_transform": "cdclip.data.transforms",
    "eval_transform": "cdclip.data.transforms",
    "normalize": "cdclip.data.transforms",
    "denormalize": "cdclip.data.transforms",
    # label PNGs and pictures
    "voc_palette": "cdclip.data.palette",
    "coco_palette": "cdclip.data.palette",
    "save_label_png": "cdclip.data.palette",
    "load_label_png": "cdclip.data.palette",
    "colorize": "cdclip.data.palette",
    "overlay": "cdclip.data.palette",
    "heatmap": "cdclip.data.palette",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


if TYPE_CHECKING:
    from cdclip.data._io import DataFileError, MissingFilesError, read_image, read_mask, read_split
    from cdclip.data.classnames import (
        COCO_CATEGORY_IDS,
        COCO_CLASSES,
        COCO_CLASSES_WITH_BG,
        COCO_ID_TO_INDEX,
        VOC_CLASSES,
        VOC_CLASSES_WITH_BG,
        class_names,
    )
    from cdclip.data.coco import COCOSegmentation, coco_labels, coco_semantic_mask
    from cdclip.data.folder import ImageFolder
    from cdclip.data.palette import (
        coco_palette,
        colorize,
        heatmap,
        load_label_png,
        overlay,
        save_label_png,
        voc_palette,
    )
    from cdclip.data.transforms import (
        CLIP_MEAN,
        CLIP_STD,
        RandomRescale,
        denormalize,
        eval_transform,
        normalize,
        train_transform,
    )
    from cdclip.data.voc import VOCSegmentation, voc_labels_from_xml
