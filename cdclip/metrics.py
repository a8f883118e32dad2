"""Segmentation metrics from a confusion matrix (mIoU as in the VOC/COCO WSSS literature).

The matrix ``M[t, p]`` counts pixels whose ground truth is ``t`` and prediction ``p``; pixels whose
ground truth is ``ignore_index`` (255, VOC's void) are never counted. Per-class IoU is
``M[c, c] / (Σ_p M[c, p] + Σ_t M[t, c] − M[c, c])`` and is NaN for a class that appears neither
in the ground truth nor in the prediction; mIoU is the NaN-ignoring mean, a fraction in [0, 1].

Counts accumulate in int64 on the device of the first update (no host sync per batch); matrices
of several processes are summed with :meth:`ConfusionMatrix.all_reduce`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["ConfusionMatrix", "confusion_matrix", "iou_from_confusion"]


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dtype == torch.bool:
        x = x.long()
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name}: expected integer class indices, got dtype {x.dtype} (take the argmax of scores first)")
    return x


def _check_num_classes(num_classes: object) -> None:
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")


def confusion_matrix(
    pred: torch.Tensor | np.ndarray,
    target: torch.Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Confusion matrix of integer predictions against integer targets.

    Pixels whose target equals ``ignore_index`` are dropped. Any other target or prediction
    outside ``[0, num_classes)`` raises ``ValueError`` (a silent wrong count is worse). Empty
    inputs (zero pixels) are valid and count nothing.

    Shape:
        - pred: (*) integer, on any device
        - target: (*) integer, same shape
        - output: (num_classes, num_classes) int64, rows = target, columns = prediction
    """
    _check_num_classes(num_classes)
    pred_t = _as_tensor(pred, "pred")
    target_t = _as_tensor(target, "target")
    if pred_t.shape != target_t.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred_t.shape)} and {tuple(target_t.shape)}")
    if pred_t.device != target_t.device:
        target_t = target_t.to(pred_t.device)
    pred_t = pred_t.reshape(-1).long()
    target_t = target_t.reshape(-1).long()
    if ignore_index is not None:
        keep = target_t != ignore_index
        pred_t, target_t = pred_t[keep], target_t[keep]
    n = int(num_classes)
    if target_t.numel():
        bad_t = (target_t < 0) | (target_t >= n)
        bad_p = (pred_t < 0) | (pred_t >= n)
        bad = torch.stack([bad_t.any(), bad_p.any()]).tolist()  # one host sync for both checks
        if bad[0]:
            values = torch.unique(target_t[bad_t]).tolist()[:10]
            raise ValueError(
                f"target: values must be in [0, {n}) or ignore_index={ignore_index}, got {values}"
            )
        if bad[1]:
            values = torch.unique(pred_t[bad_p]).tolist()[:10]
            raise ValueError(f"pred: values must be in [0, {n}) where the target is not ignored, got {values}")
    counts = torch.bincount(target_t * n + pred_t, minlength=n * n)
    return counts.reshape(n, n)


def iou_from_confusion(matrix: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN where a class is in neither GT nor prediction.

    Shape:
        - matrix: (K, K)
        - output: (K,) float64
    """
    m = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    tp = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


class ConfusionMatrix:
    """Accumulating confusion matrix with IoU, mIoU and a printable per-class table.

    Args:
        num_classes: number of classes including background (VOC 21, COCO 81).
        ignore_index: ground-truth value never counted (VOC void 255); ``None`` counts everything.

    Shape:
        - update pred: (*) integer class indices
        - update target: (*) integer class indices, same shape
        - matrix: (num_classes, num_classes) int64, rows = target, columns = prediction

    Example::

        cm = ConfusionMatrix(21)
        for pred, mask in batches:
            cm.update(pred, mask)
        cm.all_reduce()          # sum over processes; no-op without torch.distributed
        print(cm.table(VOC_CLASSES_WITH_BG)); score = cm.miou()
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        _check_num_classes(num_classes)
        if ignore_index is not None and (not isinstance(ignore_index, numbers.Integral) or isinstance(ignore_index, bool)):
            raise ValueError(f"ignore_index: expected an int or None, got {ignore_index!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget every count (keeps the device)."""
        self.matrix = torch.zeros_like(self.matrix)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add the pixels of one prediction/target pair (any device).

        Shape:
            - pred: (*) class ids
            - target: (*) class ids, the shape of ``pred``
        """
        counts = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if counts.device != self.matrix.device:
            if not self.matrix.any():  # follow the data: accumulate where it lives
                self.matrix = self.matrix.to(counts.device)
            else:
                counts = counts.to(self.matrix.device)
        self.matrix += counts

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. gathered by hand); returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"merge: num_classes differ ({self.num_classes} vs {other.num_classes})")
        self.matrix += other.matrix.to(self.matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrices of all processes under ``torch.distributed``; a no-op otherwise.

        With the NCCL backend the counts travel through the current CUDA device.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        from cdclip.distributed import collective_device

        device = self.matrix.device
        buffer = self.matrix.to(collective_device(device), copy=True)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        self.matrix = buffer.to(device)
        return self

    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1], NaN where a class is in neither GT nor prediction.

        Shape:
            - output: (num_classes,) float64
        """
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        """Mean IoU over the classes present in GT or prediction (a fraction; NaN if nothing counted)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly (NaN if nothing counted)."""
        m = self.matrix.double()
        total = float(m.sum())
        return float(m.diagonal().sum()) / total if total > 0 else float("nan")

    def summary(self) -> dict[str, float | list[float]]:
        """``{"miou", "pixel_accuracy", "iou"}`` (fractions) for logging as JSON."""
        return {"miou": self.miou(), "pixel_accuracy": self.pixel_accuracy(), "iou": self.iou().tolist()}

    def table(self, class_names: Sequence[str] | None = None, digits: int = 2) -> str:
        """Per-class IoU in percent, one class per line, then the mIoU (a string to print).

        Classes absent from both GT and prediction show ``-``.
        """
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"class_names: expected {self.num_classes} names, got {len(names)}")
        width = max(len("mIoU"), *(len(n) for n in names))
        lines = [f"| {'class':<{width}} | IoU (%) |", f"|{'-' * (width + 2)}|---------|"]
        for name, value in zip(names, self.iou()):
            cell = "-" if np.isnan(value) else f"{100.0 * value:.{digits}f}"
            lines.append(f"| {name:<{width}} | {cell:>7} |")
        miou = self.miou()
        cell = "-" if np.isnan(miou) else f"{100.0 * miou:.{digits}f}"
        lines.append(f"| {'mIoU':<{width}} | {cell:>7} |")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, pixels={int(self.matrix.sum())})"
