"""Class names of the two benchmarks, in the order their label files and masks use.

* PASCAL VOC 2012: 20 foreground classes; mask value ``k`` (1..20) is ``VOC_CLASSES[k - 1]``,
  0 is background, 255 is void.
* MS COCO (2014/2017 instances): 80 "thing" categories in ascending category-id order; semantic
  mask value ``k`` (1..80) is ``COCO_CLASSES[k - 1]`` whose JSON category id is
  ``COCO_CATEGORY_IDS[k - 1]`` (ids are not contiguous: 12, 26, 29, 30, 45, 66, 68, 69, 71, 83
  are unused).

The names are the datasets' own spellings (``"diningtable"``, ``"tvmonitor"`` for VOC; the
``instances_*.json`` ``categories[].name`` strings for COCO). Prompt-friendly renamings belong in
:mod:`cdclip.data.prompts`, not here.
"""

from __future__ import annotations

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "COCO_CLASSES_WITH_BG",
    "COCO_ID_TO_INDEX",
    "VOC_CLASSES",
    "VOC_CLASSES_WITH_BG",
    "class_names",
]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle",
    "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)  # fmt: skip

# JSON category id -> semantic mask value (1..80); 0 stays background.
COCO_ID_TO_INDEX: dict[int, int] = {cid: i + 1 for i, cid in enumerate(COCO_CATEGORY_IDS)}

VOC_CLASSES_WITH_BG: tuple[str, ...] = ("background", *VOC_CLASSES)
COCO_CLASSES_WITH_BG: tuple[str, ...] = ("background", *COCO_CLASSES)

assert len(VOC_CLASSES) == 20 and len(COCO_CLASSES) == 80 and len(COCO_CATEGORY_IDS) == 80


def class_names(dataset: str, background: bool = False) -> tuple[str, ...]:
    """Class names of ``dataset`` (``"voc"`` or ``"coco"``), optionally with ``"background"`` first."""
    key = dataset.lower()
    if key in ("voc", "voc2012", "pascal"):
        return VOC_CLASSES_WITH_BG if background else VOC_CLASSES
    if key in ("coco", "coco2014", "coco2017", "mscoco"):
        return COCO_CLASSES_WITH_BG if background else COCO_CLASSES
    raise ValueError(f"class_names: dataset must be 'voc' or 'coco', got {dataset!r}")
