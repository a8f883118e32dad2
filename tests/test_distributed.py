"""Scale-out (issue 11): ``cams --shard K/N`` and ``cams``/``eval`` under torchrun with 2 Gloo processes
give exactly the files and the score of one process (tiny random backbones, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from cli_driver import tiny_cams_argv

from cdclip.cli import main
from cdclip.distributed import Shard, parse_shard

DRIVER = Path(__file__).with_name("cli_driver.py")


def _cams(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


def _outputs(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*")
            if p.is_file() and p.parts[-2] in ("cams", "pseudo", "overlay")}  # fmt: skip


def _assert_same_outputs(a: Path, b: Path) -> None:
    fa, fb = _outputs(a), _outputs(b)
    assert sorted(fa) == sorted(fb) and fa
    for name, path in fa.items():
        if name.endswith(".npz"):
            x, y = np.load(path), np.load(fb[name])
            assert all(np.array_equal(x[k], y[k]) for k in x.files), name
        else:
            assert path.read_bytes() == fb[name].read_bytes(), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["miou"] == mb["miou"] and ma["images"] == mb["images"]


def test_parse_shard_and_disjoint_selection():
    assert parse_shard("1/3") == Shard(1, 3)
    items = list(range(10))
    parts = [Shard(k, 3).select(items) for k in range(3)]
    assert sorted(i for part in parts for i in part) == items and parts[0] == [0, 3, 6, 9]
    for bad in ("3/3", "1", "-1/2", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_cams_shards_write_the_files_and_score_of_one_process(voc_root, tmp_path, tiny_backbones, capsys):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert _cams(tiny_cams_argv(voc_root, single, split="train_aug")) == 0
    assert _cams(tiny_cams_argv(voc_root, sharded, "--shard", "1/2", split="train_aug")) == 0
    assert not (sharded / "metrics.json").exists()  # shard 0 has not run yet
    with pytest.raises(ValueError, match=r"shards \[0\] of 2"):
        from cdclip.commands.cams import _merge_shards

        _merge_shards(sharded)
    assert _cams(tiny_cams_argv(voc_root, sharded, "--shard", "0/2", split="train_aug")) == 0  # the last merges
    _assert_same_outputs(single, sharded)
    (sharded / "metrics.json").unlink()
    assert main(["cams", "--out", str(sharded), "--merge"]) == 0
    assert json.loads((sharded / "metrics.json").read_text())["miou"] == json.loads(
        (single / "metrics.json").read_text())["miou"]  # fmt: skip


def _run(argv: list[str], nproc: int = 0) -> subprocess.CompletedProcess:
    """The CLI in a subprocess (one torch thread each, as under torchrun), or ``nproc`` of them under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CDCLIP_NO_PLUGINS": "1"}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc else []
    done = subprocess.run([sys.executable, *launcher, str(DRIVER), *argv], env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_cams_under_torchrun_matches_one_process(voc_root, tmp_path):
    single, ranks = tmp_path / "single", tmp_path / "ranks"
    _run(tiny_cams_argv(voc_root, single, split="train_aug"))  # same thread count as each rank
    done = _run(tiny_cams_argv(voc_root, ranks, "--device", "cpu", split="train_aug"), nproc=2)
    _assert_same_outputs(single, ranks)
    assert done.stdout.count("pseudo-label mIoU") == 1  # written and printed once, by rank 0


@pytest.mark.slow
def test_eval_under_torchrun_gives_the_single_process_miou(voc_root, tmp_path):
    from cli_driver import tiny_train_argv

    run = tmp_path / "run"
    _run(tiny_train_argv(voc_root, run, "--set", "loss.lambda_be=0"))
    argv = ["eval", "--voc", str(voc_root), "--checkpoint", str(run / "checkpoint.pt"), "--device", "cpu",
            "--long-side", "64", "--scales", "1", "0.75", "--workers", "0", "--quiet"]  # fmt: skip
    _run([*argv, "--out", str(tmp_path / "one")])
    done = _run([*argv, "--out", str(tmp_path / "two")], nproc=2)
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert one["images"] == two["images"] == len(_names(voc_root)) and one["miou"] == two["miou"]
    assert one["iou"] == two["iou"] and done.stdout.count("predictions in") == 1  # printed by rank 0 only
    for png in (tmp_path / "one" / "predictions").iterdir():
        assert png.read_bytes() == (tmp_path / "two" / "predictions" / png.name).read_bytes()


def _names(voc_root: Path) -> list[str]:
    return (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()


# ---------------------------------------------------------------------------- training
def _decoder(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["decoder"]


@pytest.mark.slow
def test_two_processes_of_batch_1_train_as_one_process_of_batch_2(voc_root, tmp_path):
    import torch
    from cli_driver import tiny_train_argv

    extra = ("--iters", "3", "--set", "model.decoder_dropout=0")  # dropout draws differ by process
    _run(tiny_train_argv(voc_root, tmp_path / "one", *extra, "--batch-size", "2"))
    done = _run(tiny_train_argv(voc_root, tmp_path / "two", *extra, "--batch-size", "1"), nproc=2)
    assert "2 process(es) x batch 1" in done.stdout
    a, b = _decoder(tmp_path / "one" / "checkpoint.pt"), _decoder(tmp_path / "two" / "checkpoint.pt")
    assert a.keys() == b.keys()
    for key in a:  # the global-batch loss means make the two runs the same computation
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    # (the two processes' decoders are checked equal, by fingerprint, at the end of every run)


@pytest.mark.slow
def test_a_killed_distributed_run_resumes_to_the_uninterrupted_weights(voc_root, tmp_path):
    import signal
    import time

    import torch
    from cli_driver import tiny_train_argv

    extra = ("--iters", "6", "--batch-size", "1", "--set", "checkpoint_every=2")
    _run(tiny_train_argv(voc_root, tmp_path / "full", *extra), nproc=2)
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CDCLIP_NO_PLUGINS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(DRIVER), *tiny_train_argv(voc_root, killed, *extra)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    log = killed / "log.jsonl"
    while not (log.is_file() and any('"iter": 3,' in line for line in log.read_text().splitlines())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    _run(tiny_train_argv(voc_root, killed, *extra, "--resume"), nproc=2)
    a, b = _decoder(tmp_path / "full" / "checkpoint.pt"), _decoder(killed / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # every process's dropout stream was restored too


@pytest.mark.slow
def test_sigterm_stops_every_process_at_one_iteration_with_a_checkpoint(voc_root, tmp_path):
    import signal
    import time

    import torch
    from cli_driver import tiny_train_argv

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CDCLIP_NO_PLUGINS": "1"}
    argv = tiny_train_argv(voc_root, tmp_path, "--iters", "60", "--batch-size", "1", "--set", "checkpoint_every=1000")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(DRIVER), *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 180
    log = tmp_path / "log.jsonl"
    while not (log.is_file() and any('"iter": 2,' in line for line in log.read_text().splitlines())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler sends to the job
    proc.communicate(timeout=120)
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert 2 <= state["iteration"] < 60 and len(state["rng_ranks"]) == 2
    events = [json.loads(line).get("event") for line in log.read_text().splitlines()]
    assert events[-1] == "terminated"


@pytest.mark.slow
def test_resume_needs_the_same_global_batch(voc_root, tmp_path):
    from cli_driver import tiny_train_argv

    _run(tiny_train_argv(voc_root, tmp_path, "--iters", "2", "--batch-size", "1"), nproc=2)  # global batch 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CDCLIP_NO_PLUGINS": "1"}
    other = subprocess.run([sys.executable, str(DRIVER), *tiny_train_argv(voc_root, tmp_path, "--iters", "2",
                            "--batch-size", "1", "--resume")], env=env, capture_output=True, text=True)  # fmt: skip
    assert other.returncode == 2 and "global batch" in other.stderr and "2 (stored) -> 1 (now)" in other.stderr
    same = _run(tiny_train_argv(voc_root, tmp_path, "--iters", "2", "--batch-size", "2", "--resume"))
    assert "done at iteration 2" in same.stdout  # 1 process x 2 = the stored global batch: accepted
