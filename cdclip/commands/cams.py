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

``--format clip-es`` writes ``cams/<name>.npy`` dicts in CLIP-ES's layout instead (0-based
``keys``, ``highres`` and ``attn_highres`` float16 at image resolution), which its training
scripts and ``cdclip eval --cams`` read; ``--format weclip`` the dicts WeCLIP's (ToCo's) scripts
save (0-based ``keys``, ``cam`` float32 at image resolution, the refined CAMs).

When ground-truth masks exist (VOC/COCO) the pseudo-label mIoU is printed and written to
``metrics.json``. Images are processed one at a time; nothing per image is kept in memory.

Safety: every file is written atomically (a killed run leaves complete files or none), and the
pseudo PNG last, so an image counts as done only when all its outputs are complete; a rerun checks
each file it skips (PNG trailer, npz CRCs) and recomputes broken ones. ``settings.json`` records
what made the outputs (input, classes, the model section, the weights' fingerprint) and a rerun
with other settings refuses, naming the keys, unless ``--overwrite``. ``classes.json`` maps label
ids to class names. The folder is locked: a second run into it exits with a message.

A run that finished every image leaves ``completed.json`` (:mod:`cdclip.commands.completion_record`):
the same command again, on unchanged inputs and outputs, prints the stored score in well under a
second without importing torch; anything else takes the full path above.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdclip.commands.completion_record import RECORD_NAME, describe_request, forget, remember, replay
from cdclip.commands.output_folder import SETTINGS_NAME, check_folder_settings, classes_table, is_complete

if TYPE_CHECKING:
    import torch

__all__ = ["add_arguments", "run"]

def add_arguments(parser: argparse.ArgumentParser) -> None:
    _input_arguments(parser)
    _model_arguments(parser)
    _method_arguments(parser)
    _output_arguments(parser)


def _input_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input (one of)")
    group = src.add_mutually_exclusive_group()
    group.add_argument("--images", type=Path, help="folder of images (labels from --classes)")
    group.add_argument("--voc", type=Path, metavar="ROOT", help="PASCAL VOC2012 folder")
    group.add_argument("--coco", type=Path, metavar="ROOT", help="COCO folder (images in ROOT/SPLIT)")
    src.add_argument("--split", default=None, help="dataset split (VOC: train; COCO: train2014)")
    src.add_argument("--label-file", type=Path, default=None,
                     help="image-level labels (cls_labels_onehot.npy style); default: the dataset's own")
    src.add_argument("--labels-from", default=None, choices=("file", "mask"),
                     help="image classes from the label file (default) or the GT masks (WeCLIP's leak; warns)")
    src.add_argument("--classes", default=None,
                     help="comma-separated class names for --images; every class is taken as present")
    src.add_argument("--background", default=None, choices=("voc", "coco", "none"),
                     help="background word list (default: the preset's)")
    src.add_argument("--limit", type=int, default=None, help="process only the first N images")
    src.add_argument("--skip-bad", default=None, action=argparse.BooleanOptionalAction,
                     help="skip (and count) unreadable images (default: on for --images, off for datasets)")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    preset = parser.add_argument_group("preset (flags below override it)")
    preset.add_argument("--preset", default=None,
                        help="a shipped preset, e.g. clip-es, weclip-voc, cdclip-voc (default: cdclip-voc, "
                             "cdclip-coco for --coco)")
    preset.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")

    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=None, help="registered backbone name (default: the preset's)")
    model.add_argument("--weights", default=None,
                       help="checkpoint path, open_clip tag, or 'none' for random weights (default: the tag)")
    model.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    model.add_argument("--seed", type=int, default=0, help="seeds every RNG before the model is built (default 0)")
    model.add_argument("--templates", action="append", default=None,
                       help="prompt template with {} (repeatable; default: the preset's)")
    model.add_argument("--pos-interp", default=None, choices=("bilinear", "bicubic"),
                       help="position-embedding interpolation (CLIP-ES/WeCLIP: bilinear)")
    model.add_argument("--pos-fp16", default=None, action=argparse.BooleanOptionalAction,
                       help="round the interpolated position embedding to float16 (CLIP-ES/WeCLIP)")
    model.add_argument("--fp16-out-proj", default=None, action=argparse.BooleanOptionalAction,
                       help="attention out-projections in float16 (WeCLIP)")
    model.add_argument("--normalize", default=None, choices=("clip", "imagenet"),
                       help="image statistics for CLIP's input (CLIP-ES: clip; WeCLIP: imagenet)")


def _method_arguments(parser: argparse.ArgumentParser) -> None:
    method = parser.add_argument_group("method")
    method.add_argument("--cam", default=None, choices=("gradcam", "patch_text"))
    method.add_argument("--cam-target", default=None, choices=("ln1_out", "block_in"),
                        help="GradCAM at the last block's ln_1 output (CLIP-ES/WeCLIP) or its input")
    method.add_argument("--refine", default=None, choices=("none", "attn", "cda"))
    method.add_argument("--fusion", default=None, choices=("mean", "replace", "product"),
                        help="how CDA is fused with attention (with --refine cda; default mean)")
    method.add_argument("--box-threshold", type=float, default=None, help="box mask θ (0.4 VOC, 0.7 COCO)")
    method.add_argument("--box-rule", default=None, choices=("inclusive", "clip-es"), help="box ends")
    method.add_argument("--attn-layers", type=int, default=None, help="last blocks averaged for attention")
    method.add_argument("--scales", type=float, nargs="+", default=None)
    method.add_argument("--flip", default=None, action=argparse.BooleanOptionalAction,
                        help="add flipped inputs to the CAMs")
    method.add_argument("--long-side", type=int, default=None, help="CLIP input long side (0: native size)")
    method.add_argument("--max-side", type=int, default=None,
                        help="working-resolution cap: larger images are shrunk to it for CLIP, CAMs and PAR and only "
                             "the label map is upsampled back (default 1024; 0: no cap, memory grows with the image)")
    method.add_argument("--resize", default=None, choices=("pil_bicubic", "bilinear"),
                        help="input resize (CLIP-ES: PIL bicubic of the uint8 image)")
    method.add_argument("--background-at", default=None, choices=("image", "patch"),
                        help="background after upsampling the refined maps (image) or on the patch grid")
    method.add_argument("--bg-alpha", type=float, default=None, help="background score (1 - max CAM)^alpha")
    method.add_argument("--bg-threshold", type=float, default=None, help="constant background score instead")
    method.add_argument("--par-iters", type=int, default=None, help="PAR iterations (0 disables PAR)")
    method.add_argument("--par-scale", type=float, default=None,
                        help="resolution of PAR relative to the image (0.5 is 4x cheaper)")


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, default=None, help="output folder (required)")
    out.add_argument("--overwrite", action="store_true",
                     help="recompute every image (needed to change the settings of an existing --out)")
    out.add_argument("--no-overlay", action="store_true", help="do not write overlay PNGs")
    out.add_argument("--format", default="cdclip", choices=("cdclip", "clip-es", "weclip"),
                     help="CAM files: cdclip's cams/*.npz (patch grid, float16), CLIP-ES's cams/*.npy dicts "
                          "(0-based keys, highres / attn_highres float16 at image size) or WeCLIP's (ToCo's) "
                          "dicts (0-based keys, cam float32 at image size: the refined CAMs)")

    scale = parser.add_argument_group("scale out (or run under torchrun: one shard per process)")
    scale.add_argument("--shard", default=None, metavar="K/N",
                       help="process shard K of N (0-based, e.g. $SLURM_ARRAY_TASK_ID/8) into a shared --out")
    scale.add_argument("--merge", action="store_true",
                       help="only merge the shards' scores in --out into metrics.json (the last shard also does)")


# flags that override the preset's ModelConfig fields: flag -> field
_MODEL_FLAGS = {
    "backbone": "clip", "cam": "cam", "cam_target": "cam_target", "box_threshold": "box_threshold",
    "box_rule": "box_rule", "attn_layers": "attn_layers", "resize": "cam_resize", "background_at": "background_at",
    "bg_alpha": "bg_alpha", "bg_threshold": "bg_threshold", "par_iters": "par_iters", "par_scale": "par_scale",
    "pos_interp": "clip_pos_interp", "pos_fp16": "clip_pos_fp16", "fp16_out_proj": "clip_fp16_out_proj",
    "flip": "cam_flip", "background": "background",
}  # fmt: skip


def model_config(args: argparse.Namespace) -> Any:
    """The preset's :class:`~cdclip.pipeline.config.TrainConfig` with the command-line flags applied.

    Shape:
        - no tensors: Namespace -> TrainConfig
    """
    from cdclip.pipeline.config import apply_overrides, preset

    name = args.preset or ("cdclip-coco" if args.coco is not None else "cdclip-voc")
    overrides: dict[str, Any] = {
        f"model.{field}": getattr(args, flag) for flag, field in _MODEL_FLAGS.items() if getattr(args, flag) is not None
    }
    if args.refine is not None:
        overrides["model.refine"] = (args.fusion or "mean") if args.refine == "cda" else args.refine
    elif args.fusion is not None:
        overrides["model.refine"] = args.fusion
    if args.scales is not None:
        overrides["model.cam_scales"] = list(args.scales)
    if args.long_side is not None:
        overrides["model.cam_long_side"] = args.long_side or None
    if args.max_side is not None:
        overrides["model.cam_max_side"] = args.max_side or None
    if args.templates:
        overrides["model.templates"] = list(args.templates)
    if args.normalize is not None:
        overrides["data.normalize"] = args.normalize
    if args.labels_from is not None:
        overrides["data.labels_from"] = args.labels_from
    return apply_overrides(preset(name), overrides)


def print_presets(training_only: bool = False) -> None:
    from cdclip.presets import list_presets

    for info in list_presets():
        if training_only and not info["training"]:
            continue
        kind = "train" if info["training"] else "cams "
        print(f"{info['name']:<22} {kind}  {info['description']}")


# ------------------------------------------------------------------------------------------ input
def _dataset(args: argparse.Namespace, config: Any) -> tuple[Any, tuple[str, ...], tuple[str, ...], str]:
    """(dataset, class names, background words, palette)."""
    from cdclip.data.prompts import background_words

    bg = background_words(config.model.background)
    if args.voc is not None or args.coco is not None:
        from cdclip.commands._datasets import dataset_from_args

        ds, palette, _ = dataset_from_args(args, {"voc": "train", "coco": "train2014"}, label_file=args.label_file,
                                           skip_bad=_skip_bad(args))  # fmt: skip
        names = ds.class_names
    else:
        if not args.classes:
            raise ValueError("--classes: an image folder needs the class names, e.g. --classes cat,dog")
        names = tuple(c.strip() for c in args.classes.split(",") if c.strip())
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"--classes: each class once, got {', '.join(repeated)} more than once in {args.classes!r}")
        from cdclip.data.folder import ImageFolder

        if not args.images.is_dir():
            raise FileNotFoundError(f"--images: folder not found: {args.images}")
        ds = ImageFolder(args.images, names, skip_bad=_skip_bad(args))
        palette = "voc"
    if config.data.labels_from == "mask":
        if args.images is not None:
            raise ValueError("--labels-from mask: an image folder has no masks")
        warnings.warn(
            "labels_from='mask': image classes are read from the ground-truth masks (WeCLIP's label leak); "
            "use it only to reproduce WeCLIP",
            UserWarning,
            stacklevel=2,
        )
    return ds, tuple(names), tuple(bg), palette


def _skip_bad(args: argparse.Namespace) -> bool:
    """``--skip-bad``, by default on for an image folder and off for a dataset."""
    return args.skip_bad if args.skip_bad is not None else args.images is not None


def _indices(n: int, limit: int | None) -> Iterator[int]:
    return iter(range(n if limit is None else min(n, max(0, limit))))


# ------------------------------------------------------------------------------------------ run
LOCK_NAME = ".cams.lock"
FORMAT = "cdclip-cams-v1"
_OUTPUT_DIRS = ("cams", "pseudo", "overlay")
SHARD_DIR = "shards"  # per-shard scores, merged into metrics.json


def _build_backbone(args: argparse.Namespace, model: Any) -> Any:
    from cdclip.pipeline.clip_backbone import build_clip_backbone

    return build_clip_backbone(model, args.device, args.weights)


def _outputs(out: Path, name: str, overlay: bool, fmt: str = "cdclip") -> list[Path]:
    suffix = ".npz" if fmt == "cdclip" else ".npy"
    paths = [out / "cams" / f"{name}{suffix}", out / "pseudo" / f"{name}.png"]
    if overlay:
        paths.append(out / "overlay" / f"{name}.png")
    return paths


def _save_overlay(path: Path, image: torch.Tensor, label: np.ndarray, refined: torch.Tensor, palette: str,
                  max_side: int | None) -> None:  # fmt: skip
    """The label blended over the image, beside the refined CAMs' peak; at most ``max_side`` pixels long.

    Blending costs about 85 bytes per pixel, so a large image is shown at the working size: its
    memory then stays within the cap like the rest of the run.
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from cdclip.data.palette import overlay

    rgb = image.permute(1, 2, 0).contiguous().numpy().astype(np.uint8)
    height, width = rgb.shape[:2]
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=None))
        label = np.asarray(Image.fromarray(label.astype(np.uint8)).resize(size, Image.Resampling.NEAREST))
    left = overlay(rgb, label.astype(np.int64), alpha=0.5, palette=palette)
    peak = refined.amax(dim=0, keepdim=True)[None] if refined.shape[0] else torch.zeros(1, 1, 1, 1)
    heat = F.interpolate(peak.float(), size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    right = overlay(rgb, heat.clamp(0, 1).numpy().astype(np.float32), alpha=0.5)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def _settings(args: argparse.Namespace, config: Any, class_names: tuple[str, ...],
              bg_words: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """What decides the outputs: input, classes, the model section, normalisation and the weights."""
    kind, root = next((k, getattr(args, k)) for k in ("voc", "coco", "images") if getattr(args, k) is not None)
    return {
        "format": FORMAT,
        "input": {
            "kind": kind, "root": str(Path(root).resolve()), "split": args.split if kind != "images" else None,
            "label_file": str(Path(args.label_file).resolve()) if args.label_file else None,
            "labels_from": config.data.labels_from,
        },
        "classes": list(class_names),
        "background_words": list(bg_words),
        "normalize": config.data.normalize,
        "cam_files": args.format,
        "model": config.to_dict()["model"],
        "weights": {"argument": args.weights, "fingerprint": None},
    }  # fmt: skip


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool, ignore: tuple[str, ...] = ()) -> bool:
    """Refuse outputs made with other settings (unless ``overwrite``); returns whether they differ."""
    return check_folder_settings(out, settings, overwrite, _OUTPUT_DIRS, ignore)


def _clear_outputs(out: Path, names: set[str] | None = None) -> None:
    """Remove the outputs of other settings (``--overwrite`` after a change): none may look current.

    A shard removes only its own images' outputs (``names``); the others are another shard's.
    """
    for folder in _OUTPUT_DIRS:
        for path in (out / folder).glob("*"):
            if path.suffix in (".npz", ".npy", ".png") and (names is None or path.stem in names):
                path.unlink()
    (out / "metrics.json").unlink(missing_ok=True)


def _check_out(out: Path | None) -> Path:
    if out is None:
        raise ValueError("--out: an output folder is required")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out: {out} exists and is not a folder")
    return out


class _Counts:
    """What a run did, for the summary line and ``metrics.json``."""

    def __init__(self) -> None:
        self.computed = self.skipped = self.scored = self.bad = self.unlabelled = 0
        self.bad_names: list[str] = []


def run(args: argparse.Namespace) -> int:
    from cdclip.atomic import atomic_write_text
    from cdclip.device import check_device, default_device
    from cdclip.folder_lock import folder_lock

    if args.list_presets:
        print_presets()
        return 0
    out = _check_out(args.out)
    if args.merge:
        return _merge_shards(out)
    if args.images is None and args.voc is None and args.coco is None:
        raise ValueError("input: one of --images, --voc, --coco is required")
    request = _request(args)
    if request is not None and _replayed(out, request):
        return 0
    from cdclip.distributed import cleanup, init_from_env, rank_and_world  # torch: after the replay

    args.device = check_device(args.device or default_device(), "--device")
    config = model_config(args)
    dataset, class_names, bg_words, palette = _dataset(args, config)
    settings = _settings(args, config, class_names, bg_words)
    args.device = init_from_env(args.device)
    shard = _shard(args, *rank_and_world())
    names = _shard_names(dataset, shard, args.limit)
    try:
        with folder_lock(out, LOCK_NAME if shard.count == 1 else f".cams-{shard.tag}.lock"):
            _remove_own_temps(out, names, shard)
            forget(out)
            _check_settings(out, settings, args.overwrite, ignore=("weights.fingerprint", "weights.source"))
            labeler = _labeler_for(args, config, class_names, bg_words, settings, out)
            if not isinstance(labeler, _LazyLabeler) and _check_settings(
                out, settings, args.overwrite, ignore=("weights.source",)
            ):
                _clear_outputs(out, names if shard.count > 1 else None)
            write_settings_record(out, settings)
            atomic_write_text(out / "classes.json", classes_table(class_names))
            matrix, counts = _process(args, config, dataset, labeler, out, palette, len(class_names), shard)
            score = _finish(out, matrix, counts, class_names, settings, args.preset, shard, rank_and_world()[1] > 1)
            if request is not None and counts.bad == 0:
                remember(out, request, _recorded_outputs(out), score)
    finally:
        cleanup()
    return 0


def _request(args: argparse.Namespace) -> dict[str, Any] | None:
    """What this run is asked for, for the completion record; ``None`` when the run must go the full way.

    ``--overwrite`` recomputes, shards and torchrun processes share a folder (and merge their
    scores), so none of those is ever answered from the record. The torch version is in: it
    decides random weights.
    """
    from importlib.metadata import PackageNotFoundError, version

    if args.overwrite or args.shard is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    # the device does not change the settings; --out is where the record lives (a moved folder still matches)
    arguments = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("device", "out")}
    try:
        arguments["torch_version"] = version("torch")
    except PackageNotFoundError:
        arguments["torch_version"] = None
    inputs = [Path(p) for p in (args.voc, args.coco, args.images, args.label_file, args.weights)
              if p is not None and Path(p).exists()]  # fmt: skip
    return describe_request(arguments, inputs)


def _replayed(out: Path, request: dict[str, Any]) -> bool:
    """Print the stored summary of a finished identical run, if ``out`` holds one (no torch needed)."""
    from cdclip.folder_lock import folder_lock

    if not out.is_dir():
        return False
    with folder_lock(out, LOCK_NAME):
        summary = replay(out, request)
    if summary is None:
        return False
    print(f"cdclip cams: nothing to do: this command already completed every image and its inputs and outputs "
          f"are unchanged ({out / RECORD_NAME}); pass --overwrite to recompute")  # fmt: skip
    if summary:
        print(summary)
    return True


def _recorded_outputs(out: Path) -> list[Path]:
    files = [p for folder in _OUTPUT_DIRS for p in (out / folder).glob("*") if p.is_file()]
    return files + [p for p in (out / n for n in (SETTINGS_NAME, "classes.json", "metrics.json")) if p.is_file()]


def _shard(args: argparse.Namespace, rank: int, world: int) -> Any:
    """This process's part of the image list: the torchrun rank, ``--shard K/N``, or everything."""
    from cdclip.distributed import Shard, parse_shard

    if world > 1:
        if args.shard is not None:
            raise ValueError("--shard: under torchrun every process takes its rank's shard; drop --shard")
        return Shard(rank, world)
    return parse_shard(args.shard) if args.shard is not None else Shard()


def _shard_names(dataset: Any, shard: Any, limit: int | None) -> set[str]:
    names = list(getattr(dataset, "names", ()))
    return {names[i] for i in shard.select(list(_indices(len(dataset), limit)))} if names else set()


def _remove_own_temps(out: Path, names: set[str], shard: Any) -> None:
    """Temporaries a killed run left; with shards only this shard's (another may be writing its own)."""
    from cdclip.atomic import remove_stale_temps

    def other_shards(path: Path) -> bool:
        return path.name[1:].rsplit(".tmp", 1)[0] not in names

    remove_stale_temps(out, keep=other_shards if shard.count > 1 else None)


def write_settings_record(out: Path, settings: dict[str, Any]) -> None:
    from cdclip.run_settings import write_settings

    write_settings(out / SETTINGS_NAME, settings)


def _build_labeler(args: argparse.Namespace, config: Any, class_names: tuple[str, ...], bg_words: tuple[str, ...],
                   settings: dict[str, Any]) -> Any:  # fmt: skip
    """Seed, build the backbone (its fingerprint goes into ``settings``) and the pseudo labeller."""
    import torch

    from cdclip.fingerprint import weights_fingerprint
    from cdclip.pipeline.pseudo_labels import PseudoLabeler
    from cdclip.seeding import seed_everything

    seed_everything(args.seed)
    backbone = _build_backbone(args, config.model)
    settings["weights"]["fingerprint"] = weights_fingerprint(backbone) if isinstance(backbone, torch.nn.Module) else None
    return PseudoLabeler.from_config(config, class_names, bg_words, backbone)


def _weights_source(args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """What names the weights before they are built: a file (path, size, time), a tag, or a seeded random init."""
    import torch

    from cdclip.pipeline.clip_backbone import is_random_weights

    weights = args.weights

    if is_random_weights(weights):
        return {"random": config.model.clip, "seed": args.seed, "torch": torch.__version__}
    if weights is not None and Path(weights).is_file():
        stat = Path(weights).stat()
        return {"file": str(Path(weights).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"tag": weights, "model": config.model.clip, "seed": args.seed}  # a custom factory may draw random weights


def _labeler_for(args: argparse.Namespace, config: Any, class_names: tuple[str, ...], bg_words: tuple[str, ...],
                 settings: dict[str, Any], out: Path) -> Any:  # fmt: skip
    """The pseudo labeller; built only when an image needs it if the folder's weights are these.

    When the stored record names the same weights source (file, tag or seeded random init), its
    fingerprint is taken as this run's and the backbone is built on the first image to compute, then
    checked against it. A rerun whose outputs all exist so never builds a model.
    """
    from cdclip.run_settings import read_settings

    settings["weights"]["source"] = _weights_source(args, config)
    stored = read_settings(out / SETTINGS_NAME) or {}
    stored_weights = stored.get("weights") or {}

    def build() -> Any:
        return _build_labeler(args, config, class_names, bg_words, settings)

    if not args.overwrite and stored_weights.get("source") == settings["weights"]["source"] and stored_weights.get(
        "fingerprint"
    ):
        settings["weights"]["fingerprint"] = stored_weights["fingerprint"]
        return _LazyLabeler(build, settings, out)
    return build()


class _LazyLabeler:
    """Builds the backbone and labeller on the first call and checks the weights' fingerprint then."""

    def __init__(self, build: Any, settings: dict[str, Any], out: Path) -> None:
        self.build, self.expected, self.out = build, settings["weights"]["fingerprint"], out
        self.settings = settings
        self.labeler: Any = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> Any:
        if self.labeler is None:
            from cdclip.run_settings import SettingsMismatchError

            self.labeler = self.build()  # sets settings["weights"]["fingerprint"] to the built model's
            built = self.settings["weights"]["fingerprint"]
            if built != self.expected:
                raise SettingsMismatchError(self.out, [("weights.fingerprint", self.expected, built)],
                                            "the weights changed; pass --overwrite to recompute every image")  # fmt: skip
        return self.labeler(images, labels)


def _load(dataset: Any, index: int) -> dict[str, Any] | None:
    """The sample, or ``None`` when its files are broken and ``--skip-bad`` is on (the dataset records it)."""
    return dataset.try_get(index) if hasattr(dataset, "try_get") else dataset[index]


def _labels_of(item: dict[str, Any], config: Any, num_classes: int) -> torch.Tensor:
    import torch

    from cdclip.pipeline.trainer import labels_from_mask

    labels = torch.as_tensor(item["labels"]).float()
    if not bool(torch.isfinite(labels).all()):
        raise ValueError(f"labels of {item['name']}: expected 0/1 values, got {labels.tolist()}")
    if config.data.labels_from == "mask" and item.get("mask") is not None:
        labels = labels_from_mask(item["mask"], num_classes)
    return labels[None]


def _skip_existing(paths: list[Path], overwrite: bool) -> np.ndarray | None:
    """The stored pseudo label when every output of the image is complete (else ``None``: recompute)."""
    from cdclip.data.palette import load_label_png

    if overwrite or not all(p.is_file() and is_complete(p) for p in paths):
        return None
    try:
        return load_label_png(paths[1])
    except (OSError, ValueError):
        return None


def _write(paths: list[Path], image: torch.Tensor, labels: torch.Tensor, result: Any, palette: str,
           max_side: int | None, fmt: str = "cdclip") -> torch.Tensor:  # fmt: skip
    """Write the image's outputs, each atomically, the pseudo label last; returns the label map."""
    import torch

    from cdclip.atomic import atomic_path
    from cdclip.data.palette import save_label_png

    label = result.labels[0].cpu()
    keys = torch.nonzero(labels[0] > 0).flatten()
    with atomic_path(paths[0]) as tmp:
        if paths[0].suffix == ".npy":
            np.save(tmp, _image_size_record(fmt, keys, result, tuple(image.shape[-2:])), allow_pickle=True)
        else:
            np.savez_compressed(
                tmp,
                keys=(keys + 1).numpy().astype(np.int64),
                cams=result.cams[0, keys].cpu().numpy().astype(np.float16),
                refined=result.refined[0, keys].cpu().numpy().astype(np.float16),
                size=np.asarray(image.shape[-2:], dtype=np.int64),
            )
    if len(paths) > 2:
        with atomic_path(paths[2]) as tmp:
            _save_overlay(tmp, image, label.numpy(), result.refined[0, keys].cpu(), palette, max_side)
    with atomic_path(paths[1]) as tmp:
        save_label_png(tmp, label.numpy().astype(np.uint8), palette=palette)
    return label


def _image_size_record(fmt: str, keys: torch.Tensor, result: Any, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """The CAM dict of CLIP-ES (0-based ``keys``, ``highres`` / ``attn_highres`` float16 at image size) or of
    WeCLIP / ToCo (0-based ``keys``, ``cam``: the refined maps, float16-rounded as CLIP-ES's, as float32)."""
    import torch.nn.functional as F

    def full(maps: torch.Tensor) -> np.ndarray:
        up = F.interpolate(maps[None].float(), size=size, mode="bilinear", align_corners=False)[0] if len(maps) else maps
        return up.reshape(len(maps), *size).cpu().numpy().astype(np.float16)

    ids = keys.numpy().astype(np.int64)
    if fmt == "weclip":  # only the refined maps: no upsampling of the initial ones
        return {"keys": ids, "cam": full(result.refined[0, keys].cpu()).astype(np.float32)}
    return {"keys": ids, "highres": full(result.cams[0, keys].cpu()), "attn_highres": full(result.refined[0, keys].cpu())}


def _process(args: argparse.Namespace, config: Any, dataset: Any, labeler: Any, out: Path, palette: str,
             num_classes: int, shard: Any) -> tuple[Any, _Counts]:  # fmt: skip
    """Every image: skip complete outputs (re-reading the label for the score), else compute and write."""
    import torch
    from tqdm import tqdm

    from cdclip.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(num_classes + 1, ignore_index=255)
    counts = _Counts()
    indices = shard.select(list(_indices(len(dataset), args.limit)))
    desc = "cdclip cams" if shard.count == 1 else f"cdclip cams {shard.index}/{shard.count}"
    for index in tqdm(indices, desc=desc, unit="img", position=shard.index if shard.count > 1 else None):
        item = _load(dataset, index)
        if item is None:
            continue
        name, mask = str(item["name"]), item.get("mask")
        paths = _outputs(out, name, not args.no_overlay, args.format)
        label = _skip_existing(paths, args.overwrite)
        if label is not None:
            counts.skipped += 1
            label = torch.from_numpy(label)
        else:
            image = _as_uint8(item["image"], name)
            labels = _labels_of(item, config, num_classes)
            counts.unlabelled += int(not bool((labels > 0).any()))
            label = _write(paths, image, labels, labeler(image[None], labels), palette, config.model.cam_max_side,
                           args.format)  # fmt: skip
            counts.computed += 1
        if mask is not None:
            matrix.update(label, torch.as_tensor(mask))
            counts.scored += 1
    skipped = list(getattr(dataset, "skipped", ()))
    counts.bad, counts.bad_names = len(skipped), [f"{s.name} ({s.reason})" for s in skipped]
    return matrix, counts


def _as_uint8(image: Any, name: str) -> torch.Tensor:
    """The reader's (3, H, W) uint8 image; anything else is refused (never wrapped or saturated)."""
    import torch

    tensor = torch.as_tensor(image)
    if tensor.dtype != torch.uint8:
        raise TypeError(f"image {name}: expected (3, H, W) uint8 from the image reader, got {tensor.dtype}")
    return tensor


def _finish(out: Path, matrix: Any, counts: _Counts, class_names: tuple[str, ...], settings: dict[str, Any],
            preset: str | None, shard: Any, distributed: bool) -> str:  # fmt: skip
    """Summaries and the score: all-reduced under torchrun, merged from shard files with ``--shard``.

    Returns the score as printed (the per-class table and the mIoU line; empty without one).
    """
    from cdclip.distributed import is_main_process

    if distributed:
        matrix.all_reduce()
        _all_reduce_counts(counts)
        return _report(out, matrix, counts, class_names, settings, preset) if is_main_process() else ""
    if shard.count == 1:
        return _report(out, matrix, counts, class_names, settings, preset)
    _print_counts(out, counts)
    _write_shard_score(out, shard, matrix, counts, class_names, settings, preset)
    if len(list((out / SHARD_DIR).glob(f"*of{shard.count}.json"))) == shard.count:
        _merge_shards(out)  # the last shard to finish writes the merged score
    return ""


def _all_reduce_counts(counts: _Counts) -> None:
    from cdclip.distributed import sum_over_processes

    fields = ("computed", "skipped", "scored", "bad", "unlabelled")
    for field, value in zip(fields, sum_over_processes([getattr(counts, f) for f in fields]), strict=True):
        setattr(counts, field, value)


def _write_shard_score(out: Path, shard: Any, matrix: Any, counts: _Counts, class_names: tuple[str, ...],
                       settings: dict[str, Any], preset: str | None) -> None:  # fmt: skip
    """This shard's confusion matrix and counts, for :func:`_merge_shards`."""
    from cdclip.atomic import atomic_write_text

    record = {
        "shard": [shard.index, shard.count], "matrix": matrix.matrix.tolist(), "scored": counts.scored,
        "unreadable": counts.bad_names, "class_names": list(class_names),
        "settings": {"model": settings["model"], "weights": settings["weights"]}, "preset": preset,
    }  # fmt: skip
    atomic_write_text(out / SHARD_DIR / f"{shard.tag}.json", json.dumps(record) + "\n")


def _merge_shards(out: Path) -> int:
    """Sum the shards' confusion matrices into ``metrics.json`` (``--merge``, or the last shard)."""
    import torch

    from cdclip.metrics import ConfusionMatrix

    records = [json.loads(p.read_text()) for p in sorted((out / SHARD_DIR).glob("shard*of*.json"))]
    if not records:
        raise FileNotFoundError(f"--merge: no shard scores in {out / SHARD_DIR} (run the shards first)")
    total = records[0]["shard"][1]
    present = sorted({r["shard"][0] for r in records if r["shard"][1] == total})
    if len(present) != total:
        missing = sorted(set(range(total)) - set(present))
        raise ValueError(f"--merge: shards {missing} of {total} have not finished in {out}")
    class_names = tuple(records[0]["class_names"])
    matrix = ConfusionMatrix(len(class_names) + 1, ignore_index=255)
    counts = _Counts()
    for record in (r for r in records if r["shard"][1] == total):
        matrix.matrix += torch.tensor(record["matrix"], dtype=torch.int64)
        counts.scored += record["scored"]
        counts.bad_names = sorted(set(counts.bad_names) | set(record["unreadable"]))
    counts.bad = len(counts.bad_names)
    if counts.scored:
        _write_score(out, matrix, counts, class_names, records[0]["settings"], records[0]["preset"])
    return 0


def _print_counts(out: Path, counts: _Counts) -> None:
    print(f"cdclip cams: {counts.computed} computed, {counts.skipped} skipped (existing), outputs in {out}")
    if counts.bad:
        shown = ", ".join(counts.bad_names[:5]) + (" ..." if counts.bad > 5 else "")
        print(f"cdclip cams: warning: {counts.bad} unreadable image(s) skipped: {shown}", file=sys.stderr)
    if counts.unlabelled:
        print(f"cdclip cams: warning: {counts.unlabelled} image(s) have no class in their labels "
              "(their pseudo labels are all background)", file=sys.stderr)  # fmt: skip


def _report(out: Path, matrix: Any, counts: _Counts, class_names: tuple[str, ...], settings: dict[str, Any],
            preset: str | None) -> str:  # fmt: skip
    """The summary line, warnings about skipped and unlabelled images, the score and ``metrics.json``."""
    _print_counts(out, counts)
    return _write_score(out, matrix, counts, class_names, settings, preset) if counts.scored else ""


def _write_score(out: Path, matrix: Any, counts: _Counts, class_names: tuple[str, ...], settings: dict[str, Any],
                 preset: str | None) -> str:  # fmt: skip
    """Print the per-class table and the mIoU, and return them as printed; write ``metrics.json``."""
    from cdclip.atomic import atomic_write_text

    names_bg = ("background", *class_names)
    miou = float(matrix.miou())
    score = f"{matrix.table(names_bg)}\npseudo-label mIoU: {100 * miou:.2f} on {counts.scored} images"
    print(score)
    metrics = {
        "miou": miou,
        "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names_bg, matrix.iou(), strict=True)},
        "images": counts.scored,
        "unreadable_images": counts.bad,
        "cam": settings["model"]["cam"],
        "refine": settings["model"]["refine"],
        "backbone": settings["model"]["clip"],
        "weights": settings["weights"],
        "preset": preset,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return score
