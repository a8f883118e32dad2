"""``cdclip refine``: CDA on CAMs another method saved (CLIP-ES dicts, plain all-class arrays)."""

from __future__ import annotations

import json
import warnings

import numpy as np
from cli_driver import tiny_cams_argv

from cdclip.cli import main
from cdclip.data.palette import load_label_png
from cdclip.data.voc import VOCSegmentation


def _refine(cams, voc_root, out, *extra):
    return main(["refine", "--cams", str(cams), "--voc", str(voc_root), "--split", "val", "--out", str(out), *extra])


def test_refine_clip_es_files_writes_labels_scores_and_resumes(voc_root, tmp_path, tiny_backbones, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(tiny_cams_argv(voc_root, tmp_path / "clipes", "--format", "clip-es")) == 0
    out = tmp_path / "refined"
    assert _refine(tmp_path / "clipes" / "cams", voc_root, out) == 0
    val = VOCSegmentation(voc_root, "val")
    for i, name in enumerate(val.names):
        label = load_label_png(out / "pseudo" / f"{name}.png")
        mask = val.load(i)["mask"].numpy()
        present = {c for c in np.unique(mask) if 0 < c < 255}
        assert label.shape == mask.shape and set(np.unique(label)) <= {0, *present}
        data = np.load(out / "refined" / f"{name}.npz")
        assert data["refined"].shape[1:] == (-(-mask.shape[0] // 16), -(-mask.shape[1] // 16))
    assert 0 <= json.loads((out / "metrics.json").read_text())["miou"] <= 1
    capsys.readouterr()
    assert _refine(tmp_path / "clipes" / "cams", voc_root, out) == 0
    assert f"0 computed, {len(val.names)} skipped" in capsys.readouterr().out
    assert _refine(tmp_path / "clipes" / "cams", voc_root, out, "--temperature", "0.5") == 2  # other settings


def test_refine_plain_arrays_of_all_classes(voc_root, tmp_path):
    val = VOCSegmentation(voc_root, "val")
    rng = np.random.default_rng(0)
    for i, name in enumerate(val.names):
        h, w = val.load(i)["mask"].shape
        np.save(tmp_path / f"{name}.npy", rng.random((20, h // 16, w // 16)).astype(np.float32))
    assert _refine(tmp_path, voc_root, tmp_path / "out") == 0
    for name in val.names:
        labels = val.labels_of(name)
        keys = np.load(tmp_path / "out" / "refined" / f"{name}.npz")["keys"]
        np.testing.assert_array_equal(keys, np.flatnonzero(labels) + 1)  # the image's classes picked


def test_refine_with_clip_distributions_and_attention(voc_root, tmp_path, tiny_backbones, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(tiny_cams_argv(voc_root, tmp_path / "clipes", "--format", "clip-es")) == 0
        cams = tmp_path / "clipes" / "cams"
        assert _refine(cams, voc_root, tmp_path / "nope", "--fusion", "attn") == 2  # attention needs CLIP
        assert "needs CLIP attention" in capsys.readouterr().err
        clip = ("--backbone", "tinyclip-cli:x", "--weights", "none", "--device", "cpu")
        assert _refine(cams, voc_root, tmp_path / "attn", *clip, "--fusion", "attn") == 0
        assert _refine(cams, voc_root, tmp_path / "mean", *clip) == 0
    name = VOCSegmentation(voc_root, "val").names[0]
    attn, mean = (np.load(tmp_path / d / "refined" / f"{name}.npz")["refined"] for d in ("attn", "mean"))
    assert attn.shape == mean.shape and not np.array_equal(attn, mean)  # CDA changes the attention baseline
    settings = json.loads((tmp_path / "mean" / "settings.json").read_text())
    assert settings["clip"]["fingerprint"] and settings["clip"]["fusion"] is None


def test_saved_maps_are_normalised_per_map_not_per_row():
    import torch

    from cdclip.commands.refine import grid_normalized

    rows = torch.arange(8.0)[:, None].expand(8, 8)  # constant along each row, rising downwards
    maps = torch.stack([rows, 3 * rows + 1])
    out = grid_normalized(maps, (128, 128), 16)
    for m in out:  # each map keeps its gradient: 0 on the top row, ~1 on the bottom (per-row scaling gave 0)
        assert float(m[0].max()) == 0.0 and float(m[-1].min()) > 0.99
        assert bool((m[1:, 0] > m[:-1, 0]).all())
