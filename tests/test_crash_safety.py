"""Real ``cdclip cams`` and ``cdclip train`` processes killed with SIGKILL at several points, then
resumed: every output is complete and equal to an uninterrupted run's, and no temporary is left.
A SIGTERM to ``cdclip train`` leaves a checkpoint and exit status 143."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_driver import tiny_cams_argv, tiny_train_argv

from cdclip.atomic import is_temp_name

DRIVER = Path(__file__).with_name("cli_driver.py")
pytestmark = pytest.mark.slow


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CDCLIP_NO_PLUGINS": "1"}
    return subprocess.Popen([sys.executable, str(DRIVER), *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip


def _finish(argv: list[str]) -> None:
    proc = _start(argv)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()[-2000:]


def _kill_when(argv: list[str], ready, sig: int = signal.SIGKILL, timeout: float = 120.0) -> subprocess.Popen:
    """Start the command and send ``sig`` as soon as ``ready()`` holds."""
    proc = _start(argv)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before the kill point: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(0.005)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    return proc


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}


def _no_temporaries(root: Path) -> None:
    left = [name for name in _files(root) if is_temp_name(Path(name).name)]
    assert not left, left


def test_cams_killed_at_several_points_resumes_to_the_uninterrupted_outputs(voc_root, tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    argv = lambda out: tiny_cams_argv(voc_root, out, split="train_aug")  # noqa: E731
    _finish(argv(reference))
    done = lambda: sum(1 for p in (killed / "pseudo").glob("*.png") if not p.name.startswith("."))  # noqa: E731
    for count in (1, 3, 5):  # kill while the next image is being computed or written
        proc = _kill_when(argv(killed), lambda count=count: (killed / "pseudo").is_dir() and done() >= count)
        assert proc.returncode == -signal.SIGKILL
    _finish(argv(killed))

    _no_temporaries(killed)
    ref_files, got_files = _files(reference), _files(killed)
    assert sorted(ref_files) == sorted(got_files)
    for name, path in ref_files.items():
        if name.endswith(".npz"):
            a, b = np.load(path), np.load(got_files[name])
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), name
        elif name.endswith("completed.json"):  # file times differ by nature: same request, same outputs
            a, b = json.loads(path.read_text()), json.loads(got_files[name].read_text())
            assert a["request"] == b["request"] and sorted(a["outputs"]) == sorted(b["outputs"]), name
        elif name.endswith((".png", ".json")):
            assert path.read_bytes() == got_files[name].read_bytes(), name


def _decoder(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["decoder"]


def _last_iter(log: Path) -> int:
    if not log.is_file():
        return 0
    iters = [json.loads(line).get("iter", 0) for line in log.read_text().splitlines() if line.strip().endswith("}")]
    return max(iters, default=0)


def test_train_killed_at_several_points_resumes_bit_exactly(voc_root, tmp_path):
    extra = ("--iters", "6", "--set", "checkpoint_every=2", "--set", "loss.lambda_be=0")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _finish(tiny_train_argv(voc_root, reference, *extra))
    first = _kill_when(tiny_train_argv(voc_root, killed, *extra), lambda: _last_iter(killed / "log.jsonl") >= 3)
    assert first.returncode == -signal.SIGKILL
    resumed = tiny_train_argv(voc_root, killed, *extra, "--resume")
    second = _kill_when(resumed, lambda: _last_iter(killed / "log.jsonl") >= 5)
    assert second.returncode == -signal.SIGKILL
    _finish(resumed)

    _no_temporaries(killed)
    a, b = _decoder(reference / "checkpoint.pt"), _decoder(killed / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_sigterm_leaves_a_checkpoint_and_exit_143(voc_root, tmp_path):
    extra = ("--iters", "50", "--set", "checkpoint_every=1000", "--set", "loss.lambda_be=0")
    proc = _kill_when(tiny_train_argv(voc_root, tmp_path, *extra), lambda: _last_iter(tmp_path / "log.jsonl") >= 2,
                      sig=signal.SIGTERM)  # fmt: skip
    assert proc.returncode == 143
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert 2 <= state["iteration"] < 50
    events = [json.loads(line).get("event") for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events[-1] == "terminated"
    _no_temporaries(tmp_path)
