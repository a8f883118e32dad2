"""A folder of images with one fixed set of (all-present) classes: the input of ``cdclip cams --images``.

Images are decoded by :func:`~cdclip.data._io.read_image`, the reader of the VOC and COCO
datasets (EXIF orientation applied, 16-bit scaled to 8 bit, grey/palette/CMYK/alpha to RGB), and
bad files follow the same policy: with ``skip_bad=True`` (the default for a folder, where one
broken photo should not stop a run) an empty, truncated or undecodable image is skipped and
recorded in ``dataset.skipped``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cdclip.data._io import SegmentationDataset, read_image

__all__ = ["IMAGE_SUFFIXES", "ImageFolder"]

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """The file stems, or the whole file name for stems that two files share (``a.jpg``, ``a.png``)."""
    counts: dict[str, int] = {}
    for p in paths:
        counts[p.stem] = counts.get(p.stem, 0) + 1
    return [p.stem if counts[p.stem] == 1 else p.name for p in paths]


class ImageFolder(SegmentationDataset):
    """The images directly inside ``root`` (sorted by file name), all with the same labels.

    Args:
        root: the folder; files whose suffix is in ``suffixes`` (any case) are images, sub-folders
            and other files are ignored.
        class_names: the foreground classes, every one taken as present in every image.
        transform: called on the sample dict.
        skip_bad: skip (and record in ``self.skipped``) images that cannot be decoded instead of
            raising :class:`~cdclip.data._io.DataFileError` (default True).
        suffixes: the image file suffixes, lower case with the dot.

    Item: ``{"image": (3, H, W) uint8 tv_tensors.Image, "labels": (C,) float32 ones, "name": str}``
    before the transform; ``name`` is the file stem (the file name when two files share a stem).

    Shape:
        - image: (3, H, W) uint8
        - labels: (C,) float32

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no image.
        ValueError: ``class_names`` is empty.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        class_names: Sequence[str],
        transform: Callable[[dict[str, Any]], Any] | None = None,
        skip_bad: bool = True,
        *,
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
    ) -> None:
        super().__init__(transform=transform, skip_bad=skip_bad)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: image folder not found: {self.root}")
        if not class_names:
            raise ValueError("class_names: expected at least one class name, got none")
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        wanted = {s.lower() for s in suffixes}
        with os.scandir(self.root) as entries:
            self.paths = sorted(
                Path(e.path) for e in entries if Path(e.name).suffix.lower() in wanted and e.is_file()
            )
        if not self.paths:
            raise FileNotFoundError(f"root: no images ({', '.join(sorted(wanted))}) in {self.root}")
        self.names = _unique_names(self.paths)
        self._path_of = dict(zip(self.names, self.paths, strict=True))
        self._labels = torch.ones(self.num_classes, dtype=torch.float32)

    def path_of(self, name: str) -> Path:
        """The file of the sample called ``name``."""
        return self._path_of[name]

    def load(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        return {"image": read_image(self._path_of[name]), "labels": self._labels.clone(), "name": name}

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, images={len(self)}, classes={self.class_names!r})"
