"""How the online pseudo-label path scales with the batch: CLIP forward, CAM head and both, at batch 1, 2, 4.

The path is ``CDCLIP.pseudo_labels`` of the training step (a preset's model on a seeded random
ViT-B/16, 320 x 320 crops, before the decoder-affinity refinement starts), split in its two parts:
the backbone forward with attention and the differentiable last block (``fwd``), and the shared CAM
head from the backbone output to labels (GradCAM per class slot, refinement, background, PAR,
argmax: ``head``). Prints the medians and the ratio of batch 4 to batch 1; ``--out`` writes JSON and
a Markdown table beside it.

    python benchmarks/pseudo_label_batch.py --threads 2 --out benchmarks/results/pseudo_label_batch.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from _results import report  # benchmarks/_results.py (sys.path[0] is this folder)


def _batch(b: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    labels = torch.zeros(b, 20)
    labels[:, 14] = 1  # person everywhere, a second class on every other image
    labels[::2, 11] = 1
    return {"image": torch.randn(b, 3, 320, 320, generator=generator), "labels": labels}


def _model(preset_name: str):
    from cdclip.pipeline.config import preset
    from cdclip.pipeline.model import build_model
    from cdclip.testing import random_clip_backbone

    cfg = preset(preset_name).replace(device="cpu")
    m = cfg.model
    backbone = random_clip_backbone(
        seed=0, pos_interp=m.clip_pos_interp, pos_fp16=m.clip_pos_fp16, fp16_out_proj=m.clip_fp16_out_proj
    )
    return build_model(cfg, backbone=backbone, dino=None).eval()


def _time_parts(model, batch: dict[str, torch.Tensor], repeats: int) -> dict[str, float]:
    images, present, valid = model._batch(batch)
    parts: dict[str, list[float]] = {"fwd": [], "head": [], "total": []}
    for r in range(repeats + 1):  # the first round warms the allocator
        t0 = time.perf_counter()
        out = model._clip_forward(images, with_cams=True, with_seg_affinity=False)
        t1 = time.perf_counter()
        model._pseudo_labels(out, None, images, present, valid, False)
        t2 = time.perf_counter()
        if r:
            parts["fwd"].append(t1 - t0)
            parts["head"].append(t2 - t1)
            parts["total"].append(t2 - t0)
    return {k: statistics.median(v) for k, v in parts.items()}


def _markdown(result: dict) -> str:
    rows = result["seconds"]
    lines = [
        f"## Online pseudo labels by batch size (`{result['preset']}`, CPU, {result['threads']} thread(s))",
        "",
        "Median seconds per call, 320 x 320 crops, seeded random ViT-B/16; `fwd` = CLIP forward, "
        "`head` = the CAM head from backbone output to labels.",
        "",
        "| batch | fwd (s) | head (s) | total (s) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {b} | {v['fwd']:.3f} | {v['head']:.3f} | {v['total']:.3f} |" for b, v in rows.items()]
    ratio = result["batch4_over_batch1"]
    lines += ["", f"Batch 4 / batch 1: fwd {ratio['fwd']:.2f}x, head {ratio['head']:.2f}x, total {ratio['total']:.2f}x."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="weclip-voc")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (and .md beside)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model = _model(args.preset)
    generator = torch.Generator().manual_seed(0)
    seconds = {}
    for b in (1, 2, 4):
        seconds[b] = _time_parts(model, _batch(b, generator), args.repeats)
        print(f"batch {b}: " + ", ".join(f"{k} {v:.3f} s" for k, v in seconds[b].items()), flush=True)
    result = {
        "preset": args.preset,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "seconds": seconds,
        "batch4_over_batch1": {k: seconds[4][k] / seconds[1][k] for k in ("fwd", "head", "total")},
    }
    report(result, _markdown(result), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
