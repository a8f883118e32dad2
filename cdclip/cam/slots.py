"""Per-image class slots: the present classes of each image, packed to the front.

A batch whose images hold different classes is handled as ``S = max_b |present_b|`` slots per
image instead of the union of the batch's classes: slot ``j`` of image ``b`` is its ``j``-th
present class in label order, and slots past an image's count are padding (``valid`` False,
maps 0). GradCAM needs one backward pass per slot, and refinement and PAR work on ``1 + S``
channels, so a batch of four images with two classes each costs two passes, not eight.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ClassSlots", "class_slots", "gather_slots", "scatter_slots"]


class ClassSlots(NamedTuple):
    """Class index and validity of each slot.

    Shape:
        - index: (B, S) int64, the class of each slot (0 on padding)
        - valid: (B, S) bool
    """

    index: Tensor
    valid: Tensor

    @property
    def count(self) -> int:
        """``S``, the number of slots per image."""
        return int(self.index.shape[1])


def class_slots(present: Tensor) -> ClassSlots:
    """Pack each image's present classes (in label order) into slots.

    Shape:
        - present: (B, C) bool
        - output.index, output.valid: (B, S) with S = the largest number of classes in one image
    """
    present = present.bool()
    counts = present.sum(dim=1)
    slots = int(counts.max()) if present.numel() else 0
    # a stable sort of "absent" puts the present classes first, in their label order
    order = torch.sort((~present).to(torch.uint8), dim=1, stable=True).indices[:, :slots]
    valid = torch.arange(slots, device=present.device)[None, :] < counts[:, None]
    return ClassSlots(order.masked_fill(~valid, 0), valid)


def gather_slots(maps: Tensor, slots: ClassSlots) -> Tensor:
    """The maps of each image's slots (0 on padding).

    Shape:
        - maps: (B, C, h, w)
        - output: (B, S, h, w)
    """
    b, _, h, w = maps.shape
    index = slots.index.to(maps.device)[:, :, None, None].expand(b, slots.count, h, w)
    return maps.gather(1, index) * slots.valid.to(maps.device)[:, :, None, None].to(maps.dtype)


def scatter_slots(maps: Tensor, slots: ClassSlots, num_classes: int) -> Tensor:
    """Inverse of :func:`gather_slots`: slot maps back to their classes (0 for absent classes).

    Shape:
        - maps: (B, S, h, w)
        - output: (B, C, h, w)
    """
    b, s, h, w = maps.shape
    out = maps.new_zeros(b, num_classes, h, w)
    if s == 0:
        return out
    index = slots.index.to(maps.device)[:, :, None, None].expand(b, s, h, w)
    valid = slots.valid.to(maps.device)[:, :, None, None]
    # padding slots point at class 0 with a zero map; add, so they never overwrite a real class 0
    return out.scatter_add(1, index, maps * valid.to(maps.dtype))
