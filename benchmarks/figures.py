"""The docs figures: image / initial CAM / attention-refined / CDA-refined / pseudo label / SBE band strips.

Runs what ``cdclip demo`` runs for its pictures (preset ``cdclip-voc``, the CAM-only, attention and
CDA pseudo labelers on one CLIP backbone) on the real VOC images shipped in ``examples/data/``, and
draws each strip with the demo's own drawing code (``cdclip.commands.demo``), the ground truth last.
Under each strip a caption says which CLIP weights made it. The default is seeded random weights
(nothing is downloaded): those pictures show the plumbing, not how well CD-CLIP segments.
``--weights PATH`` makes the real figure.

The PNGs go to ``docs/images/figure_<id>.png`` and the text between ``<!-- figures:strips -->`` and
``<!-- /figures:strips -->`` in docs/benchmarks.md is rewritten to show them with their captions.

    python benchmarks/figures.py                                   # random weights, all val images
    python benchmarks/figures.py --weights /path/to/ViT-B-16.pt     # the real figure
    python benchmarks/figures.py --ids 2007_004189 --out /tmp/figs --page none
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VOC = REPO / "examples" / "data" / "VOC2012"
IMAGES = REPO / "docs" / "images"
PAGE = REPO / "docs" / "benchmarks.md"
TITLES = ["initial CAM", "attention-refined", "CDA-refined", "pseudo label (CDA)", "SBE band", "ground truth"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", type=Path, default=VOC, help="VOC2012 folder (default: the shipped sample)")
    parser.add_argument("--split", default="val", help="split with ground-truth masks")
    parser.add_argument("--ids", nargs="*", default=None, help="image ids (default: the whole split)")
    parser.add_argument("--limit", type=int, default=3, help="at most this many images (0: all)")
    parser.add_argument("--weights", default="none", help="CLIP checkpoint for the real figure (default: random weights)")
    parser.add_argument("--backbone", default=None, help="registered CLIP backbone (default: the preset's ViT-B/16)")
    parser.add_argument("--long-side", type=int, default=320, help="CLIP input long side (the demo's)")
    parser.add_argument("--par-iters", type=int, default=None, help="PAR iterations (default: the preset's)")
    parser.add_argument("--panel-height", type=int, default=180, help="height of each panel in the PNG (px)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=IMAGES, help="folder of the PNGs")
    parser.add_argument("--page", default=str(PAGE), help="Markdown page to update ('none': leave pages alone)")
    return parser.parse_args(argv)


def caption(pretrained: bool, weights: str | None, backbone: str) -> str:
    """What made the pictures; random weights are said first, so no one reads them as results."""
    if not pretrained:
        return (f"Random CLIP weights ({backbone.split('@')[0]}, seed 0): the strip shows that the pipeline runs, not how well "
                "CD-CLIP segments. `python benchmarks/figures.py --weights ViT-B-16.pt` makes the real figure.")  # fmt: skip
    return f"CLIP weights: {Path(weights).name if weights else 'the preset tag'} ({backbone})."


def _config(args: argparse.Namespace) -> Any:
    from cdclip.pipeline.config import apply_overrides, preset

    overrides: dict[str, Any] = {"model.cam_long_side": args.long_side, "device": args.device}
    if args.backbone:
        overrides["model.clip"] = args.backbone
    if args.par_iters is not None:
        overrides["model.par_iters"] = args.par_iters
    return apply_overrides(preset("cdclip-voc"), overrides)


def _labelers(config: Any, class_names: list[str], backbone: Any) -> dict[str, Any]:
    """The demo's three pseudo labelers (CAM only, attention, CDA) sharing one backbone."""
    from cdclip.commands.demo import _REFINES
    from cdclip.data.prompts import background_words
    from cdclip.pipeline.config import apply_overrides
    from cdclip.pipeline.pseudo_labels import PseudoLabeler

    words = background_words(config.model.background)
    return {name: PseudoLabeler.from_config(apply_overrides(config, {"model.refine": refine}), class_names, words, backbone)
            for name, refine in _REFINES.items()}  # fmt: skip


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize(size, mode))


def _panels(image: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, outs: dict[str, Any]) -> list[np.ndarray]:
    """The six panels after the image, drawn by the demo's helpers at the image's size."""
    from cdclip.commands.demo import _band, _peak
    from cdclip.data.palette import colorize

    keys = torch.nonzero(labels[0] > 0).flatten()
    size = tuple(image.shape[-2:])
    cda = outs["CDA"]
    return [_peak(outs["CAM only"].cams[0, keys], size), _peak(outs["attention"].refined[0, keys], size),
            _peak(cda.refined[0, keys], size), colorize(cda.labels[0]), _band(cda.labels[0]), colorize(mask)]  # fmt: skip


def draw(image: torch.Tensor, panels: list[np.ndarray], text: str, height: int) -> Any:
    """The demo's strip, shrunk to ``height`` px panels (the docs need no full-size PNGs), with ``text`` below."""
    from PIL import Image, ImageDraw

    from cdclip.commands.demo import _strip

    h, w = image.shape[-2:]
    size = (max(1, round(w * height / h)), height)
    small = _resize(image.permute(1, 2, 0).numpy().astype(np.uint8), size, nearest=False)
    # label maps and the band stay crisp (nearest); heat maps are smooth anyway
    shrunk = [_resize(p, size, nearest=i >= 3) for i, p in enumerate(panels)]
    strip = _strip(torch.from_numpy(small.copy()).permute(2, 0, 1), shrunk, TITLES)
    canvas = Image.new("RGB", (strip.width, strip.height + 18), "white")
    canvas.paste(strip, (0, 0))
    ImageDraw.Draw(canvas).text((3, strip.height + 3), text.replace("`", ""), fill="black")
    return canvas


def make_figures(args: argparse.Namespace) -> tuple[list[Path], str]:
    """Draw one PNG per image; (the PNGs, the caption)."""
    from cdclip.commands.demo import _backbone
    from cdclip.data.voc import VOCSegmentation

    config = _config(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is in the caption
        backbone, pretrained = _backbone(args, config)
        dataset = VOCSegmentation(args.voc, args.split)
        labelers = _labelers(config, dataset.class_names, backbone)
        text = caption(pretrained, args.weights, config.model.clip)
        wanted = args.ids or dataset.names
        indices = [dataset.names.index(name) for name in wanted][: args.limit or None]
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        for index in indices:
            item = dataset.load(index)
            image, mask = item["image"].as_subclass(torch.Tensor), item["mask"].as_subclass(torch.Tensor)
            labels = item["labels"][None]
            outs = {name: labeler(image[None], labels) for name, labeler in labelers.items()}  # GradCAM: autograd on
            path = args.out / f"figure_{item['name']}.png"
            draw(image, _panels(image, mask, labels, outs), text, args.panel_height).save(path, optimize=True)
            written.append(path)
    return written, text


def page_section(paths: list[Path], text: str, page: Path) -> str:
    """Markdown showing the strips (paths relative to ``page``) under one caption."""
    import os

    pictures = [f"![{p.stem}]({Path(os.path.relpath(p, page.parent)).as_posix()})" for p in paths]
    return "\n\n".join([f"*{text}*", "Left to right: " + ", ".join(["image", *TITLES]) + ".", *pictures])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths, text = make_figures(args)
    for path in paths:
        print(f"wrote {path}")
    print(text)
    if args.page.lower() != "none":
        sys.path.insert(0, str(HERE))
        from run_all import render_file  # the same marker rendering as the benchmark tables

        page = Path(args.page)
        if render_file(page, {"strips": page_section(paths, text, page)}, prefix="figures"):
            print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
