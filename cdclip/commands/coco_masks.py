"""``cdclip coco-masks``: rasterise COCO instance annotations to semantic PNG masks, once.

Rasterising polygons on every epoch costs time in the data loader; this writes
``<root>/SegmentationClass/<split>/<stem>.png`` (COCO palette PNGs: 0 background, 1..80 classes,
255 crowd/void), which :class:`cdclip.data.COCOSegmentation` then reads automatically. Existing
files are kept unless ``--overwrite``.

    cdclip coco-masks --root data/coco --split train2014 val2014
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, type=Path, help="COCO folder (holding annotations/ and <split>/)")
    parser.add_argument("--split", nargs="+", default=["train2014", "val2014"], help="splits to rasterise")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <root>/SegmentationClass/<split>)"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite masks that already exist")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (for a quick check)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def rasterise_split(
    root: Path,
    split: str,
    out: Path | None = None,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[int, int]:
    """Write the masks of one split; returns ``(written, skipped_existing)``."""
    from tqdm import tqdm

    from cdclip.data.coco import coco_semantic_mask, load_coco_index
    from cdclip.data.palette import save_label_png

    images, by_image = load_coco_index(root / "annotations" / f"instances_{split}.json")
    if limit is not None:
        images = images[:limit]
    target = out if out is not None else root / "SegmentationClass" / split
    target.mkdir(parents=True, exist_ok=True)
    written = skipped = 0
    for info in tqdm(images, desc=f"coco-masks {split}", unit="img", disable=not progress):
        path = target / f"{Path(info['file_name']).stem}.png"
        if path.exists() and not overwrite:
            skipped += 1
            continue
        mask = coco_semantic_mask(by_image.get(int(info["id"]), []), int(info["height"]), int(info["width"]))
        tmp = path.with_suffix(".tmp.png")
        save_label_png(tmp, mask, palette="coco")
        tmp.replace(path)  # atomic: an interrupted run never leaves a half-written mask
        written += 1
    return written, skipped


def run(args: argparse.Namespace) -> int:
    if not args.root.is_dir():
        print(f"cdclip coco-masks: --root {args.root} is not a folder")
        return 2
    if args.out is not None and len(args.split) > 1:
        print("cdclip coco-masks: --out takes a single --split")
        return 2
    for split in args.split:
        written, skipped = rasterise_split(
            args.root, split, args.out, overwrite=args.overwrite, limit=args.limit, progress=not args.quiet
        )
        where = args.out if args.out is not None else args.root / "SegmentationClass" / split
        print(f"{split}: wrote {written} mask(s), kept {skipped} existing, in {where}")
    return 0
