"""Every example in examples/ (of demo.py, its first part) runs offline on random weights and does what it says.

Each example runs in a subprocess, from a temporary working directory, with the hub offline and a
timeout; the assertions read what it prints and writes. The plugin package is installed into a
temporary folder (no network, no build isolation, nothing installed into this environment) and
used from a subprocess that has that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
FLOAT = r"(-?\d+\.\d+|nan|inf)"


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # conftest set the private native-kernel cache: every example reuses one build
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0", TQDM_DISABLE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", **extra)  # fmt: skip
    # one thread: the examples' tensors are small, and on a busy 2-core machine a second OpenMP
    # thread spends more time waiting at barriers than it saves (3x slower wall time measured here)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("CDCLIP_NO_PLUGINS", None)
    return env


def _run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``python *args``; return its stdout, or fail with the tail of both streams."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited with {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


# --------------------------------------------------------------------------- gradcam_cda.py
@pytest.mark.slow
def test_gradcam_cda_refines_every_method_on_both_models(tmp_path):
    out = _run([str(EXAMPLES / "gradcam_cda.py"), "--out", "pictures"], tmp_path, timeout=300)
    rows = json.loads((tmp_path / "pictures" / "summary.json").read_text())
    pairs = {(r["model"], r["method"]) for r in rows}
    methods = {"GradCAM", "GradCAM++", "ScoreCAM", "LayerCAM"}
    assert pairs == {("test_vit", m) for m in methods} | {("resnet50", m) for m in methods - {"ScoreCAM"}}
    assert re.search(r"resnet50\s+ScoreCAM\s+skipped", out)
    for row in rows:
        side = 14 if row["model"] == "resnet50" else 7  # stride-8 grid of 112 px; the ViT's 16-px patches
        assert row["cams"] == [20, 112, 112] and row["probs"] == [1, side * side, 20]
        assert row["present"] == ["cow", "person"] and row["refined"] == [1, 2, side, side]
        expected = {"CDA replace", "CDA mean"} if row["model"] == "test_vit" else {"CDA replace"}
        assert set(row["range"]) == expected
        for low, high in row["range"].values():  # min-max normalised maps
            assert 0.0 <= low <= high <= 1.0 and high > 0.9
        values = [v for pair in row["in_out"].values() for v in pair]
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), row
        line = next(x for x in out.splitlines() if x.startswith(row["model"]) and f" {row['method']} " in x)
        assert f"refined (1, 2, {side}, {side})" in line
    with Image.open(tmp_path / "pictures" / "gradcam_cda.png") as picture:
        # a row for the image and one per (model, method); ViT rows: CAM, replace, mean for 2 classes
        assert picture.size == (6 * 116, (1 + len(rows)) * 116)


# --------------------------------------------------------------------------- refine_saved_cams.py
@pytest.fixture(scope="module")
def saved_cams_run(tmp_path_factory) -> tuple[str, Path]:
    cwd = tmp_path_factory.mktemp("refine_saved_cams")
    return _run([str(EXAMPLES / "refine_saved_cams.py"), "--work", "work"], cwd, timeout=180), cwd / "work"


@pytest.mark.slow
def test_refine_saved_cams_writes_both_formats_and_refines_them(saved_cams_run):
    out, work = saved_cams_run
    names = ["2007_004189", "2007_006449"]  # the first two ids of the sample's val split
    record = np.load(work / "cams" / f"{names[0]}.npy", allow_pickle=True).item()
    assert set(record) == {"keys", "highres", "attn_highres"} and list(record["keys"]) == [11]  # dog, 0-based
    assert record["highres"].shape == (1, 333, 500)
    plain = np.load(work / "cams" / f"{names[1]}.npy")
    assert plain.shape == (20, 24, 32) and plain.dtype == np.float32
    assert "refined (1, 21, 32)" in out and "refined (1, 24, 32)" in out  # the Python API
    for name in names:  # the command line
        refined = np.load(work / "refined" / "refined" / f"{name}.npz")["refined"].astype(np.float32)
        assert refined.ndim == 3 and np.isfinite(refined).all() and 0.0 <= refined.min() <= refined.max() <= 1.0
        assert (work / "refined" / "pseudo" / f"{name}.png").is_file()
    miou = json.loads((work / "refined" / "metrics.json").read_text())["miou"]
    assert 0.0 <= miou <= 1.0
    assert len(re.findall(r"cdclip refine and the Python API (agree|DIFFER): max difference", out)) == 2


@pytest.mark.slow
def test_refine_saved_cams_cli_agrees_with_the_python_api(saved_cams_run):
    out, _ = saved_cams_run
    assert len(re.findall(r"cdclip refine and the Python API agree", out)) == 2, out


# --------------------------------------------------------------------------- custom_training_loop.py
@pytest.mark.slow
def test_custom_training_loop_losses_are_finite_and_fall(tmp_path):
    iters = 6
    out = _run([str(EXAMPLES / "custom_training_loop.py"), "--iters", str(iters)], tmp_path, timeout=180)
    pattern = re.compile(rf"iter\s+(\d+)/{iters}\s+L_seg {FLOAT}\s+L_be {FLOAT}\s+total {FLOAT}\s+band {FLOAT}%")
    steps = [m.groups() for m in map(pattern.search, out.splitlines()) if m]
    assert [int(s[0]) for s in steps] == list(range(1, iters + 1)), out
    seg, be, total, band = (np.array([float(s[i]) for s in steps]) for i in range(1, 5))
    assert np.isfinite(seg).all() and np.isfinite(be).all() and np.isfinite(total).all()
    np.testing.assert_allclose(total, seg + be, atol=2e-4)  # lambda_be = 1, values printed to 4 decimals
    assert (band > 0).all() and (be > 0).all()  # the band is never empty on these two images
    assert total[-1] < 0.8 * total[0]


# --------------------------------------------------------------------------- plugin_package/
def _require_offline_build_backend() -> None:
    """``--no-build-isolation`` builds with this environment's setuptools (and, before 70.1, wheel)."""
    setuptools = pytest.importorskip("setuptools", reason="building the plugin offline needs setuptools here")
    major, minor = (int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2])
    if (major, minor) < (70, 1):
        pytest.importorskip("wheel", reason="setuptools < 70.1 needs wheel to build without isolation")


PLUGIN_CHECK = """
import json, torch, cdclip
from cdclip.cli import main
affinity = cdclip.create("bhattacharyya_affinity", gamma=2.0)
probs = torch.softmax(torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
a = affinity(probs)
print(json.dumps({"class": type(affinity).__module__, "shape": list(a.shape),
                  "diag": a.diagonal(dim1=1, dim2=2).tolist(), "min": float(a.min()), "max": float(a.max())}))
main(["list", "--kind", "affinity"])
"""


@pytest.mark.slow
def test_plugin_package_installs_offline_and_registers_its_affinity(tmp_path):
    _require_offline_build_backend()
    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info into its source folder
    shutil.copytree(EXAMPLES / "plugin_package", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    _run(["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir", "--quiet",
          "--target", str(site), str(source)], tmp_path, timeout=180)  # fmt: skip
    assert (site / "cdclip_bhattacharyya" / "__init__.py").is_file()
    with pytest.raises(importlib.metadata.PackageNotFoundError):  # this environment is unchanged
        importlib.metadata.distribution("cdclip-bhattacharyya")

    pythonpath = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    out = _run(["-c", PLUGIN_CHECK], tmp_path, timeout=120, env=_env(PYTHONPATH=pythonpath))
    first, *listing = out.splitlines()
    result = json.loads(first)
    assert result["class"] == "cdclip_bhattacharyya" and result["shape"] == [1, 6, 6]
    np.testing.assert_allclose(result["diag"], [[1.0] * 6], atol=1e-5)  # equal distributions: affinity 1
    assert 0.0 <= result["min"] <= result["max"] <= 1.0
    row = next(line for line in listing if line.startswith("bhattacharyya_affinity"))
    assert row.split()[1:4] == ["affinity", "plugin", "bhattacharyya"]  # kind and origin: the entry point
    assert any(line.startswith("cda_affinity") for line in listing)  # the built-ins are still there


# --------------------------------------------------------------------------- demo.py (part 1)
@pytest.mark.slow
def test_demo_scene_part_lights_the_second_part_with_cda(tmp_path):
    # part 2 is `cdclip cams` on a random ViT-B/16: too slow here, and the command has test_cli_cams.py
    code = f"import sys; from pathlib import Path; sys.path.insert(0, {str(EXAMPLES)!r}); import demo; demo.scene_demo(Path('out'))"
    out = _run(["-c", code], tmp_path, timeout=120)
    means = {}
    for line in out.splitlines():
        match = re.match(rf"\s+(.+?)\s+{FLOAT} / {FLOAT} / {FLOAT}$", line)
        if match:
            means[match.group(1)] = [float(v) for v in match.groups()[1:]]
    part_b = {name: values[1] for name, values in means.items()}
    assert part_b["CDA mean"] > part_b["attn (baseline)"] + 0.1, means
    assert means["CDA mean"][2] < 0.2  # the background stays dark
    assert (tmp_path / "out" / "cda_scene.png").is_file()
