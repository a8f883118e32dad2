"""cdclip demo: CDA on a constructed scene, then training-free pseudo labels on real VOC images.

    python examples/demo.py                       # random CLIP weights (offline), writes outputs/demo/
    python examples/demo.py --weights ViT-B-16.pt # real CLIP weights from a local file

Part 1 needs nothing but cdclip: an object in two parts that attention never joins, a CAM firing on
one part only. The attention baseline leaves the second part dark; CDA, which compares the class
distributions of the patches, lights it while the background stays dark. The picture is written to
``outputs/demo/cda_scene.png``.

Part 2 runs ``cdclip cams`` on the shipped VOC sample (examples/data) with the real code path:
CLIP GradCAM → CDA refinement → PAR → pseudo labels → palette PNGs, overlays and mIoU. Without
weights (no download here) CLIP is randomly initialised, so the pictures show the plumbing, not
accuracy; pass ``--weights`` with a local ViT-B/16 checkpoint for real pseudo labels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the constructed scenes live beside the tests


def _panel(values: torch.Tensor, scale: int = 12) -> np.ndarray:
    from cdclip.data.palette import heatmap

    img = heatmap(values)
    return np.kron(img, np.ones((scale, scale, 1), dtype=np.uint8))


def scene_demo(out_dir: Path) -> None:
    from scenes import two_part_scene

    import cdclip

    scene = two_part_scene()
    results = {
        "CAM (input)": scene.cams[0, 0],
        "attn (baseline)": cdclip.CDAModule(fusion="attn")(scene.cams, None, scene.attn)[0, 0],
        "CDA mean": cdclip.CDAModule(fusion="mean")(scene.cams, scene.probs, scene.attn)[0, 0],
        "CDA replace": cdclip.CDAModule(fusion="replace")(scene.cams, scene.probs)[0, 0],
        "flat 1-JS/ln2": cdclip.CDAModule(fusion="replace", affinity="linear")(scene.cams, scene.probs)[0, 0],
    }
    print("Part 1 — constructed scene (mean activation: part A / part B / background)")
    for name, r in results.items():
        print(
            f"  {name:<16} {r[scene.part_a].mean():.2f} / {r[scene.part_b].mean():.2f} / "
            f"{r[scene.background].mean():.2f}"
        )
    gap = np.full((16 * 12, 8, 3), 255, dtype=np.uint8)
    row = []
    for r in results.values():
        row += [_panel(r), gap]
    strip = np.concatenate(row[:-1], axis=1)
    canvas = Image.new("RGB", (strip.shape[1], strip.shape[0] + 18), "white")
    canvas.paste(Image.fromarray(strip), (0, 18))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(results):
        draw.text((i * (16 * 12 + 8) + 4, 3), name, fill="black")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "cda_scene.png"
    canvas.save(path)
    print(f"  picture (left to right: {', '.join(results)}): {path}")


def pipeline_demo(out_dir: Path, weights: str, limit: int) -> int:
    from cdclip.cli import main

    voc = HERE / "data" / "VOC2012"
    print("\nPart 2 — training-free pseudo labels on the shipped VOC sample")
    if weights == "none":
        print("  (random CLIP weights: outputs show the plumbing, not accuracy; pass --weights for real ones)")
    args = ["cams", "--voc", str(voc), "--split", "train_aug", "--weights", weights, "--refine", "cda",
            "--out", str(out_dir / "cams"), "--limit", str(limit)]
    print("  $ cdclip " + " ".join(args))
    return main(args)


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--weights", default="none", help="local CLIP ViT-B/16 checkpoint, or 'none'")
    parser.add_argument("--limit", type=int, default=4, help="VOC images for part 2")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    scene_demo(args.out)
    return pipeline_demo(args.out, args.weights, args.limit)


if __name__ == "__main__":
    raise SystemExit(run())
