"""``cdclip refine``: CDA applied to CAMs another method saved, with class distributions from those CAMs.

Examples::

    cdclip refine --cams clip_es_out/cams --voc data/VOC2012 --split train --out runs/cda_on_clipes
    cdclip refine --cams my_method/cams --voc data/VOC2012 --split train --out runs/cda_on_mine --temperature 0.05

Inputs, per image ``<name>``:

* CLIP-ES's ``<name>.npy`` dicts (0-based ``keys``; ``highres`` initial, ``attn_highres`` refined) or
  cdclip's ``<name>.npz`` (``cdclip cams``): the maps of the present classes. The per-patch class
  distributions are the softmax of those maps with a background score (``class_probs_from_cams``
  with ``background=True``), so that an image with one class still has two to compare;
* a plain ``<name>.npy`` / ``<name>.npz`` array of **all** classes' CAMs ``(C, h, w)``: the class
  distributions come from every class, and the image's labels pick the present maps.

Maps at image resolution are brought to the patch grid (``--patch``, area averaging), refined with
CDA (``fusion="replace"``: no attention is saved with CAMs), then upsampled. With ``--weights`` (or
``--backbone``) the class distributions and the attention come from CLIP instead, on the image
resized to the maps' grid, and ``--fusion mean`` (default then), ``product`` or ``attn`` (the
attention baseline) are available; the background is
``(1 − max)^α`` (or ``--bg-threshold``) and the argmax gives the pseudo label. Outputs, like
``cdclip cams`` (atomic, verified on resume, ``settings.json``, locked folder): ``refined/<name>.npz``
(``keys``, ``cams`` = the input maps and ``refined`` on the grid, ``size``), ``pseudo/<name>.png`` and,
with masks, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input")
    src.add_argument("--cams", type=Path, required=True, metavar="DIR", help="folder of CAM files (.npy / .npz)")
    group = src.add_mutually_exclusive_group(required=True)
    group.add_argument("--voc", type=Path, metavar="ROOT", help="PASCAL VOC2012 folder (labels, masks)")
    group.add_argument("--coco", type=Path, metavar="ROOT", help="COCO folder")
    src.add_argument("--split", default=None, help="dataset split (VOC: train; COCO: train2014)")
    src.add_argument("--cam-key", default="cams", choices=("cams", "refined"),
                     help="which maps of a CLIP-ES / cdclip file to refine: the initial (default) or refined ones")
    src.add_argument("--limit", type=int, default=None, help="only the first N images")

    clip = parser.add_argument_group("CLIP (optional: class distributions from CLIP features, attention fusions)")
    clip.add_argument("--weights", default=None,
                      help="CLIP checkpoint or open_clip tag ('none': random): distributions and attention from CLIP")
    clip.add_argument("--backbone", default=None, help="registered CLIP backbone (default: the cdclip-voc preset's)")
    clip.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    clip.add_argument("--fusion", default=None, choices=("replace", "mean", "product", "attn"),
                      help="CDA fusion (default: mean with CLIP, replace without; mean/product/attn need CLIP)")

    cda = parser.add_argument_group("CDA")
    cda.add_argument("--patch", type=int, default=16, help="grid cell in pixels for image-resolution maps (16)")
    cda.add_argument("--temperature", type=float, default=0.1, help="softmax temperature of the class distributions")
    cda.add_argument("--box-threshold", type=float, default=0.4, help="box mask θ (0.4 VOC, 0.7 COCO)")
    cda.add_argument("--sigma", type=float, default=0.05, help="exp(-JS/σ) scale")
    cda.add_argument("--bg-alpha", type=float, default=1.0, help="background score (1 - max CAM)^alpha")
    cda.add_argument("--bg-threshold", type=float, default=None, help="constant background score instead")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="output folder")
    out.add_argument("--overwrite", action="store_true", help="recompute every image")


def _read(path: Path, key: str, present: np.ndarray) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``(class ids 1..C of the maps, their maps (P, h, w), the maps the class distributions come from)``."""
    from cdclip.pipeline.cam_eval import read_cam_file

    keys, maps, _ = read_cam_file(path, key)
    if keys is None:  # all classes: the distributions come from all of them, the labels pick the maps
        if maps.dim() != 3 or maps.shape[0] != len(present):
            raise ValueError(f"{path}: expected (C={len(present)}, h, w) CAMs of all classes, got {tuple(maps.shape)}")
        keys = np.flatnonzero(present) + 1
        return keys, maps[keys - 1], maps
    return keys, maps, maps


def _to_grid(maps: torch.Tensor, size: tuple[int, int], patch: int) -> torch.Tensor:
    grid = (math.ceil(size[0] / patch), math.ceil(size[1] / patch))
    if tuple(maps.shape[-2:]) == grid or max(maps.shape[-2:]) <= max(grid):
        return maps
    return F.adaptive_avg_pool2d(maps[None], grid)[0]


def grid_normalized(maps: torch.Tensor, size: tuple[int, int], patch: int) -> torch.Tensor:
    """The saved maps on the patch grid, negatives dropped, each map min–max normalised as a whole.

    Shape:
        - maps: (P, h', w') at any resolution
        - output: (P, h, w) on the grid of ``size`` / ``patch``
    """
    from cdclip.minmax import minmax_normalize

    # minmax_normalize reads (B, C, *): the stack is one image's C maps, not P images of rows
    return minmax_normalize(_to_grid(maps, size, patch).clamp_min(0)[None])[0]


def _refine_one(keys: np.ndarray, maps: torch.Tensor, source: torch.Tensor, size: tuple[int, int],
                args: argparse.Namespace, clip: Any = None, image: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(refined maps on the grid, pseudo label (H, W) class ids); with ``clip``, CLIP's distributions."""
    from cdclip.affinity.cda import cda_refine, class_probs_from_cams
    from cdclip.pipeline.cam_eval import label_map

    grid_maps = grid_normalized(maps, size, args.patch)
    if clip is not None and len(keys):
        refined = _refine_with_clip(keys, grid_maps, clip, image, args)
    elif len(keys):
        src = grid_normalized(source, size, args.patch)
        if src.shape[-2:] != grid_maps.shape[-2:]:
            src = F.interpolate(src[None], size=grid_maps.shape[-2:], mode="bilinear", align_corners=False)[0]
        only_present = src.shape[0] == grid_maps.shape[0]
        probs = class_probs_from_cams(src[None], temperature=args.temperature, background=only_present)
        refined = cda_refine(grid_maps[None], probs, fusion="replace", box_threshold=args.box_threshold,
                             sigma=args.sigma)[0]  # fmt: skip
    else:
        refined = grid_maps
    up = F.interpolate(refined[None], size=size, mode="bilinear", align_corners=False)[0] if len(keys) else refined
    peak = up.amax(dim=0, keepdim=True) if len(keys) else torch.zeros(1, *size)
    bg = torch.full_like(peak, args.bg_threshold) if args.bg_threshold is not None else (1 - peak) ** args.bg_alpha
    return refined, label_map(keys, up if len(keys) else up.new_zeros(0, *size), bg)


def _refine_with_clip(keys: np.ndarray, grid_maps: torch.Tensor, clip: Any, image: torch.Tensor | None,
                      args: argparse.Namespace) -> torch.Tensor:  # fmt: skip
    """CDA with CLIP's class distributions and attention on the maps' grid (the image resized to it)."""
    from cdclip.affinity.cda import CDAModule
    from cdclip.cam.refine import refine_cams

    backbone, text, num_classes = clip
    h, w = grid_maps.shape[-2:]
    p = int(backbone.patch_size)
    device = getattr(backbone, "device", torch.device("cpu"))
    pixels = F.interpolate(image[None].float().to(device), size=(h * p, w * p), mode="bilinear", align_corners=False)
    with torch.no_grad():
        output = backbone(backbone.preprocess(pixels), attn_blocks=8)
    cams = torch.zeros(1, num_classes, h, w, device=device)
    cams[0, torch.as_tensor(keys - 1, device=device)] = grid_maps.to(device)
    labels = torch.zeros(1, num_classes, device=device)
    labels[0, torch.as_tensor(keys - 1, device=device)] = 1
    cda = CDAModule(box_threshold=args.box_threshold, sigma=args.sigma)
    refined = refine_cams(cams, labels, output, text, method=args.fusion or "mean", cda=cda)
    return refined[0, torch.as_tensor(keys - 1, device=device)].cpu()


def _clip(args: argparse.Namespace, class_names: tuple[str, ...]) -> Any:
    """(backbone, text classifier, C) when ``--weights`` or ``--backbone`` asks for CLIP, else None."""
    if args.weights is None and args.backbone is None:
        if args.fusion not in (None, "replace"):
            raise ValueError(f"--fusion {args.fusion}: needs CLIP attention; pass --weights (or --backbone)")
        return None
    from cdclip.backbones.text import build_text_classifier
    from cdclip.data.prompts import background_words
    from cdclip.device import check_device, default_device
    from cdclip.pipeline.clip_backbone import build_clip_backbone
    from cdclip.pipeline.config import apply_overrides, preset
    from cdclip.seeding import seed_everything

    device = check_device(args.device or default_device(), "--device")
    config = apply_overrides(preset("cdclip-voc"), {"model.clip": args.backbone} if args.backbone else {})
    seed_everything(0)
    backbone = build_clip_backbone(config.model, device, args.weights)
    text = build_text_classifier(backbone, class_names, background_words(config.model.background),
                                 config.model.templates, style=config.model.prompt_style).embeddings  # fmt: skip
    return backbone, text, len(class_names)


def run(args: argparse.Namespace) -> int:
    from cdclip.atomic import atomic_write_text, remove_stale_temps
    from cdclip.commands.output_folder import check_folder_settings, classes_table
    from cdclip.folder_lock import folder_lock
    from cdclip.metrics import ConfusionMatrix
    from cdclip.run_settings import write_settings

    if not args.cams.is_dir():
        raise FileNotFoundError(f"--cams: folder not found: {args.cams}")
    dataset, palette = _dataset(args)
    names = ("background", *dataset.class_names)
    clip = _clip(args, tuple(dataset.class_names))
    settings = _settings(args, clip)
    out: Path = args.out
    matrix = ConfusionMatrix(len(names), ignore_index=255)
    with folder_lock(out, ".refine.lock"):
        remove_stale_temps(out)
        check_folder_settings(out, settings, args.overwrite, ("pseudo", "refined"))
        write_settings(out / "settings.json", settings)
        atomic_write_text(out / "classes.json", classes_table(tuple(dataset.class_names)))
        computed, skipped, scored, missing = _refine_all(args, dataset, palette, clip, matrix)
        _report(out, matrix, names, computed, skipped, scored, missing)
    return 0


def _settings(args: argparse.Namespace, clip: Any) -> dict[str, Any]:
    """What the outputs depend on (``settings.json``): a rerun with other settings is refused."""
    return {"format": "cdclip-refine-v1", "cams": str(args.cams.resolve()), "cam_key": args.cam_key,
            "clip": {"weights": args.weights, "backbone": args.backbone, "fusion": args.fusion,
                     "fingerprint": _fingerprint(clip)},
            "split": args.split, "cda": {k: getattr(args, k) for k in ("patch", "temperature", "box_threshold",
            "sigma", "bg_alpha", "bg_threshold")}}  # fmt: skip


def _refine_all(args: argparse.Namespace, dataset: Any, palette: str, clip: Any,
                matrix: Any) -> tuple[int, int, int, list[str]]:  # fmt: skip
    """Refine (or read back) every image with a CAM file, scoring those with a mask into ``matrix``.

    Returns:
        ``(computed, skipped (existing outputs), scored, names without a CAM file)``.
    """
    from tqdm import tqdm

    from cdclip.commands.output_folder import is_complete
    from cdclip.data.palette import load_label_png
    from cdclip.pipeline.cam_eval import find_cam_file

    computed = skipped = scored = 0
    missing: list[str] = []
    total = len(dataset) if args.limit is None else min(len(dataset), args.limit)
    for index in tqdm(range(total), desc="cdclip refine", unit="img"):
        name = dataset.names[index]
        source = find_cam_file(args.cams, name)
        if source is None:
            missing.append(name)
            continue
        item = dataset.load(index)
        png, npz = args.out / "pseudo" / f"{name}.png", args.out / "refined" / f"{name}.npz"
        if not args.overwrite and png.is_file() and npz.is_file() and is_complete(png) and is_complete(npz):
            label, skipped = torch.from_numpy(load_label_png(png)), skipped + 1
        else:
            label, computed = _refine_item(args, item, source, clip, png, npz, palette), computed + 1
        if item.get("mask") is not None:
            matrix.update(label, torch.as_tensor(item["mask"]).as_subclass(torch.Tensor))
            scored += 1
    return computed, skipped, scored, missing


def _refine_item(args: argparse.Namespace, item: dict[str, Any], source: Path, clip: Any, png: Path, npz: Path,
                 palette: str) -> torch.Tensor:  # fmt: skip
    """Refine one image's CAM file; write ``refined/<name>.npz`` and ``pseudo/<name>.png`` atomically.

    Shape:
        - output: (H, W) pseudo label (class ids)
    """
    from cdclip.atomic import atomic_path
    from cdclip.data.palette import save_label_png

    size = tuple(item["mask"].shape) if "mask" in item else tuple(item["image"].shape[-2:])
    keys, maps, src = _read(source, args.cam_key, np.asarray(item["labels"]) > 0)
    image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor)
    refined, label = _refine_one(keys, maps, src, size, args, clip, image)
    with atomic_path(npz) as tmp:
        np.savez_compressed(tmp, keys=keys, cams=_to_grid(maps, size, args.patch).numpy().astype(np.float16),
                            refined=refined.numpy().astype(np.float16), size=np.asarray(size))  # fmt: skip
    with atomic_path(png) as tmp:
        save_label_png(tmp, label.numpy().astype(np.uint8), palette=palette)
    return label


def _fingerprint(clip: Any) -> str | None:
    from cdclip.fingerprint import weights_fingerprint

    return weights_fingerprint(clip[0]) if clip is not None and isinstance(clip[0], torch.nn.Module) else None


def _dataset(args: argparse.Namespace) -> tuple[Any, str]:
    """The dataset and its palette name (``"voc"`` or ``"coco"``)."""
    from cdclip.commands._datasets import dataset_from_args

    dataset, palette, _ = dataset_from_args(args, {"voc": "train", "coco": "train2014"})
    return dataset, palette


def _report(out: Path, matrix: Any, names: tuple[str, ...], computed: int, skipped: int, scored: int,
            missing: list[str]) -> None:  # fmt: skip
    from cdclip.atomic import atomic_write_text

    print(f"cdclip refine: {computed} computed, {skipped} skipped (existing), outputs in {out}")
    if missing:
        print(f"cdclip refine: warning: {len(missing)} image(s) have no CAM file", file=sys.stderr)
    if not scored:
        return
    miou = float(matrix.miou())
    print(matrix.table(names))
    print(f"pseudo-label mIoU: {100 * miou:.2f} on {scored} images")
    iou = {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, matrix.iou(), strict=True)}
    atomic_write_text(out / "metrics.json", json.dumps({"miou": miou, "iou": iou, "images": scored}, indent=2) + "\n")
