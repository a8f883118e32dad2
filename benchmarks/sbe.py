"""SBE cost per image on CPU: super-class prototypes + boundary band + corrected labels.

Setting of the CD-CLIP training step (DESIGN §3.6): 320×320 crop, CLIP ViT-B/16 CAM grid 20×20,
C = 20 VOC classes (3 present), DINO ViT-B/16 features D = 768 on the same grid. Also times the
band alone and the boundary-enhanced loss (forward + backward, K = 21 logits at 320×320).

    python benchmarks/sbe.py
    python benchmarks/sbe.py --batch 4 --grouping coco --threads 2 --out sbe.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import times  # benchmarks/_timing.py (sys.path[0] is this folder)


def _inputs(batch: int, classes: int, crop: int, grid: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    present = torch.zeros(batch, classes)
    for b in range(batch):
        present[b, torch.randperm(classes, generator=g)[:3]] = 1.0
    # smooth CAMs in [0, 1]: upsampled noise, max-normalised per class
    cams = F.interpolate(torch.rand(batch, classes, grid // 4, grid // 4, generator=g), size=(grid, grid), mode="bilinear")
    cams = cams / cams.amax(dim=(-1, -2), keepdim=True)
    cams = cams * present[:, :, None, None]
    features = torch.randn(batch, grid * grid, dim, generator=g)
    # blocky pseudo labels: background plus the present classes
    scores = torch.cat([torch.full((batch, 1, grid, grid), 0.5), cams], 1)
    pseudo = F.interpolate(scores, size=(crop, crop), mode="bilinear").argmax(1)
    return cams, present, features, pseudo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--grid", type=int, default=20, help="CAM and feature grid h = w")
    parser.add_argument("--dim", type=int, default=768, help="DINO feature dim D")
    parser.add_argument("--grouping", default="voc", choices=["voc", "coco", "identity", "fg"])
    parser.add_argument("--weighting", default="mask", choices=["mask", "cam"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from cdclip.losses.boundary import boundary_enhanced_loss
    from cdclip.prototypes.superclass import boundary_band, superclass_prototypes

    classes = 80 if args.grouping == "coco" else 20
    cams, present, features, pseudo = _inputs(args.batch, classes, args.crop, args.grid, args.dim, args.seed)

    def sbe():
        return superclass_prototypes(cams, present, features, pseudo, args.grouping, weighting=args.weighting)

    out = sbe()
    band_input = out.superclass_map
    logits = torch.randn(args.batch, classes + 1, args.crop, args.crop, requires_grad=True)

    def loss_step():
        loss = boundary_enhanced_loss(logits, out.corrected_labels, out.band)
        loss.backward()
        logits.grad = None

    per_image = 1e3 / args.batch
    timings = {
        "sbe (prototypes + band + correction)": times(sbe, args.repeats, warmup=3),
        "boundary_band only": times(lambda: boundary_band(band_input, 5), args.repeats, warmup=3),
        "boundary loss fwd+bwd": times(loss_step, args.repeats, warmup=3),
    }
    medians = {k: per_image * statistics.median(v) for k, v in timings.items()}
    result = {
        "batch": args.batch,
        "crop": args.crop,
        "grid": args.grid,
        "dim": args.dim,
        "classes": classes,
        "grouping": args.grouping,
        "weighting": args.weighting,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "band_fraction": float(out.band.float().mean()),
        "median_ms_per_image": medians,
    }
    print(
        f"SBE on CPU: batch {args.batch}, crop {args.crop}, grid {args.grid}x{args.grid}, C={classes}, "
        f"D={args.dim}, grouping {args.grouping}, {torch.get_num_threads()} thread(s), {args.repeats} repeats\n"
    )
    print("| stage | median ms / image |")
    print("|---|---:|")
    for key, value in medians.items():
        print(f"| {key} | {value:.2f} |")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
