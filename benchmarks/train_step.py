"""Cost of one CD-CLIP training step, and where it goes.

Builds the VOC configuration with random CLIP ViT-B/16 and DINO ViT-B/16 weights, takes a batch of
crops from the shipped VOC sample, times full training steps (forward + backward + optimiser), then
profiles one step with cProfile and prints the cdclip functions with the most cumulative
time.

    python benchmarks/train_step.py --device cuda --out train_step.json
    CUDA_LAUNCH_BLOCKING=1 python benchmarks/train_step.py --device cuda   # profile charged to launchers
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-sbe", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
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
    config = apply_overrides(voc(), overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config).to(args.device)
    dataset = build_dataset(config.data)
    items = [dataset[i % len(dataset)] for i in range(args.batch)]
    batch = {key: torch.stack([torch.as_tensor(it[key]) for it in items]).to(args.device)
             for key in ("image", "labels", "valid") if key in items[0]}  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model.training_step(batch)
        out["loss"].backward()
        optimizer.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    sec = statistics.median(times)
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
