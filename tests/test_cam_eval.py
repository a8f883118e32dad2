"""CAM evaluation over background thresholds (``cdclip eval --cams``): CLIP-ES and cdclip files, an
independent bincount oracle, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdclip.cli import main
from cdclip.data.voc import VOCSegmentation
from cdclip.pipeline.cam_eval import evaluate_cams, load_cam_file


@pytest.fixture
def val(voc_root):
    return VOCSegmentation(voc_root, "val")


def _present(mask: np.ndarray) -> np.ndarray:
    return np.array([c for c in np.unique(mask) if 0 < c < 255], dtype=np.int64)


def test_clip_es_files_of_the_ground_truth_score_one(val, tmp_path):
    for i, name in enumerate(val.names):
        mask = val.load(i)["mask"].numpy()
        classes = _present(mask)
        maps = np.stack([(mask == c).astype(np.float16) for c in classes])
        np.save(tmp_path / f"{name}.npy", {"keys": classes - 1, "attn_highres": maps, "highres": maps * 0})
    result = evaluate_cams(tmp_path, val, val.class_names, thresholds=(0.2, 0.5), progress=False)
    assert result["miou"] == [1.0, 1.0] and result["images"] == len(val.names)
    initial = evaluate_cams(tmp_path, val, val.class_names, thresholds=(0.5,), which="cams", progress=False)
    assert initial["miou"][0] < 1.0  # all-zero initial maps: background everywhere


def _oracle_miou(preds: list[np.ndarray], masks: list[np.ndarray], classes: int) -> float:
    hist = np.zeros((classes, classes), dtype=np.int64)
    for pred, mask in zip(preds, masks, strict=True):
        keep = mask != 255
        hist += np.bincount(classes * mask[keep] + pred[keep], minlength=classes**2).reshape(classes, classes)
    union = hist.sum(0) + hist.sum(1) - np.diag(hist)
    valid = union > 0
    return float((np.diag(hist)[valid] / union[valid]).mean())


def test_cdclip_files_match_an_independent_bincount(val, tmp_path):
    rng = np.random.default_rng(0)
    preds, masks = [], []
    for i, name in enumerate(val.names):
        mask = val.load(i)["mask"].numpy().astype(np.int64)
        keys = _present(mask)
        grid = rng.random((len(keys), 7, 9)).astype(np.float16)
        np.savez_compressed(tmp_path / f"{name}.npz", keys=keys, cams=grid, refined=grid, size=np.array(mask.shape))
        up = F.interpolate(torch.from_numpy(grid.astype(np.float32))[None], size=mask.shape, mode="bilinear",
                           align_corners=False)[0].numpy()  # fmt: skip
        stack = np.concatenate([np.full((1, *mask.shape), 0.3, dtype=np.float32), up])
        preds.append(np.concatenate([[0], keys])[stack.argmax(0)])
        masks.append(mask)
    result = evaluate_cams(tmp_path, val, val.class_names, thresholds=(0.3,), progress=False)
    assert result["miou"][0] == pytest.approx(_oracle_miou(preds, masks, 21), abs=1e-12)
    keys, maps = load_cam_file(tmp_path / f"{val.names[0]}.npz")
    assert maps.shape[-2:] == masks[0].shape


def test_cli_eval_cams_prints_the_sweep_and_writes_json(voc_root, val, tmp_path, capsys):
    cams = tmp_path / "run" / "cams"
    cams.mkdir(parents=True)
    for i, name in enumerate(val.names):
        mask = val.load(i)["mask"].numpy()
        classes = _present(mask)
        np.save(cams / f"{name}.npy", {"keys": classes - 1, "attn_highres": np.stack([(mask == c) * 0.6 for c in classes])})
    assert main(["eval", "--voc", str(voc_root), "--cams", str(cams), "--thresholds", "0.5", "0.7", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "best: mIoU 100.00 at background threshold 0.50" in out
    record = json.loads((tmp_path / "run" / "cam_eval.json").read_text())
    assert record["best_threshold"] == 0.5 and record["miou"][1] < 1.0  # 0.6 < 0.7: all background


def test_cams_format_clip_es_writes_what_clip_es_reads_and_eval_scores_it(voc_root, tmp_path, tiny_backbones):
    import warnings

    from cli_driver import tiny_cams_argv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(tiny_cams_argv(voc_root, tmp_path / "ours")) == 0
        assert main(tiny_cams_argv(voc_root, tmp_path / "clipes", "--format", "clip-es")) == 0
    val = VOCSegmentation(voc_root, "val")
    for i, name in enumerate(val.names):
        record = np.load(tmp_path / "clipes" / "cams" / f"{name}.npy", allow_pickle=True).item()
        ours = np.load(tmp_path / "ours" / "cams" / f"{name}.npz")
        np.testing.assert_array_equal(record["keys"] + 1, ours["keys"])  # 0-based, as CLIP-ES
        h, w = val.load(i)["mask"].shape
        assert record["attn_highres"].shape == (len(ours["keys"]), h, w) and record["highres"].dtype == np.float16
    scores = [evaluate_cams(tmp_path / d / "cams", val, val.class_names, thresholds=(0.4,), progress=False)
              for d in ("ours", "clipes")]  # fmt: skip
    assert scores[0]["miou"][0] == pytest.approx(scores[1]["miou"][0], abs=0.02)  # float16 at image size


def test_crf_at_the_best_threshold_equals_the_crf_applied_by_hand(val, tmp_path):
    pytest.importorskip("pydensecrf")
    from cdclip.refine.crf import dense_crf

    rng = np.random.default_rng(1)
    preds, masks = [], []
    for i, name in enumerate(val.names):
        item = val.load(i)
        mask = item["mask"].numpy().astype(np.int64)
        classes = _present(mask)
        maps = np.stack([(mask == c) * rng.uniform(0.3, 1.0) for c in classes]).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", {"keys": classes - 1, "attn_highres": maps})
        stack = np.concatenate([np.full((1, *mask.shape), 0.5, dtype=np.float32), maps])
        probs = np.full(stack.shape, 0.3 / (len(stack) - 1), dtype=np.float32)
        np.put_along_axis(probs, stack.argmax(0)[None], 0.7, axis=0)
        refined = dense_crf(item["image"].numpy().transpose(1, 2, 0).copy(), probs)
        preds.append(np.concatenate([[0], classes])[refined.argmax(0)])
        masks.append(mask)
    result = evaluate_cams(tmp_path, val, val.class_names, thresholds=(0.5,), progress=False, crf=True)
    assert result["crf_miou"] == pytest.approx(_oracle_miou(preds, masks, 21), abs=1e-12)


def test_cams_format_weclip_writes_its_dicts_and_eval_reads_them(voc_root, tmp_path, tiny_backbones):
    import warnings

    from cli_driver import tiny_cams_argv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(tiny_cams_argv(voc_root, tmp_path / "clipes", "--format", "clip-es")) == 0
        assert main(tiny_cams_argv(voc_root, tmp_path / "weclip", "--format", "weclip")) == 0
    val = VOCSegmentation(voc_root, "val")
    for name in val.names:
        weclip = np.load(tmp_path / "weclip" / "cams" / f"{name}.npy", allow_pickle=True).item()
        clipes = np.load(tmp_path / "clipes" / "cams" / f"{name}.npy", allow_pickle=True).item()
        assert sorted(weclip) == ["cam", "keys"] and weclip["cam"].dtype == np.float32
        np.testing.assert_array_equal(weclip["keys"], clipes["keys"])
        np.testing.assert_array_equal(weclip["cam"], clipes["attn_highres"].astype(np.float32))
    scores = [evaluate_cams(tmp_path / d / "cams", val, val.class_names, thresholds=(0.4,), progress=False)
              for d in ("weclip", "clipes")]  # fmt: skip
    assert scores[0]["miou"] == scores[1]["miou"]
