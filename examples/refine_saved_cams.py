"""Refine CAMs that another method saved as ``.npy`` files with CDA, from Python and with ``cdclip refine``.

    python examples/refine_saved_cams.py                       # works in a temporary folder
    python examples/refine_saved_cams.py --work runs/saved     # keeps the files there

Step 1 plays "another method" on two images of the shipped VOC val split and saves its CAMs the
two ways such methods do:

* a CLIP-ES-style dict ``{"keys": 0-based class indices, "highres": (P, H, W) initial CAMs,
  "attn_highres": (P, H, W) refined CAMs}`` with the maps of the image's classes at image size;
* a plain ``(20, h, w)`` array with the maps of all 20 classes on a stride-16 grid.

The stand-in maps are ground-truth masks, blurred or area-averaged, plus noise (noise alone for
the absent classes of the plain array): they exercise the file formats, and the scores ``cdclip refine`` prints are
theirs, not any method's. Use your method's files instead.

Step 2 refines them with the Python API: per-patch class distributions from the CAMs themselves
(``cdclip.class_probs_from_cams``) and ``cdclip.CDAModule(fusion="replace")`` -- no CLIP, no
attention. Step 3 runs ``cdclip refine`` on the same folder, which does the same computation, and
compares its maps with the Python ones (it prints the largest difference).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import cdclip
from cdclip.data import VOC_CLASSES_WITH_BG, VOCSegmentation
from cdclip.minmax import minmax_normalize

VOC_ROOT = Path(__file__).resolve().parent / "data" / "VOC2012"
SPLIT = "val"
PATCH = 16  # the grid cell `cdclip refine` uses by default (--patch)
IMAGES = 2


# --------------------------------------------------------------------------- step 1: "another method"
def blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of a (H, W) map."""
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum())[None, None]
    y = F.conv2d(x[None, None], kernel[..., None, :], padding=(0, radius))
    return F.conv2d(y, kernel[..., None], padding=(radius, 0))[0, 0]


def standin_cam(mask: Tensor, class_id: int, rng: torch.Generator) -> Tensor:
    """A CAM-like map of one class at image size, in [0, 1]."""
    obj = (mask == class_id).float()
    noisy = blur(obj, sigma=8.0) + 0.1 * torch.rand(obj.shape, generator=rng)
    return minmax_normalize(noisy[None, None])[0, 0]


def standin_grid_cams(mask: Tensor, num_classes: int, rng: torch.Generator) -> Tensor:
    """CAM-like maps of all classes on the stride-16 grid (noise alone for the absent ones).

    Shape:
        - mask: (H, W)
        - output: (C, ceil(H/16), ceil(W/16))
    """
    onehot = torch.stack([(mask == c + 1).float() for c in range(num_classes)])
    covered = F.adaptive_avg_pool2d(onehot[None], grid_of(tuple(mask.shape)))[0]
    return minmax_normalize((covered + 0.1 * torch.rand(covered.shape, generator=rng))[None])[0]


def grid_of(size: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(size[0] / PATCH), math.ceil(size[1] / PATCH)


def write_method_outputs(voc: VOCSegmentation, folder: Path) -> list[str]:
    """Image 0 as a CLIP-ES dict, image 1 as a plain all-class array; returns their names."""
    rng = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = voc.names[:IMAGES]
    for index, name in enumerate(names):
        item = voc.load(index)
        mask = item["mask"].as_subclass(Tensor)
        present = np.flatnonzero(item["labels"].numpy())  # 0-based class indices, from the label file
        if index == 0:
            highres = torch.stack([standin_cam(mask, int(c) + 1, rng) for c in present]).numpy()
            # attn_highres holds CLIP-ES's own refinement (`cdclip refine --cam-key refined` reads it);
            # the stand-in has none, so it repeats the initial maps
            np.save(folder / f"{name}.npy", {"keys": present, "highres": highres, "attn_highres": highres},
                    allow_pickle=True)  # fmt: skip
        else:
            grid_cams = standin_grid_cams(mask, len(VOC_CLASSES_WITH_BG) - 1, rng)
            np.save(folder / f"{name}.npy", grid_cams.numpy().astype(np.float32))
        print(f"  wrote {folder / f'{name}.npy'} ({'CLIP-ES dict' if index == 0 else 'plain (20, h, w) array'})")
    return names


# --------------------------------------------------------------------------- step 2: Python API
def read_saved(path: Path, labels: np.ndarray) -> tuple[np.ndarray, Tensor, Tensor]:
    """(1-based ids of the present classes, their maps, the maps the class distributions come from).

    A dict holds the present classes only; a plain array holds all classes, and the labels pick.
    """
    loaded = np.load(path, allow_pickle=True)
    if loaded.dtype == object:
        record = loaded.item()
        maps = torch.from_numpy(np.asarray(record["highres"], dtype=np.float32))
        return np.asarray(record["keys"]) + 1, maps, maps
    maps = torch.from_numpy(loaded.astype(np.float32))
    keys = np.flatnonzero(labels) + 1
    return keys, maps[keys - 1], maps


def to_patch_grid(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Maps at image size area-averaged onto the stride-16 grid; maps already that small stay."""
    grid = grid_of(size)
    if max(maps.shape[-2:]) > max(grid):
        maps = F.adaptive_avg_pool2d(maps[None], grid)[0]
    return minmax_normalize(maps.clamp_min(0)[None])[0]


def refine_with_api(keys: np.ndarray, maps: Tensor, source: Tensor, size: tuple[int, int]) -> Tensor:
    """CDA ``replace`` with class distributions from the saved CAMs.

    With only the present classes' maps (a dict), a background score ``1 − max`` joins the
    distributions, so that an image of a single class still has two classes to compare.

    Shape:
        - maps: (P, h, w) or (P, H, W); source: (P or C, ...)
        - output: (P, h, w) on the patch grid
    """
    grid_maps, grid_source = to_patch_grid(maps, size), to_patch_grid(source, size)
    only_present = grid_source.shape[0] == grid_maps.shape[0]
    probs = cdclip.class_probs_from_cams(grid_source[None], background=only_present)
    return cdclip.CDAModule(fusion="replace")(grid_maps[None], probs)[0]


def refine_from_python(voc: VOCSegmentation, folder: Path, names: list[str]) -> dict[str, Tensor]:
    results = {}
    for index, name in enumerate(names):
        item = voc.load(index)
        size = tuple(item["mask"].shape)
        keys, maps, source = read_saved(folder / f"{name}.npy", item["labels"].numpy())
        results[name] = refine_with_api(keys, maps, source, size)
        classes = ", ".join(VOC_CLASSES_WITH_BG[k] for k in keys)
        sources = f"{source.shape[0]} map(s)" + (" + background" if source.shape[0] == maps.shape[0] else "")
        print(f"  {name} ({classes}): maps {tuple(maps.shape)}, class distributions from {sources} "
              f"-> refined {tuple(results[name].shape)} (stride-16 grid of {size[0]}x{size[1]})")  # fmt: skip
    return results


# --------------------------------------------------------------------------- step 3: cdclip refine
def refine_from_cli(folder: Path, out: Path, python_results: dict[str, Tensor]) -> int:
    from cdclip.cli import main

    argv = ["refine", "--cams", str(folder), "--voc", str(VOC_ROOT), "--split", SPLIT, "--limit", str(IMAGES),
            "--out", str(out), "--overwrite"]  # fmt: skip
    print("  $ cdclip " + " ".join(argv))
    status = main(argv)
    if status != 0:
        return status
    for name, ours in python_results.items():
        theirs = torch.from_numpy(np.load(out / "refined" / f"{name}.npz")["refined"].astype(np.float32))
        diff = float((theirs - ours).abs().max())
        verdict = "agree" if diff <= 1e-2 else "DIFFER"  # the files hold float16
        print(f"  {name}: cdclip refine and the Python API {verdict}: max difference {diff:.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="folder for the CAM files and outputs (default: temporary)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    voc = VOCSegmentation(VOC_ROOT, SPLIT)
    with tempfile.TemporaryDirectory(prefix="cdclip-saved-cams-") as tmp:
        work = args.work if args.work is not None else Path(tmp)
        print(f"1. another method's CAMs -> {work / 'cams'}")
        names = write_method_outputs(voc, work / "cams")
        print("2. CDA from Python (class distributions from the CAMs, fusion='replace')")
        results = refine_from_python(voc, work / "cams", names)
        print("3. the same with the command line")
        return refine_from_cli(work / "cams", work / "refined", results)


if __name__ == "__main__":
    raise SystemExit(main())
