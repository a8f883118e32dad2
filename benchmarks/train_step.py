"""Cost of one CD-CLIP training step, and where it goes.

Builds the VOC configuration with random CLIP ViT-B/16 and DINO ViT-B/16 weights, takes a batch of
crops from the shipped VOC sample, times full training steps (forward + backward + optimiser), then
profiles one step with cProfile and prints the cdclip functions with the most cumulative
time.

    python benchmarks/train_step.py --device cuda --out train_step.json
    CUDA_LAUNCH_BLOCKING=1 python benchmarks/train_step.py --device cuda   # profile charged to launchers

With ``--weclip`` it instead times WeCLIP's own training step (github.com/zbf1991/WeCLIP, commit
0f47db4, folder ``WeCLIP/``) beside cdclip's at each batch size of ``--batches`` (1, 2, 4) and
prints both; no profile. WeCLIP runs in a subprocess of ``--weclip-python`` (a venv with its
imports: cv2, ttach, lxml, imageio, omegaconf, pkg_resources), through the helpers of
``tests/reference/record_weclip.py`` (CPU patches, its own ``VOC12ClsDataset`` crops, its
``WeCLIP`` model with the seeded random CLIP of ``cdclip.testing``, its decoder in train mode).
One WeCLIP step is what one iteration of its ``scripts/dist_clip_voc.py`` does: ``WeCLIP.forward``
(CLIP, GradCAM per class, refinement, PAR, decoder), ``get_seg_loss + 0.1 · get_aff_loss`` with its
``cams_to_affinity_label``, backward, and its ``PolyWarmupAdamW`` step; ``--weclip-iter`` picks the
iteration (below 15000: decoder-affinity refinement off; 15000 or more: on), and cdclip's step is
passed the same iteration. cdclip's step uses the same VOC sample images through its own dataset
(``--preset weclip-voc`` for the same pipeline). On a shared machine run it when nothing else
runs: a busy CPU inflates single steps several-fold::

    python benchmarks/train_step.py --preset weclip-voc --threads 2 --weclip /work/baselines/WeCLIP-src/WeCLIP \
        --weclip-python /work/baselines/venv-weclip/bin/python --weclip-weights /work/baselines/rand_vitb16_seed0.pt
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _median_seconds(step: Callable[[], None], steps: int) -> tuple[float, list[float]]:
    """Median wall time of ``steps`` calls of ``step`` after one warm-up call."""
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _cdclip_step(
    args: argparse.Namespace, batch_size: int, iteration: int | None = None
) -> tuple[Callable[[], None], Any]:
    """cdclip's training step on ``batch_size`` crops of the VOC sample (at ``iteration``), and the model."""
    import torch

    from cdclip.pipeline.config import apply_overrides, voc
    from cdclip.pipeline.model import build_model
    from cdclip.pipeline.trainer import build_dataset

    root = REPO / "examples" / "data" / "VOC2012"
    overrides = {
        "data.root": str(root), "data.split": "train_aug", "data.crop_size": args.crop,
        "model.clip_weights": "none", "model.dino_weights": "none", "device": args.device,
    }  # fmt: skip
    if args.no_sbe:
        overrides["loss.lambda_be"] = 0.0
    if args.preset:
        from cdclip.presets import load_preset

        base = load_preset(args.preset)
    else:
        base = voc()
    config = apply_overrides(base, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config).to(args.device)
        dataset = build_dataset(config.data)
        items = [dataset[i % len(dataset)] for i in range(batch_size)]
    batch = {key: torch.stack([torch.as_tensor(it[key]) for it in items]).to(args.device)
             for key in ("image", "labels", "valid") if key in items[0]}  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.training_step(batch) if iteration is None else model.training_step(batch, iteration)
        out["loss"].backward()
        optimizer.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    return step, model


# ----------------------------------------------------------------------------- WeCLIP (child process)
def _weclip_child(args: argparse.Namespace) -> int:
    """Time WeCLIP's training step at each batch size; print one JSON line (runs in WeCLIP's venv)."""
    import importlib

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO / "tests" / "reference"))
    import record_weclip as rw

    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = not args.device.startswith("cuda")
    rw.patch_process(Path(args.weclip), cpu=cpu)
    voc = REPO / "examples" / "data" / "VOC2012"
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        lists = Path(tmp) / "lists"  # WeCLIP reads <split>.txt and cls_labels_onehot.npy from one folder
        lists.mkdir()
        (lists / "train_aug.txt").symlink_to(voc / "ImageSets" / "Segmentation" / "train_aug.txt")
        (lists / "cls_labels_onehot.npy").symlink_to(voc / "cls_labels_onehot.npy")
        crops = rw.make_crops(Path(args.weclip), voc, lists, num=max(batches))
        weights = Path(args.weclip_weights) if args.weclip_weights else None
        if weights is None:
            from cdclip.testing import save_random_clip

            weights = save_random_clip(Path(tmp) / "clip.pt", seed=0)
        model = rw.build_weclip(weights, voc, "fp32" if cpu else "cuda")
    script = rw.import_train_script(Path(args.weclip))
    camutils = importlib.import_module("utils.camutils")
    losses = importlib.import_module("utils.losses")
    optim = importlib.import_module("utils.optimizer")
    model.train()  # as in WeCLIP's loop: the decoder trains (dropout on); forward puts CLIP in eval
    device = "cpu" if cpu else "cuda"
    if not cpu:
        model.cuda()
    groups = model.get_param_groups()
    lr = 2e-4  # configs/voc_attn_reg.yaml; the decoder is group 3 at 10x, as in dist_clip_voc.py
    optimizer = optim.PolyWarmupAdamW(
        params=[{"params": groups[0], "lr": lr, "weight_decay": 0.01}, {"params": groups[1], "lr": 0.0, "weight_decay": 0.0},
                {"params": groups[2], "lr": lr * 10, "weight_decay": 0.01}, {"params": groups[3], "lr": lr * 10, "weight_decay": 0.01}],
        lr=lr, weight_decay=0.01, betas=[0.9, 0.999], warmup_iter=50, max_iter=30000, warmup_ratio=1e-6, power=1.0,
    )  # fmt: skip
    results = {}
    for b in batches:
        names = crops["names"][:b]
        inputs = torch.stack([torch.from_numpy(crops["images"][i]) for i in range(b)]).to(device)
        grid = args.crop // 16
        attn_mask = script.get_mask_by_radius(h=grid, w=grid, radius=8)

        def step(inputs: Any = inputs, names: Any = names, attn_mask: Any = attn_mask) -> None:
            model.iter_num = args.weclip_iter
            segs, cam, attn_pred = model(inputs, names)
            segs = F.interpolate(segs, size=cam.shape[1:], mode="bilinear", align_corners=False)
            aff_label = camutils.cams_to_affinity_label(cam.clone(), mask=attn_mask, ignore_index=255)
            attn_loss, _, _ = losses.get_aff_loss(attn_pred, aff_label)
            seg_loss = script.get_seg_loss(segs, cam.long(), ignore_index=255)
            loss = seg_loss + 0.1 * attn_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if not cpu:
                torch.cuda.synchronize()

        sec, times = _median_seconds(step, args.steps)
        results[b] = {"seconds_per_step": sec, "times": times}
    print("WECLIP_JSON " + json.dumps({"threads": torch.get_num_threads(), "results": results}))
    return 0


def _compare_weclip(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    command = [args.weclip_python, str(Path(__file__).resolve()), "--weclip-child", "--weclip", args.weclip,
               "--batches", args.batches, "--steps", str(args.steps), "--crop", str(args.crop),
               "--device", args.device, "--weclip-iter", str(args.weclip_iter)]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.weclip_weights:
        command += ["--weclip-weights", args.weclip_weights]
    child = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in child.stdout.splitlines() if line.startswith("WECLIP_JSON ")]
    if child.returncode != 0 or not lines:
        sys.stderr.write(child.stderr[-4000:])
        raise SystemExit(f"WeCLIP child failed (exit {child.returncode})")
    weclip = json.loads(lines[-1][len("WECLIP_JSON ") :])
    ours = {}
    for b in batches:
        step, _ = _cdclip_step(args, b, iteration=args.weclip_iter)  # same iteration: same refinement
        ours[b] = _median_seconds(step, args.steps)
    where = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    mode = "on" if args.weclip_iter >= 15000 else "off"
    print(f"## training step, {where}, crop {args.crop}, median of {args.steps} steps after one warm-up\n")
    print(
        f"cdclip: {args.preset or 'voc (default)'}{', SBE off' if args.no_sbe else ''}; WeCLIP: commit 0f47db4, "
        f"iter {args.weclip_iter} (decoder-affinity refinement {mode}), {weclip['threads']} threads\n"
    )
    print("| batch | cdclip s/step | WeCLIP s/step | WeCLIP / cdclip |\n|---|---|---|---|")
    for b in batches:
        w = weclip["results"][str(b)]["seconds_per_step"]
        print(f"| {b} | {ours[b][0]:.3f} | {w:.3f} | {w / ours[b][0]:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cdclip": {b: {"seconds_per_step": s, "times": t} for b, (s, t) in ours.items()},
                       "weclip": weclip, "preset": args.preset, "weclip_iter": args.weclip_iter}, f, indent=1)  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-sbe", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--preset", default=None, help="a cdclip preset (e.g. weclip-voc) instead of the voc defaults"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--weclip", default=None, help="WeCLIP/ folder of a WeCLIP checkout: time its step too"
    )
    parser.add_argument(
        "--weclip-python", default=sys.executable, help="interpreter of a venv with WeCLIP's imports"
    )
    parser.add_argument(
        "--weclip-weights", default=None, help="OpenAI-layout CLIP file (default: a seeded random one)"
    )
    parser.add_argument(
        "--weclip-iter", type=int, default=0, help="WeCLIP iteration (>= 15000: refinement on)"
    )
    parser.add_argument("--batches", default="1,2,4", help="batch sizes of the WeCLIP comparison")
    parser.add_argument("--weclip-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.weclip_child:
        return _weclip_child(args)
    if args.weclip:
        return _compare_weclip(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    step, _ = _cdclip_step(args, args.batch)
    sec, _ = _median_seconds(step, args.steps)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"## training step, {where}, batch {args.batch}, crop {args.crop}, SBE {'off' if args.no_sbe else 'on'}\n")
    print(f"median {sec:.3f} s per step over {args.steps} steps\n")

    profiler = cProfile.Profile()
    profiler.enable()
    step()
    profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).sort_stats("cumulative")
    rows = []
    for (filename, line, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "/cdclip/" in filename and "/tests/" not in filename:
            rows.append((cumulative, f"{Path(filename).relative_to(REPO) if str(REPO) in filename else filename}:{line}({name})"))
    rows.sort(reverse=True)
    print("| cumulative s (one profiled step) | function |\n|---|---|")
    for cumulative, where_ in rows[: args.top]:
        print(f"| {cumulative:.3f} | {where_} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seconds_per_step": sec, "profile": rows[: args.top]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
