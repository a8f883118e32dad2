"""CLIP-ES's own CAM generation beside ``cdclip cams --preset clip-es``: whole-run and per-image time.

Both run on the CPU, on the same VOC images, with the same weights and the same thread count, each
in a fresh subprocess:

* CLIP-ES (https://github.com/linyq2117/CLIP-ES, commit 3893f81): its ``generate_cams_voc12.py``,
  unchanged, run as ``__main__`` (``runpy``) by the interpreter of a venv that has its
  dependencies (cv2, ttach, lxml, pkg_resources). Its ``perform`` always picks a ``cuda:N`` device;
  on a CPU-only run ``torch.cuda.device_count`` returns 1 and ``Tensor.to`` / ``Module.to`` map CUDA
  devices to the CPU (the same shim as ``tests/reference/record_clip_es.py``). It needs
  ``Annotations/<id>.xml`` in the VOC root (build it with that script's ``--voc-src``).
* cdclip: ``cdclip.cli.main(["cams", "--preset", "clip-es", ...])``, i.e. ``python -m cdclip cams``.

Per-image time is measured the same way for both, from the outside: ``tqdm.tqdm`` (which both
loops iterate through; neither script is edited) is replaced by a subclass that also records a
timestamp when each image is handed out and when the loop ends; the difference of consecutive
stamps is the time of one image, everything included (forward, GradCAM, refinement, saving its
outputs). Setup is the time from the start of the child to the first image (imports, model load,
text classifiers); whole run is the parent's wall time around the subprocess (interpreter start
included). The first image includes one-off warm-up, so the median is the per-image figure. With
``--repeats N`` the methods run N times, alternating, and the fastest whole run of each is
reported (the others are in the JSON): on a shared machine the minimum is the least disturbed.
CPU time (all threads of the child, ``time.process_time`` between the same stamps, and
``getrusage`` of the whole child) is printed too: it moves much less than wall time when other
processes compete for the cores. The 1-minute load average after each run is in the JSON.

    python benchmarks/baselines.py --clip-es /work/baselines/CLIP-ES \\
        --python /work/baselines/venv-clipes/bin/python --voc /work/baselines/voc_clipes \\
        --weights /work/baselines/rand_vitb16_seed0.pt \\
        --ids 2008_007586 2009_000637 2010_005582 2011_000003 2011_000025 \\
        --out-json benchmarks/results/baselines.json

The same ids are written to ``VOC/ImageSets/Segmentation/<--split>.txt`` (cdclip reads its images
from a split file; CLIP-ES gets the same file as ``--split_file``). With a CLIP-ES output folder
and cdclip's pseudo labels at hand, the script also reports how many pixels the two label maps
agree on (CLIP-ES labels from ``attn_highres`` by eval_cam.py's default rule, background
``(1 - max_c M_c)^2``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIP_ES_COMMIT = "3893f81"
# TODO(preset): drop the stand-in once every cdclip this script meets has `cams --preset clip-es`;
# it is only used when `cdclip cams --help` lists no --preset.
STAND_IN = ["--long-side", "0", "--refine", "attn", "--par-iters", "0"]


# ---------------------------------------------------------------------------------------- children
def _timed_tqdm(original: type, runs: list[list[float]]) -> type:
    """A ``tqdm`` subclass that also stamps the time each item is handed out and the loop's end."""

    class TimedTqdm(original):  # type: ignore[misc, valid-type]
        def __iter__(self) -> Any:
            stamps: list[tuple[float, float]] = []
            runs.append(stamps)
            for item in super().__iter__():
                stamps.append((time.perf_counter(), time.process_time()))
                yield item
            stamps.append((time.perf_counter(), time.process_time()))

    return TimedTqdm


def _cpu_shim() -> None:
    import torch

    def _cpu(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("cuda"):
            return "cpu"
        if isinstance(value, torch.device) and value.type == "cuda":
            return torch.device("cpu")
        return value

    def _wrap(original: Any) -> Any:
        def to(self: Any, *args: Any, **kwargs: Any) -> Any:
            if "device" in kwargs:
                kwargs["device"] = _cpu(kwargs["device"])
            return original(self, *(_cpu(a) for a in args), **kwargs)

        return to

    torch.cuda.device_count = lambda: 1
    torch.Tensor.to = _wrap(torch.Tensor.to)
    torch.nn.Module.to = _wrap(torch.nn.Module.to)


def _child(kind: str, threads: int, report: Path, argv: list[str]) -> int:
    """Run one method in this process with the tqdm timer; write the stamps to ``report``."""
    start = time.perf_counter()
    import torch
    import tqdm as tqdm_module

    torch.set_num_threads(threads)
    runs: list[list[tuple[float, float]]] = []
    tqdm_module.tqdm = _timed_tqdm(tqdm_module.tqdm, runs)
    if kind == "clip-es":
        script = Path(argv[0])
        sys.path.insert(0, str(script.parent))
        _cpu_shim()
        sys.argv = [str(script), *argv[1:]]
        runpy.run_path(str(script), run_name="__main__")
        rc = 0
    else:
        from cdclip.cli import main

        rc = main(argv)
    stamps = max(runs, key=len) if runs else []  # the image loop (the longest tqdm loop)
    report.write_text(json.dumps({"start": start, "stamps": stamps, "rc": rc}))
    return rc


# ---------------------------------------------------------------------------------------- parent
def _run(kind: str, python: str, argv: list[str], threads: int, workdir: Path) -> dict[str, Any]:
    report = workdir / f"{kind}.timing.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = [python, str(Path(__file__).resolve()), "--child", kind, "--threads", str(threads),
           "--report", str(report), "--", *argv]  # fmt: skip
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(workdir))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if res.returncode != 0 or not report.is_file():
        raise RuntimeError(
            f"{kind} failed (rc {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    timing = json.loads(report.read_text())
    stamps = timing["stamps"]
    per_image = [b[0] - a[0] for a, b in itertools.pairwise(stamps)]
    per_image_cpu = [b[1] - a[1] for a, b in itertools.pairwise(stamps)]
    return {"wall_s": wall, "cpu_s": cpu, "setup_s": stamps[0][0] - timing["start"] if stamps else None,
            "per_image_s": per_image, "per_image_median_s": statistics.median(per_image),
            "per_image_mean_s": statistics.fmean(per_image), "per_image_cpu_s": per_image_cpu,
            "per_image_cpu_median_s": statistics.median(per_image_cpu), "images": len(per_image),
            "load_avg_1min": os.getloadavg()[0]}  # fmt: skip


def _has_preset() -> bool:
    res = subprocess.run([sys.executable, "-m", "cdclip", "cams", "--help"], capture_output=True, text=True)
    return "--preset" in res.stdout


def _label_agreement(voc: Path, ids: list[str], clip_es_dir: Path, cdclip_dir: Path) -> float | None:
    from PIL import Image

    same = total = 0
    for i in ids:
        npy, png = clip_es_dir / f"{i}.npy", cdclip_dir / "pseudo" / f"{i}.png"
        if not npy.is_file() or not png.is_file():
            return None
        saved = np.load(npy, allow_pickle=True).item()
        maps = np.asarray(saved["attn_highres"], dtype=np.float16)
        bg = np.power(1 - maps.max(axis=0, keepdims=True), 2)
        keys = np.concatenate([[0], np.asarray(saved["keys"]) + 1])
        ref = keys[np.argmax(np.concatenate([bg, maps]), axis=0)]
        ours = np.asarray(Image.open(png))
        same += int((ours == ref).sum())
        total += ref.size
    return same / total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-es", type=Path, help="CLIP-ES checkout (commit 3893f81)")
    parser.add_argument("--python", help="interpreter of the CLIP-ES venv")
    parser.add_argument("--voc", type=Path, help="VOC root with Annotations/<id>.xml")
    parser.add_argument("--weights", type=Path, help="OpenAI-layout ViT-B/16 state dict (both methods)")
    parser.add_argument("--ids", nargs="+")
    parser.add_argument("--split", default="bench_baselines", help="split file written for the ids")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each method, alternating; the fastest is kept"
    )
    parser.add_argument("--out-json", type=Path, default=None)
    parser.add_argument("--child", choices=("clip-es", "cdclip"), help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        return _child(args.child, args.threads, args.report, rest)
    missing = [n for n in ("clip_es", "python", "voc", "weights", "ids") if not getattr(args, n)]
    if missing:
        parser.error("required: " + ", ".join("--" + n.replace("_", "-") for n in missing))

    voc, weights = args.voc.resolve(), args.weights.resolve()
    split_file = voc / "ImageSets" / "Segmentation" / f"{args.split}.txt"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text("\n".join(args.ids) + "\n")
    preset = _has_preset()
    cdclip_method = ["--preset", "clip-es"] if preset else STAND_IN

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip_es_out, cdclip_out = work / "clip_es_cams", work / "cdclip_cams"
        clip_es_runs, cdclip_runs = [], []
        for _ in range(max(1, args.repeats)):
            clip_es_runs.append(_run("clip-es", args.python, [
                str(args.clip_es.resolve() / "generate_cams_voc12.py"), "--img_root", str(voc / "JPEGImages"),
                "--split_file", str(split_file), "--cam_out_dir", str(clip_es_out), "--model", str(weights),
                "--num_workers", "1"], args.threads, work))  # fmt: skip
            cdclip_runs.append(_run("cdclip", sys.executable, [
                "cams", *cdclip_method, "--voc", str(voc), "--split", args.split, "--weights", str(weights),
                "--device", "cpu", "--out", str(cdclip_out), "--overwrite", "--no-overlay"], args.threads, work))  # fmt: skip
        clip_es = min(clip_es_runs, key=lambda r: r["wall_s"])
        cdclip = min(cdclip_runs, key=lambda r: r["wall_s"])
        agreement = _label_agreement(voc, args.ids, clip_es_out, cdclip_out)

    print(f"## CLIP-ES vs cdclip cams, CPU ({args.threads} threads), {len(args.ids)} VOC images, "
          f"ViT-B/16 weights {weights.name}, fastest of {len(clip_es_runs)} run(s)\n")  # fmt: skip
    print(f"cdclip method: {' '.join(cdclip_method)}{'' if preset else '  (stand-in: no --preset yet)'}\n")
    print("| | CLIP-ES 3893f81 | cdclip | CLIP-ES / cdclip |\n|---|---|---|---|")
    rows = (("whole run (s)", "wall_s"), ("whole run, CPU time of all threads (s)", "cpu_s"),
            ("setup (s)", "setup_s"), ("per image, median (s)", "per_image_median_s"),
            ("per image, mean (s)", "per_image_mean_s"), ("per image, CPU time, median (s)", "per_image_cpu_median_s"))  # fmt: skip
    for label, key in rows:
        a, b = clip_es[key], cdclip[key]
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    if agreement is not None:
        print(
            f"\npseudo-label pixel agreement (CLIP-ES eval_cam rule vs cdclip pseudo PNGs): {100 * agreement:.3f}%"
        )
    result = {"clip_es": {"commit": CLIP_ES_COMMIT, **clip_es}, "cdclip": {"args": cdclip_method, **cdclip},
              "repeats": len(clip_es_runs), "all_wall_s": {"clip_es": [r["wall_s"] for r in clip_es_runs],
                                                          "cdclip": [r["wall_s"] for r in cdclip_runs]},
              "preset": preset, "threads": args.threads, "ids": args.ids, "weights": str(weights),
              "label_agreement": agreement}  # fmt: skip
    if args.out_json is not None:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
