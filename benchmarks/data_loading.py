"""Loading + augmenting one VOC training sample on one CPU core, split by stage.

Target: median under 20 ms per sample with ``torch.set_num_threads(1)``. Stages: decode image,
decode mask, labels, augment (random rescale 0.5–2.0, flip, 320 crop), normalise (to float,
CLIP statistics). Also compares the two JPEG decoders (PIL and torchvision.io) and times
``read_image`` on the file kinds it must convert (an EXIF-rotated JPEG, 16-bit and palette PNGs,
made from the first sample image in a temporary folder) beside the plain VOC JPEG.

    python benchmarks/data_loading.py                       # the sample data shipped with the repo
    python benchmarks/data_loading.py --root /data/VOC2012 --split train_aug --samples 200 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _timing import median_time  # benchmarks/_timing.py (sys.path[0] is this folder)

REPO = Path(__file__).resolve().parents[1]


def _default_root() -> Path:
    for candidate in (REPO.parent / "shared" / "data" / "VOC2012", REPO / "examples" / "data" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise SystemExit("no VOC2012 folder found: pass --root")


def _ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def _special_files(jpeg: Path, folder: Path) -> dict[str, Path]:
    """The first sample image as the other kinds of file ``read_image`` converts."""
    import numpy as np
    from PIL import Image

    with Image.open(jpeg) as pil:
        rgb = pil.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {"VOC JPEG": jpeg, "JPEG, EXIF orientation 6": folder / "exif6.jpg",
             "PNG 8-bit RGB": folder / "rgb.png", "PNG 16-bit grey": folder / "grey16.png",
             "PNG palette": folder / "palette.png"}  # fmt: skip
    rgb.save(files["JPEG, EXIF orientation 6"], exif=exif, quality=95)
    rgb.save(files["PNG 8-bit RGB"])
    grey = np.asarray(rgb.convert("L")).astype("<u2") * 257
    Image.frombytes("I;16", rgb.size, grey.tobytes()).save(files["PNG 16-bit grey"])
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(files["PNG palette"])
    return files


def reader_by_kind(jpeg: Path, repeats: int) -> dict[str, float]:
    """Median ms of ``read_image`` per file kind."""
    from cdclip.data._io import read_image

    with tempfile.TemporaryDirectory() as tmp:
        files = _special_files(jpeg, Path(tmp))
        for path in files.values():
            read_image(path)  # warm-up
        return {kind: 1e3 * median_time(lambda p=path: read_image(p), max(repeats, 10)) for kind, path in files.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="VOC2012 folder (default: the sample data)")
    parser.add_argument("--split", default="train_aug")
    parser.add_argument("--samples", type=int, default=None, help="samples to use (default: all in the split)")
    parser.add_argument("--repeats", type=int, default=30, help="passes over the samples")
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    from cdclip.data._io import _decode_pil, _decode_torchvision, read_image, read_mask
    from cdclip.data.transforms import normalize, train_transform
    from cdclip.data.voc import VOCSegmentation

    root = args.root or _default_root()
    ds = VOCSegmentation(root, args.split)
    names = ds.names[: args.samples] if args.samples else ds.names
    pipeline = train_transform(crop_size=args.crop, pure_tensors=False)
    augment = type(pipeline)(pipeline.transforms[:3])  # rescale, flip, crop
    to_float = normalize()
    assert len(pipeline.transforms) == 4, "train_transform's stages changed: update the benchmark"

    # warm-up (imports, allocator, first-call dispatch)
    for name in names[:3]:
        sample = {"image": read_image(ds.image_dir / f"{name}.jpg"), "mask": read_mask(ds.mask_dir / f"{name}.png")}
        to_float(augment(sample))

    stages: dict[str, list[float]] = {k: [] for k in ("decode image", "decode mask", "labels", "augment", "normalise")}
    totals: list[float] = []
    end_to_end: list[float] = []
    pil: list[float] = []
    tvio: list[float] = []
    ds_full = VOCSegmentation(root, args.split, transform=train_transform(crop_size=args.crop))
    index = {n: i for i, n in enumerate(ds_full.names)}
    for _ in range(args.repeats):
        for name in names:
            t0 = time.perf_counter()
            image = read_image(ds.image_dir / f"{name}.jpg")
            t1 = time.perf_counter()
            mask = read_mask(ds.mask_dir / f"{name}.png")
            t2 = time.perf_counter()
            labels = torch.as_tensor(ds.labels_of(name)).clone()
            t3 = time.perf_counter()
            out = augment({"image": image, "mask": mask, "labels": labels, "name": name})
            t4 = time.perf_counter()
            out = to_float(out)
            t5 = time.perf_counter()
            for key, (a, b) in zip(stages, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)]):
                stages[key].append(b - a)
            totals.append(t5 - t0)
            t6 = time.perf_counter()
            ds_full[index[name]]
            end_to_end.append(time.perf_counter() - t6)
            path = ds.image_dir / f"{name}.jpg"
            t7 = time.perf_counter()
            _decode_pil(path)
            t8 = time.perf_counter()
            _decode_torchvision(path)
            t9 = time.perf_counter()
            pil.append(t8 - t7)
            tvio.append(t9 - t8)

    result = {
        "root": str(root),
        "split": args.split,
        "samples": len(names),
        "repeats": args.repeats,
        "crop": args.crop,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "stages_ms": {k: _ms(v) for k, v in stages.items()},
        "total_ms": _ms(totals),
        "dataset_getitem_ms": _ms(end_to_end),
        "decoder_ms": {"PIL": _ms(pil), "torchvision.io": _ms(tvio)},
        "read_image_ms": reader_by_kind(ds.image_dir / f"{names[0]}.jpg", args.repeats),
        "target_ms": 20.0,
    }
    print(f"VOC {args.split}: {len(names)} samples x {args.repeats} repeats, crop {args.crop}, 1 thread\n")
    print("| stage | median ms |")
    print("|---|---:|")
    for key, value in result["stages_ms"].items():
        print(f"| {key} | {value:.2f} |")
    print(f"| **sum of stages (median per sample)** | **{result['total_ms']:.2f}** |")
    print(f"| dataset[i] with train_transform | {result['dataset_getitem_ms']:.2f} |")
    print("\n| JPEG decoder | median ms |")
    print("|---|---:|")
    for key, value in result["decoder_ms"].items():
        print(f"| {key} | {value:.2f} |")
    print("\n| read_image on | median ms |")
    print("|---|---:|")
    for key, value in result["read_image_ms"].items():
        print(f"| {key} | {value:.2f} |")
    verdict = "meets" if result["dataset_getitem_ms"] < result["target_ms"] else "MISSES"
    print(f"\n{verdict} the target of {result['target_ms']:.0f} ms per sample")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
