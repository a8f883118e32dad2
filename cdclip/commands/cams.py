"""``cdclip cams``: initial CAMs, refined CAMs and pseudo labels, training-free.

Examples::

    cdclip cams --voc data/VOC2012 --split train --out runs/cams_voc --refine cda
    cdclip cams --coco data/coco --split train2014 --out runs/cams_coco
    cdclip cams --images photos/ --classes cat,dog --out runs/cams_photos --weights /path/ViT-B-16.pt

Outputs, one set per image (existing ones are skipped unless ``--overwrite``, so an interrupted
run resumes where it stopped):

* ``cams/<name>.npz`` (compressed): ``keys`` (class ids 1..C of the present classes), ``cams``
  and ``refined`` (P, h, w) float16 on the patch grid, ``size`` (H, W) of the image;
* ``pseudo/<name>.png``: the pseudo label as a palette PNG (pixel value = class id, 0 = bg);
* ``overlay/<name>.png``: the image with the pseudo label blended over it, next to the refined CAMs.

When ground-truth masks exist (VOC/COCO) the pseudo-label mIoU is printed and written to
``metrics.json``. Images are processed one at a time; nothing per image is kept in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["add_arguments", "run"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input (one of)")
    group = src.add_mutually_exclusive_group(required=True)
    group.add_argument("--images", type=Path, help="folder of images (labels from --classes)")
    group.add_argument("--voc", type=Path, metavar="ROOT", help="PASCAL VOC2012 folder")
    group.add_argument("--coco", type=Path, metavar="ROOT", help="COCO folder (images in ROOT/SPLIT)")
    src.add_argument("--split", default=None, help="dataset split (VOC: train; COCO: train2014)")
    src.add_argument("--label-file", type=Path, default=None,
                     help="image-level labels (cls_labels_onehot.npy style); default: the dataset's own")
    src.add_argument("--classes", default=None,
                     help="comma-separated class names for --images; every class is taken as present")
    src.add_argument("--background", default=None, choices=("voc", "coco", "none"),
                     help="background word list (default: the dataset's; voc for --images)")
    src.add_argument("--limit", type=int, default=None, help="process only the first N images")

    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default="openclip:ViT-B-16@openai", help="registered backbone name")
    model.add_argument("--weights", default=None,
                       help="checkpoint path, open_clip tag, or 'none' for random weights (default: the tag)")
    model.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    model.add_argument("--templates", action="append", default=None,
                       help="prompt template with {} (repeatable; default 'a clean origami {}.')")

    method = parser.add_argument_group("method")
    method.add_argument("--cam", default="gradcam", choices=("gradcam", "patch_text"))
    method.add_argument("--refine", default="cda", choices=("none", "attn", "cda"))
    method.add_argument("--fusion", default="mean", choices=("mean", "replace", "product"),
                        help="how CDA is fused with attention (with --refine cda)")
    method.add_argument("--box-threshold", type=float, default=None, help="box mask θ (0.4 VOC, 0.7 COCO)")
    method.add_argument("--attn-layers", type=int, default=8, help="last blocks averaged for attention")
    method.add_argument("--scales", type=float, nargs="+", default=[1.0])
    method.add_argument("--flip", action="store_true", help="add flipped inputs to the CAMs")
    method.add_argument("--long-side", type=int, default=512, help="CLIP input long side (0: native size)")
    method.add_argument("--bg-alpha", type=float, default=1.0, help="background score (1 - max CAM)^alpha")
    method.add_argument("--par-iters", type=int, default=20, help="PAR iterations (0 disables PAR)")
    method.add_argument("--par-scale", type=float, default=1.0,
                        help="resolution of PAR relative to the image (ToCo/WeCLIP use 0.5; 4x cheaper)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="output folder")
    out.add_argument("--overwrite", action="store_true", help="recompute images whose outputs exist")
    out.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")


# ------------------------------------------------------------------------------------------ input
class _Folder:
    """Images of a folder with the same (all-present) labels."""

    def __init__(self, root: Path, num_classes: int) -> None:
        if not root.is_dir():
            raise FileNotFoundError(f"--images: folder not found: {root}")
        self.paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise FileNotFoundError(f"--images: no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
        self.names = [p.stem for p in self.paths]
        self.labels = torch.ones(num_classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        with Image.open(self.paths[index]) as im:
            array = np.asarray(im.convert("RGB"))
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        return {"image": image, "labels": self.labels, "name": self.names[index]}


def _dataset(args: argparse.Namespace) -> tuple[Any, tuple[str, ...], tuple[str, ...], str, float]:
    """(dataset, class names, background words, palette, default box threshold)."""
    from cdclip.data.prompts import background_words

    if args.voc is not None:
        from cdclip.data.voc import VOCSegmentation

        ds = VOCSegmentation(args.voc, args.split or "train", label_file=args.label_file)
        names, bg, palette, theta = ds.class_names, background_words(args.background or "voc"), "voc", 0.4
    elif args.coco is not None:
        from cdclip.data.coco import COCOSegmentation

        ds = COCOSegmentation(args.coco, args.split or "train2014", label_file=args.label_file)
        names, bg, palette, theta = ds.class_names, background_words(args.background or "coco"), "coco", 0.7
    else:
        if not args.classes:
            raise ValueError("--classes: an image folder needs the class names, e.g. --classes cat,dog")
        names = tuple(c.strip() for c in args.classes.split(",") if c.strip())
        ds = _Folder(args.images, len(names))
        bg, palette, theta = background_words(args.background or "voc"), "voc", 0.4
    return ds, tuple(names), tuple(bg), palette, theta


def _indices(n: int, limit: int | None) -> Iterator[int]:
    return iter(range(n if limit is None else min(n, max(0, limit))))


# ------------------------------------------------------------------------------------------ run
def _build_backbone(args: argparse.Namespace) -> Any:
    from cdclip.registry import create

    kwargs: dict[str, Any] = {"device": args.device}
    if args.weights is not None:
        kwargs["weights"] = None if args.weights.strip().lower() == "none" else args.weights
    return create(args.backbone, **kwargs)


def _outputs(out: Path, name: str, overlay: bool) -> list[Path]:
    paths = [out / "cams" / f"{name}.npz", out / "pseudo" / f"{name}.png"]
    if overlay:
        paths.append(out / "overlay" / f"{name}.png")
    return paths


def _save_overlay(path: Path, image: torch.Tensor, label: np.ndarray, refined: torch.Tensor, palette: str) -> None:
    import torch.nn.functional as F
    from PIL import Image

    from cdclip.data.palette import overlay

    rgb = image.permute(1, 2, 0).contiguous().numpy().astype(np.uint8)
    left = overlay(rgb, label.astype(np.int64), alpha=0.5, palette=palette)
    peak = refined.amax(dim=0, keepdim=True)[None] if refined.shape[0] else torch.zeros(1, 1, 1, 1)
    heat = F.interpolate(peak.float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    right = overlay(rgb, heat.clamp(0, 1).numpy().astype(np.float32), alpha=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cdclip.data.palette import load_label_png, save_label_png
    from cdclip.metrics import ConfusionMatrix
    from cdclip.pipeline.pseudo_labels import PseudoLabeler
    from cdclip.refine.par import PAR

    try:
        dataset, class_names, bg_words, palette, theta = _dataset(args)
        backbone = _build_backbone(args)
        refine = args.fusion if args.refine == "cda" else args.refine
        labeler = PseudoLabeler(
            backbone,
            class_names,
            bg_words,
            templates=tuple(args.templates) if args.templates else ("a clean origami {}.",),
            cam=_cam(args),
            refine=refine,
            par=PAR(num_iter=args.par_iters) if args.par_iters > 0 else None,
            long_side=args.long_side or None,
            bg_alpha=args.bg_alpha,
            par_scale=args.par_scale,
            attn_layers=args.attn_layers,
            box_threshold=args.box_threshold if args.box_threshold is not None else theta,
        )
    except (FileNotFoundError, ValueError, RuntimeError, KeyError, TypeError) as err:
        print(f"cdclip cams: error: {err}", file=sys.stderr)
        return 2

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    overlay_on = not args.no_overlay
    matrix = ConfusionMatrix(len(class_names) + 1, ignore_index=255)
    scored = computed = skipped = 0
    for index in tqdm(list(_indices(len(dataset), args.limit)), desc="cdclip cams", unit="img"):
        item = dataset[index]
        name = str(item["name"])
        mask = item.get("mask")
        paths = _outputs(out, name, overlay_on)
        if not args.overwrite and all(p.is_file() for p in paths):
            skipped += 1
            if mask is not None:
                matrix.update(torch.from_numpy(load_label_png(paths[1])), torch.as_tensor(mask))
                scored += 1
            continue
        image = torch.as_tensor(item["image"]).to(torch.uint8)
        labels = torch.as_tensor(item["labels"]).float()[None]
        result = labeler(image[None], labels)
        label = result.labels[0].cpu()
        keys = torch.nonzero(labels[0] > 0).flatten()
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            paths[0],
            keys=(keys + 1).numpy().astype(np.int64),
            cams=result.cams[0, keys].cpu().numpy().astype(np.float16),
            refined=result.refined[0, keys].cpu().numpy().astype(np.float16),
            size=np.asarray(image.shape[-2:], dtype=np.int64),
        )
        save_label_png(paths[1], label.numpy().astype(np.uint8), palette=palette)
        if overlay_on:
            _save_overlay(paths[2], image, label.numpy(), result.refined[0, keys].cpu(), palette)
        if mask is not None:
            matrix.update(label, torch.as_tensor(mask))
            scored += 1
        computed += 1
        del item, image, result, label, mask

    print(f"cdclip cams: {computed} computed, {skipped} skipped (existing), outputs in {out}")
    if scored:
        names_bg = ("background", *class_names)
        miou = float(matrix.miou())
        print(matrix.table(names_bg))
        print(f"pseudo-label mIoU: {100 * miou:.2f} on {scored} images")
        metrics = {
            "miou": miou,
            "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names_bg, matrix.iou(), strict=True)},
            "images": scored,
            "cam": args.cam,
            "refine": refine,
            "backbone": args.backbone,
        }
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return 0


def _cam(args: argparse.Namespace) -> Any:
    from cdclip.cam.gradcam import CLIPGradCAM
    from cdclip.cam.patch_text import PatchTextCAM

    if args.cam == "gradcam":
        return CLIPGradCAM(scales=args.scales, flip=args.flip)
    return PatchTextCAM(scales=args.scales, flip=args.flip)
