"""``cdclip predict``: a trained model's segmentation of a folder of images or a dataset split.

Examples::

    cdclip predict --checkpoint runs/voc/checkpoint.pt --images photos/ --out runs/voc/photos
    cdclip predict --checkpoint runs/voc/checkpoint.pt --voc data/VOC2012 --split test --crf --out runs/voc/test

The model is rebuilt from the checkpoint as ``cdclip eval`` does (multi-scale + flip inference,
optional CRF, CPU or GPU). Outputs, each written atomically; existing ones are skipped unless
``--overwrite``: ``pred/<name>.png`` (palette PNG, pixel = class id, 0 = background) and
``overlay/<name>.png`` (the prediction blended over the image). ``classes.json`` maps ids to names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input (one of)")
    group = src.add_mutually_exclusive_group(required=True)
    group.add_argument("--images", type=Path, help="folder of images")
    group.add_argument("--voc", type=Path, metavar="ROOT", help="PASCAL VOC2012 folder")
    group.add_argument("--coco", type=Path, metavar="ROOT", help="COCO folder")
    src.add_argument("--split", default=None, help="dataset split (VOC: val; COCO: val2014)")
    src.add_argument("--limit", type=int, default=None, help="only the first N images")

    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (checkpoint.pt)")
    model.add_argument("--clip-weights", default=None, help="override the CLIP weights path stored in the checkpoint")
    model.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    model.add_argument("--seed", type=int, default=None, help="default: the training run's (random backbones)")
    model.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75], help="factors of --long-side")
    model.add_argument("--no-flip", action="store_true", help="do not add horizontally flipped inputs")
    model.add_argument("--long-side", type=int, default=512, help="input long side at scale 1 (0: native)")
    model.add_argument("--crf", action="store_true", help="dense CRF on the averaged softmax (pip install cdclip[crf])")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="output folder")
    out.add_argument("--overwrite", action="store_true", help="predict images whose PNG exists again")
    out.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")
    out.add_argument("--quiet", action="store_true", help="no progress bar")


def _dataset(args: argparse.Namespace, class_names: tuple[str, ...]) -> tuple[Any, str]:
    if args.voc is not None or args.coco is not None:
        from cdclip.commands._datasets import dataset_from_args

        dataset, palette, _ = dataset_from_args(args, {"voc": "val", "coco": "val2014"}, require_labels=False)
        return dataset, palette
    from cdclip.data.folder import ImageFolder

    if not args.images.is_dir():
        raise FileNotFoundError(f"--images: folder not found: {args.images}")
    return ImageFolder(args.images, class_names, skip_bad=True), "voc" if len(class_names) <= 20 else "coco"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cdclip.atomic import atomic_path, atomic_write_text
    from cdclip.commands.evaluate import _build_model
    from cdclip.commands.output_folder import classes_table, is_complete
    from cdclip.data.palette import overlay, save_label_png
    from cdclip.device import default_device
    from cdclip.folder_lock import folder_lock
    from cdclip.pipeline.evaluator import Evaluator

    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file: {args.checkpoint}")
    args.device = args.device or default_device()
    model, _ = _build_model(args)
    names = tuple(model.class_names)
    dataset, palette = _dataset(args, names)
    evaluator = Evaluator(model, len(names) + 1, ["background", *names], scales=args.scales, flip=not args.no_flip,
                          long_side=args.long_side or None, crf=True if args.crf else None, progress=False)  # fmt: skip
    total = len(dataset) if args.limit is None else min(len(dataset), args.limit)
    predicted = skipped = 0
    with folder_lock(args.out, ".predict.lock"):
        atomic_write_text(args.out / "classes.json", classes_table(names))
        for index in tqdm(range(total), desc="cdclip predict", unit="img", disable=args.quiet):
            item = dataset.try_get(index)
            if item is None:
                continue
            name = str(item["name"])
            png, view = args.out / "pred" / f"{name}.png", args.out / "overlay" / f"{name}.png"
            wanted = [png] if args.no_overlay else [png, view]
            if not args.overwrite and all(p.is_file() and is_complete(p) for p in wanted):
                skipped += 1
                continue
            image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor)  # a plain tensor, not a tv_tensor
            label = evaluator.predict(image).numpy()
            if not args.no_overlay:
                from PIL import Image

                rgb = image.permute(1, 2, 0).contiguous().numpy().astype(np.uint8)
                with atomic_path(view) as tmp:
                    Image.fromarray(overlay(rgb, label.astype(np.int64), alpha=0.5, palette=palette)).save(tmp)
            with atomic_path(png) as tmp:
                save_label_png(tmp, label.astype(np.uint8), palette=palette)
            predicted += 1
    print(f"cdclip predict: {predicted} predicted, {skipped} skipped (existing), outputs in {args.out}")
    if getattr(dataset, "skipped", None):
        print(f"cdclip predict: warning: {len(dataset.skipped)} unreadable image(s) skipped", file=sys.stderr)
    return 0
