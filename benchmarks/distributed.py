"""``cdclip cams`` and ``cdclip train`` with 1 and 2 processes on this machine, and the scaling efficiency.

Each configuration is a fresh command (random ViT-B/16 and DINO, ``--weights none``, the VOC sample
or any ``--voc`` folder) with one torch thread per process, so that 2 processes use 2 cores as 1
process uses 1 (Gloo on CPU). ``cams``: the start-up (imports, model, text classifier) is timed with
``--limit 0`` and subtracted, so images per second measure the per-image work. ``train``: the global
batch is fixed (1 process x 2 against 2 processes x 1) and seconds per iteration are read from the
log, after the first two iterations.

    python benchmarks/distributed.py --voc examples/data/VOC2012 --out benchmarks/results/distributed.json
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


def _wall(argv: list[str], nproc: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    command = [sys.executable, *launcher, "-m", "cdclip", *argv] if nproc > 1 else [sys.executable, "-m", "cdclip", *argv]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start


def _cams(voc: Path, split: str, out: Path, *extra: str) -> list[str]:
    return ["cams", "--voc", str(voc), "--split", split, "--out", str(out), "--weights", "none", "--device", "cpu",
            "--no-overlay", *extra]  # fmt: skip


def _train_seconds(voc: Path, out: Path, nproc: int, iters: int) -> float:
    """Median seconds per iteration of ``cdclip train`` at global batch 2, after two warm-up iterations."""
    argv = ["train", "--data-root", str(voc), "--out", str(out), "--weights", "none", "--dino-weights", "none",
            "--device", "cpu", "--workers", "0", "--iters", str(iters), "--batch-size", str(2 // nproc),
            "--no-progress", "--set", "log_every=1"]  # fmt: skip
    _wall(argv, nproc)
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    seconds = [r["sec_per_iter"] for r in lines if "sec_per_iter" in r][2:]
    seconds.sort()
    return seconds[len(seconds) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", type=Path, default=Path(__file__).resolve().parents[1] / "examples/data/VOC2012")
    parser.add_argument("--split", default="train_aug")
    parser.add_argument("--preset", default="cdclip-voc")
    parser.add_argument("--iters", type=int, default=7, help="training iterations per configuration")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (and .md beside)")
    args = parser.parse_args()

    images = len((args.voc / "ImageSets" / "Segmentation" / f"{args.split}.txt").read_text().split())
    work = Path(tempfile.mkdtemp(prefix="cdclip-distributed-"))
    rows = {}
    try:
        for nproc in (1, 2):
            startup = _wall(_cams(args.voc, args.split, work / f"start{nproc}", "--preset", args.preset,
                                  "--limit", "0"), nproc)  # fmt: skip
            total = _wall(_cams(args.voc, args.split, work / f"run{nproc}", "--preset", args.preset), nproc)
            rows[nproc] = {"wall_s": total, "startup_s": startup, "images_per_s": images / max(total - startup, 1e-9)}
            print(f"{nproc} process(es): {total:.1f} s ({startup:.1f} s start-up), "
                  f"{rows[nproc]['images_per_s']:.2f} images/s", flush=True)  # fmt: skip
        train = {nproc: _train_seconds(args.voc, work / f"train{nproc}", nproc, args.iters) for nproc in (1, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    efficiency = rows[2]["images_per_s"] / (2 * rows[1]["images_per_s"])
    train_efficiency = train[1] / (2 * train[2])  # same global batch: the ideal is half the time per iteration
    result = {"images": images, "preset": args.preset, "cpu_count": os.cpu_count(), "processes": rows,
              "scaling_efficiency_2": efficiency, "train_sec_per_iter": train,
              "train_scaling_efficiency_2": train_efficiency}  # fmt: skip
    md = "\n".join([
        "## `cdclip cams` on 1 and 2 processes (CPU, one torch thread each, random ViT-B/16)",
        "",
        f"{images} VOC images, preset `{args.preset}`; start-up timed with `--limit 0` and subtracted.",
        "",
        "| processes | wall (s) | start-up (s) | images / s |",
        "|---:|---:|---:|---:|",
        *(f"| {n} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | {r['images_per_s']:.2f} |" for n, r in rows.items()),
        "",
        f"Scaling efficiency with 2 processes: {100 * efficiency:.0f}%.",
        "",
        "## `cdclip train` at global batch 2 (1 process x 2 against 2 processes x 1, crop 320, SBE on)",
        "",
        "| processes | seconds / iteration |",
        "|---:|---:|",
        *(f"| {n} | {t:.2f} |" for n, t in train.items()),
        "",
        f"Scaling efficiency with 2 processes: {100 * train_efficiency:.0f}%.",
    ]) + "\n"  # fmt: skip
    report(result, md, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
