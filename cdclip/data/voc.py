"""PASCAL VOC 2012 (with the SBD augmentation) for weakly supervised semantic segmentation.

Layout (``root`` is the ``VOC2012`` folder)::

    VOC2012/
      JPEGImages/<id>.jpg
      SegmentationClassAug/<id>.png       (or SegmentationClass/<id>.png)
      ImageSets/Segmentation/{train,train_aug,val,test}.txt
      cls_labels_onehot.npy               (or Annotations/<id>.xml)

Image-level labels come from the label file the WSSS repos ship (``cls_labels_onehot.npy``, built
from the VOC XML annotations) or from the XML annotations themselves — never from the masks: for
some SBD images the mask misses a labelled class, and reading labels from masks leaks ground
truth into weak supervision.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cdclip.data._io import (
    DataFileError,
    SegmentationDataset,
    list_stems,
    load_label_dict,
    read_image,
    read_mask,
    read_split,
)
from cdclip.data.classnames import VOC_CLASSES
from cdclip.data.datasets import find_mask_dir

__all__ = ["VOCSegmentation", "voc_labels_from_xml"]

_CLASS_INDEX = {name: i for i, name in enumerate(VOC_CLASSES)}


def voc_labels_from_xml(path: str | os.PathLike[str]) -> np.ndarray:
    """Multi-hot foreground labels from a VOC XML annotation (every ``<object>``, difficult ones too).

    Shape:
        - output: (20,) float32
    """
    path = Path(path)
    try:
        tree = ET.parse(path)
    except FileNotFoundError as err:
        raise DataFileError(path, "annotation file not found") from err
    except (ET.ParseError, OSError) as err:
        raise DataFileError(path, f"cannot parse annotation ({type(err).__name__}: {err})") from err
    labels = np.zeros(len(VOC_CLASSES), dtype=np.float32)
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in _CLASS_INDEX:
            raise DataFileError(path, f"unknown VOC class {name!r}")
        labels[_CLASS_INDEX[name]] = 1.0
    return labels


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012 segmentation samples with image-level labels.

    Args:
        root: the ``VOC2012`` folder.
        split: ``"train"``, ``"train_aug"``, ``"val"``, ``"test"`` (a file in
            ``ImageSets/Segmentation``), or the path of a split file.
        transform: called on the sample dict (see :mod:`cdclip.data.transforms`).
        label_file: ``cls_labels_onehot.npy``-style label file; default ``root/cls_labels_onehot.npy``,
            else the XML files in ``root/Annotations``.
        mask_dir: folder of label PNGs (absolute, or relative to ``root``); default
            ``SegmentationClassAug``, else ``SegmentationClass``. Samples have no ``"mask"`` when
            the split is ``"test"`` or no mask folder exists.
        skip_bad: skip (and count in ``self.skipped``) samples whose files are missing or broken
            instead of raising.
        image_dir: folder of JPEGs relative to ``root``.
        require_labels: raise when no label source exists (default: every split except ``"test"``).

    Item: ``{"image": (3, H, W) uint8 tv_tensors.Image, "mask": (H, W) int64 tv_tensors.Mask
    (255 = void), "labels": (20,) float32 multi-hot, "name": str}`` before the transform.

    Shape:
        - image: (3, H, W) uint8
        - mask: (H, W) int64
        - labels: (C,) float32 with C = 20

    Raises:
        MissingFilesError: listing, all at once, the split's ids that have no image (or no mask,
            or no label), unless ``skip_bad``.
    """

    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | os.PathLike[str] = "train_aug",
        transform: Callable[[dict[str, Any]], Any] | None = None,
        label_file: str | os.PathLike[str] | None = None,
        mask_dir: str | os.PathLike[str] | None = None,
        skip_bad: bool = False,
        *,
        image_dir: str = "JPEGImages",
        require_labels: bool | None = None,
    ) -> None:
        super().__init__(transform=transform, skip_bad=skip_bad)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: VOC2012 folder not found: {self.root}")
        self.split_file = self._split_path(split)
        self.split = self.split_file.stem
        self.names = read_split(self.split_file)
        self.image_dir = self.root / image_dir
        is_test = self.split == "test"
        masks = (self.root / "SegmentationClassAug", self.root / "SegmentationClass")
        self.mask_dir: Path | None = find_mask_dir(self.root, mask_dir, () if is_test else masks)
        self._find_labels(label_file)
        needs_labels = (not is_test) if require_labels is None else require_labels
        if needs_labels and self._labels is None and self.annotation_dir is None:
            raise FileNotFoundError(
                f"label_file: no image-level labels for {self.root}: expected cls_labels_onehot.npy or "
                "Annotations/*.xml there, or pass label_file=; labels are never read from masks"
            )
        self._drop_missing_files()

    def _find_labels(self, label_file: str | os.PathLike[str] | None) -> None:
        """The label source: ``label_file``, else ``cls_labels_onehot.npy``, else ``Annotations/*.xml``."""
        self.label_file: Path | None = None
        self.annotation_dir: Path | None = None
        self._labels: dict[str, np.ndarray] | None = None
        if label_file is not None:
            self.label_file = Path(label_file)
        elif (self.root / "cls_labels_onehot.npy").is_file():
            self.label_file = self.root / "cls_labels_onehot.npy"
        elif (self.root / "Annotations").is_dir():
            self.annotation_dir = self.root / "Annotations"
        if self.label_file is not None:
            self._labels = load_label_dict(self.label_file, self.num_classes)

    def _drop_missing_files(self) -> None:
        """Every split id without an image, mask or label, reported at once (or skipped with ``skip_bad``)."""
        images = list_stems(self.image_dir, ".jpg")
        self._drop_missing([(n, self.image_dir / f"{n}.jpg") for n in self.names if n not in images], "image(s)")
        if self.mask_dir is not None:
            masks = list_stems(self.mask_dir, ".png")
            self._drop_missing([(n, self.mask_dir / f"{n}.png") for n in self.names if n not in masks], "mask(s)")
        if self._labels is not None:
            label_path = self.label_file or Path()
            self._drop_missing([(n, label_path) for n in self.names if n not in self._labels], "label(s)")
        elif self.annotation_dir is not None:
            xml = list_stems(self.annotation_dir, ".xml")
            self._drop_missing(
                [(n, self.annotation_dir / f"{n}.xml") for n in self.names if n not in xml], "annotation(s)"
            )

    def _split_path(self, split: str | os.PathLike[str]) -> Path:
        as_path = Path(split)
        if as_path.suffix == ".txt" and as_path.is_file():
            return as_path
        folder = self.root / "ImageSets" / "Segmentation"
        path = folder / f"{split}.txt"
        if not path.is_file():
            known = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
            raise FileNotFoundError(f"split: no split file {path} (available: {', '.join(known) or 'none'})")
        return path

    @property
    def has_masks(self) -> bool:
        return self.mask_dir is not None

    def labels_of(self, name: str) -> np.ndarray | None:
        """The (20,) float32 multi-hot label of ``name`` from the label source (None if there is none)."""
        if self._labels is not None:
            return self._labels[name]
        if self.annotation_dir is not None:
            return voc_labels_from_xml(self.annotation_dir / f"{name}.xml")
        return None

    def load(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        sample: dict[str, Any] = {"image": read_image(self.image_dir / f"{name}.jpg")}
        if self.mask_dir is not None:
            mask = read_mask(self.mask_dir / f"{name}.png")
            if tuple(mask.shape) != tuple(sample["image"].shape[-2:]):
                raise DataFileError(
                    self.mask_dir / f"{name}.png",
                    f"mask size {tuple(mask.shape)} differs from image size {tuple(sample['image'].shape[-2:])}",
                )
            sample["mask"] = mask
        labels = self.labels_of(name)
        if labels is not None:
            sample["labels"] = self._labels_tensor(labels)
        sample["name"] = name
        return sample

    def __repr__(self) -> str:
        source = self.label_file or self.annotation_dir
        return (
            f"VOCSegmentation(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
            f"masks={str(self.mask_dir) if self.mask_dir else None!r}, labels={str(source) if source else None!r})"
        )
