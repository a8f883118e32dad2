"""``cdclip demo``: the whole method on the shipped VOC sample, in a few minutes on a CPU, as a report.

    cdclip demo                              # pretrained CLIP if open_clip finds it, else random weights
    cdclip demo --weights /path/ViT-B-16.pt  # a local checkpoint
    cdclip demo --out outputs/demo

Steps:

1. pseudo labels of the sample's ``val`` images with the initial CAMs only, the attention
   baseline and CDA, and their mIoU;
2. one picture per image: the image, the CAM, the attention-refined CAM, the CDA-refined CAM, the
   pseudo label, the SBE boundary band of its super-classes and the ground truth, side by side;
3. a short single-stage fit of the decoder on the sample's training images, then its evaluation.

Everything goes to ``--out``: ``report.md`` (numbers and pictures) and the PNGs beside it. Without
pretrained weights, which cannot be downloaded offline, one line says so and the demo runs with
random weights. The report marks this at the top: the pictures then show the plumbing, not
accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["add_arguments", "run"]

_SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "VOC2012"
_REFINES = {"CAM only": "none", "attention": "attn", "CDA": "mean"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voc", type=Path, default=None, help="VOC2012 folder (default: the shipped sample)")
    parser.add_argument("--weights", default=None, help="CLIP checkpoint or open_clip tag; 'none' for random weights")
    parser.add_argument("--backbone", default=None, help="registered CLIP backbone (default: the preset's)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="report folder")
    parser.add_argument("--iters", type=int, default=20, help="decoder fit iterations")
    parser.add_argument("--long-side", type=int, default=320, help="CLIP input long side for the pseudo labels")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")


def _backbone(args: argparse.Namespace, config: Any) -> tuple[Any, bool]:
    """(backbone, pretrained?): the requested weights, or random ones with one line saying why."""
    from cdclip.backbones._hub import PretrainedWeightsError
    from cdclip.pipeline.clip_backbone import build_clip_backbone, is_random_weights
    from cdclip.seeding import seed_everything

    seed_everything(0)
    if not is_random_weights(args.weights):
        try:
            return build_clip_backbone(config.model, args.device, args.weights), True
        except PretrainedWeightsError as err:
            print(f"cdclip demo: no pretrained CLIP weights ({str(err).split('.')[0]}); continuing with RANDOM "
                  "weights: the report shows the plumbing, not accuracy")  # fmt: skip
    seed_everything(0)
    return build_clip_backbone(config.model, args.device, "none"), False


def _strip(image: torch.Tensor, panels: list[np.ndarray], titles: list[str]) -> Any:
    from PIL import Image, ImageDraw

    h, w = image.shape[-2:]
    gap = np.full((h, 6, 3), 255, dtype=np.uint8)
    row = [np.ascontiguousarray(image.permute(1, 2, 0).numpy().astype(np.uint8))]
    for panel in panels:
        row += [gap, panel]
    strip = np.concatenate(row, axis=1)
    canvas = Image.new("RGB", (strip.shape[1], h + 16), "white")
    canvas.paste(Image.fromarray(strip), (0, 16))
    draw = ImageDraw.Draw(canvas)
    for i, title in enumerate(["image", *titles]):
        draw.text((i * (w + 6) + 3, 2), title, fill="black")
    return canvas


def _peak(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    import torch.nn.functional as F

    from cdclip.data.palette import heatmap

    peak = maps.amax(dim=0, keepdim=True)[None] if len(maps) else torch.zeros(1, 1, 1, 1)
    return heatmap(F.interpolate(peak.float(), size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1))


def _band(label: torch.Tensor) -> np.ndarray:
    """The SBE band (super-class boundaries) of a pseudo label, white on black."""
    from cdclip.data.superclasses import superclass_grouping
    from cdclip.prototypes.superclass import boundary_band

    grouping = superclass_grouping("voc")
    lookup = torch.cat([torch.tensor([grouping.background]), grouping.class_to_super.long()])
    band = boundary_band(lookup[label.clamp(0, 20)][None], 5)[0]
    return np.repeat((band.numpy()[..., None] * 255).astype(np.uint8), 3, axis=2)


def _pseudo_labels(args: argparse.Namespace, config: Any, backbone: Any, voc: Path, out: Path) -> dict[str, float]:
    """Step 1 and 2: pseudo labels three ways, their mIoU, and the pictures."""
    from cdclip.data.palette import colorize
    from cdclip.data.prompts import background_words
    from cdclip.data.voc import VOCSegmentation
    from cdclip.metrics import ConfusionMatrix
    from cdclip.pipeline.config import apply_overrides
    from cdclip.pipeline.pseudo_labels import PseudoLabeler

    dataset = VOCSegmentation(voc, "val")
    words = background_words(config.model.background)
    labelers = {name: PseudoLabeler.from_config(apply_overrides(config, {"model.refine": refine}),
                                                dataset.class_names, words, backbone)
                for name, refine in _REFINES.items()}  # fmt: skip
    matrices = {name: ConfusionMatrix(21, ignore_index=255) for name in labelers}
    for index in range(len(dataset)):
        item = dataset.load(index)
        image, mask = item["image"].as_subclass(torch.Tensor), item["mask"].as_subclass(torch.Tensor)
        labels = item["labels"][None]
        outs = {name: labeler(image[None], labels) for name, labeler in labelers.items()}
        for name, result in outs.items():
            matrices[name].update(result.labels[0], mask)
        keys = torch.nonzero(labels[0] > 0).flatten()
        size = tuple(image.shape[-2:])
        panels = [_peak(outs["CAM only"].cams[0, keys], size), _peak(outs["attention"].refined[0, keys], size),
                  _peak(outs["CDA"].refined[0, keys], size), colorize(outs["CDA"].labels[0]),
                  _band(outs["CDA"].labels[0]), colorize(mask)]  # fmt: skip
        titles = ["CAM", "attention-refined", "CDA-refined", "pseudo label (CDA)", "SBE band", "ground truth"]
        _strip(image, panels, titles).save(out / f"{item['name']}.png")
    return {name: float(m.miou()) for name, m in matrices.items()}


def _fit(args: argparse.Namespace, config: Any, backbone: Any, voc: Path, out: Path) -> dict[str, float]:
    """Step 3: a short decoder fit on the training images and its evaluation on val."""
    from cdclip.data.voc import VOCSegmentation
    from cdclip.pipeline.evaluator import Evaluator
    from cdclip.pipeline.model import build_model
    from cdclip.pipeline.trainer import Trainer, build_dataset

    fit = config.replace(iters=args.iters, out_dir=str(out / "fit"), progress=False, log_every=max(1, args.iters),
                         checkpoint_every=args.iters, data={"root": str(voc), "split": "train_aug", "crop_size": 160,
                         "batch_size": 2, "num_workers": 0}, model={"dino": None, "par_iters": 5},
                         loss={"lambda_be": 0.0})  # fmt: skip
    model = build_model(fit, backbone=backbone)
    losses = Trainer(fit, model, build_dataset(fit.data)).train(overwrite=True)
    model.eval()
    names = ["background", *model.class_names]
    evaluator = Evaluator(model, 21, names, scales=(1.0,), flip=False, long_side=args.long_side, progress=False)
    metrics = evaluator.evaluate(VOCSegmentation(voc, "val"), out_dir=out / "fit" / "eval", save_predictions=False)
    return {"loss": losses.get("loss", float("nan")), "miou": float(metrics["miou"])}


def _report(out: Path, pretrained: bool, weights: str | None, scores: dict[str, float], fit: dict[str, float],
            seconds: float, iters: int) -> Path:  # fmt: skip
    from cdclip.atomic import atomic_write_text

    lines = ["# cdclip demo", ""]
    if not pretrained:
        lines += ["> **Random CLIP weights** (no pretrained weights were found): the numbers and pictures show that",
                  "> the pipeline runs end to end, not how well CD-CLIP segments. Pass `--weights` with a ViT-B/16.", ""]  # fmt: skip
    else:
        lines += [f"CLIP weights: `{weights or 'the preset tag'}`.", ""]
    lines += ["## Pseudo labels on the sample's val images", "", "| refinement | mIoU (%) |", "|---|---:|"]
    lines += [f"| {name} | {100 * miou:.2f} |" for name, miou in scores.items()]
    lines += ["", "Left to right: image, CAM, attention-refined CAM, CDA-refined CAM, pseudo label (CDA), SBE band "
              "of its super-classes, ground truth.", ""]  # fmt: skip
    lines += [f"![{p.stem}]({p.name})" for p in sorted(out.glob("*.png"))]
    lines += ["", f"## Decoder fit ({iters} iterations on the training images, SBE off)", "",
              f"Final loss {fit['loss']:.4f}; val mIoU {100 * fit['miou']:.2f} %.", "",
              f"Whole demo: {seconds:.0f} s."]  # fmt: skip
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    import warnings

    from cdclip.device import check_device, default_device
    from cdclip.pipeline.config import apply_overrides, preset

    start = time.perf_counter()
    args.device = check_device(args.device or default_device(), "--device")
    voc = args.voc or _SAMPLE
    if not voc.is_dir():
        raise FileNotFoundError(f"--voc: folder not found: {voc}")
    overrides: dict[str, Any] = {"model.cam_long_side": args.long_side, "device": args.device}
    if args.backbone:
        overrides["model.clip"] = args.backbone
    config = apply_overrides(preset("cdclip-voc"), overrides)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is said once, above
        backbone, pretrained = _backbone(args, config)
        print("cdclip demo: 1/2 pseudo labels (CAM only, attention, CDA) and pictures", file=sys.stderr)
        scores = _pseudo_labels(args, config, backbone, voc, out)
        print(f"cdclip demo: 2/2 decoder fit ({args.iters} iterations) and evaluation", file=sys.stderr)
        fit = _fit(args, config, backbone, voc, out)
    path = _report(out, pretrained, args.weights, scores, fit, time.perf_counter() - start, args.iters)
    print(", ".join(f"{name} {100 * miou:.2f}" for name, miou in scores.items()) + " (pseudo-label mIoU, %)")
    print(f"cdclip demo: report in {path}")
    return 0
