"""The benchmark suite: run every script in ``benchmarks/``, collect the results, render tables and plots.

Each benchmark script runs as it would alone (a fresh ``python benchmarks/<name>.py`` subprocess, the
flags of its documented run), writes its JSON into a temporary folder, and this script gathers those
into one file, ``benchmarks/results/all.json``: the machine (CPU model, cores, torch, Python, GPU,
date, git commit), and per benchmark its status, date, command, wall time, the medians it reports
(flat ``name -> value``, the unit in the name) and its whole JSON. It then

* rewrites the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in README.md and
  docs/benchmarks.md with tables rendered from that JSON (nothing is copied by hand);
* draws log–log plots (matplotlib, Agg) into docs/images/: the JS kernel's time and memory
  against N, and the CAM pipeline's time per image against the CLIP input size;
* prints a regression report: every median against the last committed ``all.json``
  (``git show HEAD:benchmarks/results/all.json``; before one was committed, the per-script JSON
  files committed in benchmarks/results/), flagging changes beyond ``--threshold`` (±20 %).

Benchmarks that cannot run here (no CUDA device, no CLIP-ES / WeCLIP checkout under
``$CDCLIP_BASELINES``, default /work/baselines) are skipped with a one-line reason and keep their last
results, marked ``not re-measured`` with their original date.

    python benchmarks/run_all.py                      # everything (20–25 minutes on 2 cores)
    python benchmarks/run_all.py --only js_kernel,sbe # re-measure these, keep the rest of all.json
    python benchmarks/run_all.py --quick              # small sizes: a fast check, writes all.quick.json
    python benchmarks/run_all.py --render-only        # tables and plots from the existing all.json
    python benchmarks/run_all.py --list               # the benchmarks and whether they can run here
    python benchmarks/run_all.py --wait-idle 600      # shared machine: start each benchmark when nothing else runs
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
ALL_JSON = RESULTS / "all.json"
PAGES = (REPO / "README.md", REPO / "docs" / "benchmarks.md")
IMAGES = REPO / "docs" / "images"
# scripts here that measure nothing: this suite, the docs figures, the bit-for-bit output digests of refactorings
NOT_BENCHMARKS = frozenset({"run_all", "figures", "output_digest"})
SCHEMA = 1

Result = dict[str, Any]
Medians = dict[str, float]


def _baselines_root() -> Path:
    """Where the other methods' code and venvs live (read at call time so tests can point it elsewhere)."""
    return Path(os.environ.get("CDCLIP_BASELINES", "/work/baselines"))


# ----------------------------------------------------------------------------- what each benchmark needs
def _needs_cuda() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA device"


def _needs_baselines(*parts: str) -> Callable[[], str | None]:
    def check() -> str | None:
        missing = [str(_baselines_root() / p) for p in parts if not (_baselines_root() / p).exists()]
        return f"needs {missing[0]} (set CDCLIP_BASELINES)" if missing else None

    return check


def _needs_torchrun() -> str | None:
    if importlib.util.find_spec("torch.distributed.run") is None:
        return "torch.distributed.run (torchrun) is not available"
    return None if (os.cpu_count() or 1) >= 2 else "needs 2 CPU cores"


def _needs_hypothesis() -> str | None:
    return None if importlib.util.find_spec("hypothesis") else "needs hypothesis (pip install -e '.[dev]')"


# ----------------------------------------------------------------------------- medians of each script's JSON
def _js_medians(result: Result) -> Medians:
    labels = {"cdclip": "cdclip", "cdclip-torch": "torch blocks", "scipy": "scipy", "naive": "naive",
              "log-floor": "torch.log floor", "kernel-log-floor": "kernel-log floor"}  # fmt: skip
    out: Medians = {}
    for row in result.get("results", []):
        first = next(iter(row.values()))
        where = f"N={first['N']} K={first['K']}"
        for method, label in labels.items():
            r = row.get(method, {})
            if "seconds" in r:
                out[f"{where} {label} (s)"] = r["seconds"]
            if "peak_mib_over_inputs" in r:
                out[f"{where} {label} peak (MiB)"] = r["peak_mib_over_inputs"]
    return out


def _stage_medians(stages: Result, prefix: str = "") -> Medians:
    keys = ("clip_forward_s", "gradcam_s", "attn_refine_s", "cda_refine_s")
    out = {f"{prefix}{k[:-2]} (s)": stages[k] for k in keys if k in stages}
    if "cda_extra_ratio" in stages:
        out[f"{prefix}CDA extra (%)"] = 100 * stages["cda_extra_ratio"]
    return out


def _cam_medians(result: Result) -> Medians:
    out = _stage_medians(result.get("stages", {}))
    for row in result.get("sweep", []):
        out.update(_stage_medians({k: v for k, v in row.items() if k != "cda_extra_ratio"}, f"input {row['input']} "))
    rss = result.get("rss")
    if rss:
        out[f"cams peak RSS, {rss['images_small']} images (MB)"] = rss["peak_rss_small_mb"]
        out[f"cams peak RSS, {rss['images_large']} images (MB)"] = rss["peak_rss_large_mb"]
    return out


def _memory_medians(result: Result) -> Medians:
    out: Medians = {}
    for run in result.get("runs", []):
        out[f"{run['image']} peak RSS (MB)"] = run["peak_rss_mb"]
        out[f"{run['image']} whole run (s)"] = run["seconds"]
    return out


def _startup_medians(result: Result) -> Medians:
    out: Medians = {}
    for run in ("cold", "warm", "resumed"):
        row = result.get(run, {})
        if row.get("total_s") is not None:
            out[f"{run} whole run (s)"] = row["total_s"]
        if row.get("first_image_s") is not None:
            out[f"{run} to the first image (s)"] = row["first_image_s"]
    return out


def _data_medians(result: Result) -> Medians:
    out = {f"{k} (ms)": v for k, v in result.get("stages_ms", {}).items()}
    if "dataset_getitem_ms" in result:
        out["dataset[i] (ms)"] = result["dataset_getitem_ms"]
    out.update({f"decode {k} (ms)": v for k, v in result.get("decoder_ms", {}).items()})
    out.update({f"read_image {k} (ms)": v for k, v in result.get("read_image_ms", {}).items()})
    return out


def _ms_medians(key: str) -> Callable[[Result], Medians]:
    return lambda result: {f"{k} (ms)": v for k, v in result.get(key, {}).items()}


def _batch_medians(result: Result) -> Medians:
    return {f"batch {b} {part} (s)": v for b, parts in result.get("seconds", {}).items() for part, v in parts.items()}


def _step_medians(result: Result) -> Medians:
    return {"training step (s)": result["seconds_per_step"]} if "seconds_per_step" in result else {}


def _weclip_step_medians(result: Result) -> Medians:
    out = {f"batch {b} cdclip (s)": r["seconds_per_step"] for b, r in result.get("cdclip", {}).items()}
    for b, r in result.get("weclip", {}).get("results", {}).items():
        out[f"batch {b} WeCLIP (s)"] = r["seconds_per_step"]
    return out


def _distributed_medians(result: Result) -> Medians:
    out: Medians = {}
    for n, row in result.get("processes", {}).items():
        out[f"cams, {n} process(es), whole run (s)"] = row["wall_s"]
        out[f"cams, {n} process(es), images/s (/s)"] = row["images_per_s"]
    for n, sec in result.get("train_sec_per_iter", {}).items():
        out[f"train, {n} process(es), per iteration (s)"] = sec
    for key, label in (("scaling_efficiency_2", "cams"), ("train_scaling_efficiency_2", "train")):
        if key in result:
            out[f"{label} scaling efficiency, 2 processes (%)"] = 100 * result[key]
    return out


def _baselines_medians(result: Result) -> Medians:
    out: Medians = {}
    for who, label in (("clip_es", "CLIP-ES"), ("cdclip", "cdclip")):
        row = result.get(who, {})
        for key, what in (("wall_s", "whole run"), ("setup_s", "setup"), ("per_image_median_s", "per image")):
            if row.get(key) is not None:
                out[f"{label} {what} (s)"] = row[key]
    return out


def _fuzz_medians(result: Result) -> Medians:
    total = result.get("total", {})
    if not total:
        return {}
    bugs = sum(total.get(k, 0) for k in ("other", "nan", "shape"))
    cases = total["cases"]  # in the names: a quick run's fewer cases are another configuration
    return {f"bugs in {cases} cases (count)": bugs, f"all components, {cases} cases (s)": total["seconds"]}


def _gpu_medians(result: Result) -> Medians:
    out: Medians = {}
    for row in result.get("results", []):
        if row["op"] == "pairwise_js":
            out[f"pairwise_js N={row['N']} K={row['K']} {row['dtype'].removeprefix('torch.')} (s)"] = row["seconds"]
        elif row["op"] == "cda_mean":
            out[f"CDA mean {row['grid']}x{row['grid']} (s)"] = row["seconds"]
        else:
            out[f"{row['op']} (s)"] = row["seconds"]
    return out


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Bench:
    """One benchmark script and how the suite runs it.

    ``args`` / ``quick`` are the flags of the full and the quick run; ``{json}`` is replaced by the
    path the script must write its JSON to, ``{dir}`` by its folder, ``{baselines}`` by
    ``$CDCLIP_BASELINES``. ``legacy`` names the per-script result committed before all.json existed.
    """

    name: str
    script: str
    args: tuple[str, ...]
    quick: tuple[str, ...]
    medians: Callable[[Result], Medians]
    what: str
    needs: Callable[[], str | None] = lambda: None
    env: dict[str, str] = field(default_factory=dict)
    legacy: str | None = None
    in_quick: bool = True  # False: minutes of fixed process-level work that --quick cannot shrink


_CLIP_ES_IDS = ("2008_007586", "2009_000637", "2010_005582", "2011_000003", "2011_000025")
_WECLIP = ("--preset", "weclip-voc", "--threads", "2", "--weclip", "{baselines}/WeCLIP-src/WeCLIP",
           "--weclip-python", "{baselines}/venv-weclip/bin/python", "--weclip-weights", "{baselines}/rand_vitb16_seed0.pt")  # fmt: skip
_CLIP_ES = ("--clip-es", "{baselines}/CLIP-ES", "--python", "{baselines}/venv-clipes/bin/python",
            "--voc", "{baselines}/voc_clipes", "--weights", "{baselines}/rand_vitb16_seed0.pt", "--threads", "1")  # fmt: skip
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# fmt: off
BENCHMARKS: tuple[Bench, ...] = (
    Bench("js_kernel", "js_kernel.py", ("--out", "{json}"), ("--n", "400", "784", "--k", "21", "--repeats", "3", "--out", "{json}"),
          _js_medians, "pairwise JS kernel: time, accuracy and peak memory against scipy, naive and log floors",
          legacy="js_kernel.json"),
    Bench("cam_pipeline", "cam_pipeline.py", ("--sweep", "224,320,448,640", "--out", "{json}"),
          ("--long-side", "224", "--repeats", "1", "--rss-images", "0", "--sweep", "160,224", "--out", "{json}"),
          _cam_medians, "CAM pipeline stages per image (CPU), by CLIP input size; `cdclip cams` peak RSS over images",
          legacy="cam_pipeline.json"),
    Bench("memory", "memory.py", ("--sizes", "500x375,4000x3000,8000x6000", "--out-dir", "{dir}", "--name", "result"),
          ("--sizes", "500x375", "--out-dir", "{dir}", "--name", "result"),
          _memory_medians, "`cdclip cams` peak RSS and wall time on one image, by image size", legacy="memory.json"),
    Bench("startup", "startup.py", ("--out", "{json}"), ("--out", "{json}"),
          _startup_medians, "`cdclip cams` start-up: cold, warm and resumed", legacy="startup.json"),
    Bench("data_loading", "data_loading.py", ("--out", "{json}"), ("--repeats", "3", "--out", "{json}"),
          _data_medians, "loading and augmenting one VOC training sample (1 core)", env=ONE_THREAD, legacy="data_loading.json"),
    Bench("sbe", "sbe.py", ("--out", "{json}"), ("--repeats", "5", "--out", "{json}"),
          _ms_medians("median_ms_per_image"), "SBE prototypes, band and boundary loss per image (1 core)",
          env=ONE_THREAD, legacy="sbe.json"),
    Bench("evaluate", "evaluate.py", ("--out", "{json}"), ("--repeats", "2", "--out", "{json}"),
          _ms_medians("median_ms"), "multi-scale + flip evaluation per image, by stage (1 thread)"),
    Bench("pseudo_label_batch", "pseudo_label_batch.py", ("--threads", "2", "--out", "{json}"),
          ("--threads", "2", "--repeats", "1", "--out", "{json}"),
          _batch_medians, "online pseudo labels of the training step at batch 1, 2, 4", legacy="pseudo_label_batch.json"),
    Bench("train_step", "train_step.py", ("--threads", "2", "--out", "{json}"),
          ("--threads", "2", "--batch", "1", "--steps", "1", "--out", "{json}"),
          _step_medians, "one CD-CLIP training step on the CPU (batch 4, crop 320, SBE on)"),
    Bench("train_step_weclip", "train_step.py", (*_WECLIP, "--out", "{json}"),
          (*_WECLIP, "--batches", "1", "--steps", "1", "--out", "{json}"), _weclip_step_medians,
          "a `weclip-voc` training step beside WeCLIP's own (CPU)",
          needs=_needs_baselines("WeCLIP-src/WeCLIP", "venv-weclip/bin/python", "rand_vitb16_seed0.pt"), in_quick=False),
    Bench("distributed", "distributed.py", ("--out", "{json}"), ("--iters", "3", "--out", "{json}"),
          _distributed_medians, "`cdclip cams` and `cdclip train` on 1 and 2 processes (torchrun, Gloo)",
          needs=_needs_torchrun, legacy="distributed.json", in_quick=False),
    Bench("baselines", "baselines.py", (*_CLIP_ES, "--repeats", "2", "--ids", *_CLIP_ES_IDS, "--out-json", "{json}"),
          (*_CLIP_ES, "--ids", *_CLIP_ES_IDS[:2], "--out-json", "{json}"), _baselines_medians,
          "`cdclip cams --preset clip-es` beside CLIP-ES's own script (CPU)",
          needs=_needs_baselines("CLIP-ES/generate_cams_voc12.py", "venv-clipes/bin/python", "voc_clipes/Annotations",
                                 "rand_vitb16_seed0.pt"), legacy="baselines.json", in_quick=False),
    Bench("fuzz", "fuzz.py", ("--cases", "6500", "--out", "{json}"), ("--cases", "520", "--out", "{json}"),
          _fuzz_medians, "fuzzing every public component (a correctness run; its time is a side figure)",
          needs=_needs_hypothesis, legacy="fuzz.json"),
    Bench("gpu", "gpu.py", ("--out", "{json}"), ("--repeats", "5", "--out", "{json}"), _gpu_medians,
          "JS kernel, CDA and PAR on a CUDA device", needs=_needs_cuda, legacy="gpu_h200.json"),
    Bench("cam_pipeline_gpu", "cam_pipeline.py", ("--device", "cuda", "--rss-images", "0", "--out", "{json}"),
          ("--device", "cuda", "--rss-images", "0", "--repeats", "1", "--out", "{json}"), _cam_medians,
          "CAM pipeline stages per image on a CUDA device", needs=_needs_cuda, legacy="cam_pipeline_h200.md"),
    Bench("train_step_gpu", "train_step.py", ("--device", "cuda", "--steps", "10", "--out", "{json}"),
          ("--device", "cuda", "--steps", "2", "--out", "{json}"), _step_medians,
          "one CD-CLIP training step on a CUDA device (batch 4, crop 320, SBE on)", needs=_needs_cuda,
          legacy="train_step_h200.md"),
)
# fmt: on
BY_NAME = {b.name: b for b in BENCHMARKS}


# ----------------------------------------------------------------------------- machine, git, dates
def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def git_commit() -> str:
    """The checkout's commit, ``+dirty`` when the working tree differs from it."""
    head = (_git("rev-parse", "--short=12", "HEAD") or "unknown").strip()
    return head + ("+dirty" if (_git("status", "--porcelain", "--untracked-files=no") or "").strip() else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> Result:
    """What the figures were measured on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    from cdclip.kernels import js as js_mod

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": gpu, "platform": platform.platform(),
            "js_native": js_mod._native_library(requested=False) is not None}  # fmt: skip


def describe_machine(m: Result | None) -> str:
    """One line: CPU (or GPU), cores, torch."""
    if not m:
        return "unknown machine"
    if m.get("gpu"):
        head = m["gpu"]
    else:
        cores = f", {m['cores']} cores" if m.get("cores") else ""
        head = f"{m.get('cpu') or 'CPU'}{cores}"
    return head + (f", torch {m['torch'].split('+')[0]}" if m.get("torch") else "")


# ----------------------------------------------------------------------------- a shared machine
def others_running() -> int:
    """Processes runnable right now besides the reader (the R of /proc/loadavg's R/T field); 0 if unknown."""
    try:
        running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return 0
    return max(0, running - 1)


def wait_until_idle(limit_s: float, quiet_s: int = 5) -> float:
    """Wait up to ``limit_s`` for ``quiet_s`` seconds in a row with nothing else runnable; the seconds waited.

    Multi-threaded torch timings on an oversubscribed machine are not slower by the share of CPU lost
    but by an order of magnitude (OpenMP threads wait for descheduled peers at every parallel region),
    so on a shared machine it pays to start each benchmark in a quiet moment.
    """
    start, quiet = time.perf_counter(), 0
    while quiet < quiet_s and time.perf_counter() - start < limit_s:
        quiet = quiet + 1 if others_running() == 0 else 0
        time.sleep(1)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- running one benchmark
def _fill(args: Iterable[str], json_path: Path) -> list[str]:
    values = {"json": str(json_path), "dir": str(json_path.parent), "baselines": str(_baselines_root())}
    return [a.format(**values) for a in args]


def command_text(bench: Bench, quick: bool) -> str:
    """The command as a person would type it (the JSON path shown as OUT)."""
    args = [a.replace("{json}", "OUT.json").replace("{dir}", "OUT").replace("{baselines}", "$CDCLIP_BASELINES")
            for a in (bench.quick if quick else bench.args)]  # fmt: skip
    env = " ".join(f"{k}={v}" for k, v in bench.env.items() if k == "OMP_NUM_THREADS")
    return " ".join(filter(None, [env, "python", f"benchmarks/{bench.script}", shlex.join(args)]))


def run_bench(bench: Bench, quick: bool, workdir: Path, timeout: float) -> Result:
    """Run one script in a fresh process; its entry of all.json (status ``measured`` or ``failed``)."""
    json_path = workdir / bench.name / "result.json"  # memory.py names its file: --name result
    json_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / bench.script), *_fill(bench.quick if quick else bench.args, json_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **bench.env}
    load, busy = os.getloadavg()[0], others_running()
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        rc, stderr = -1, f"timed out after {timeout:.0f} s"
    entry: Result = {"date": _now(), "command": command_text(bench, quick), "wall_s": time.perf_counter() - start,
                     "returncode": rc, "quick": quick, "load_avg_1min": [load, os.getloadavg()[0]],
                     "others_running_at_start": busy}  # fmt: skip
    if not json_path.is_file():  # a failed run writes nothing; a run that found bugs (fuzz) still has its JSON
        tail = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [f"exit {rc}"]
        return {**entry, "status": "failed", "reason": tail[0][:300], "stderr_tail": stderr[-3000:]}
    result = json.loads(json_path.read_text())
    return {**entry, "status": "measured", "medians": bench.medians(result), "result": result}


# ----------------------------------------------------------------------------- earlier results
def load_json(path: Path) -> Result | None:
    return json.loads(path.read_text()) if path.is_file() else None


def committed_all(rev: str = "HEAD") -> Result | None:
    """all.json as committed at ``rev``, or None before one was committed."""
    text = _git("show", f"{rev}:{ALL_JSON.relative_to(REPO).as_posix()}")
    return json.loads(text) if text else None


def _parse_stage_md(text: str) -> Result:
    """The stage table of a saved ``cam_pipeline.py`` output (results from before the JSON was kept)."""
    stages: Result = {f"{m[1]}_s": float(m[2]) for m in re.finditer(r"^\| (\w+) \| ([\d.]+) \|$", text, re.M)}
    size = re.search(r"input (\d+x\d+)", text)
    extra = re.search(r"CDA adds ([\d.]+)%", text)
    if size:
        stages["input"] = size[1]
    if extra:
        stages["cda_extra_ratio"] = float(extra[1]) / 100
    return {"stages": stages}


def _parse_step_md(text: str) -> Result:
    """The first ``median X s per step`` of a saved ``train_step.py`` output."""
    found = re.search(r"median ([\d.]+) s per step over (\d+) steps", text)
    return {"seconds_per_step": float(found[1]), "steps": int(found[2])} if found else {}


def _legacy_machine(result: Result, text: str) -> Result:
    gpu = result.get("device") or (re.search(r"(NVIDIA [\w ]+?)[,\n]", text) or [None, None])[1]
    return {"cpu": result.get("cpu"), "cores": result.get("cpu_count"), "torch": result.get("torch"), "gpu": gpu}


def legacy_entry(bench: Bench, rev: str | None = "HEAD") -> Result | None:
    """The per-script result committed before all.json, as an all.json entry (None if there is none)."""
    if bench.legacy is None:
        return None
    rel = f"benchmarks/results/{bench.legacy}"
    text = _git("show", f"{rev}:{rel}") if rev else None
    if text is None and (REPO / rel).is_file():
        text = (REPO / rel).read_text()
    if text is None:
        return None
    if bench.legacy.endswith(".json"):
        result = json.loads(text)
    else:
        result = _parse_step_md(text) if bench.name.startswith("train_step") else _parse_stage_md(text)
    date = (_git("log", "-1", "--format=%cI", "--", rel) or "").strip() or None
    return {"status": "not re-measured", "date": date, "machine": _legacy_machine(result, text),
            "command": f"python benchmarks/{bench.script}", "source": rel, "medians": bench.medians(result),
            "result": result}  # fmt: skip


def legacy_all(rev: str | None = "HEAD") -> Result:
    """An all.json assembled from the per-script results (the regression baseline before all.json)."""
    entries = {b.name: e for b in BENCHMARKS if (e := legacy_entry(b, rev)) is not None}
    return {"schema": SCHEMA, "source": "per-script results in benchmarks/results/", "benchmarks": entries}


def carried(previous: Result | None, bench: Bench, reason: str) -> Result:
    """The last result of a benchmark that was not re-measured, marked so, with its original date."""
    entry = (previous or {}).get("benchmarks", {}).get(bench.name)
    if not (entry and entry.get("result")):
        entry = legacy_entry(bench)
    if entry is None:
        return {"status": "never measured", "reason": reason, "command": command_text(bench, False)}
    return {**entry, "status": "not re-measured", "reason": reason}


# ----------------------------------------------------------------------------- regression report
_FLOORS = {"s": 5e-4, "ms": 0.5, "MB": 2.0, "MiB": 2.0}  # below these both ways, a change is timer / allocator noise
_WORDS = {"s": ("slower", "faster"), "ms": ("slower", "faster"), "MB": ("more memory", "less memory"),
          "MiB": ("more memory", "less memory"), "/s": ("faster", "slower")}  # fmt: skip


def unit(metric: str) -> str:
    found = re.search(r"\(([^()]*)\)$", metric)
    return found[1] if found else ""


@dataclass(frozen=True)
class Change:
    """One median that moved beyond the threshold."""

    bench: str
    metric: str
    old: float
    new: float

    @property
    def relative(self) -> float:
        return math.inf if self.old == 0 else self.new / self.old - 1

    def line(self) -> str:
        up, down = _WORDS.get(unit(self.metric), ("higher", "lower"))
        word = up if self.new > self.old else down
        rel = "new" if math.isinf(self.relative) else f"{100 * self.relative:+.0f}%"
        return f"    {self.metric:<48} {fmt(self.old):>10} -> {fmt(self.new):<10} {rel:>6} {word}"


def changes(new: Result, old: Result, threshold: float) -> tuple[list[Change], dict[str, int]]:
    """Medians of the benchmarks measured in ``new`` that moved beyond ``threshold`` since ``old``, and counts compared."""
    flagged: list[Change] = []
    compared: dict[str, int] = {}
    for name, entry in new.get("benchmarks", {}).items():
        before = old.get("benchmarks", {}).get(name, {}).get("medians")
        if entry.get("status") != "measured" or not before:
            continue
        compared[name] = 0
        for metric, value in entry.get("medians", {}).items():
            prev = before.get(metric)
            if not isinstance(prev, int | float) or not isinstance(value, int | float):
                continue
            compared[name] += 1
            floor = _FLOORS.get(unit(metric), 0.0)
            if max(abs(prev), abs(value)) <= floor:
                continue
            if (prev == 0 and value != 0) or (prev != 0 and abs(value / prev - 1) > threshold):
                flagged.append(Change(name, metric, prev, value))
    return flagged, compared


def _busy_note(data: Result) -> str | None:
    """A warning when other work shared the CPU with the measured benchmarks (their load average above the cores)."""
    cores = (data.get("machine") or {}).get("cores") or 1
    loads = {name: max(e["load_avg_1min"]) for name, e in data.get("benchmarks", {}).items()
             if e.get("status") == "measured" and e.get("load_avg_1min")}  # fmt: skip
    busy = sorted(name for name, load in loads.items() if load > cores + 0.5)
    if not busy:
        return None
    return (f"  the machine was busy (load up to {max(loads.values()):.1f} on {cores} cores) during: {', '.join(busy)}; "
            "their multi-threaded timings are inflated, re-run them with --only ... --wait-idle 600")  # fmt: skip


def regression_report(new: Result, old: Result | None, threshold: float, source: str) -> str:
    """The report printed after a run: per benchmark how many medians moved beyond ±threshold, and which."""
    pct = f"±{100 * threshold:.0f}%"
    if old is None:
        return "Regression report: nothing to compare with (no committed all.json nor per-script results)."
    flagged, compared = changes(new, old, threshold)
    lines = [f"Regression report: this run against {source} (threshold {pct})"]
    busy = _busy_note(new)
    if busy:
        lines.append(busy)
    then, now = old.get("machine"), new.get("machine")
    if then and now and describe_machine(then) != describe_machine(now):
        lines.append(f"  baseline machine: {describe_machine(then)}; now: {describe_machine(now)} (changes include the machine)")
    for name, entry in new.get("benchmarks", {}).items():
        if entry.get("status") != "measured":
            lines.append(f"  {name:<20} {entry.get('status')}: {entry.get('reason', '')[:100]}"
                         + (f" (kept from {entry['date'][:10]})" if entry.get("date") else ""))  # fmt: skip
            continue
        if name not in compared:
            lines.append(f"  {name:<20} measured; no earlier result to compare")
            continue
        mine = [c for c in flagged if c.bench == name]
        lines.append(f"  {name:<20} {compared[name]} medians compared, {len(mine)} beyond {pct}")
        lines += [c.line() for c in mine]
    total = sum(compared.values())
    lines.append(f"  total: {len(flagged)} of {total} medians beyond {pct}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- rendering: markers
_MARKER = re.compile(r"^<!-- (?P<prefix>[\w-]+):(?P<name>[\w-]+) -->[ \t]*$", re.M)


def render_markers(text: str, sections: dict[str, str], prefix: str = "bench") -> str:
    """Replace the text between each ``<!-- PREFIX:NAME -->`` and ``<!-- /PREFIX:NAME -->`` by ``sections[NAME]``.

    Markers are whole lines (a marker quoted inside a sentence is left alone). Only the text between
    a pair changes, the markers stay, so rendering twice gives the same text. An unknown NAME or an
    unclosed marker raises ValueError: a typo must not silently keep old figures.
    """
    out, pos = [], 0
    for opening in _MARKER.finditer(text):
        if opening["prefix"] != prefix or opening.start() < pos:
            continue
        name = opening["name"]
        closing = re.compile(rf"^<!-- /{re.escape(prefix)}:{re.escape(name)} -->[ \t]*$", re.M).search(text, opening.end())
        if closing is None:
            raise ValueError(f"<!-- {prefix}:{name} --> has no <!-- /{prefix}:{name} -->")
        if name not in sections:
            raise ValueError(f"no renderer for <!-- {prefix}:{name} --> (known: {', '.join(sorted(sections))})")
        # blank lines around: Markdown (Python-Markdown too) needs them to see a table after an HTML comment
        out += [text[pos : opening.end()], "\n\n", sections[name].strip("\n"), "\n\n"]
        pos = closing.start()
    return "".join(out) + text[pos:]


def render_file(path: Path, sections: dict[str, str], prefix: str = "bench") -> bool:
    """Render ``path`` in place; True if it changed."""
    old = path.read_text()
    new = render_markers(old, sections, prefix)
    if new != old:
        path.write_text(new)
    return new != old


# ----------------------------------------------------------------------------- rendering: numbers and tables
def fmt(value: float | None, digits: int = 3) -> str:
    """About ``digits`` significant figures in fixed point (no exponents in tables)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1) - 0.5:
        return f"{value:.0f}"  # whole numbers in full: 1644 MB, not 1640
    value = float(f"{value:.{digits}g}")  # round first: 0.0009997 is 0.00100, not 0.001000
    magnitude = math.floor(math.log10(abs(value)))
    return f"{value:.{digits - 1 - magnitude}f}"


def table(head: list[str], rows: list[list[str]], numeric_from: int = 1, numeric_to: int | None = None) -> str:
    """A Markdown table; columns ``numeric_from`` to ``numeric_to`` (exclusive, default: the last) are right-aligned."""
    last = len(head) if numeric_to is None else numeric_to
    rule = ["---:" if numeric_from <= i < last else "---" for i in range(len(head))]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, rule, *rows])


def _entry(data: Result, name: str) -> Result | None:
    entry = data.get("benchmarks", {}).get(name)
    return entry if entry and entry.get("result") else None


def provenance(entry: Result) -> str:
    """Where a table's figures come from: command, machine, date, and whether they are re-measured."""
    when = (entry.get("date") or "date unknown")[:10]
    where = describe_machine(entry.get("machine"))
    reason = (entry.get("reason") or "")[:100]
    note = f"; not re-measured ({reason})" if entry.get("status") == "not re-measured" and reason else ""
    quick = "; **quick run**" if entry.get("quick") else ""
    load = entry.get("load_avg_1min")  # other work on a shared machine inflates wall times: say how much there was
    busy = f", load {load[0]:.1f}–{load[1]:.1f}" if load else ""
    return f"<sub>`{entry.get('command', '')}` — {where}, {when}{busy}{note}{quick}.</sub>"


def _missing(name: str) -> str:
    return f"*Not measured yet: `python benchmarks/run_all.py --only {name}`.*"


def _js_rows(result: Result) -> list[tuple[int, int, Result]]:
    rows = []
    for row in result.get("results", []):
        first = next(iter(row.values()))
        rows.append((first["N"], first["K"], row))
    return rows


def _js_cells(n: int, k: int, row: Result, full: bool) -> list[str]:
    def sec(method: str) -> float | None:
        return row.get(method, {}).get("seconds")

    c, scipy, floor = sec("cdclip"), sec("scipy"), sec("kernel-log-floor")
    naive = fmt(sec("naive")) if sec("naive") else row.get("naive", {}).get("skipped", "—")
    peak = row.get("cdclip", {})
    err = peak.get("max_abs_err_vs_scipy")
    cells = [str(n), str(k), fmt(c), fmt(sec("cdclip-torch")), fmt(scipy),
             f"{scipy / c:.0f}×" if scipy and c else "—", naive]  # fmt: skip
    if full:
        cells.append(fmt(sec("log-floor")))
    cells += [fmt(floor), f"{c / floor:.1f}" if c and floor else "—", f"{err:.1e}" if err is not None else "—"]
    out_mib = peak.get("output_mib")
    cells.append(f"{peak.get('peak_mib_over_inputs', float('nan')):.0f} ({out_mib:.0f})" if out_mib is not None else "—")
    return cells


README_JS = ((400, 21), (784, 45), (1600, 45), (1600, 103), (4096, 103))


def js_table(data: Result, full: bool) -> str:
    entry = _entry(data, "js_kernel")
    if entry is None:
        return _missing("js_kernel")
    result = entry["result"]
    rows = [(n, k, r) for n, k, r in _js_rows(result) if full or (n, k) in README_JS]
    head = ["N", "K", "cdclip (s)", "torch blocks (s)", "scipy (s)", "speed-up vs scipy", "naive (s)"]
    head += ["torch.log floor (s)"] if full else []
    head += ["kernel-log floor (s)", "cdclip / kernel log", "max abs err", "peak MiB (output)"]
    backend = next((r.get("cdclip", {}).get("backend") for _, _, r in rows), None)
    note = (f"{result.get('threads', '?')} threads, float32, median of the repeats; cdclip's default backend here: "
            f"`{backend or 'unknown'}`.")  # fmt: skip
    return "\n\n".join([table(head, [_js_cells(n, k, r, full) for n, k, r in rows], 0), note + " " + provenance(entry)])


_STAGES = (("clip_forward_s", "CLIP forward (+ attention of 8 blocks)"), ("gradcam_s", "GradCAM (present classes)"),
           ("attn_refine_s", "attention refinement"), ("cda_refine_s", "CDA refinement (`mean`)"))  # fmt: skip


def cam_table(data: Result) -> str:
    columns = [(name, e) for name in ("cam_pipeline", "cam_pipeline_gpu") if (e := _entry(data, name))]
    if not columns:
        return _missing("cam_pipeline")
    head = ["stage", *(f"{(e.get('machine') or {}).get('gpu') or 'CPU'}, {e['result']['stages'].get('input', '?')} (s)"
                       for _, e in columns)]  # fmt: skip
    rows = [[label, *(fmt(e["result"]["stages"].get(key)) for _, e in columns)] for key, label in _STAGES]
    extra = [f"{100 * e['result']['stages']['cda_extra_ratio']:+.1f}%" for _, e in columns]
    rows.append(["CDA extra over forward + GradCAM + attention", *extra])
    return "\n\n".join([table(head, rows), " ".join(provenance(e) for _, e in columns)])


def cam_sweep_table(data: Result) -> str:
    entry = _entry(data, "cam_pipeline")
    if entry is None or not entry["result"].get("sweep"):
        return _missing("cam_pipeline")
    rows = []
    for row in entry["result"]["sweep"]:
        total = row["clip_forward_s"] + row["gradcam_s"] + row["cda_refine_s"]
        rows.append([row["input"], *(fmt(row[k]) for k, _ in _STAGES), fmt(total)])
    head = ["CLIP input", "forward (s)", "GradCAM (s)", "attention (s)", "CDA (s)", "total with CDA (s)"]
    return table(head, rows) + "\n\n" + provenance(entry)


def rss_text(data: Result) -> str:
    entry = _entry(data, "cam_pipeline")
    rss = entry["result"].get("rss") if entry else None
    if not rss:
        return _missing("cam_pipeline")
    return (f"`cdclip cams` peak RSS (long side 224): {rss['peak_rss_small_mb']:.0f} MB for {rss['images_small']} images, "
            f"{rss['peak_rss_large_mb']:.0f} MB for {rss['images_large']}, i.e. "
            f"{rss['growth_per_image_mb']:.2f} MB per extra image. " + provenance(entry))  # fmt: skip


def memory_table(data: Result) -> str:
    entry = _entry(data, "memory")
    if entry is None:
        return _missing("memory")
    rows = [[r["image"], fmt(r["peak_rss_mb"]), fmt(r["seconds"]), r.get("label_size") or "—", r["outcome"]]
            for r in entry["result"]["runs"]]  # fmt: skip
    head = ["image", "peak RSS (MB)", "whole run (s)", "label map", "outcome"]
    return table(head, rows, 1, 3) + "\n\n" + provenance(entry)


def baselines_table(data: Result) -> str:
    entry = _entry(data, "baselines")
    if entry is None:
        return _missing("baselines")
    r = entry["result"]
    rows = []
    for label, key in (("whole run (s)", "wall_s"), ("setup (s)", "setup_s"), ("per image, median (s)", "per_image_median_s"),
                       ("per image, mean (s)", "per_image_mean_s")):  # fmt: skip
        a, b = r["clip_es"].get(key), r["cdclip"].get(key)
        rows.append([label, fmt(a), fmt(b), f"{a / b:.2f}×" if a and b else "—"])
    agree = r.get("label_agreement")
    text = (f"{len(r.get('ids', []))} VOC images, seeded random ViT-B/16, {r.get('threads')} thread(s), fastest of "
            f"{r.get('repeats')} alternating run(s)")  # fmt: skip
    text += f"; pseudo-label pixel agreement {100 * agree:.3f}%." if agree is not None else "."
    head = ["", f"CLIP-ES {r['clip_es'].get('commit', '')}", "cdclip `--preset clip-es`", "CLIP-ES / cdclip"]
    return "\n\n".join([table(head, rows), text + " " + provenance(entry)])


def weclip_step_table(data: Result) -> str:
    entry = _entry(data, "train_step_weclip")
    if entry is None:
        return _missing("train_step_weclip")
    r = entry["result"]
    rows = []
    for b, mine in r["cdclip"].items():
        theirs = r["weclip"]["results"].get(str(b), {}).get("seconds_per_step")
        ours = mine["seconds_per_step"]
        rows.append([str(b), fmt(ours), fmt(theirs), f"{ours / theirs:.2f}" if theirs else "—"])
    head = ["batch", "cdclip (s / step)", "WeCLIP (s / step)", "cdclip / WeCLIP"]
    note = f"Preset `{r.get('preset')}`, WeCLIP iteration {r.get('weclip_iter')}, crop 320, median of the steps."
    return "\n\n".join([table(head, rows), note + " " + provenance(entry)])


def batch_table(data: Result) -> str:
    entry = _entry(data, "pseudo_label_batch")
    if entry is None:
        return _missing("pseudo_label_batch")
    r = entry["result"]
    rows = [[str(b), *(fmt(v[k]) for k in ("fwd", "head", "total"))] for b, v in r["seconds"].items()]
    ratio = r["batch4_over_batch1"]
    note = (f"Preset `{r['preset']}`, 320 × 320 crops, {r['threads']} threads; batch 4 / batch 1: fwd "
            f"{ratio['fwd']:.2f}×, head {ratio['head']:.2f}×, total {ratio['total']:.2f}×.")  # fmt: skip
    return "\n\n".join([table(["batch", "CLIP forward (s)", "CAM head (s)", "total (s)"], rows), note + " " + provenance(entry)])


def ms_table(data: Result, name: str, key: str, extra: Callable[[Result], list[list[str]]] | None = None) -> str:
    entry = _entry(data, name)
    if entry is None:
        return _missing(name)
    r = entry["result"]
    rows = [[k, fmt(v)] for k, v in r.get(key, {}).items()] + (extra(r) if extra else [])
    return table(["stage", "median (ms)"], rows) + "\n\n" + provenance(entry)


def _data_extra(r: Result) -> list[list[str]]:
    return [["**sum of stages**", f"**{fmt(r['total_ms'])}**"], ["`dataset[i]` with `train_transform`", fmt(r["dataset_getitem_ms"])]]


def _data_extra_full(r: Result) -> list[list[str]]:
    rows = _data_extra(r) + [[f"JPEG decode, {k}", fmt(v)] for k, v in r.get("decoder_ms", {}).items()]
    rows += [[f"`read_image`, {k}", fmt(v)] for k, v in r.get("read_image_ms", {}).items()]
    return rows


def startup_table(data: Result) -> str:
    entry = _entry(data, "startup")
    if entry is None:
        return _missing("startup")
    r = entry["result"]
    rows = [[run, fmt(r[run].get("first_image_s")), fmt(r[run].get("total_s"))] for run in ("cold", "warm", "resumed")]
    return table(["run", "to the first image (s)", "whole run (s)"], rows) + "\n\n" + provenance(entry)


def step_table(data: Result) -> str:
    columns = [(n, e) for n in ("train_step", "train_step_gpu") if (e := _entry(data, n))]
    if not columns:
        return _missing("train_step")
    rows = [[describe_machine(e.get("machine")), fmt(e["result"].get("seconds_per_step"))] for _, e in columns]
    return table(["machine", "seconds / step"], rows) + "\n\n" + " ".join(provenance(e) for _, e in columns)


def distributed_table(data: Result) -> str:
    entry = _entry(data, "distributed")
    if entry is None:
        return _missing("distributed")
    r = entry["result"]
    rows = [[n, fmt(p["wall_s"]), fmt(p["startup_s"]), fmt(p["images_per_s"]), fmt(r["train_sec_per_iter"].get(n))]
            for n, p in r["processes"].items()]  # fmt: skip
    head = ["processes", "cams whole run (s)", "cams start-up (s)", "cams images / s", "train s / iteration (global batch 2)"]
    note = (f"Scaling efficiency with 2 processes: `cams` {100 * r['scaling_efficiency_2']:.0f}%, `train` "
            f"{100 * r['train_scaling_efficiency_2']:.0f}%.")  # fmt: skip
    return "\n\n".join([table(head, rows), note + " " + provenance(entry)])


def fuzz_table(data: Result) -> str:
    entry = _entry(data, "fuzz")
    if entry is None:
        return _missing("fuzz")
    t = entry["result"]["total"]
    keys = ("cases", "ok", "ValueError", "TypeError", "other", "nan", "shape", "seconds")
    rows = [[str(len(entry["result"]["components"])), *(str(t[k]) for k in keys)]]
    head = ["components", "cases", "ok", "ValueError", "TypeError", "other (bug)", "NaN (bug)", "shape (bug)", "s"]
    return table(head, rows, 0) + "\n\n" + provenance(entry)


def gpu_table(data: Result) -> str:
    entry = _entry(data, "gpu")
    if entry is None:
        return _missing("gpu")
    rows = []
    for r in entry["result"]["results"]:
        size = {"pairwise_js": f"N = {r.get('N')}, K = {r.get('K')}", "cda_mean": f"{r.get('grid')}×{r.get('grid')} grid",
                "par": f"{r.get('batch')}×{r.get('classes')}×{r.get('size')}×{r.get('size')}"}.get(r["op"], "")  # fmt: skip
        dtype = r.get("dtype", "torch.float32").removeprefix("torch.")
        rows.append([r["op"], size, dtype, fmt(1e3 * r["seconds"]), fmt(r.get("peak_mib"))])
    return table(["op", "size", "input dtype", "ms", "peak MiB"], rows, 3) + "\n\n" + provenance(entry)


def machine_text(data: Result) -> str:
    m = data.get("machine")
    if not m:
        return "*No run of `python benchmarks/run_all.py` yet.*"
    native = "AVX2 C JS kernel" if m.get("js_native") else "torch JS kernel (no native build)"
    lines = [f"Measured with `python benchmarks/run_all.py` on {m['cpu']} ({m['cores']} cores), torch "
             f"{m['torch'].split('+')[0]}, Python {m['python']}, {native}, GPU: {m.get('gpu') or 'none'}; "
             f"{(data.get('date') or '')[:10]}, commit `{data.get('git_commit', '?')}`."]  # fmt: skip
    old = sorted({f"{describe_machine(e.get('machine'))} ({(e.get('date') or '?')[:10]})"
                  for e in data.get("benchmarks", {}).values() if e.get("status") == "not re-measured"})  # fmt: skip
    if old:
        lines.append("Figures not re-measured in that run (marked under their tables) come from: " + "; ".join(old) + ".")
    return " ".join(lines)


def summary_table(data: Result) -> str:
    rows = []
    for bench in BENCHMARKS:
        e = data.get("benchmarks", {}).get(bench.name, {})
        status = e.get("status", "never measured") + (f": {e['reason'][:100]}" if e.get("reason") else "")
        wall = fmt(e.get("wall_s")) if e.get("status") == "measured" else "—"
        rows.append([f"`{bench.name}`", bench.what, status, (e.get("date") or "—")[:10], wall])
    full = data.get("full_run")
    total = f"Last whole run of the suite: {fmt(full['seconds'])} s ({full['date'][:10]})." if full else ""
    return table(["benchmark", "measures", "status", "date", "wall (s)"], rows, 4) + ("\n\n" + total if total else "")


def sections(data: Result) -> dict[str, str]:
    """Every marker name and its rendered Markdown."""
    return {
        "machine": machine_text(data), "summary": summary_table(data),
        "js_kernel": js_table(data, full=False), "js_kernel_full": js_table(data, full=True),
        "cam_pipeline": cam_table(data), "cam_sweep": cam_sweep_table(data), "cam_rss": rss_text(data),
        "memory": memory_table(data), "startup": startup_table(data),
        "data_loading": ms_table(data, "data_loading", "stages_ms", _data_extra),
        "data_loading_full": ms_table(data, "data_loading", "stages_ms", _data_extra_full),
        "sbe": ms_table(data, "sbe", "median_ms_per_image"), "evaluate": ms_table(data, "evaluate", "median_ms"),
        "pseudo_label_batch": batch_table(data), "train_step": step_table(data),
        "train_step_weclip": weclip_step_table(data), "distributed": distributed_table(data),
        "baselines": baselines_table(data), "fuzz": fuzz_table(data), "gpu": gpu_table(data),
    }  # fmt: skip


# ----------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _legend_below(fig: Any, ax: Any) -> None:
    """One legend under the axes: inside, it would hide points wherever the lines go."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)


def _save(fig: Any, path: Path, legend: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0.12 if legend else 0, 1, 1))  # room for the legend below
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version string: same data, same bytes
    _pyplot().close(fig)
    return path


def _loglog(ax: Any, xs: list[float], ys: list[float | None], **style: Any) -> None:
    """Plot the positive points only (log axes)."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
    if pts:
        ax.loglog(*zip(*pts), marker="o", **style)


_JS_LINES = (("cdclip", "cdclip (default backend)", "-"), ("cdclip-torch", "torch blocks", "-"), ("scipy", "scipy cdist", "-"),
             ("naive", "naive N×N×K", "-"), ("kernel-log-floor", "kernel-log floor", "--"), ("log-floor", "torch.log floor", ":"))  # fmt: skip


def plot_js(data: Result, images: Path) -> list[Path]:
    entry = _entry(data, "js_kernel")
    if entry is None:
        return []
    plt = _pyplot()
    rows = _js_rows(entry["result"])
    ks = sorted({k for _, k, _ in rows})
    paths = []
    for what, key, ylabel, lines in (
        ("time", "seconds", "seconds", _JS_LINES),
        ("memory", "peak_mib_over_inputs", "peak MiB over the inputs", _JS_LINES[:4]),
    ):
        fig, axes = plt.subplots(1, len(ks), figsize=(4 * len(ks), 3.6), sharey=True, squeeze=False)
        for ax, k in zip(axes[0], ks):
            mine = sorted((n, r) for n, kk, r in rows if kk == k)
            ns = [n for n, _ in mine]
            for method, label, style in lines:
                _loglog(ax, ns, [r.get(method, {}).get(key) for _, r in mine], label=label, linestyle=style)
            if what == "memory":  # the N×N float32 output: what any kernel must hold
                _loglog(ax, ns, [n * n * 4 / 2**20 for n in ns], label="output N×N", linestyle="--", color="grey")
            ax.set_title(f"K = {k}")
            ax.set_xticks(ns, [str(n) for n in ns])  # the measured sizes, not crowded 10^x minor labels
            ax.minorticks_off()
            ax.set_xlabel("N (patches)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel(ylabel)
        _legend_below(fig, axes[0][0])
        fig.suptitle(f"pairwise JS kernel, {what} — {describe_machine(entry.get('machine'))}", fontsize=10)
        paths.append(_save(fig, images / f"js_kernel_{what}.png", legend=True))
    return paths


def plot_cams(data: Result, images: Path) -> list[Path]:
    entry = _entry(data, "cam_pipeline")
    sweep = entry["result"].get("sweep") if entry else None
    if not sweep:
        return []
    plt = _pyplot()
    pixels = [math.prod(int(v) for v in r["input"].split("x")) for r in sweep]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in _STAGES:
        _loglog(ax, pixels, [r[key] for r in sweep], label=label.split(" (")[0])
    _loglog(ax, pixels, [r["clip_forward_s"] + r["gradcam_s"] + r["cda_refine_s"] for r in sweep], label="total with CDA",
            color="black", linestyle="--")  # fmt: skip
    ax.set_xlabel("CLIP input pixels (H × W)")
    ax.set_ylabel("seconds per image")
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(fig, ax)
    ax.set_title(f"CAM pipeline per image\n{describe_machine(entry.get('machine'))}", fontsize=10)
    paths = [_save(fig, images / "cams_time_by_size.png", legend=True)]
    memory = _entry(data, "memory")
    if memory:
        runs = [r for r in memory["result"]["runs"] if r["outcome"] == "ok"]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        px = [r["pixels"] for r in runs]
        _loglog(ax, px, [r["peak_rss_mb"] for r in runs], label="peak RSS (MB)")
        _loglog(ax, px, [r["seconds"] for r in runs], label="whole run (s)")
        ax.set_xlabel("image pixels")
        ax.grid(True, which="both", alpha=0.3)
        _legend_below(fig, ax)
        ax.set_title(f"cdclip cams on one image\n{describe_machine(memory.get('machine'))}", fontsize=10)
        paths.append(_save(fig, images / "cams_memory_by_size.png", legend=True))
    return paths


def render(data: Result, pages: Iterable[Path], images: Path) -> list[Path]:
    """Rewrite the marker sections of ``pages`` and draw the plots; the files written."""
    rendered = sections(data)
    written = [p for p in pages if p.is_file() and render_file(p, rendered)]
    return written + plot_js(data, images) + plot_cams(data, images)


# ----------------------------------------------------------------------------- main
def _selected(only: str | None, quick: bool) -> list[Bench]:
    if not only:
        left_out = [b.name for b in BENCHMARKS if quick and not b.in_quick]
        if left_out:
            print(f"--quick leaves out {', '.join(left_out)} (name them in --only to run their quick variant)")
        return [b for b in BENCHMARKS if b.name not in left_out]
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"run_all: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]


def unlisted_scripts() -> list[str]:
    """Scripts in benchmarks/ that the suite does not run (should be none)."""
    listed = {b.script for b in BENCHMARKS}
    return sorted(p.name for p in HERE.glob("*.py") if not p.name.startswith("_") and p.stem not in NOT_BENCHMARKS
                  and p.name not in listed)  # fmt: skip


def run_suite(benches: list[Bench], previous: Result | None, quick: bool, timeout: float, wait_idle: float = 0) -> Result:
    """Run (or carry over) each benchmark; the new all.json contents."""
    start = time.perf_counter()
    data: Result = {"schema": SCHEMA, "date": _now(), "git_commit": git_commit(), "machine": machine(), "quick": quick,
                    "benchmarks": dict((previous or {}).get("benchmarks", {}))}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cdclip-bench-") as tmp:
        for bench in benches:
            reason = bench.needs()
            if reason:
                print(f"{bench.name:<20} skipped: {reason}", flush=True)
                data["benchmarks"][bench.name] = carried(previous, bench, reason)
                continue
            if wait_idle > 0:
                waited = wait_until_idle(wait_idle)
                print(f"{bench.name:<20} waited {waited:.0f} s for a quiet machine ({others_running()} other runnable)", flush=True)
            print(f"{bench.name:<20} running: {command_text(bench, quick)}", flush=True)
            entry = run_bench(bench, quick, Path(tmp), timeout)
            print(f"{'':<20} {entry['status']} in {entry['wall_s']:.0f} s" + (f": {entry['reason']}" if "reason" in entry else ""), flush=True)
            if entry["status"] == "failed":
                print(entry["stderr_tail"], file=sys.stderr)
                entry = {**carried(previous, bench, f"failed: {entry['reason']}"), "last_attempt": entry["date"],
                         "last_error": entry["stderr_tail"]}  # fmt: skip
            else:
                entry["machine"], entry["git_commit"] = data["machine"], data["git_commit"]
            data["benchmarks"][bench.name] = entry
    data["benchmarks"] = {b.name: data["benchmarks"][b.name] for b in BENCHMARKS if b.name in data["benchmarks"]}
    data["run_seconds"] = time.perf_counter() - start
    # the suite's duration is that of a whole run; an --only run keeps the last whole run's
    whole = len(benches) == len(BENCHMARKS) and not quick
    data["full_run"] = {"seconds": data["run_seconds"], "date": data["date"]} if whole else (previous or {}).get("full_run")
    return data


def _baseline() -> tuple[Result | None, str]:
    committed = committed_all()
    if committed is not None:
        return committed, "HEAD:benchmarks/results/all.json"
    legacy = legacy_all()
    return (legacy if legacy["benchmarks"] else None), "the per-script results committed in benchmarks/results/ (no all.json yet)"


def _list() -> int:
    for bench in BENCHMARKS:
        reason = bench.needs()
        print(f"{bench.name:<20} {'can run' if reason is None else 'skipped: ' + reason:<60} {command_text(bench, False)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated benchmark names (the others are kept as they are)")
    parser.add_argument("--quick", action="store_true", help="small sizes; writes all.quick.json, renders nothing")
    parser.add_argument("--render-only", action="store_true", help="render tables and plots from the existing JSON")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and whether they can run here")
    parser.add_argument("--results", type=Path, default=None, help="the JSON file (default: results/all.json)")
    parser.add_argument("--pages", type=Path, nargs="*", default=list(PAGES), help="Markdown files to render")
    parser.add_argument("--images", type=Path, default=IMAGES, help="folder of the plots")
    parser.add_argument("--threshold", type=float, default=0.2, help="flag medians that moved more than this (0.2 = ±20%%)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds before one benchmark is stopped")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each benchmark, wait up to this long until nothing else runs (shared machines)")
    args = parser.parse_args(argv)
    if args.list:
        return _list()
    path = args.results or (RESULTS / "all.quick.json" if args.quick else ALL_JSON)
    if args.render_only:
        data = load_json(path)
        if data is None:
            raise SystemExit(f"run_all: {path} not found; run the suite first")
        for written in render(data, args.pages, args.images):
            print(f"wrote {written}")
        return 0
    missing = unlisted_scripts()
    if missing:
        print(f"run_all: not in the suite (add them to BENCHMARKS): {', '.join(missing)}", file=sys.stderr)
    benches = _selected(args.only, args.quick)
    data = run_suite(benches, load_json(path) or committed_all(), args.quick, args.timeout, args.wait_idle)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"\nwrote {path} ({data['run_seconds']:.0f} s)")
    if not args.quick:
        for written in render(data, args.pages, args.images):
            print(f"wrote {written}")
    baseline, source = _baseline()
    print("\n" + regression_report(data, baseline, args.threshold, source))
    failed = [b.name for b in benches if data["benchmarks"][b.name].get("reason", "").startswith("failed")]
    if failed:
        print(f"run_all: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
