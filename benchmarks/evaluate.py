"""Per-image evaluation cost on CPU, split by stage (DESIGN §3.6 protocol).

One 512-px image (a VOC sample resized so its long side is ``--size``, 512×384 by default),
scales {1.0, 0.75} × flip at long side 512, K = 21 classes. The segmenter is a stand-in of the
trained model's *shape* (patch-16 convolution to width 256, GELU, 1×1 classifier: output at 1/16),
so the segmenter row measures a cheap network, not CLIP; the other rows are what the evaluator
itself costs around any model:

* ``normalise+resize``: uint8 → normalised float, bilinear resize to each scale's input;
* ``segmenter``: the stand-in on the batch of plain + mirrored inputs, all scales;
* ``flip+batch``: building the mirrored half and mirroring the outputs back;
* ``upsample+average``: bilinear upsampling of every scale's logits to the image size, averaging;
* ``crf``: softmax + dense CRF (10 iterations, WeCLIP parameters; needs pydensecrf2);
* ``metric``: argmax + confusion-matrix update;
* ``png``: writing the prediction PNG;
* ``predict (total)``: :meth:`Evaluator.predict` end to end, without and with CRF.

    python benchmarks/evaluate.py
    python benchmarks/evaluate.py --threads 2 --repeats 10 --out eval.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import times  # benchmarks/_timing.py (sys.path[0] is this folder)
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class StandIn(nn.Module):
    """Patch-16 conv → GELU → 1×1 classifier: logits at 1/16 like the CD-CLIP decoder."""

    def __init__(self, num_classes: int = 21, width: int = 256) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 16, stride=16)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.embed(x)))


def _sample(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A VOC sample (image uint8, mask) resized to long side ``size``; random data if none ships."""
    root = REPO / "examples" / "data" / "VOC2012"
    try:
        from cdclip.data.voc import VOCSegmentation

        item = VOCSegmentation(root, "val")[1]
        image = item["image"].as_subclass(torch.Tensor)
        mask = item["mask"].as_subclass(torch.Tensor)
    except (FileNotFoundError, OSError):
        image = torch.randint(0, 256, (3, 375, 500), dtype=torch.uint8)
        mask = torch.randint(0, 21, (375, 500))
    height, width = image.shape[-2:]
    ratio = size / max(height, width)
    new = (round(height * ratio), round(width * ratio))
    image = F.interpolate(image[None].float(), new, mode="bilinear", antialias=True)[0].round().clamp(0, 255)
    mask = F.interpolate(mask[None, None].float(), new, mode="nearest")[0, 0].long()
    return image.to(torch.uint8), mask


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="long side of the test image")
    parser.add_argument("--long-side", type=int, default=512, help="evaluation long side at scale 1")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.75])
    parser.add_argument("--crf-iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from cdclip.data.palette import save_label_png
    from cdclip.data.transforms import CLIP_MEAN, CLIP_STD
    from cdclip.metrics import ConfusionMatrix
    from cdclip.pipeline.evaluator import Evaluator, scaled_size

    image, mask = _sample(args.size)
    height, width = image.shape[-2:]
    model = StandIn().eval()
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    sizes = [scaled_size((height, width), s, args.long_side, 16) for s in args.scales]

    def normalise_resize() -> list[torch.Tensor]:
        x = (image[None].float() / 255.0 - mean) / std
        return [
            F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=size[0] * size[1] < height * width)
            if size != (height, width) else x
            for size in sizes
        ]

    inputs = normalise_resize()
    batched = [torch.cat([x, x.flip(-1)]) for x in inputs]
    with torch.no_grad():
        outputs = [model(x) for x in batched]

    def segment() -> None:
        with torch.no_grad():
            for x in batched:
                model(x)

    def flip_batch() -> None:
        for x, y in zip(inputs, outputs):
            torch.cat([x, x.flip(-1)])
            y[:1] + y[1:].flip(-1)

    def upsample() -> torch.Tensor:
        total = torch.zeros(1, 21, height, width)
        for y in outputs:  # mirrored half added at output resolution, one upsampling per scale
            total += F.interpolate(y[:1] + y[1:].flip(-1), (height, width), mode="bilinear", align_corners=False)
        return total / (2 * len(outputs))

    logits = upsample()[0]
    matrix = ConfusionMatrix(21)

    def metric() -> None:
        matrix.update(logits.argmax(0), mask)

    tmp = Path(tempfile.mkdtemp())

    def png() -> None:
        save_label_png(tmp / "pred.png", logits.argmax(0))

    rows: dict[str, list[float]] = {
        "normalise+resize": times(normalise_resize, args.repeats),
        "segmenter (stand-in)": times(segment, args.repeats),
        "flip+batch": times(flip_batch, args.repeats),
        "upsample+average": times(upsample, args.repeats),
        "metric": times(metric, args.repeats),
        "png": times(png, args.repeats),
    }
    crf_available = True
    try:
        from cdclip.refine.crf import DenseCRF

        crf = DenseCRF(num_iter=args.crf_iters)
        Evaluator(model, 21, crf=crf, progress=False)  # raises the install hint without pydensecrf2
        rows["crf"] = times(lambda: crf(image, torch.softmax(logits, 0)), max(1, args.repeats // 2))
    except ImportError:
        crf_available = False
    plain = Evaluator(model, 21, scales=args.scales, long_side=args.long_side, progress=False)
    rows["predict (total, no CRF)"] = times(lambda: plain.predict(image), args.repeats)
    if crf_available:
        with_crf = Evaluator(model, 21, scales=args.scales, long_side=args.long_side, crf=crf, progress=False)
        rows["predict (total, CRF)"] = times(lambda: with_crf.predict(image), max(1, args.repeats // 2))

    results = {
        "image": [int(height), int(width)],
        "inputs": [list(s) for s in sizes],
        "scales": args.scales,
        "flip": True,
        "crf_iters": args.crf_iters if crf_available else None,
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "median_ms": {k: 1000.0 * statistics.median(v) for k, v in rows.items()},
    }
    print(f"evaluation cost per image: {height}×{width}, inputs {sizes} ×2 (flip), {args.threads} thread(s)\n")
    print("| stage | median ms |")
    print("|---|---:|")
    for name, value in results["median_ms"].items():
        print(f"| {name} | {value:.1f} |")
    if not crf_available:
        print("\n(dense CRF skipped: pydensecrf2 is not installed; pip install cdclip[crf])")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
