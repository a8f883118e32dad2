"""MS COCO (2014/2017 instances) as semantic segmentation with image-level labels.

Layout (the standard one)::

    coco/
      <split>/<file_name>.jpg                 e.g. train2014/COCO_train2014_000000000009.jpg
      annotations/instances_<split>.json
      SegmentationClass/<split>/<stem>.png    optional pre-rasterised masks (``cdclip coco-masks``)

Semantic masks: 0 background, 1..80 the categories in category-id order (``COCO_CLASSES``), 255
void. Rasterisation (with ``pycocotools.mask``):

* non-crowd instances are painted largest first, so a small object lying on a large one (a cup
  on a table) stays visible; where instances of equal area overlap the later annotation wins;
* crowd regions (``iscrowd=1``) become void (255) where no non-crowd instance covers them.

Image-level labels are the categories of the image's non-crowd annotations (a crowd region alone
does not make a class present), or come from a ``cls_labels_onehot.npy``-style ``label_file``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from cdclip.constants import VOID
from cdclip.data._io import (
    DataFileError,
    SegmentationDataset,
    list_stems,
    load_label_dict,
    read_image,
    read_mask,
    read_split,
)
from cdclip.data.classnames import COCO_CATEGORY_IDS, COCO_CLASSES, COCO_ID_TO_INDEX
from cdclip.data.datasets import find_mask_dir

__all__ = ["COCOSegmentation", "coco_labels", "coco_semantic_mask", "load_coco_index"]


def _mask_api() -> Any:
    try:
        from pycocotools import mask as mask_api
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rasterising COCO masks needs pycocotools: pip install cdclip[coco] "
            "(or pre-rasterise once with `cdclip coco-masks` where it is installed)"
        ) from err
    return mask_api


def _instance_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Binary (H, W) uint8 mask of one annotation's polygons or RLE."""
    api = _mask_api()
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged
        rle = api.merge(api.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = api.frPyObjects(segmentation, height, width)  # uncompressed RLE
    elif isinstance(segmentation, dict):
        rle = segmentation  # compressed RLE
    else:
        raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")
    with warnings.catch_warnings():
        # pycocotools' Cython RLE objects predate NumPy 2's ``copy=`` protocol and warn on decode
        warnings.simplefilter("ignore", DeprecationWarning)
        return api.decode(rle)


def coco_semantic_mask(annotations: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Semantic mask of one image from its instance annotations (see the module docstring).

    Shape:
        - output: (height, width) uint8, 0 background, 1..80 classes, 255 crowd (void)
    """
    semantic = np.zeros((height, width), dtype=np.uint8)
    covered = np.zeros((height, width), dtype=bool)
    things: list[tuple[int, int, np.ndarray]] = []
    crowd = np.zeros((height, width), dtype=bool)
    for order, ann in enumerate(annotations):
        category = int(ann["category_id"])
        if category not in COCO_ID_TO_INDEX:
            raise ValueError(f"annotation {ann.get('id')}: unknown COCO category id {category}")
        binary = _instance_mask(ann["segmentation"], height, width).astype(bool)
        if ann.get("iscrowd", 0):
            crowd |= binary
        else:
            things.append((int(binary.sum()), order, binary))
    # largest first; among equal areas keep annotation order (later wins)
    for _, order, binary in sorted(things, key=lambda t: (-t[0], t[1])):
        semantic[binary] = COCO_ID_TO_INDEX[int(annotations[order]["category_id"])]
        covered |= binary
    semantic[crowd & ~covered] = VOID
    return semantic


def coco_labels(annotations: Sequence[dict[str, Any]]) -> np.ndarray:
    """Multi-hot labels from the non-crowd annotations of one image.

    Shape:
        - output: (80,) float32
    """
    labels = np.zeros(len(COCO_CLASSES), dtype=np.float32)
    for ann in annotations:
        if not ann.get("iscrowd", 0):
            labels[COCO_ID_TO_INDEX[int(ann["category_id"])] - 1] = 1.0
    return labels


def load_coco_index(annotation_file: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], dict[int, list]]:
    """Images (sorted by id) and annotations grouped by image id from an ``instances_*.json``."""
    path = Path(annotation_file)
    if not path.is_file():
        raise DataFileError(path, "COCO annotation file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise DataFileError(path, f"cannot read COCO annotations ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict) or "images" not in data:
        raise DataFileError(path, "not a COCO instances file (no 'images' list)")
    categories = [int(c["id"]) for c in data.get("categories", [])]
    if categories and sorted(categories) != list(COCO_CATEGORY_IDS):
        raise DataFileError(path, "categories differ from the 80 COCO thing categories")
    by_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in data["images"]}
    for ann in data.get("annotations", []):
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    images = sorted(data["images"], key=lambda im: int(im["id"]))
    return images, by_image


class COCOSegmentation(SegmentationDataset):
    """MS COCO semantic segmentation samples with image-level labels.

    Args:
        root: the COCO folder (holding ``<split>/`` and ``annotations/``).
        split: ``"train2014"``, ``"val2014"``, ``"train2017"``, ``"val2017"`` ...
        transform: called on the sample dict (see :mod:`cdclip.data.transforms`).
        label_file: optional ``cls_labels_onehot.npy``-style file keyed by file stem; default: the
            labels of the non-crowd annotations in the JSON.
        mask_dir: pre-rasterised masks (absolute or relative to ``root``); default
            ``SegmentationClass/<split>`` when it exists, else masks are rasterised on the fly.
        skip_bad: skip (and count in ``self.skipped``) samples with missing or broken files.
        annotation_file: default ``annotations/instances_<split>.json``.
        image_dir: default ``<split>`` (relative to ``root``).
        split_file: optional list of image stems or ids restricting the split.
        mask_values: ``"index"`` (pre-made masks hold 0..80) or ``"category_id"`` (they hold raw
            COCO category ids, as some converters write; mapped to 0..80 on reading).
        drop_unlabelled: leave out images with no non-crowd annotation.

    Item: ``{"image": (3, H, W) uint8, "mask": (H, W) int64 (255 void), "labels": (80,) float32,
    "name": file stem}``.

    Shape:
        - image: (3, H, W) uint8
        - mask: (H, W) int64
        - labels: (C,) float32 with C = 80
    """

    num_classes = len(COCO_CLASSES)
    class_names = COCO_CLASSES

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train2014",
        transform: Callable[[dict[str, Any]], Any] | None = None,
        label_file: str | os.PathLike[str] | None = None,
        mask_dir: str | os.PathLike[str] | None = None,
        skip_bad: bool = False,
        *,
        annotation_file: str | os.PathLike[str] | None = None,
        image_dir: str | os.PathLike[str] | None = None,
        split_file: str | os.PathLike[str] | None = None,
        mask_values: str = "index",
        drop_unlabelled: bool = False,
    ) -> None:
        super().__init__(transform=transform, skip_bad=skip_bad)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: COCO folder not found: {self.root}")
        if mask_values not in ("index", "category_id"):
            raise ValueError(f"mask_values: expected 'index' or 'category_id', got {mask_values!r}")
        self.split = split
        self.mask_values = mask_values
        self.annotation_file = (
            Path(annotation_file) if annotation_file else self.root / "annotations" / f"instances_{split}.json"
        )
        self.image_dir = self.root / (image_dir if image_dir is not None else split)
        images, self._annotations = load_coco_index(self.annotation_file)

        images = self._select_images(images, split_file, drop_unlabelled)
        self._images = {Path(im["file_name"]).stem: im for im in images}
        self.names = list(self._images)

        self._labels: dict[str, np.ndarray] | None = None
        self.label_file = Path(label_file) if label_file is not None else None
        if self.label_file is not None:
            self._labels = load_label_dict(self.label_file, self.num_classes)
        self.mask_dir: Path | None = find_mask_dir(self.root, mask_dir, (self.root / "SegmentationClass" / split,))
        self._drop_missing_files()

    def _select_images(
        self, images: list[dict[str, Any]], split_file: str | os.PathLike[str] | None, drop_unlabelled: bool
    ) -> list[dict[str, Any]]:
        """The images of ``split_file`` (stems or ids), without the unlabelled ones if asked."""
        if split_file is not None:
            wanted = set(read_split(split_file))
            images = [im for im in images if Path(im["file_name"]).stem in wanted or str(im["id"]) in wanted
                      or f"{int(im['id']):012d}" in wanted]
        if drop_unlabelled:
            images = [im for im in images if coco_labels(self._annotations.get(int(im["id"]), [])).any()]
        return images

    def _drop_missing_files(self) -> None:
        """Every image without its JPEG, mask or label, reported at once (or skipped with ``skip_bad``)."""
        image_files = {e.name for e in os.scandir(self.image_dir)} if self.image_dir.is_dir() else set()
        self._drop_missing(
            [(n, self.image_dir / self._images[n]["file_name"]) for n in self.names
             if self._images[n]["file_name"] not in image_files],
            "image(s)",
        )
        if self.mask_dir is not None:
            stems = list_stems(self.mask_dir, ".png")
            self._drop_missing(
                [(n, self.mask_dir / f"{n}.png") for n in self.names
                 if n not in stems and f"{int(self._images[n]['id']):012d}" not in stems],
                "mask(s)",
            )
        if self._labels is not None:
            self._drop_missing([(n, self.label_file) for n in self.names if n not in self._labels], "label(s)")

    def annotations_of(self, name: str) -> list[dict[str, Any]]:
        """The instance annotations of image ``name`` (file stem)."""
        return self._annotations.get(int(self._images[name]["id"]), [])

    def labels_of(self, name: str) -> np.ndarray:
        """(80,) float32 multi-hot labels of ``name``."""
        if self._labels is not None:
            return self._labels[name]
        return coco_labels(self.annotations_of(name))

    def mask_of(self, name: str) -> tv_tensors.Mask:
        """(H, W) int64 semantic mask of ``name``: from ``mask_dir`` if set, else rasterised."""
        info = self._images[name]
        if self.mask_dir is None:
            semantic = coco_semantic_mask(self.annotations_of(name), int(info["height"]), int(info["width"]))
            return tv_tensors.Mask(torch.from_numpy(semantic.astype(np.int64)))
        path = self.mask_dir / f"{name}.png"
        if not path.is_file():
            path = self.mask_dir / f"{int(info['id']):012d}.png"
        mask = read_mask(path)
        if self.mask_values == "category_id":
            table = np.full(256, VOID, dtype=np.int64)
            table[0] = 0
            for category, index in COCO_ID_TO_INDEX.items():
                table[category] = index
            mask = tv_tensors.Mask(torch.from_numpy(table)[mask.clamp(0, 255)])
        elif int(mask.max()) > len(COCO_CLASSES) and bool(((mask > len(COCO_CLASSES)) & (mask != VOID)).any()):
            raise DataFileError(path, "mask values above 80 (other than 255): pass mask_values='category_id'?")
        return mask

    def load(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        info = self._images[name]
        image = read_image(self.image_dir / info["file_name"])
        mask = self.mask_of(name)
        if tuple(mask.shape) != tuple(image.shape[-2:]):
            raise DataFileError(
                self.mask_dir / f"{name}.png" if self.mask_dir else self.image_dir / info["file_name"],
                f"mask size {tuple(mask.shape)} differs from image size {tuple(image.shape[-2:])}",
            )
        return {"image": image, "mask": mask, "labels": self._labels_tensor(self.labels_of(name)), "name": name}

    def __repr__(self) -> str:
        masks = str(self.mask_dir) if self.mask_dir else "rasterised"
        return f"COCOSegmentation(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, masks={masks!r})"
