"""Every command-line mistake is one message on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdclip.cli import main


def _argv(case: str, voc_root, coco_root, tmp_path) -> tuple[list[str], str]:
    """(argv, a phrase the message must contain)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    table = np.load(voc_root / "cls_labels_onehot.npy", allow_pickle=True).item()
    table.pop((voc_root / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()[0])
    np.save(tmp_path / "partial.npy", table)
    train = ["train", "--weights", "none", "--dino-weights", "none", "--out", str(tmp_path / "run")]
    cases = {
        "train-data-root": ([*train, "--data-root", "/nonexistent"], "--data-root"),
        "train-split": ([*train, "--data-root", str(voc_root), "--split", "trian", "--device", "cpu"], "trian"),
        "train-label-missing-id": (
            [*train, "--data-root", str(voc_root), "--device", "cpu", "--set", f"data.label_file={tmp_path / 'partial.npy'}"],
            "--skip-bad",
        ),
        "cams-label-file": (["cams", "--voc", str(voc_root), "--out", str(tmp_path / "o"), "--label-file",
                             "/missing.npy"], "/missing.npy"),
        "cams-out-is-a-file": (["cams", "--voc", str(voc_root), "--out", str(a_file)], "not a folder"),
        "cams-no-input": (["cams", "--out", str(tmp_path / "o")], "--images"),
        "eval-mask-dir": (["eval", "--voc", str(voc_root), "--pred-dir", str(tmp_path), "--mask-dir", "/missing"],
                          "/missing"),
        "coco-masks-annotations": (["coco-masks", "--root", str(tmp_path), "--split", "val2017"], "annotation"),
    }
    if not torch.cuda.is_available():
        cases["train-device-cuda"] = ([*train, "--data-root", str(voc_root), "--device", "cuda"], "no usable CUDA")
        cases["cams-device-cuda"] = (["cams", "--voc", str(voc_root), "--out", str(tmp_path / "o"), "--device",
                                      "cuda"], "no usable CUDA")
    if case not in cases:
        pytest.skip(f"{case}: needs a machine without CUDA")
    return cases[case]


CASES = ["train-data-root", "train-split", "train-label-missing-id", "train-device-cuda", "cams-label-file",
         "cams-out-is-a-file", "cams-no-input", "cams-device-cuda", "eval-mask-dir", "coco-masks-annotations"]


@pytest.mark.parametrize("case", CASES)
def test_cli_error_is_a_message_and_exit_2(case, voc_root, coco_root, tmp_path, capsys):
    argv, phrase = _argv(case, voc_root, coco_root, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cdclip {argv[0]}: ") and phrase in err
    assert "Traceback" not in err and "skip_bad=True" not in err


def test_an_unexpected_error_says_internal_and_how_to_see_the_traceback(monkeypatch, capsys):
    from cdclip.commands import list_components

    def broken(args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(list_components, "run", broken)
    assert main(["list"]) == 1
    assert "internal error (ZeroDivisionError: boom)" in capsys.readouterr().err
    monkeypatch.setenv("CDCLIP_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        main(["list"])
