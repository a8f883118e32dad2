"""How long ``cdclip cams`` takes to start: to the first image written, cold and warm, and a fully resumed run.

Three fresh commands on the VOC sample (random ViT-B/16, ``--weights none``, CPU):

* **cold**: an empty cache folder (``CDCLIP_CACHE_DIR``), so the text classifier is encoded;
* **warm**: the same cache, a new output folder (the text classifier comes from the disk cache);
* **resumed**: the warm run's folder again, every output present (no model is built).

The time to the first image is when the first pseudo-label PNG appears.

    python benchmarks/startup.py --out benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import report  # benchmarks/_results.py (sys.path[0] is this folder)


def _run(voc: Path, out: Path, cache: Path) -> tuple[float, float | None]:
    """(total seconds, seconds to the first pseudo PNG or None if none was written)."""
    env = {**os.environ, "CDCLIP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "cdclip", "cams", "--voc", str(voc), "--split", "val", "--weights", "none",
            "--device", "cpu", "--out", str(out), "--no-overlay"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    existed = set((out / "pseudo").glob("*.png")) if (out / "pseudo").is_dir() else set()
    while proc.poll() is None:
        if first is None and (out / "pseudo").is_dir():
            if any(p not in existed and not p.name.startswith(".") for p in (out / "pseudo").glob("*.png")):
                first = time.perf_counter() - start
        time.sleep(0.01)
    if proc.returncode:
        raise RuntimeError(f"cdclip cams failed with exit code {proc.returncode}")
    return time.perf_counter() - start, first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", type=Path, default=Path(__file__).resolve().parents[1] / "examples/data/VOC2012")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (and .md beside)")
    parser.add_argument("--baseline", type=Path, default=None, help="an earlier startup.json: adds 'before' columns")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cdclip-startup-"))
    try:
        cache = work / "cache"
        cold = _run(args.voc, work / "cold", cache)
        warm = _run(args.voc, work / "warm", cache)
        resumed = _run(args.voc, work / "warm", cache)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = {"cold": cold, "warm": warm, "resumed": resumed}
    result = {name: {"total_s": t, "first_image_s": f} for name, (t, f) in rows.items()}
    before = json.loads(args.baseline.read_text()) if args.baseline is not None else {}
    lines = ["## `cdclip cams` start-up (VOC val sample, 3 images, random ViT-B/16, CPU)", "",
             "| run | before: to the first image (s) | before: whole run (s) | to the first image (s) | whole run (s) |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for name, (total, first) in rows.items():
        old = before.get(name, {})
        cells = [old.get("first_image_s"), old.get("total_s"), first, total]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in cells) + " |")
    if before:
        result["before"] = before
    report(result, "\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
