"""CAM evaluation: the mIoU of saved CAMs over a sweep of background thresholds.

The number WSSS papers report for CAMs and pseudo labels: for each background threshold ``t``,
every pixel takes the class of its highest CAM, or background where no CAM reaches ``t``; the
confusion matrix over the dataset gives the mIoU at ``t``, and the best ``t`` is reported.

Two file layouts are read:

* cdclip's ``cams/<name>.npz`` (``cdclip cams``): ``keys`` (1-based class ids), ``cams`` and
  ``refined`` (P, h, w) on the patch grid, ``size`` (H, W); the maps are upsampled bilinearly to the
  image, as ``cdclip cams`` does before it takes the background;
* CLIP-ES's ``<name>.npy`` dicts: ``keys`` (0-based class indices), ``attn_highres`` (refined) and
  ``highres`` (initial) at image resolution;
* WeCLIP's (ToCo's) ``<name>.npy`` dicts: ``keys`` (0-based) and ``cam`` at image resolution.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cdclip.metrics import ConfusionMatrix

__all__ = ["DEFAULT_THRESHOLDS", "evaluate_cams", "find_cam_file", "label_map", "load_cam_file", "read_cam_file"]

# 0.05, 0.10, ..., 0.95
DEFAULT_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
_CLIP_ES_KEYS = {"refined": "attn_highres", "cams": "highres"}


def find_cam_file(cam_dir: str | os.PathLike[str], name: str) -> Path | None:
    """``cam_dir/<name>.npz`` or ``cam_dir/<name>.npy``, whichever exists (``None``: neither)."""
    for suffix in (".npz", ".npy"):
        if (Path(cam_dir) / f"{name}{suffix}").is_file():
            return Path(cam_dir) / f"{name}{suffix}"
    return None


def read_cam_file(
    path: str | os.PathLike[str], which: str = "refined"
) -> tuple[np.ndarray | None, torch.Tensor, tuple[int, int] | None]:
    """``(class ids 1..C or None, maps, image size or None)`` as the file stores them.

    cdclip's ``.npz`` gives its present classes on the patch grid and the image size; CLIP-ES's and
    WeCLIP's ``.npy`` dicts their present classes at image resolution (``size`` None); a plain array
    (``.npy``, or an ``.npz`` without ``keys``) all classes' CAMs and no ids.

    Shape:
        - output[1]: (P, h, w)
    """
    if which not in _CLIP_ES_KEYS:
        raise ValueError(f"which: expected 'refined' or 'cams', got {which!r}")
    path = Path(path)
    loaded = np.load(path) if path.suffix == ".npz" else np.load(path, allow_pickle=True)  # dicts are pickled
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "keys" not in loaded.files:  # a plain array of all classes
                return None, torch.from_numpy(np.asarray(loaded[loaded.files[0]], dtype=np.float32)), None
            keys, maps, size = loaded["keys"].astype(np.int64), loaded[which], tuple(int(v) for v in loaded["size"])
        return keys, torch.from_numpy(maps.astype(np.float32)), size  # type: ignore[return-value]
    if loaded.dtype != object:
        return None, torch.from_numpy(np.asarray(loaded, dtype=np.float32)), None
    record = loaded.item()
    field = _CLIP_ES_KEYS[which] if isinstance(record, dict) and "cam" not in record else "cam"
    if not isinstance(record, dict) or "keys" not in record or field not in record:
        raise ValueError(f"{path}: expected a CLIP-ES dict with 'keys' and {_CLIP_ES_KEYS[which]!r}, or a WeCLIP "
                         "dict with 'keys' and 'cam'")  # fmt: skip
    keys = np.asarray(record["keys"], dtype=np.int64) + 1  # CLIP-ES and WeCLIP store 0-based class indices
    return keys, torch.from_numpy(np.asarray(record[field], dtype=np.float32)), None


def load_cam_file(path: str | os.PathLike[str], which: str = "refined") -> tuple[np.ndarray, torch.Tensor]:
    """``(class ids 1..C, maps (P, H, W) float32 at image resolution)`` from a cdclip, CLIP-ES or WeCLIP file.

    Args:
        path: a ``.npz`` (cdclip) or ``.npy`` (CLIP-ES / WeCLIP dict) file.
        which: ``"refined"`` or ``"cams"`` (the initial CAMs).

    Shape:
        - output[1]: (P, H, W)
    """
    keys, maps, size = read_cam_file(path, which)
    if keys is None:
        raise ValueError(f"{path}: expected the present classes' CAMs with their 'keys', got a plain array")
    if size is not None and maps.shape[0] and tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    return keys, maps


def label_map(keys: np.ndarray, maps: torch.Tensor, background: float | torch.Tensor) -> torch.Tensor:
    """Class ids: the highest CAM's class, background (0) where no CAM exceeds ``background``.

    ``background`` is a constant (a threshold) or a ``(1, H, W)`` score; ties go to background.

    Shape:
        - maps: (P, H, W)
        - output: (H, W) int64
    """
    if not isinstance(background, torch.Tensor):
        background = torch.full((1, *maps.shape[1:]), float(background))
    stack = torch.cat([background, maps], dim=0)
    ids = torch.from_numpy(np.concatenate([[0], keys]).astype(np.int64))
    return ids[stack.max(dim=0).indices]


def evaluate_cams(
    cam_dir: str | os.PathLike[str],
    dataset: Any,
    class_names: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    which: str = "refined",
    limit: int | None = None,
    progress: bool = True,
    crf: bool = False,
) -> dict[str, Any]:
    """The mIoU at every background threshold of the CAM files in ``cam_dir`` against ``dataset``'s masks.

    With ``crf``, a second pass at the best threshold refines every label map with the dense CRF
    (:func:`~cdclip.refine.crf.dense_crf` with the image; the unary is the thresholded label with
    probability 0.7 and the rest shared, as CLIP-ES evaluates with CRF).

    Returns:
        ``{"thresholds": [...], "miou": [...], "best_threshold", "best_miou", "iou" (per class at the
        best threshold), "images", "missing"}`` and, with ``crf``, ``"crf_miou"``; fractions in [0, 1].

    Shape:
        - dataset item["mask"]: (H, W) class ids, 255 void
    """
    from tqdm import tqdm

    cam_dir = Path(cam_dir)
    if not cam_dir.is_dir():
        raise FileNotFoundError(f"--cams: folder not found: {cam_dir}")
    if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"thresholds: expected values in [0, 1], got {list(thresholds)}")
    matrices = [ConfusionMatrix(len(class_names) + 1, ignore_index=255) for _ in thresholds]
    total = len(dataset) if limit is None else min(len(dataset), limit)
    missing: list[str] = []
    for index in tqdm(range(total), desc="cams", unit="img", disable=not progress):
        name = str(dataset.names[index])
        path = find_cam_file(cam_dir, name)
        if path is None:
            missing.append(name)
            continue
        mask = torch.as_tensor(dataset.load(index)["mask"]).as_subclass(torch.Tensor)
        keys, maps = load_cam_file(path, which)
        if tuple(maps.shape[-2:]) != tuple(mask.shape):
            raise ValueError(f"{path}: CAM size {tuple(maps.shape[-2:])} differs from the mask's {tuple(mask.shape)}")
        for matrix, threshold in zip(matrices, thresholds, strict=True):
            matrix.update(label_map(keys, maps, threshold), mask)
    if missing and len(missing) == total:
        raise FileNotFoundError(f"--cams: no CAM file (.npz or .npy) of any image of the split in {cam_dir}")
    mious = [float(m.miou()) for m in matrices]
    best = int(np.nanargmax(mious))
    names_bg = ("background", *class_names)
    iou = {n: (None if np.isnan(v) else float(v)) for n, v in zip(names_bg, matrices[best].iou(), strict=True)}
    result = {
        "thresholds": [float(t) for t in thresholds], "miou": mious, "best_threshold": float(thresholds[best]),
        "best_miou": mious[best], "iou": iou, "images": total - len(missing), "missing": missing,
        "table": matrices[best].table(names_bg),
    }  # fmt: skip
    if crf:
        result["crf_miou"] = _crf_miou(cam_dir, dataset, len(names_bg), float(thresholds[best]), which, total, progress)
    return result


def _crf_miou(cam_dir: Path, dataset: Any, classes: int, threshold: float, which: str, total: int,
              progress: bool) -> float:  # fmt: skip
    """The mIoU at ``threshold`` after the dense CRF refines each label map."""
    from tqdm import tqdm

    from cdclip.refine.crf import dense_crf

    matrix = ConfusionMatrix(classes, ignore_index=255)
    for index in tqdm(range(total), desc="cams + CRF", unit="img", disable=not progress):
        path = find_cam_file(cam_dir, str(dataset.names[index]))
        if path is None:
            continue
        item = dataset.load(index)
        keys, maps = load_cam_file(path, which)
        stack = torch.cat([torch.full((1, *maps.shape[1:]), threshold), maps], dim=0)
        channel = stack.max(dim=0).indices
        # the unary of the thresholded label, as CLIP-ES's CRF evaluation: 0.7 on it, the rest shared
        probs = torch.full(stack.shape, 0.3 / max(1, len(stack) - 1)) if len(stack) > 1 else torch.ones(stack.shape)
        probs.scatter_(0, channel[None], 0.7 if len(stack) > 1 else 1.0)
        refined = torch.as_tensor(dense_crf(torch.as_tensor(item["image"]).as_subclass(torch.Tensor), probs))
        ids = torch.from_numpy(np.concatenate([[0], keys]))
        matrix.update(ids[refined.max(dim=0).indices], torch.as_tensor(item["mask"]).as_subclass(torch.Tensor))
    return float(matrix.miou())
