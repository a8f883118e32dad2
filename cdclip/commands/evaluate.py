"""``cdclip eval``: mIoU of written label PNGs, or of a trained model with multi-scale + flip (+ CRF).

Examples::

    # score PNGs already written (predictions, pseudo labels from `cdclip cams`)
    cdclip eval --voc data/VOC2012 --split train --pred-dir runs/cams_voc/pseudo
    # evaluate a training checkpoint: scales 1.0 and 0.75, flip, long side 512 (WeCLIP protocol)
    cdclip eval --voc data/VOC2012 --split val --checkpoint runs/voc/checkpoint.pt --crf --out runs/voc/eval

Outputs in ``--out``: ``metrics.json`` (mIoU, per-class IoU, pixel accuracy, image count) and
``iou.md`` (per-class table); with ``--checkpoint`` also ``predictions/<name>.png``. Existing
predictions are read back instead of recomputed unless ``--overwrite``, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data (one of)")
    group = data.add_mutually_exclusive_group(required=True)
    group.add_argument("--voc", type=Path, metavar="ROOT", help="PASCAL VOC2012 folder")
    group.add_argument("--coco", type=Path, metavar="ROOT", help="COCO folder (images in ROOT/SPLIT)")
    data.add_argument("--split", default=None, help="split to score (VOC: val; COCO: val2014)")
    data.add_argument("--mask-dir", default=None, help="ground-truth mask folder (default: the dataset's)")
    data.add_argument("--limit", type=int, default=None, help="only the first N images")
    data.add_argument("--skip-bad", action="store_true", help="skip (and count) images with missing or broken files")

    what = parser.add_argument_group("what to score (one of)")
    mode = what.add_mutually_exclusive_group(required=True)
    mode.add_argument("--pred-dir", type=Path, help="folder of label PNGs <name>.png to score")
    mode.add_argument("--checkpoint", type=Path, help="training checkpoint (checkpoint.pt) to evaluate")
    mode.add_argument("--cams", type=Path, metavar="DIR",
                      help="folder of CAM files (cdclip cams' cams/*.npz or CLIP-ES *.npy) scored over a sweep of "
                           "background thresholds")
    what.add_argument("--thresholds", type=float, nargs="+", default=None,
                      help="--cams: background thresholds (default 0.05, 0.10, ..., 0.95)")
    what.add_argument("--cam-key", default="refined", choices=("refined", "cams"),
                      help="--cams: the refined CAMs (CLIP-ES attn_highres) or the initial ones (highres)")
    what.add_argument("--void-pred", default="error", choices=("error", "background", "skip"),
                      help="--pred-dir: how a predicted 255 counts (pseudo labels with ignored pixels)")

    model = parser.add_argument_group("model evaluation (--checkpoint)")
    model.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75], help="factors of --long-side")
    model.add_argument("--no-flip", action="store_true", help="do not add horizontally flipped inputs")
    model.add_argument("--long-side", type=int, default=512, help="input long side at scale 1 (0: native)")
    model.add_argument("--crf", action="store_true",
                       help="dense CRF on the averaged softmax; with --cams, on the maps at the best threshold "
                            "(pip install cdclip[crf])")
    model.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    model.add_argument("--clip-weights", default=None, help="override the CLIP weights path stored in the checkpoint")
    model.add_argument("--workers", type=int, default=2, help="data-loading processes")
    model.add_argument("--seed", type=int, default=None,
                       help="seed every RNG before the model is built (default: the training run's seed, so that "
                            "random backbones are the ones it trained with)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None,
                     help="output folder (default: the --pred-dir folder, or <checkpoint dir>/eval_<split>)")
    out.add_argument("--overwrite", action="store_true", help="recompute predictions whose PNG exists")
    out.add_argument("--quiet", action="store_true", help="no progress bar")


def _dataset(args: argparse.Namespace) -> tuple[Any, str]:
    from cdclip.commands._datasets import dataset_from_args

    dataset, _, split = dataset_from_args(
        args, {"voc": "val", "coco": "val2014"}, mask_dir=args.mask_dir, require_labels=False, skip_bad=args.skip_bad
    )
    return dataset, split


def _print_result(metrics: dict[str, Any], out: Path) -> None:
    print((out / "iou.md").read_text(encoding="utf-8").rstrip())
    bad = metrics.get("unreadable") or []
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        print(f"cdclip eval: warning: {len(bad)} unreadable image(s) skipped: {shown}", file=sys.stderr)
    print(f"mIoU {100.0 * metrics['miou']:.2f} over {metrics['images']} image(s); metrics in {out / 'metrics.json'}")


def _build_model(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The trained model from a checkpoint and the fingerprint of the CLIP it trained with.

    Raises with a message on any failure (caught by run).
    """
    import torch

    from cdclip.pipeline import model as model_module
    from cdclip.pipeline.config import TrainConfig

    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    device = args.device
    # evaluation needs neither DINO nor the boundary loss: λ_be = 0 keeps DINO from being built
    overrides: dict[str, Any] = {"device": device, "loss": {"lambda_be": 0.0}}
    if args.clip_weights is not None:
        overrides["model"] = {"clip_weights": args.clip_weights}
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = TrainConfig.from_dict(overrides, base=TrainConfig.from_dict(checkpoint.get("config", {})))
    model = model_module.build_model(config, device=device)
    model.load_decoder(checkpoint)
    model.eval()
    return model, checkpoint.get("clip_fingerprint")


def _check_clip(model: Any, stored: str | None, args: argparse.Namespace) -> None:
    """Refuse a CLIP other than the one the decoder was trained on (random weights: another seed)."""
    from cdclip.fingerprint import weights_fingerprint

    if stored is not None and stored != weights_fingerprint(model.backbone):
        raise ValueError(
            f"--checkpoint: {args.checkpoint} was trained on other CLIP weights (fingerprint {stored}, these "
            f"{weights_fingerprint(model.backbone)}); pass the training run's --clip-weights (and its --seed for "
            "random weights)"
        )


def _check_eval_settings(args: argparse.Namespace, model: Any, out: Path, split: str) -> None:
    """Predictions in ``out`` are reused: refuse those of another checkpoint or other settings."""
    from cdclip.fingerprint import weights_fingerprint
    from cdclip.run_settings import SettingsMismatchError, require_same_settings, write_settings

    settings = {
        "decoder": weights_fingerprint(model.decoder), "clip": weights_fingerprint(model.backbone),
        "split": split, "scales": list(args.scales), "flip": not args.no_flip, "long_side": args.long_side,
        "crf": bool(args.crf),
    }  # fmt: skip
    hint = "use another --out, or pass --overwrite to predict every image again"
    try:
        require_same_settings(out / "settings.json", settings, hint)
    except SettingsMismatchError:
        if not args.overwrite:
            raise
    write_settings(out / "settings.json", settings)


def run(args: argparse.Namespace) -> int:
    from cdclip.pipeline.evaluator import evaluate_labels

    root = args.voc if args.voc is not None else args.coco
    if not root.is_dir():
        print(f"cdclip eval: {'--voc' if args.voc is not None else '--coco'} {root} is not a folder", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 0:
        print(f"cdclip eval: --limit must be >= 0, got {args.limit}", file=sys.stderr)
        return 2
    dataset, split = _dataset(args)
    names = ["background", *dataset.class_names]

    if args.cams is not None:
        return _evaluate_cams(args, dataset, names)
    if args.pred_dir is not None:
        if not args.pred_dir.is_dir():
            print(f"cdclip eval: --pred-dir {args.pred_dir} is not a folder", file=sys.stderr)
            return 2
        out = args.out if args.out is not None else args.pred_dir
        try:
            metrics = evaluate_labels(
                args.pred_dir, dataset, len(names), names, limit=args.limit, out_dir=out,
                void_prediction=args.void_pred, progress=not args.quiet,
            )
        except (FileNotFoundError, ValueError) as err:
            print(f"cdclip eval: {err}", file=sys.stderr)
            return 2
        _print_result(metrics, out)
        return 0

    if not args.checkpoint.is_file():
        print(f"cdclip eval: --checkpoint {args.checkpoint} is not a file", file=sys.stderr)
        return 2
    if any(s <= 0 for s in args.scales) or args.long_side < 0:
        print(f"cdclip eval: --scales must be > 0 and --long-side >= 0, got {args.scales} / {args.long_side}",
              file=sys.stderr)
        return 2
    from cdclip.device import default_device
    from cdclip.distributed import cleanup, init_from_env

    args.device = init_from_env(args.device or default_device())
    try:
        return _evaluate_checkpoint(args, dataset, split, names)
    finally:
        cleanup()


def _evaluate_cams(args: argparse.Namespace, dataset: Any, names: list[str]) -> int:
    """The background-threshold sweep of ``--cams``: a table, the best threshold and ``cam_eval.json``."""
    from cdclip.atomic import atomic_write_text
    from cdclip.pipeline.cam_eval import DEFAULT_THRESHOLDS, evaluate_cams

    thresholds = tuple(args.thresholds) if args.thresholds else DEFAULT_THRESHOLDS
    result = evaluate_cams(args.cams, dataset, names[1:], thresholds, which=args.cam_key, limit=args.limit,
                           progress=not args.quiet, crf=args.crf)  # fmt: skip
    print("| background threshold | mIoU (%) |\n|---:|---:|")
    for threshold, miou in zip(result["thresholds"], result["miou"], strict=True):
        print(f"| {threshold:.2f} | {100 * miou:.2f} |")
    print(result["table"])
    print(f"best: mIoU {100 * result['best_miou']:.2f} at background threshold {result['best_threshold']:.2f} "
          f"over {result['images']} image(s) ({args.cam_key} CAMs)")  # fmt: skip
    if "crf_miou" in result:
        print(f"with dense CRF at {result['best_threshold']:.2f}: mIoU {100 * result['crf_miou']:.2f}")
    if result["missing"]:
        print(f"cdclip eval: warning: {len(result['missing'])} image(s) have no CAM file in {args.cams}", file=sys.stderr)
    out = args.out if args.out is not None else args.cams.parent
    record = {k: v for k, v in result.items() if k != "table"}
    atomic_write_text(out / "cam_eval.json", json.dumps(record, indent=2) + "\n")
    print(f"written: {out / 'cam_eval.json'}")
    return 0


def _evaluate_checkpoint(args: argparse.Namespace, dataset: Any, split: str, names: list[str]) -> int:
    """Rebuild the trained model, check it against the output folder, predict and score.

    Under torchrun every process predicts every world-size-th image; the confusion matrices are
    summed and process 0 writes and prints the report.
    """
    from cdclip.distributed import is_main_process
    from cdclip.pipeline.evaluator import Evaluator

    try:
        model, trained_clip = _build_model(args)
    except ImportError as err:
        print(f"cdclip eval: the trained model is not available in this installation ({err})", file=sys.stderr)
        return 2
    except Exception as err:  # any failure to rebuild the model is reported, not a traceback
        print(f"cdclip eval: cannot build the model from {args.checkpoint}: {type(err).__name__}: {err}",
              file=sys.stderr)
        return 2
    out = args.out if args.out is not None else args.checkpoint.parent / f"eval_{split}"
    _check_clip(model, trained_clip, args)
    _check_eval_settings(args, model, out, split)
    try:
        evaluator = Evaluator(
            model, len(names), names, scales=args.scales, flip=not args.no_flip,
            long_side=args.long_side or None, crf=True if args.crf else None, progress=not args.quiet,
        )
    except ImportError as err:  # --crf without pydensecrf2
        print(f"cdclip eval: {err}", file=sys.stderr)
        return 2
    metrics = evaluator.evaluate(dataset, out_dir=out, limit=args.limit, overwrite=args.overwrite,
                                 num_workers=args.workers)
    if is_main_process():
        _print_result(metrics, out)
        summary = {k: metrics[k] for k in ("predicted", "reused")}
        print(f"predictions in {out / 'predictions'}: {json.dumps(summary)}")
    return 0
