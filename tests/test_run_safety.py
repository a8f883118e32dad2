"""Issue 10: outputs tied to their settings, locked folders, atomic and verified outputs, seeds,
SIGTERM checkpoints, config validation and clean CLI errors (in-process, tiny random models)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_driver import tiny_cams_argv, tiny_train_argv

from cdclip.atomic import atomic_path, remove_stale_temps
from cdclip.cli import main
from cdclip.fingerprint import weights_fingerprint
from cdclip.folder_lock import FolderLockedError, folder_lock
from cdclip.pipeline.config import TrainConfig, apply_overrides


def _cams(voc_root: Path, out: Path, *extra: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(tiny_cams_argv(voc_root, out, *extra))


def _names(voc_root: Path) -> list[str]:
    return (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()


# ---------------------------------------------------------------------------- cams: settings
def test_cams_rerun_with_other_settings_refuses_and_names_the_key(voc_root, tmp_path, tiny_backbones, capsys):
    out = tmp_path / "run"
    assert _cams(voc_root, out, "--refine", "cda") == 0
    before = {p.name: p.read_bytes() for p in (out / "pseudo").iterdir()}
    capsys.readouterr()
    assert _cams(voc_root, out, "--refine", "none") == 2
    err = capsys.readouterr().err
    assert "model.refine" in err and "'mean' (stored) -> 'none' (now)" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in (out / "pseudo").iterdir()} == before  # nothing touched
    assert json.loads((out / "settings.json").read_text())["model"]["refine"] == "mean"

    assert _cams(voc_root, out, "--refine", "none", "--overwrite") == 0
    assert f"{len(before)} computed, 0 skipped" in capsys.readouterr().out
    assert json.loads((out / "settings.json").read_text())["model"]["refine"] == "none"
    assert json.loads((out / "metrics.json").read_text())["refine"] == "none"


def test_cams_rerun_with_other_weights_refuses(voc_root, tmp_path, tiny_backbones, capsys):
    out = tmp_path / "run"
    assert _cams(voc_root, out, "--seed", "0") == 0
    capsys.readouterr()
    assert _cams(voc_root, out, "--seed", "1") == 2  # another random initialisation: other weights
    assert "weights.fingerprint" in capsys.readouterr().err


def test_cams_seed_makes_random_backbones_reproducible(voc_root, tmp_path, tiny_backbones):
    assert _cams(voc_root, tmp_path / "a", "--seed", "3") == 0
    torch.rand(1000)  # whatever the global RNG did before, the seeded run is the same
    assert _cams(voc_root, tmp_path / "b", "--seed", "3") == 0
    assert _cams(voc_root, tmp_path / "c", "--seed", "4") == 0
    for name in _names(voc_root):
        a, b, c = (np.load(tmp_path / run / "cams" / f"{name}.npz") for run in "abc")
        np.testing.assert_array_equal(a["cams"], b["cams"])
        assert not np.array_equal(a["cams"], c["cams"])


# ---------------------------------------------------------------------------- cams: crash safety
def test_cams_recomputes_truncated_and_empty_outputs(voc_root, tmp_path, tiny_backbones, capsys):
    out = tmp_path / "run"
    assert _cams(voc_root, out) == 0
    names = _names(voc_root)
    reference = (out / "pseudo" / f"{names[0]}.png").read_bytes()
    (out / "pseudo" / f"{names[0]}.png").write_bytes(reference[: len(reference) // 2])  # truncated
    (out / "overlay" / f"{names[1]}.png").write_bytes(b"")  # a 0-byte overlay
    npz = (out / "cams" / f"{names[2]}.npz").read_bytes()
    (out / "cams" / f"{names[2]}.npz").write_bytes(npz[:-40])  # a torn archive
    capsys.readouterr()
    assert _cams(voc_root, out) == 0
    assert f"3 computed, {len(names) - 3} skipped" in capsys.readouterr().out
    assert (out / "pseudo" / f"{names[0]}.png").read_bytes() == reference
    assert (out / "overlay" / f"{names[1]}.png").stat().st_size > 0
    np.load(out / "cams" / f"{names[2]}.npz")["cams"]  # readable again


def test_cams_removes_stale_temporaries_and_writes_a_class_table(voc_root, tmp_path, tiny_backbones):
    out = tmp_path / "run"
    (out / "pseudo").mkdir(parents=True)
    stale = out / "pseudo" / ".2007_000032.tmp12345.png"
    stale.write_bytes(b"half")
    assert _cams(voc_root, out) == 0
    assert not stale.exists()
    table = json.loads((out / "classes.json").read_text())
    assert table["0"] == "background" and table["15"] == "person" and len(table) == 21


def test_a_second_cams_run_into_a_locked_folder_exits_with_a_message(voc_root, tmp_path, tiny_backbones, capsys):
    out = tmp_path / "run"
    with folder_lock(out, ".cams.lock"):
        assert _cams(voc_root, out) == 2
    assert "in use by another run" in capsys.readouterr().err
    assert not (out / "pseudo").exists()


def test_folder_lock_is_exclusive_and_released():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        with folder_lock(tmp):
            with pytest.raises(FolderLockedError, match="in use"), folder_lock(tmp):
                pass
        with folder_lock(tmp):  # released at the end of the block
            pass


def test_atomic_path_leaves_the_old_file_on_error_and_no_temporary(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    (tmp_path / ".b.tmp99.npz").write_bytes(b"x")
    (tmp_path / ".hidden").write_bytes(b"x")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".b.tmp99.npz"]
    assert (tmp_path / ".hidden").exists()


# ---------------------------------------------------------------------------- cams: inputs
def test_cams_refuses_repeated_class_names(voc_root, tmp_path, tiny_backbones, capsys):
    argv = ["cams", "--images", str(voc_root / "JPEGImages"), "--classes", "cat,dgo,cat", "--out",
            str(tmp_path / "o"), "--backbone", "tinyclip-cli:x"]  # fmt: skip
    assert main(argv) == 2
    assert "cat more than once" in capsys.readouterr().err


def test_cams_counts_images_without_classes(voc_root, tmp_path, tiny_backbones, capsys):
    table = np.load(voc_root / "cls_labels_onehot.npy", allow_pickle=True).item()
    name = _names(voc_root)[0]
    table[name] = np.zeros_like(table[name])
    np.save(tmp_path / "labels.npy", table)
    assert _cams(voc_root, tmp_path / "o", "--label-file", str(tmp_path / "labels.npy")) == 0
    assert "1 image(s) have no class" in capsys.readouterr().err


# ---------------------------------------------------------------------------- train
def _train(argv: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


def test_train_never_overwrites_a_run_silently(voc_root, tmp_path, tiny_backbones, capsys):
    out = tmp_path / "run"
    assert _train(tiny_train_argv(voc_root, out)) == 0
    ckpt = (out / "checkpoint.pt").read_bytes()
    log = (out / "log.jsonl").read_text()
    capsys.readouterr()
    assert _train(tiny_train_argv(voc_root, out)) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == ckpt and (out / "log.jsonl").read_text() == log
    assert _train(tiny_train_argv(voc_root, out, "--overwrite")) == 0
    events = [json.loads(line).get("event") for line in (out / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1  # the old log went with the old run


def test_train_resume_with_another_config_names_the_differences(voc_root, tmp_path, tiny_backbones, capsys):
    out = tmp_path / "run"
    assert _train(tiny_train_argv(voc_root, out)) == 0
    capsys.readouterr()
    assert _train(tiny_train_argv(voc_root, out, "--resume", "--set", "optim.lr=1e-3")) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "0.0002 (stored) -> 0.001 (now)" in err
    # a different random backbone (another seed) is refused by its fingerprint
    assert _train(tiny_train_argv(voc_root, out, "--resume", "--seed", "5")) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_build_model_seeds_random_backbones(tiny_backbones):
    cfg = TrainConfig.from_dict({"model": {"clip": "tinyclip-cli:x", "dino": None, "decoder_dim": 32,
                                           "decoder_heads": 4, "decoder_layers": 1}, "device": "cpu"})  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cdclip.pipeline.model import build_model

        a = build_model(cfg)
        torch.rand(100)
        b = build_model(cfg)
        c = build_model(cfg.replace(seed=1))
    assert weights_fingerprint(a.backbone) == weights_fingerprint(b.backbone)
    assert weights_fingerprint(a.backbone) != weights_fingerprint(c.backbone)


def test_sigterm_writes_a_checkpoint_and_stops(voc_root, tmp_path, tiny_backbones):
    from cdclip.pipeline.model import build_model
    from cdclip.pipeline.trainer import Trainer, TrainingStopped, build_dataset

    cfg = TrainConfig.from_dict({
        "model": {"clip": "tinyclip-cli:x", "dino": None, "decoder_dim": 32, "decoder_heads": 4,
                  "decoder_layers": 1, "par_iters": 1},
        "data": {"root": str(voc_root), "crop_size": 64, "batch_size": 2, "num_workers": 0},
        "loss": {"lambda_be": 0.0}, "iters": 6, "checkpoint_every": 1000, "device": "cpu",
        "out_dir": str(tmp_path), "progress": False,
    })  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(cfg, build_model(cfg), build_dataset(cfg.data))
    real_step = trainer.step

    def step(batch):
        out = real_step(batch)
        if trainer.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    trainer.step = step
    with pytest.raises(TrainingStopped) as info:
        trainer.train()
    assert info.value.iteration == 2 and info.value.signum == signal.SIGTERM
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was restored
    events = [json.loads(line).get("event") for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events[-1] == "terminated"


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("optim.lr", float("nan"), "optim.lr: expected a finite number"),
        ("model.cda_sigma", 0, "model.cda_sigma: expected a positive number"),
        ("model.par_dilations", [], "model.par_dilations"),
        ("loss.ignore_index", 3, "loss.ignore_index: 3 is a class id"),
        ("model.decoder_heads", 0, "decoder_heads"),
        ("seed", -1, "seed"),
    ],
)
def test_config_rejects_values_that_fail_later(key, value, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), {key: value})


def test_config_reads_yaml_numbers_written_as_text():
    import yaml

    data = yaml.safe_load("optim:\n  lr: 1e-4\nmodel:\n  cda_sigma: 5e-2\n")
    assert isinstance(data["optim"]["lr"], str)  # PyYAML's YAML 1.1 reading
    cfg = TrainConfig.from_dict(data)
    assert cfg.optim.lr == 1e-4 and cfg.model.cda_sigma == 0.05
    with pytest.raises(TypeError, match=r"optim\.lr: expected a number"):
        TrainConfig.from_dict({"optim": {"lr": "fast"}})


def test_config_device_defaults_to_what_is_available():
    assert TrainConfig().device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_train_print_config_rejects_bad_values_before_building(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  lr: .nan\n")
    assert main(["train", "--config", str(config), "--print-config"]) == 2
    assert "optim.lr: expected a finite number" in capsys.readouterr().err


# ---------------------------------------------------------------------------- eval
def _eval(voc_root: Path, checkpoint: Path, out: Path, *extra: str) -> int:
    argv = ["eval", "--voc", str(voc_root), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu",
            "--long-side", "64", "--scales", "1", "--no-flip", "--workers", "0", "--quiet", *extra]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(argv)


def test_eval_rebuilds_the_training_clip_and_refuses_stale_predictions(voc_root, tmp_path, tiny_backbones, capsys):
    run = tmp_path / "run"
    assert _train(tiny_train_argv(voc_root, run)) == 0
    out = tmp_path / "eval"
    assert _eval(voc_root, run / "checkpoint.pt", out) == 0  # the same random CLIP, from the run's seed
    capsys.readouterr()
    assert _eval(voc_root, run / "checkpoint.pt", out, "--seed", "9") == 2  # another random CLIP
    assert "trained on other CLIP weights" in capsys.readouterr().err
    assert _train(tiny_train_argv(voc_root, run, "--overwrite", "--set", "optim.lr=1e-3")) == 0  # a new decoder
    capsys.readouterr()
    assert _eval(voc_root, run / "checkpoint.pt", out) == 2
    assert "decoder" in capsys.readouterr().err
    assert _eval(voc_root, run / "checkpoint.pt", out, "--overwrite") == 0


# ---------------------------------------------------------------------------- labels
def test_nan_labels_are_refused_not_read_as_absent(tmp_path):
    from cdclip.cam.multiscale import check_labels
    from cdclip.data._io import DataFileError, load_label_dict

    with pytest.raises(ValueError, match="NaN"):
        check_labels(torch.tensor([[1.0, float("nan")]]), 1)
    np.save(tmp_path / "labels.npy", {"a": np.array([1.0, np.nan], dtype=np.float32)})
    with pytest.raises(DataFileError, match="NaN"):
        load_label_dict(tmp_path / "labels.npy", 2)


def test_train_reports_images_without_classes(voc_root, tmp_path, tiny_backbones, capsys):
    table = np.load(voc_root / "cls_labels_onehot.npy", allow_pickle=True).item()
    for name in (voc_root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()[:2]:
        table[name] = np.zeros_like(table[name])
    np.save(tmp_path / "labels.npy", table)
    argv = tiny_train_argv(voc_root, tmp_path / "run", "--set", f"data.label_file={tmp_path / 'labels.npy'}", "--iters", "1")
    assert _train(argv) == 0
    assert "2 image(s) have no class" in capsys.readouterr().err


def test_cams_refuses_a_folder_of_outputs_without_settings(voc_root, tmp_path, tiny_backbones, capsys):
    out = tmp_path / "run"
    assert _cams(voc_root, out) == 0
    (out / "settings.json").unlink()  # outputs of unknown settings (an older cdclip, another tool)
    capsys.readouterr()
    assert _cams(voc_root, out) == 2
    assert "no settings.json" in capsys.readouterr().err
    assert _cams(voc_root, out, "--overwrite") == 0


def test_cams_max_side_bounds_the_work_and_the_overlay(tmp_path, tiny_backbones):
    from PIL import Image

    from cdclip.data.palette import load_label_png

    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(folder / "a.png")
    argv = ["cams", "--images", str(folder), "--classes", "cat", "--out", str(tmp_path / "o"), "--backbone",
            "tinyclip-cli:x", "--long-side", "64", "--max-side", "96", "--par-iters", "1"]  # fmt: skip
    assert main(argv) == 0
    assert load_label_png(tmp_path / "o" / "pseudo" / "a.png").shape == (200, 300)  # full size
    with Image.open(tmp_path / "o" / "overlay" / "a.png") as overlay:
        assert overlay.size == (2 * 96, 64)  # drawn at the working size
    assert json.loads((tmp_path / "o" / "settings.json").read_text())["model"]["cam_max_side"] == 96


def test_cams_skip_bad_on_a_dataset_skips_and_counts(voc_root, tmp_path, tiny_backbones, capsys):
    import shutil

    root = tmp_path / "VOC2012"
    shutil.copytree(voc_root, root)
    name = _names(voc_root)[0]
    (root / "JPEGImages" / f"{name}.jpg").write_bytes(b"")  # a zero-byte image
    assert _cams(root, tmp_path / "o") == 2
    assert "empty" in capsys.readouterr().err
    assert _cams(root, tmp_path / "o", "--skip-bad") == 0
    captured = capsys.readouterr()
    assert f"1 unreadable image(s) skipped: {name}" in captured.err
    assert f"{len(_names(voc_root)) - 1} computed" in captured.out


def test_eval_skip_bad_scores_each_good_image_once(voc_root, tmp_path, capsys):
    import shutil

    from cdclip.data.palette import load_label_png, save_label_png

    root = tmp_path / "VOC2012"
    shutil.copytree(voc_root, root)
    names = _names(voc_root)
    preds = tmp_path / "preds"
    for name in names:  # perfect predictions: the ground truth itself
        save_label_png(preds / f"{name}.png", load_label_png(root / "SegmentationClass" / f"{name}.png"))
    (root / "JPEGImages" / f"{names[0]}.jpg").write_bytes(b"")
    argv = ["eval", "--voc", str(root), "--pred-dir", str(preds), "--out", str(tmp_path / "e"), "--quiet",
            "--void-pred", "skip"]
    assert main(argv) == 2  # without --skip-bad a broken image is an error
    capsys.readouterr()
    assert main([*argv, "--skip-bad"]) == 0
    assert f"1 unreadable image(s) skipped: {names[0]}" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["images"] == len(names) - 1 and metrics["miou"] == 1.0  # the next image is not scored twice


def test_cams_rerun_with_every_output_present_builds_no_model(voc_root, tmp_path, tiny_backbones, monkeypatch, capsys):
    from cdclip.commands import cams as cams_cmd

    out = tmp_path / "run"
    assert _cams(voc_root, out) == 0
    builds = []
    real = cams_cmd._build_labeler
    monkeypatch.setattr(cams_cmd, "_build_labeler", lambda *a, **k: builds.append(1) or real(*a, **k))
    capsys.readouterr()
    assert _cams(voc_root, out) == 0
    assert not builds and "nothing to do" in capsys.readouterr().out  # the completion record answers
    (out / "completed.json").unlink()  # a folder finished without the record (an older cdclip)
    assert _cams(voc_root, out) == 0
    assert not builds and "0 computed" in capsys.readouterr().out  # nothing to compute: no model
    name = _names(voc_root)[0]
    (out / "pseudo" / f"{name}.png").unlink()
    assert _cams(voc_root, out) == 0 and builds == [1]  # one image to compute: built once, checked
    stored = json.loads((out / "settings.json").read_text())
    stored["weights"]["fingerprint"] = "0" * 16  # as if the weights behind the same source had changed
    (out / "settings.json").write_text(json.dumps(stored))
    (out / "pseudo" / f"{name}.png").unlink()
    capsys.readouterr()
    assert _cams(voc_root, out) == 2
    assert "the weights changed" in capsys.readouterr().err


# ---------------------------------------------------------------------------- cams: completion record
def test_cams_rerun_of_a_finished_command_is_answered_from_its_record(voc_root, tmp_path, tiny_backbones,
                                                                      monkeypatch, capsys):  # fmt: skip
    from cdclip.commands import cams as cams_cmd

    out = tmp_path / "run"
    assert _cams(voc_root, out) == 0
    first = capsys.readouterr().out
    monkeypatch.setattr(cams_cmd, "_process", lambda *a, **k: pytest.fail("the record should have answered"))
    assert _cams(voc_root, out) == 0
    again = capsys.readouterr().out
    assert "nothing to do" in again
    assert first.strip().splitlines()[-1] in again  # the stored score line is printed again


def test_cams_replay_needs_no_torch(voc_root, tmp_path, tiny_backbones):
    out = tmp_path / "run"
    assert _cams(voc_root, out) == 0
    code = ("import sys; from cdclip.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; raise SystemExit(rc)")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code, *tiny_cams_argv(voc_root, out)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "nothing to do" in res.stdout


def _touch_split(root: Path, out: Path) -> None:
    split = root / "ImageSets" / "Segmentation" / "val.txt"
    os.utime(split, ns=(split.stat().st_atime_ns, split.stat().st_mtime_ns + 10**9))


def _remove_overlay(root: Path, out: Path) -> None:
    next((out / "overlay").iterdir()).unlink()


def _rewrite_metrics(root: Path, out: Path) -> None:
    (out / "metrics.json").write_text((out / "metrics.json").read_text() + " ")


@pytest.mark.parametrize("change", [_touch_split, _remove_overlay, _rewrite_metrics])
def test_cams_record_is_not_used_after_a_change_to_inputs_or_outputs(voc_root, tmp_path, tiny_backbones,
                                                                     change, capsys):  # fmt: skip
    root = tmp_path / "VOC2012"
    shutil.copytree(voc_root, root)
    out = tmp_path / "run"
    assert _cams(root, out) == 0
    change(root, out)
    capsys.readouterr()
    assert _cams(root, out) == 0
    text = capsys.readouterr().out
    assert "nothing to do" not in text and "skipped (existing)" in text  # the full check ran
    assert (out / "completed.json").is_file()  # and recorded the folder as it is now


def test_cams_record_is_not_used_for_other_flags_or_overwrite(voc_root, tmp_path, tiny_backbones, capsys):
    out = tmp_path / "run"
    assert _cams(voc_root, out) == 0
    capsys.readouterr()
    assert _cams(voc_root, out, "--par-iters", "2") == 2  # another setting: the full path refuses it
    assert "model.par_iters" in capsys.readouterr().err
    assert _cams(voc_root, out, "--overwrite") == 0
    assert "3 computed" in capsys.readouterr().out


def test_cams_record_is_removed_before_a_run_changes_the_folder(voc_root, tmp_path, tiny_backbones, monkeypatch):
    from cdclip.commands import cams as cams_cmd

    out = tmp_path / "run"
    assert _cams(voc_root, out) == 0
    assert (out / "completed.json").is_file()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cams_cmd, "_write", crash)
    assert _cams(voc_root, out, "--overwrite") == 130  # interrupted while writing the first image
    assert not (out / "completed.json").exists()  # a half-rewritten folder is never replayed
