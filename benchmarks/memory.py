"""Peak memory (RSS) of ``cdclip cams`` on one image, by image size: is it bounded?

Each measurement runs ``python -m cdclip cams`` as a fresh child process on a folder holding one
synthetic JPEG of the given size (``--weights none``: random ViT-B/16, CPU, ``--classes cat,dog``)
and reads the child's own peak resident set size from ``os.wait4`` (the kernel's ``ru_maxrss``
of that one child, the figure ``resource.getrusage(RUSAGE_CHILDREN)`` would give). The child
runs under an address-space limit (``--limit-gb``, ``RLIMIT_AS``) so that an unbounded run fails
with an allocation error instead of pushing a shared machine into the OOM killer; such a run is
reported as ``over the limit``.

    python benchmarks/memory.py                                    # 500x375 and 4000x3000, default preset
    python benchmarks/memory.py --sizes 500x375,2000x1500,4000x3000 --cams-args="--long-side 512"
    python benchmarks/memory.py --baseline benchmarks/results/memory.before.json   # adds a "before" column

Writes ``benchmarks/results/memory.json`` and ``memory.md`` (``--out-dir``; ``--name`` changes the
stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _size(text: str) -> tuple[int, int]:
    """``"4000x3000"`` -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 4000x3000, got {text!r}") from err
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected positive sides, got {text!r}")
    return width, height


def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB picture: smooth colour fields (low-frequency noise) with a few discs.

    Shape:
        - no tensors: -> PIL image of ``width`` x ``height``
    """
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    canvas = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)).copy()
    yy, xx = np.ogrid[:height, :width]
    for _ in range(4):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(min(width, height) // 10, min(width, height) // 4)
        canvas[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(canvas)


def _limit(gb: float) -> Any:
    def apply() -> None:
        cap = int(gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return apply


def measure(size: tuple[int, int], cams_args: list[str], limit_gb: float, threads: int, workdir: Path) -> dict[str, Any]:
    """Run ``cdclip cams`` once on one ``size`` image; its peak RSS, wall time and outcome."""
    width, height = size
    folder = workdir / f"img_{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    synthetic_photo(width, height).save(folder / "photo.jpg", quality=90)
    out = workdir / f"out_{width}x{height}"
    cmd = [sys.executable, "-m", "cdclip", "cams", "--images", str(folder), "--classes", "cat,dog",
           "--weights", "none", "--device", "cpu", "--out", str(out), "--overwrite", *cams_args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_limit(limit_gb))
    stdout, stderr = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    text = stderr.decode(errors="replace")
    result: dict[str, Any] = {
        "image": f"{width}x{height}", "pixels": width * height, "peak_rss_mb": usage.ru_maxrss / 1024.0,
        "seconds": seconds, "returncode": child.returncode, "label_size": None,
    }  # fmt: skip
    pseudo = out / "pseudo" / "photo.png"
    if child.returncode == 0 and pseudo.is_file():
        with Image.open(pseudo) as png:
            result["label_size"] = f"{png.size[0]}x{png.size[1]}"
        result["outcome"] = "ok"
    elif "can't allocate memory" in text or "Cannot allocate memory" in text or "MemoryError" in text:
        result["outcome"] = f"over the {limit_gb:g} GB limit"
    else:
        result["outcome"] = f"failed (exit {child.returncode})"
        result["stderr_tail"] = text[-2000:]
    del stdout
    return result


def _table(rows: list[dict[str, Any]], baseline: dict[str, dict[str, Any]] | None) -> str:
    head = "| image | peak RSS (MB) | seconds | label map | outcome |"
    rule = "|---|---:|---:|---|---|"
    if baseline is not None:
        head = "| image | before: peak RSS (MB) | before: outcome | peak RSS (MB) | seconds | label map | outcome |"
        rule = "|---|---:|---|---:|---:|---|---|"
    lines = [head, rule]
    for row in rows:
        cells = [row["image"]]
        if baseline is not None:
            old = baseline.get(row["image"], {})
            cells += [f"{old['peak_rss_mb']:.0f}" if old else "—", old.get("outcome", "—")]
        cells += [f"{row['peak_rss_mb']:.0f}", f"{row['seconds']:.1f}", row["label_size"] or "—", row["outcome"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500x375,4000x3000", help="comma-separated WIDTHxHEIGHT list")
    parser.add_argument("--cams-args", default="", help="extra `cdclip cams` flags, e.g. '--preset clip-es'")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-gb", type=float, default=16.0, help="address-space limit of each child (GB)")
    parser.add_argument("--baseline", type=Path, default=None, help="an earlier memory.json: adds a 'before' column")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default="memory", help="stem of the result files")
    args = parser.parse_args()
    sizes = [_size(s) for s in args.sizes.split(",") if s.strip()]
    cams_args = shlex.split(args.cams_args)

    rows = []
    with tempfile.TemporaryDirectory(prefix="cdclip-memory-") as tmp:
        for size in sizes:
            row = measure(size, cams_args, args.limit_gb, args.threads, Path(tmp))
            print(f"{row['image']}: {row['peak_rss_mb']:.0f} MB, {row['seconds']:.1f} s, {row['outcome']}", flush=True)
            if "stderr_tail" in row:
                print(row["stderr_tail"], file=sys.stderr)
            rows.append(row)
    baseline = None
    if args.baseline is not None:
        baseline = {r["image"]: r for r in json.loads(args.baseline.read_text())["runs"]}
    command = "cdclip cams --images <one image> --classes cat,dog --weights none --device cpu " + " ".join(cams_args)
    table = _table(rows, baseline)
    text = (
        f"## `cdclip cams` peak RSS on one image (CPU, {args.threads} threads, random ViT-B/16)\n\n"
        f"`{command.strip()}`, each run a fresh process limited to {args.limit_gb:g} GB of address space\n\n{table}\n"
    )
    print("\n" + text)
    result = {
        "command": command.strip(), "cams_args": cams_args, "threads": args.threads, "limit_gb": args.limit_gb,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "runs": rows,
    }  # fmt: skip
    if baseline is not None:
        result["baseline"] = str(args.baseline)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{args.name}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
