"""Multi-scale, flipped evaluation of a segmenter and mIoU scoring (docs/evaluation.md, WeCLIP protocol).

Protocol: the image is resized so that its long side is ``long_side`` (512) times each scale
(1.0 and 0.75), with sides rounded to a multiple of the ViT patch (16); every scale is run on the
image and on its horizontal mirror; each output is upsampled bilinearly to the *original* image
size (the mirrored one is mirrored back first) and the logits are averaged. An optional dense CRF
refines the softmax of the averaged logits with the uint8 image. mIoU comes from a confusion
matrix at ground-truth resolution (void 255 ignored), averaged over the classes present in the
ground truth or in the prediction (:mod:`cdclip.metrics`).

* :func:`multiscale_logits` — the test-time augmentation, for any callable
  ``segmenter(images) -> logits``;
* :class:`Evaluator` — runs a dataset, writes prediction PNGs (resumable), scores, writes
  ``metrics.json`` and a per-class table ``iou.md``; under ``torch.distributed`` every process
  takes every ``world_size``-th image and the confusion matrices are summed;
* :func:`evaluate_labels` — scores a folder of label PNGs already written (predictions, pseudo
  labels) against a dataset's masks.

Shape:
    - image: (B, 3, H, W) normalised float (``multiscale_logits``) or (3, H, W) uint8 (``Evaluator``)
    - logits: (B, K, H, W) float32 at the original size
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cdclip._checks import check_floating, check_rank, check_tensor
from cdclip.atomic import atomic_path, atomic_write_text
from cdclip.constants import CLIP_MEAN, CLIP_STD, VOID
from cdclip.distributed import rank_and_world, sum_over_processes
from cdclip.metrics import ConfusionMatrix
from cdclip.sizes import nearest_scaled_size

__all__ = ["Evaluator", "evaluate_labels", "multiscale_logits", "scaled_size"]

Segmenter = Callable[[Tensor], Tensor]
PREDICTION_DIR = "predictions"


# ---------------------------------------------------------------------------- test-time augmentation
scaled_size = nearest_scaled_size  # the name before cdclip.sizes


def _resize(x: Tensor, size: tuple[int, int], antialias: bool = False) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def multiscale_logits(
    segmenter: Segmenter,
    image: Tensor,
    scales: Sequence[float] = (1.0, 0.75),
    flip: bool = True,
    long_side: int | None = 512,
    multiple: int = 16,
    antialias: bool = True,
) -> Tensor:
    """Average of a segmenter's logits over scales and horizontal flips, at the image's size.

    For each scale the image is resized (bilinear; ``antialias`` when shrinking) to
    :func:`~cdclip.sizes.nearest_scaled_size`; the image and its mirror go through ``segmenter`` in one batch of ``2B``;
    the mirrored half is mirrored back, outputs are upsampled bilinearly (``align_corners=False``,
    which commutes with mirroring) to ``(H, W)`` and all ``len(scales) · (1 + flip)`` maps are
    averaged in float32.

    Args:
        segmenter: ``(b, 3, h, w)`` normalised images → ``(b, K, h', w')`` logits (any ``h', w'``).
        image: normalised images at their original size.
        scales: factors of ``long_side``.
        flip: add the mirrored images.
        long_side: long side at scale 1 (None: the image's own size).
        multiple: input sides are rounded to a multiple of this (the ViT patch size; 1 = no rounding).
        antialias: antialiased bilinear filter when an input is shrunk (as torchvision's resize).

    Shape:
        - image: (B, 3, H, W) float
        - output: (B, K, H, W) float32 (float64 if the segmenter returns float64)
    """
    check_rank(image, "image", "B 3 H W")
    check_floating(image, "image")
    if image.shape[1] != 3:
        raise ValueError(f"image: expected shape (B, 3, H, W), got {tuple(image.shape)}")
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("scales: expected at least one scale, got ()")
    batch, _, height, width = image.shape
    total: Tensor | None = None
    for scale in scales:
        size = nearest_scaled_size((height, width), scale, long_side, multiple)
        x = _resize(image, size, antialias=antialias and size[0] * size[1] < height * width)
        if flip:
            x = torch.cat([x, x.flip(-1)], dim=0)
        logits = check_tensor(segmenter(x), "segmenter output")
        if logits.dim() != 4 or logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"segmenter output: expected shape ({x.shape[0]}, K, h, w) for input {tuple(x.shape)}, "
                f"got {tuple(logits.shape)}"
            )
        logits = logits.float() if logits.dtype != torch.float64 else logits
        if flip:
            # bilinear resizing (align_corners=False) commutes with mirroring, so mirroring back and
            # adding at the output's resolution upsamples once instead of twice
            logits = logits[:batch] + logits[batch:].flip(-1)
        logits = _resize(logits, (height, width))
        total = logits if total is None else total + logits
    assert total is not None
    return total / (len(scales) * (2 if flip else 1))


# ---------------------------------------------------------------------------- helpers
def _plain(x: Any) -> Any:
    """tv_tensors wrappers → plain tensors (their ops otherwise keep the subclass)."""
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _default_class_names(dataset: Any, num_classes: int | None) -> tuple[int, list[str]]:
    names = getattr(dataset, "class_names", None)
    if num_classes is None:
        if names is None:
            raise ValueError("num_classes: the dataset has no class_names; pass num_classes (background included)")
        num_classes = len(names) + 1
    if names is not None and len(names) + 1 == num_classes:
        return num_classes, ["background", *names]
    return num_classes, [str(i) for i in range(num_classes)]


def _summary(matrix: ConfusionMatrix, class_names: Sequence[str], images: int) -> dict[str, Any]:
    return {
        "miou": matrix.miou(),
        "iou": {name: float(v) for name, v in zip(class_names, matrix.iou())},
        "pixel_accuracy": matrix.pixel_accuracy(),
        "images": images,
    }


def _write_report(out_dir: Path, metrics: Mapping[str, Any], table: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plain = dict(metrics)
    plain["miou"] = _nan_to_none(metrics["miou"])
    plain["pixel_accuracy"] = _nan_to_none(metrics["pixel_accuracy"])
    plain["iou"] = {k: _nan_to_none(v) for k, v in metrics["iou"].items()}  # JSON has no NaN
    atomic_write_text(out_dir / "metrics.json", json.dumps(plain, indent=2) + "\n")
    atomic_write_text(out_dir / "iou.md", table + "\n")


def _prediction_values(pred: np.ndarray, void_prediction: str, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply the policy for 255 in a prediction: error, count as background, or skip those pixels."""
    void = pred == VOID
    if not void.any():
        return pred, None
    if void_prediction == "background":
        return np.where(void, 0, pred), None
    if void_prediction == "skip":
        return pred, void
    raise ValueError(
        f"{path}: the prediction holds void (255) pixels; pass void_prediction='background' or 'skip' "
        "(CLI: --void-pred) to score such pseudo labels"
    )


# ---------------------------------------------------------------------------- evaluator
class Evaluator:
    """Multi-scale + flip evaluation of a segmenter on a dataset (docs/training.md).

    Args:
        segmenter: callable ``(b, 3, h, w)`` normalised float → ``(b, K, h', w')`` logits; an object
            with a ``predict`` method (e.g. :class:`cdclip.pipeline.model.CDCLIP`, whose ``forward``
            is the training step) is called through ``predict``.
        num_classes: ``K``, background included (VOC 21, COCO 81).
        class_names: ``K`` names for the table and ``metrics.json`` (default ``"0".."K-1"``).
        scales, flip, long_side, multiple: see :func:`multiscale_logits` (WeCLIP: 1.0 and 0.75,
            flip, 512, 16).
        crf: ``None``, ``True`` (a default :class:`cdclip.refine.crf.DenseCRF`) or any callable
            ``(uint8 image (3, H, W), probs (K, H, W)) -> probs``, applied to the softmax of the
            averaged logits.
        ignore_index: ground-truth value never counted (255).
        mean, std: normalisation of the uint8 images (CLIP's).
        device: where images go (default: the segmenter's parameters' device, else CPU).
        palette: colours of the prediction PNGs (default ``"coco"`` for 81 classes, else ``"voc"``).
        progress: tqdm progress bars.

    Shape:
        - image: (3, H, W) uint8
        - prediction: (H, W) int64 in [0, K)

    Example::

        evaluator = Evaluator(model, 21, VOC_CLASSES_WITH_BG, crf=True)
        metrics = evaluator.evaluate(VOCSegmentation(root, "val"), out_dir="runs/eval")
    """

    def __init__(
        self,
        segmenter: Segmenter | Any,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        scales: Sequence[float] = (1.0, 0.75),
        flip: bool = True,
        long_side: int | None = 512,
        crf: Callable[[Tensor, Tensor], Any] | bool | None = None,
        ignore_index: int | None = VOID,
        *,
        multiple: int = 16,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        device: str | torch.device | None = None,
        palette: str | np.ndarray | None = None,
        progress: bool = True,
    ) -> None:
        predict = getattr(segmenter, "predict", None)
        self.segmenter: Segmenter = predict if callable(predict) else segmenter
        if not callable(self.segmenter):
            raise TypeError(f"segmenter: expected a callable or an object with predict(), got {type(segmenter).__name__}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        if num_classes > 255:
            raise ValueError(f"num_classes: prediction PNGs hold at most 255 classes (255 is void), got {num_classes}")
        self.num_classes = num_classes
        names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(f"class_names: expected {num_classes} names (background included), got {len(names)}")
        self.class_names = names
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"scales: expected positive factors, got {tuple(scales)!r}")
        if long_side is not None and (not isinstance(long_side, int) or long_side < 1):
            raise ValueError(f"long_side: expected a positive int or None, got {long_side!r}")
        self.flip = bool(flip)
        self.long_side = long_side
        self.multiple = multiple
        if crf is True:
            from cdclip.refine.crf import DenseCRF

            crf = DenseCRF()
        self.crf = crf or None
        if self.crf is not None:
            from cdclip.refine.crf import DenseCRF, import_densecrf

            if isinstance(self.crf, DenseCRF):
                import_densecrf()  # fail now with the install hint, not after the first image
            elif not callable(self.crf):
                raise TypeError(f"crf: expected None, True, a DenseCRF or a callable, got {type(crf).__name__}")
        self.ignore_index = ignore_index
        if device is None:
            params = getattr(segmenter, "parameters", None)
            first = next(iter(params()), None) if callable(params) else None
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.palette = palette if palette is not None else ("coco" if num_classes == 81 else "voc")
        self.progress = progress

    # ------------------------------------------------------------------ one image
    def _check_image(self, image: Any) -> Tensor:
        image = _plain(check_tensor(image, "image"))
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected shape (3, H, W), got {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            raise TypeError(
                f"image: expected the uint8 image (3, H, W), got dtype {image.dtype}; build the dataset "
                "without a transform: the evaluator resizes and normalises itself"
            )
        return image

    @torch.no_grad()
    def logits(self, image: Tensor) -> Tensor:
        """Averaged multi-scale (+ flip) logits of one uint8 image at its own size.

        Shape:
            - image: (3, H, W) uint8
            - output: (K, H, W) float32, on ``self.device``
        """
        image = self._check_image(image)
        x = (image.to(self.device).unsqueeze(0).float() / 255.0 - self.mean) / self.std
        out = multiscale_logits(self.segmenter, x, self.scales, self.flip, self.long_side, self.multiple)
        if out.shape[1] != self.num_classes:
            raise ValueError(
                f"segmenter output: expected {self.num_classes} channels (num_classes), got {out.shape[1]}"
            )
        return out[0]

    @torch.no_grad()
    def predict(self, image: Tensor) -> Tensor:
        """Class map of one uint8 image: argmax of the averaged logits, or of their CRF refinement.

        Shape:
            - image: (3, H, W) uint8
            - output: (H, W) int64 on the CPU
        """
        logits = self.logits(image)
        if self.crf is None:
            return logits.max(0).indices.cpu()  # argmax (first maximum on ties), far faster on the CPU
        probs = torch.softmax(logits.float(), dim=0).cpu()
        refined = self.crf(_plain(image).cpu(), probs)
        return torch.as_tensor(np.asarray(refined)).argmax(0).long().cpu()

    # ------------------------------------------------------------------ a dataset
    def evaluate(
        self,
        dataset: Any,
        out_dir: str | os.PathLike[str] | None = None,
        limit: int | None = None,
        overwrite: bool = False,
        save_predictions: bool = True,
        num_workers: int = 0,
    ) -> dict[str, Any]:
        """Predict and score every sample of ``dataset``; write PNGs and reports under ``out_dir``.

        Items are dicts with ``"image"`` (3, H, W) uint8, ``"mask"`` (H, W) integer (255 void;
        samples without a mask are predicted but not scored) and ``"name"``. With ``out_dir`` and
        ``save_predictions``, predictions go to ``out_dir/predictions/<name>.png`` (written
        atomically); an existing PNG of the right size is read back and scored instead of being
        recomputed, unless ``overwrite`` — an interrupted run resumes where it stopped.
        ``metrics.json`` and ``iou.md`` (per-class table, markdown) are written by process 0.

        Returns:
            ``{"miou", "iou": {class name: IoU}, "pixel_accuracy", "images"}``: fractions in [0, 1]
            (NaN for a class absent from GT and prediction), ``images`` = scored images over all
            processes; ``"predicted"`` and ``"reused"`` count this process's computed/read PNGs.
        """
        from tqdm import tqdm

        total = len(dataset) if limit is None else min(len(dataset), int(limit))
        if total < 0:
            raise ValueError(f"limit: expected a non-negative int or None, got {limit!r}")
        rank, world = rank_and_world()
        indices = list(range(rank, total, world))
        pred_dir = Path(out_dir) / PREDICTION_DIR if out_dir is not None and save_predictions else None
        matrix = ConfusionMatrix(self.num_classes, self.ignore_index)
        scored = predicted = reused = 0
        unreadable: list[str] = []
        for item in tqdm(
            _iterate(dataset, indices, num_workers), total=len(indices), desc="eval", unit="img",
            disable=not self.progress or rank != 0,
        ):
            if "unreadable" in item:
                unreadable.append(f"{item['unreadable']} ({item['reason']})")
                continue
            mask = _plain(item.get("mask"))
            path = pred_dir / f"{item['name']}.png" if pred_dir is not None else None
            pred, was_reused = self._prediction(_plain(item["image"]), path, overwrite)
            reused, predicted = reused + was_reused, predicted + (not was_reused)
            if mask is not None:
                matrix.update(pred, mask)
                scored += 1
        matrix.all_reduce()
        (scored,) = sum_over_processes([scored])
        metrics = _summary(matrix, self.class_names, scored)
        metrics.update(
            predicted=predicted, reused=reused, unreadable=unreadable, scales=list(self.scales), flip=self.flip,
            long_side=self.long_side, crf=self.crf is not None,
        )  # fmt: skip
        if out_dir is not None and rank == 0:
            _write_report(Path(out_dir), metrics, matrix.table(self.class_names))
        return metrics

    def _prediction(self, image: Tensor, path: Path | None, overwrite: bool) -> tuple[Tensor, bool]:
        """The class map of ``image`` and whether it was read back from ``path`` instead of predicted.

        A PNG at ``path`` of the image's size is reused unless ``overwrite``; a prediction is
        written there atomically (a killed run never leaves half a PNG behind).

        Shape:
            - image: (3, H, W) uint8
            - output: (H, W) integer class map
        """
        from cdclip.data.palette import load_label_png, save_label_png

        if path is not None and path.is_file() and not overwrite:
            try:
                stored = torch.from_numpy(load_label_png(path))
            except (OSError, ValueError):
                stored = None  # unreadable (e.g. cut off): recompute it
            if stored is not None and tuple(stored.shape) == tuple(image.shape[-2:]):
                return stored, True
        pred = self.predict(image)
        if path is not None:
            with atomic_path(path) as tmp:
                save_label_png(tmp, pred, palette=self.palette)
        return pred, False


class _OnePass:
    """Each index once: with ``skip_bad``, a broken sample becomes ``{"unreadable": name, "reason": why}``.

    ``dataset[i]`` of a ``skip_bad`` dataset substitutes the next good sample, which a training
    loader needs but which would predict and score that sample twice in one pass.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        if not hasattr(self.dataset, "try_get"):
            return self.dataset[index]
        item = self.dataset.try_get(index)
        if item is None:
            return {"unreadable": str(self.dataset.names[index]), "reason": self.dataset.skipped[-1].reason}
        return item


def _iterate(dataset: Any, indices: Sequence[int], num_workers: int) -> Iterable[Mapping[str, Any]]:
    """Samples at ``indices`` (each once, see :class:`_OnePass`), decoded in ``num_workers`` processes when asked."""
    one_pass = _OnePass(dataset)
    if num_workers <= 0:
        return (one_pass[i] for i in indices)
    from torch.utils.data import DataLoader, Subset

    return DataLoader(Subset(one_pass, list(indices)), batch_size=None, num_workers=num_workers)


# ---------------------------------------------------------------------------- scoring written labels
def evaluate_labels(
    pred_dir: str | os.PathLike[str],
    dataset: Any,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = VOID,
    limit: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    void_prediction: str = "error",
    progress: bool = True,
) -> dict[str, Any]:
    """Score the label PNGs ``pred_dir/<name>.png`` (predictions, pseudo labels) against ``dataset``.

    Every sample's PNG must exist (all missing ones are listed at once) and have the mask's size.

    Args:
        pred_dir: folder of palette/grey PNGs holding class indices.
        dataset: items with ``"mask"`` and ``"name"`` (VOC/COCO datasets, no transform).
        num_classes: ``K`` with background (default: ``len(dataset.class_names) + 1``).
        class_names: ``K`` names (default: ``"background"`` + ``dataset.class_names``).
        ignore_index: ground-truth value never counted.
        limit: only the first ``limit`` samples.
        out_dir: where ``metrics.json`` and ``iou.md`` go (nothing written when None).
        void_prediction: what a predicted 255 means: ``"error"`` (raise), ``"background"`` (0) or
            ``"skip"`` (those pixels are not counted).

    Returns:
        ``{"miou", "iou": {name: IoU}, "pixel_accuracy", "images"}`` as :meth:`Evaluator.evaluate`.

    Shape:
        - PNG: (H, W) integers, same size as the sample's mask
    """
    from tqdm import tqdm

    from cdclip.data.palette import load_label_png

    if void_prediction not in ("error", "background", "skip"):
        raise ValueError(f"void_prediction: expected 'error', 'background' or 'skip', got {void_prediction!r}")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"pred_dir: folder not found: {pred_dir}")
    num_classes, default_names = _default_class_names(dataset, num_classes)
    names_list = list(class_names) if class_names is not None else default_names
    if len(names_list) != num_classes:
        raise ValueError(f"class_names: expected {num_classes} names, got {len(names_list)}")
    total = len(dataset) if limit is None else min(len(dataset), int(limit))
    stems = getattr(dataset, "names", None)
    if stems is not None:  # check the whole folder up front rather than fail after an hour
        missing = [n for n in list(stems)[:total] if not (pred_dir / f"{n}.png").is_file()]
        if missing:
            shown = ", ".join(missing[:10]) + (f" ... and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise FileNotFoundError(f"pred_dir: {len(missing)} prediction PNG(s) missing in {pred_dir}: {shown}")
    matrix = ConfusionMatrix(num_classes, ignore_index)
    scored = 0
    unreadable: list[str] = []
    for item in tqdm(_iterate(dataset, range(total), 0), total=total, desc="score", unit="img", disable=not progress):
        if "unreadable" in item:
            unreadable.append(f"{item['unreadable']} ({item['reason']})")
            continue
        name = str(item["name"])
        if item.get("mask") is None:
            raise ValueError(f"dataset: sample {name!r} has no mask to score against")
        mask = _plain(item["mask"])
        path = pred_dir / f"{name}.png"
        if not path.is_file():
            raise FileNotFoundError(f"pred_dir: prediction missing: {path}")
        pred = load_label_png(path)
        if pred.shape != tuple(mask.shape):
            raise ValueError(f"{path}: prediction size {pred.shape} differs from the mask size {tuple(mask.shape)}")
        pred, skip = _prediction_values(pred, void_prediction, path)
        target = mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        if skip is not None:  # pixels predicted void are left out of the count
            pred, target = pred[~skip], target[~skip]
        matrix.update(pred, target)
        scored += 1
    metrics = _summary(matrix, names_list, scored)
    metrics["unreadable"] = unreadable
    if out_dir is not None:
        _write_report(Path(out_dir), metrics, matrix.table(names_list))
    return metrics
