"""Palette PNGs: the VOC colours are the dataset's own, and labels read back to the same indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cdclip.data.palette import (
    coco_palette,
    colorize,
    heatmap,
    load_label_png,
    overlay,
    save_label_png,
    voc_palette,
)


def test_voc_palette_equals_the_palette_in_the_dataset_pngs(voc_root):
    with Image.open(voc_root / "SegmentationClassAug" / "2011_000003.png") as image:
        shipped = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)[:256]
    assert np.array_equal(voc_palette(256), shipped)
    assert voc_palette(21).shape == (21, 3)
    assert len({tuple(c) for c in voc_palette(256)}) == 256  # every index has its own colour


def test_coco_palette_has_81_distinct_colours_and_white_void():
    pal = coco_palette()
    assert len({tuple(c) for c in pal[:81]}) == 81
    assert tuple(pal[255]) == (255, 255, 255)


def test_real_mask_round_trip(voc_root, tmp_path):
    path = voc_root / "SegmentationClassAug" / "2007_004189.png"
    mask = np.array(Image.open(path))
    saved = save_label_png(tmp_path / "sub" / "mask.png", torch.from_numpy(mask.astype(np.int64)))
    back = load_label_png(saved)
    assert back.dtype == np.int64 and np.array_equal(back, mask)
    with Image.open(saved) as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image.convert("RGB")), colorize(mask))  # PIL agrees on colours


@pytest.mark.parametrize("palette", ["voc", "coco"])
def test_round_trip_all_values(tmp_path, palette):
    values = np.concatenate([np.arange(81), [255]]).reshape(1, -1).repeat(3, axis=0)
    path = save_label_png(tmp_path / f"{palette}.png", values, palette=palette)
    assert np.array_equal(load_label_png(path), values)
    # an RGB rendering maps back through the palette too
    rgb_path = tmp_path / f"{palette}_rgb.png"
    Image.fromarray(colorize(values, palette)).save(rgb_path)
    assert np.array_equal(load_label_png(rgb_path, palette=palette), values)


def test_unknown_rgb_colour_raises(tmp_path):
    path = tmp_path / "odd.png"
    Image.fromarray(np.full((2, 2, 3), (1, 2, 3), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match="not in the palette"):
        load_label_png(path)


def test_bad_labels_raise(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        save_label_png(tmp_path / "x.png", np.array([[0, 300]]))
    with pytest.raises(TypeError, match="integer"):
        save_label_png(tmp_path / "x.png", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        save_label_png(tmp_path / "x.png", np.zeros((2, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="palette"):
        colorize(np.zeros((2, 2), dtype=np.int64), palette="ade")


def test_overlay_and_heatmap():
    image = np.full((4, 5, 3), 100, dtype=np.uint8)
    label = np.zeros((4, 5), dtype=np.int64)
    label[0, 0] = 15
    label[1, 1] = 255
    out = overlay(image, label, alpha=0.5)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert np.array_equal(out[1, 1], image[1, 1])  # void keeps the image
    expected = np.round(0.5 * 100 + 0.5 * voc_palette()[15].astype(float)).astype(np.uint8)
    assert np.array_equal(out[0, 0], expected)
    cam = np.linspace(0, 1, 20).reshape(4, 5)
    hot = heatmap(cam)
    assert hot.dtype == np.uint8 and tuple(hot[0, 0]) == (0, 0, 128) and tuple(hot[-1, -1]) == (128, 0, 0)
    assert overlay(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(cam).float()).shape == (4, 5, 3)
