"""Joint transforms keep image and mask aligned, pad masks with void, normalise with CLIP stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cdclip.data import VOCSegmentation
from cdclip.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    RandomRescale,
    denormalize,
    eval_transform,
    normalize,
    train_transform,
)


def _block_sample(height: int = 200, width: int = 300, void: bool = True) -> dict:
    """Image whose red channel encodes the mask: class k is drawn with red = 20·k."""
    mask = torch.zeros(height, width, dtype=torch.int64)
    mask[:100, :150] = 1
    mask[100:, 150:] = 7
    mask[:100, 150:] = 12
    if void:
        mask[150:, :60] = 255
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0] = (mask % 255 * 20).clamp(max=250).to(torch.uint8)
    image[1] = 50
    return {
        "image": tv_tensors.Image(image),
        "mask": tv_tensors.Mask(mask),
        "labels": torch.tensor([1.0, 0.0]),
        "name": "blocks",
    }


def _red_class(image: torch.Tensor) -> torch.Tensor:
    return denormalize(image)[0].long() // 20


def test_flip_and_crop_keep_image_and_mask_aligned_exactly():
    torch.manual_seed(3)
    transform = train_transform(crop_size=128, scale_range=(1.0, 1.0), flip_prob=0.5)
    for _ in range(10):
        out = transform(_block_sample())
        valid = out["mask"] != 255
        assert torch.equal(_red_class(out["image"])[valid], out["mask"][valid])
    assert out["image"].shape == (3, 128, 128) and out["mask"].shape == (128, 128)


def test_flip_happens_about_half_the_time_and_moves_both():
    torch.manual_seed(4)
    transform = train_transform(crop_size=200, scale_range=(1.0, 1.0), flip_prob=0.5)
    flipped = []
    for _ in range(12):
        out = transform(_block_sample(200, 200))  # crop = whole image: only the flip changes it
        assert torch.equal(_red_class(out["image"])[out["mask"] != 255], out["mask"][out["mask"] != 255])
        flipped.append(int(out["mask"][0, 0]) == 12)  # class 12 sits top-right before a flip
    assert 0 < sum(flipped) < len(flipped)


def test_rescale_keeps_alignment_and_mask_values():
    torch.manual_seed(0)
    transform = train_transform(crop_size=160)
    for _ in range(8):
        out = transform(_block_sample())
        values = set(torch.unique(out["mask"]).tolist())
        assert values <= {0, 1, 7, 12, 255}  # nearest-neighbour: no new classes
        valid = out["mask"] != 255
        agree = (_red_class(out["image"])[valid] == out["mask"][valid]).float().mean()
        assert agree > 0.97  # only block edges differ (bilinear image vs nearest mask)
        assert out["labels"].tolist() == [1.0, 0.0] and out["name"] == "blocks"


def test_padding_is_void_in_mask_and_mean_in_image():
    transform = train_transform(crop_size=320, scale_range=(0.5, 0.5), flip_prob=0.0)
    out = transform(_block_sample(200, 300, void=False))  # rescaled to 100×150, the rest is padding
    pad = out["mask"] == 255
    assert int((~pad).sum()) == 100 * 150
    rows, cols = torch.nonzero(~pad, as_tuple=True)
    assert int(rows.max() - rows.min()) == 99 and int(cols.max() - cols.min()) == 149  # one block
    # padded pixels hold the mean colour, i.e. ~0 after normalisation (1/255 rounding)
    assert out["image"][:, pad].abs().max() < 0.01


def test_random_rescale_factor_range():
    torch.manual_seed(1)
    rescale = RandomRescale((0.5, 2.0))
    heights = [rescale(tv_tensors.Image(torch.zeros(3, 100, 80, dtype=torch.uint8))).shape[-2] for _ in range(50)]
    assert 50 <= min(heights) and max(heights) <= 200 and max(heights) - min(heights) > 50
    with pytest.raises(ValueError, match="scale_range"):
        RandomRescale((2.0, 1.0))


def test_eval_transform_is_deterministic_and_keeps_mask(voc_root):
    ds = VOCSegmentation(voc_root, "val")
    raw = ds[0]
    transform = eval_transform(long_side=512)
    a, b = transform(dict(raw)), transform(dict(raw))
    assert torch.equal(a["image"], b["image"])
    assert max(a["image"].shape[-2:]) == 512 and a["image"].dtype == torch.float32
    assert torch.equal(a["mask"], raw["mask"].as_subclass(torch.Tensor))  # ground truth untouched
    resized = eval_transform(long_side=512, resize_mask=True)(dict(raw))
    assert resized["mask"].shape == resized["image"].shape[-2:]
    assert set(torch.unique(resized["mask"]).tolist()) <= set(torch.unique(raw["mask"]).tolist())
    assert eval_transform(long_side=None)(dict(raw))["image"].shape == raw["image"].shape


def test_normalisation_uses_clip_statistics_and_denormalize_round_trips():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    image = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8)
    out = normalize()(tv_tensors.Image(image))
    expected = (image.float() / 255.0 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), expected)
    assert torch.equal(denormalize(out), image)
    with pytest.raises(TypeError, match="image"):
        denormalize(image)


def test_transforms_compose_with_dataset_dict_and_other_v2_ops(voc_root):
    extra = v2.Compose([v2.RandomVerticalFlip(p=1.0), train_transform(crop_size=96)])
    ds = VOCSegmentation(voc_root, "train", transform=extra)
    item = ds[0]
    assert item["image"].shape == (3, 96, 96) and item["mask"].dtype == torch.int64
    assert item["labels"].shape == (20,) and isinstance(item["name"], str)
    assert set(np.unique(item["mask"].numpy())) <= {0, 5, 15, 255}  # 2011_000003: boat, person
