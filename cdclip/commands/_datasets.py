"""The ``--voc ROOT`` / ``--coco ROOT`` dataset of a command (``cdclip eval``, ``predict``, ``refine``)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

__all__ = ["dataset_from_args"]


def dataset_from_args(args: argparse.Namespace, default_splits: Mapping[str, str], **kwargs: Any) -> tuple[Any, str, str]:
    """``(dataset, "voc" or "coco", split)`` of ``--voc`` / ``--coco`` and ``--split``.

    Args:
        args: the parsed command line (``voc``, ``coco`` and ``split``).
        default_splits: the command's split per dataset when ``--split`` is not given.
        **kwargs: passed to :func:`~cdclip.data.datasets.segmentation_dataset`.
    """
    from cdclip.data.datasets import segmentation_dataset

    name = "voc" if args.voc is not None else "coco"
    split = args.split or default_splits[name]
    return segmentation_dataset(name, args.voc if name == "voc" else args.coco, split, **kwargs), name, split
