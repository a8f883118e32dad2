"""``cdclip cams`` on the real VOC sample with a random-weight open_clip model (files, not accuracy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from oracle_backbone import tiny_openclip_backbone
from PIL import Image

from cdclip.cam.multiscale import scaled_size
from cdclip.cli import main
from cdclip.data.palette import load_label_png, voc_palette
from cdclip.registry import registry

PREFIX = "tinyclip-test"


@pytest.fixture
def tiny_prefix():
    def factory(name: str, **kwargs):
        return tiny_openclip_backbone(image_size=64, layers=2)

    registry.register(PREFIX, factory, kind="backbone", prefix=True, override=True)
    yield f"{PREFIX}:any"
    registry.unregister(PREFIX)


def _argv(voc_root, out, backbone, *extra):
    return ["cams", "--voc", str(voc_root), "--split", "val", "--out", str(out), "--backbone", backbone,
            "--long-side", "128", "--par-iters", "2", *extra]  # fmt: skip


@pytest.mark.slow
def test_cams_on_voc_sample_writes_files_and_resumes(voc_root, tmp_path, tiny_prefix, capsys):
    out = tmp_path / "run"
    assert main(_argv(voc_root, out, tiny_prefix, "--refine", "cda")) == 0
    names = (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    labels = np.load(voc_root / "cls_labels_onehot.npy", allow_pickle=True).item()
    for name in names:
        with Image.open(voc_root / "JPEGImages" / f"{name}.jpg") as im:
            w, h = im.size
        data = np.load(out / "cams" / f"{name}.npz")
        keys = np.flatnonzero(labels[name]) + 1
        np.testing.assert_array_equal(data["keys"], keys)
        gh, gw = (s // 16 for s in scaled_size(h, w, 128 / max(h, w), 16))  # long side 128, 16 px patches
        assert data["cams"].shape == data["refined"].shape == (len(keys), gh, gw)
        assert data["cams"].dtype == np.float16 and tuple(data["size"]) == (h, w)
        with Image.open(out / "pseudo" / f"{name}.png") as png:
            assert png.mode == "P" and png.size == (w, h)
            np.testing.assert_array_equal(np.asarray(png.getpalette()).reshape(-1, 3)[:256], voc_palette())
        label = load_label_png(out / "pseudo" / f"{name}.png")
        assert set(np.unique(label)) <= {0, *keys.tolist()}
        with Image.open(out / "overlay" / f"{name}.png") as ov:
            assert ov.size == (2 * w, h) and ov.mode == "RGB"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == len(names) and 0.0 <= metrics["miou"] <= 1.0
    assert "pseudo-label mIoU" in capsys.readouterr().out

    # resumption: nothing is recomputed, the score is re-read from the PNGs
    stamp = (out / "pseudo" / f"{names[0]}.png").stat().st_mtime_ns
    (out / "cams" / f"{names[1]}.npz").unlink()
    assert main(_argv(voc_root, out, tiny_prefix, "--refine", "cda")) == 0
    text = capsys.readouterr().out
    assert f"1 computed, {len(names) - 1} skipped" in text
    assert (out / "pseudo" / f"{names[0]}.png").stat().st_mtime_ns == stamp
    assert json.loads((out / "metrics.json").read_text())["miou"] == pytest.approx(metrics["miou"])
    assert main(_argv(voc_root, out, tiny_prefix, "--overwrite", "--refine", "attn", "--cam", "patch_text")) == 0
    assert f"{len(names)} computed, 0 skipped" in capsys.readouterr().out


def test_cams_on_an_image_folder_with_class_list(voc_root, tmp_path, tiny_prefix, capsys):
    out = tmp_path / "folder"
    argv = ["cams", "--images", str(voc_root / "JPEGImages"), "--classes", "cat,dog", "--out", str(out),
            "--backbone", tiny_prefix, "--long-side", "64", "--par-iters", "0", "--limit", "2",
            "--refine", "none", "--no-overlay"]  # fmt: skip
    assert main(argv) == 0
    pngs = sorted((out / "pseudo").glob("*.png"))
    assert len(pngs) == 2 and not (out / "overlay").exists() and not (out / "metrics.json").exists()
    assert set(np.unique(load_label_png(pngs[0]))) <= {0, 1, 2}
    assert np.load(out / "cams" / f"{pngs[0].stem}.npz")["keys"].tolist() == [1, 2]
    # a folder without class names is a clear error, not a traceback
    assert main(["cams", "--images", str(voc_root / "JPEGImages"), "--out", str(out)]) == 2
    assert "--classes" in capsys.readouterr().err
