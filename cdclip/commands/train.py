"""``cdclip train``: single-stage CD-CLIP training (frozen CLIP + DINO, trainable decoder).

Examples::

    cdclip train --preset voc --data-root data/VOC2012 --out runs/voc --weights /path/ViT-B-16.pt
    cdclip train --config my.yaml --set optim.lr=1e-4 --set loss.lambda_be=0 --out runs/ablation
    cdclip train --preset coco --data-root data/coco --out runs/coco --resume

The configuration is built in this order: the preset (``--preset``, default ``voc``), the YAML
file (``--config``: a nested mapping with the sections ``model``, ``data``, ``optim``, ``loss`` and
the top-level run keys, see :class:`cdclip.pipeline.config.TrainConfig`), the dedicated options
(``--data-root``, ``--iters``...), then ``--set SECTION.KEY=VALUE`` overrides (values parsed as
YAML: ``--set data.scale_range=[0.5,1.5]``). Unknown keys are errors. The final configuration is
written to ``OUT/config.json``; the checkpoint ``OUT/checkpoint.pt`` and the log ``OUT/log.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cdclip.choices import AMPS

__all__ = ["add_arguments", "build_config", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cfg = parser.add_argument_group("configuration")
    cfg.add_argument("--config", type=Path, default=None, help="YAML file with config sections (model, data, ...)")
    cfg.add_argument("--preset", default=None,
                     help="a shipped preset: weclip-voc, weclip-coco, cdclip-voc, cdclip-coco, ablation-* "
                     "(see --list-presets; default: cdclip-voc, or cdclip-coco when --config names coco)")
    cfg.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    cfg.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set optim.lr=1e-4 (repeatable; VALUE parsed as YAML)")
    cfg.add_argument("--print-config", action="store_true", help="print the final config as YAML and exit")

    data = parser.add_argument_group("data")
    data.add_argument("--data-root", type=Path, default=None, help="VOC2012 or COCO folder (data.root)")
    data.add_argument("--split", default=None, help="training split (data.split; VOC train_aug, COCO train2014)")
    data.add_argument("--workers", type=int, default=None, help="DataLoader workers (data.num_workers)")
    data.add_argument("--batch-size", type=int, default=None, help="images per iteration (data.batch_size)")

    model = parser.add_argument_group("model")
    model.add_argument("--weights", default=None,
                       help="CLIP checkpoint path or open_clip tag; 'none' = random weights (smoke tests)")
    model.add_argument("--dino-weights", default=None,
                       help="DINO weight file; 'none' = random weights (smoke tests); default: HF cache")
    model.add_argument("--no-sbe", action="store_true", help="switch SBE off (loss.lambda_be=0, DINO not loaded)")

    run_ = parser.add_argument_group("run")
    run_.add_argument("--out", type=Path, default=None, help="output folder (out_dir)")
    run_.add_argument("--iters", type=int, default=None, help="training iterations (iters)")
    run_.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    run_.add_argument("--overwrite", action="store_true", help="start again in an OUT that holds a run")
    run_.add_argument("--skip-bad", action="store_true", help="skip (and count) images with missing or broken files")
    run_.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    run_.add_argument("--amp", default=None, choices=AMPS, help="decoder mixed precision (CUDA)")
    run_.add_argument("--seed", type=int, default=None,
                      help="seeds everything: random backbones, decoder, data order, augmentation (default 0)")
    run_.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: expected KEY=VALUE such as optim.lr=1e-4, got {item!r}")
        parsed = yaml.safe_load(value) if value.strip() else ""
        if isinstance(parsed, str) and value.strip().lower() in ("null", "~"):
            parsed = None
        # YAML 1.1 reads 1e-4 as a string: accept plain numbers however they are written
        if isinstance(parsed, str):
            try:
                parsed = float(parsed) if any(c in parsed for c in ".eE") else int(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def _check_training_preset(name: str) -> None:
    from cdclip.presets import ALIASES, list_presets

    for info in list_presets():
        if info["name"] == ALIASES.get(name, name) and not info["training"]:
            raise ValueError(f"--preset: {name!r} is a training-free preset; use it with `cdclip cams --preset {name}`")


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` described by the command-line arguments."""
    from cdclip.pipeline.config import TrainConfig, apply_overrides, preset

    file_data: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        if not args.config.is_file():
            raise FileNotFoundError(f"--config: no such file: {args.config}")
        loaded = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"--config: expected a YAML mapping in {args.config}, got {type(loaded).__name__}"
            )
        file_data = loaded
    name = args.preset or (file_data.get("data", {}) or {}).get("dataset") or "voc"
    _check_training_preset(name)
    config = TrainConfig.from_dict(file_data, base=preset(name))

    # named options -> config keys (applied after the YAML file, before --set)
    option_keys = (
        ("data_root", "data.root"), ("split", "data.split"), ("workers", "data.num_workers"),
        ("batch_size", "data.batch_size"), ("weights", "model.clip_weights"),
        ("dino_weights", "model.dino_weights"), ("out", "out_dir"), ("iters", "iters"),
        ("amp", "amp"), ("seed", "seed"),
    )  # fmt: skip
    direct: dict[str, Any] = {}
    for option, key in option_keys:
        value = getattr(args, option)
        if value is not None:
            direct[key] = str(value) if isinstance(value, Path) else value
    if args.no_sbe:
        direct["loss.lambda_be"] = 0.0
    if args.no_progress:
        direct["progress"] = False
    if args.device is not None:
        direct["device"] = args.device
    config = apply_overrides(config, direct)
    return apply_overrides(config, _parse_overrides(args.overrides))


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        from cdclip.commands.cams import print_presets

        print_presets(training_only=True)
        return 0
    config = build_config(args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    _check_before_building(args, config)

    from cdclip.distributed import cleanup, init_from_env

    config = config.replace(device=init_from_env(config.device))  # torchrun: one device per process
    try:
        return _train(args, config)
    finally:
        cleanup()


def _train(args: argparse.Namespace, config: Any) -> int:
    """Build the data, the model and the trainer; train; report (process 0 prints)."""
    from cdclip.distributed import is_main_process, rank_and_world
    from cdclip.pipeline.model import build_model
    from cdclip.pipeline.trainer import Trainer, TrainingStopped, build_dataset

    main = is_main_process()
    dataset = build_dataset(config.data, skip_bad=args.skip_bad)
    if main:
        _report_unlabelled(dataset)
    model = build_model(config)
    trainer = Trainer(config, model, dataset)
    if main:
        world = rank_and_world()[1]
        print(f"cdclip train: {len(dataset)} images, {config.iters} iterations, {world} process(es) x batch "
              f"{config.data.batch_size}, output {trainer.out_dir}")  # fmt: skip
    try:
        last = trainer.train(resume=args.resume, overwrite=args.overwrite)
    except TrainingStopped as stopped:
        if main:
            print(f"cdclip train: {stopped} (resume with --resume)", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:
        print(f"\ncdclip train: interrupted; checkpoint at {trainer.checkpoint_path} (resume with --resume)",
              file=sys.stderr)  # fmt: skip
        return 130
    if main:
        summary = ", ".join(f"{k}={v:.4f}" for k, v in last.items())
        print(f"cdclip train: done at iteration {trainer.iteration}; {summary}; checkpoint {trainer.checkpoint_path}")
    return 0


def _check_before_building(args: argparse.Namespace, config: Any) -> None:
    """Everything that can be checked before the models are built (seconds to minutes)."""
    from cdclip.device import check_device

    if config.data.root is None:
        raise ValueError("--data-root: no dataset folder; pass --data-root (or data.root in --config)")
    if not Path(config.data.root).is_dir():
        raise FileNotFoundError(f"--data-root: folder not found: {config.data.root}")
    check_device(config.device, "--device")
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out: {out} exists and is not a folder")
    if not (args.resume or args.overwrite) and any((out / n).exists() for n in ("checkpoint.pt", "log.jsonl")):
        raise FileExistsError(
            f"--out: {out} already holds a training run; pass --resume to continue it or --overwrite to start again"
        )


def _report_unlabelled(dataset: Any) -> None:
    """Say how many training images have no class at all (they train as background only)."""
    import numpy as np

    labels = (dataset.labels_of(name) for name in getattr(dataset, "names", ()))
    count = sum(1 for vector in labels if vector is not None and not np.any(np.asarray(vector) > 0))
    if count:
        print(f"cdclip train: warning: {count} image(s) have no class in the label file and train as "
              "background only", file=sys.stderr)  # fmt: skip
