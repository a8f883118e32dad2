"""Per-image cost of the CAM pipeline stages (CPU or GPU), and memory of ``cdclip cams`` over many images.

Stages (random-init open_clip ViT-B-16, one VOC sample image resized to a 512-px long side):
CLIP forward (attention of the last 8 blocks, autograd on the last block), GradCAM of the present
classes, MHSA (``attn``) refinement, CDA (``mean``) refinement. Reports the ratio

    (CDA refinement − attention refinement) / (forward + GradCAM + attention refinement)

i.e. what switching the baseline to CDA adds per image (target ≤ 10%). Then runs ``cdclip cams``
in fresh subprocesses on N and 4N images (the sample folder repeated) and reports their peak RSS:
equal peaks mean no per-image memory growth. ``--sweep`` also times the stages at other CLIP input
long sides (the same model and image), for the cost against image size.

    python benchmarks/cam_pipeline.py --out bench_cam_pipeline.json
    python benchmarks/cam_pipeline.py --sweep 224,320,448,640 --rss-images 0
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _sample_root() -> Path:
    for c in (REPO.parent / "shared" / "data", REPO / "examples" / "data"):
        if (c / "VOC2012" / "JPEGImages").is_dir():
            return c
    raise FileNotFoundError("no sample data (../shared/data or examples/data)")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        result = fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def setup(device: str = "cpu") -> tuple[object, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(random ViT-B-16, the sample image as uint8 HWC, its labels, the VOC text classifier)."""
    from cdclip.backbones.openclip import create_openclip
    from cdclip.backbones.text import build_text_classifier
    from cdclip.data.classnames import VOC_CLASSES
    from cdclip.data.prompts import background_words

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = create_openclip("ViT-B-16", weights=None).to(device)
    root = _sample_root() / "VOC2012"
    name = "2007_004189"
    image = torch.from_numpy(np.asarray(Image.open(root / "JPEGImages" / f"{name}.jpg").convert("RGB")).copy())
    labels_np = np.load(root / "cls_labels_onehot.npy", allow_pickle=True).item()[name]
    labels = torch.from_numpy(labels_np)[None].to(device)
    text = build_text_classifier(backbone, VOC_CLASSES, background_words("voc")).embeddings
    return backbone, image, labels, text


def stage_times(long_side: int, repeats: int, device: str = "cpu", prepared: tuple | None = None) -> dict[str, float]:
    """Median seconds of each stage at CLIP input ``long_side``; ``prepared`` (from :func:`setup`) reuses a model."""
    from cdclip.cam.gradcam import clip_gradcam
    from cdclip.cam.refine import refine_cams
    from cdclip.pipeline.pseudo_labels import resize_for_clip

    backbone, image, labels, text = prepared or setup(device)
    x = backbone.preprocess(resize_for_clip(image.permute(2, 0, 1)[None].float(), long_side, 16).to(device))

    backbone(x, attn_blocks=8, grad_last_block=True)  # warm-up
    t_fwd, out = _timed(lambda: backbone(x, attn_blocks=8, grad_last_block=True), repeats)

    def gradcam():
        o = backbone(x, attn_blocks=8, grad_last_block=True)
        _sync()
        start = time.perf_counter()
        cams = clip_gradcam(o, text, labels, backbone.logit_scale)
        _sync()
        return time.perf_counter() - start, cams

    grad_runs = [gradcam() for _ in range(repeats)]
    t_grad = statistics.median(t for t, _ in grad_runs)
    cams = grad_runs[-1][1]
    with torch.no_grad():
        t_attn, _ = _timed(lambda: refine_cams(cams, labels, out, text, "attn"), repeats)
        t_cda, _ = _timed(lambda: refine_cams(cams, labels, out, text, "mean"), repeats)
    baseline = t_fwd + t_grad + t_attn
    return {
        "input": f"{x.shape[-2]}x{x.shape[-1]}",
        "present_classes": int(labels.sum()),
        "clip_forward_s": t_fwd,
        "gradcam_s": t_grad,
        "attn_refine_s": t_attn,
        "cda_refine_s": t_cda,
        "baseline_total_s": baseline,
        "cda_extra_ratio": (t_cda - t_attn) / baseline,
    }


def _peak_rss_mb(folder: Path, n: int, out: Path, long_side: int) -> float:
    cmd = [sys.executable, "-c",
           "import resource,sys; from cdclip.cli import main; rc = main(sys.argv[1:]); "
           "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)",
           "cams", "--images", str(folder), "--classes", "person,cat,dog", "--out", str(out),
           "--backbone", "openclip:ViT-B-16", "--weights", "none", "--device", "cpu",
           "--long-side", str(long_side), "--limit", str(n), "--overwrite", "--par-iters", "5"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    kb = next(int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("PEAK_KB"))
    return kb / 1024.0


def rss_growth(images: int, long_side: int) -> dict[str, float]:
    src = _sample_root() / "VOC2012" / "JPEGImages"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "imgs"
        folder.mkdir()
        files = sorted(src.glob("*.jpg"))
        for i in range(images):
            shutil.copy(files[i % len(files)], folder / f"{i:04d}_{files[i % len(files)].name}")
        small = max(1, images // 4)
        peak_small = _peak_rss_mb(folder, small, Path(tmp) / "out_small", long_side)
        peak_large = _peak_rss_mb(folder, images, Path(tmp) / "out_large", long_side)
    return {"images_small": small, "peak_rss_small_mb": peak_small,
            "images_large": images, "peak_rss_large_mb": peak_large,
            "growth_per_image_mb": (peak_large - peak_small) / max(1, images - small)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-images", type=int, default=12, help="N (runs N//4 and N images); 0 skips")
    parser.add_argument("--rss-long-side", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sweep", default="", help="comma-separated long sides: also time the stages at each, e.g. 224,448,896")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    prepared = setup(args.device)
    times = stage_times(args.long_side, args.repeats, args.device, prepared)
    where = f"CPU ({args.threads} threads)" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"## CAM pipeline stages, {where}, ViT-B-16 random init, input {times['input']}\n")
    print("| stage | seconds / image |\n|---|---|")
    for key in ("clip_forward_s", "gradcam_s", "attn_refine_s", "cda_refine_s"):
        print(f"| {key[:-2]} | {times[key]:.4f} |")
    print(f"\nCDA adds {100 * times['cda_extra_ratio']:.2f}% to forward + GradCAM + attention "
          f"({times['baseline_total_s']:.3f} s) (target <= 10%)")  # fmt: skip
    result: dict[str, object] = {"stages": times, "maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    sides = [int(v) for v in args.sweep.split(",") if v.strip()]
    if sides:
        result["sweep"] = [stage_times(side, args.repeats, args.device, prepared) for side in sides]
        print("\n## Stages by CLIP input size\n")
        print("| long side | input | clip_forward | gradcam | attn_refine | cda_refine | total (CDA) |\n|---|---|---|---|---|---|---|")
        for side, row in zip(sides, result["sweep"]):
            total = row["clip_forward_s"] + row["gradcam_s"] + row["cda_refine_s"]
            cells = " | ".join(f"{row[k]:.4f}" for k in ("clip_forward_s", "gradcam_s", "attn_refine_s", "cda_refine_s"))
            print(f"| {side} | {row['input']} | {cells} | {total:.4f} |")
    if args.rss_images > 0:
        rss = rss_growth(args.rss_images, args.rss_long_side)
        print(f"\n## `cdclip cams` peak RSS (long side {args.rss_long_side})\n")
        print("| images | peak RSS (MB) |\n|---|---|")
        print(f"| {rss['images_small']} | {rss['peak_rss_small_mb']:.0f} |")
        print(f"| {rss['images_large']} | {rss['peak_rss_large_mb']:.0f} |")
        print(f"\ngrowth per extra image: {rss['growth_per_image_mb']:.2f} MB")
        result["rss"] = rss
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
