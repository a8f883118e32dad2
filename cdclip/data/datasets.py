"""The segmentation dataset a name stands for: one builder for the training pipeline and the commands.

``segmentation_dataset("voc", root, split, ...)`` is :class:`~cdclip.data.voc.VOCSegmentation`,
``"coco"`` :class:`~cdclip.data.coco.COCOSegmentation`; both are imported only when asked for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdclip.choices import DATASETS, check_choice

__all__ = ["find_mask_dir", "segmentation_dataset"]


def segmentation_dataset(
    dataset: str, root: str | os.PathLike[str], split: str, *, require_labels: bool | None = None, **kwargs: Any
) -> Any:
    """The ``"voc"`` or ``"coco"`` dataset at ``root`` / ``split``.

    Args:
        dataset: ``"voc"`` or ``"coco"``.
        root: the dataset folder.
        split: the split name (or, for VOC, a split file).
        require_labels: VOC only (COCO's labels come with its annotations): raise when no label
            source exists; ``None``, the dataset's default.
        **kwargs: the dataset's other constructor arguments (``transform``, ``label_file``,
            ``mask_dir``, ``skip_bad`` ...).

    Shape:
        - item["image"]: (3, H, W) uint8 (before the transform)
        - item["labels"]: (C,) float32 multi-hot
    """
    check_choice(dataset, "dataset", DATASETS)
    if dataset == "voc":
        from cdclip.data.voc import VOCSegmentation

        return VOCSegmentation(root, split, require_labels=require_labels, **kwargs)
    from cdclip.data.coco import COCOSegmentation

    return COCOSegmentation(root, split, **kwargs)


def find_mask_dir(root: Path, mask_dir: str | os.PathLike[str] | None, candidates: Sequence[Path]) -> Path | None:
    """``root / mask_dir``, which must exist, when given; else the first candidate that exists (or None)."""
    if mask_dir is not None:
        folder = root / mask_dir
        if not folder.is_dir():
            raise FileNotFoundError(f"mask_dir: folder not found: {folder}")
        return folder
    return next((c for c in candidates if c.is_dir()), None)
