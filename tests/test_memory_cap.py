"""The working-resolution cap of the training-free path: large images are shrunk, then labelled full size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracle_backbone import tiny_openclip_backbone

from cdclip.pipeline.config import ModelConfig, preset
from cdclip.pipeline.pseudo_labels import (
    DEFAULT_MAX_SIDE,
    PseudoLabeler,
    capped_size,
    shrink_to,
    upsample_labels,
)
from cdclip.refine.par import PAR

NAMES = ("cat", "dog", "person")


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread (two threads on a busy 2-core machine made PAR here 20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    return tiny_openclip_backbone(image_size=64, layers=1)


def _labeler(backbone, **kwargs) -> PseudoLabeler:
    kwargs.setdefault("long_side", 64)
    return PseudoLabeler(backbone, NAMES, ("sky",), refine="attn", attn_layers=1, par=PAR(num_iter=1), **kwargs)


def _record_head(labeler: PseudoLabeler, monkeypatch) -> list[tuple[tuple[int, int], tuple[int, ...]]]:
    """(label size, PAR image shape) of every call of the CAM head."""
    calls: list[tuple[tuple[int, int], tuple[int, ...]]] = []
    forward = labeler.head.forward

    def recording(output, text, labels, size, image=None, **kwargs):
        calls.append((tuple(size), tuple(image.shape)))
        return forward(output, text, labels, size, image=image, **kwargs)

    monkeypatch.setattr(labeler.head, "forward", recording)
    return calls


def _image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (1, 3, 12, 16), generator=gen).float()  # smooth, photo-like
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).round().to(torch.uint8)


def test_capped_size_keeps_the_aspect_and_leaves_small_images():
    assert capped_size(1800, 2500, 1024) == (737, 1024)
    assert capped_size(3000, 4000, 1024) == (768, 1024)
    assert capped_size(4000, 3000, 1024) == (1024, 768)
    assert capped_size(375, 500, 1024) == (375, 500)
    assert capped_size(1024, 1024, 1024) == (1024, 1024)
    assert capped_size(5000, 3, 1024) == (1024, 1)
    assert capped_size(9000, 9000, None) == (9000, 9000)


def test_upsample_labels_is_nearest_neighbour_on_pixel_centres():
    labels = torch.randint(0, 21, (2, 7, 9))
    up = upsample_labels(labels, (30, 41))
    expected = F.interpolate(labels[:, None].float(), size=(30, 41), mode="nearest-exact")[:, 0].long()
    assert up.dtype == torch.int64 and torch.equal(up, expected)
    assert upsample_labels(labels, (7, 9)) is labels
    with pytest.raises(ValueError, match="labels"):
        upsample_labels(labels[0], (14, 18))


def test_shrink_to_is_antialiased_and_keeps_uint8():
    stripes = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    stripes[..., ::2] = 255  # one-pixel stripes: aliasing would keep them black and white
    small = shrink_to(stripes, (16, 16))
    assert small.dtype == torch.uint8 and small.shape == (1, 3, 16, 16)
    assert 100 <= int(small.min()) <= int(small.max()) <= 155
    assert shrink_to(stripes, (64, 64)) is stripes
    # other integer dtypes (and uint8 off the CPU) go through float32 and are rounded back
    as_int = shrink_to(stripes.to(torch.int16), (16, 16))
    reference = F.interpolate(stripes.float(), size=(16, 16), mode="bilinear", antialias=True).round()
    assert as_int.dtype == torch.int16 and torch.equal(as_int.float(), reference)


def test_large_image_is_labelled_full_size_from_work_at_the_capped_size(backbone, monkeypatch):
    assert _labeler(backbone).max_side == DEFAULT_MAX_SIDE == 1024
    labeler = _labeler(backbone, max_side=512)
    calls = _record_head(labeler, monkeypatch)
    images = _image(1800, 2500)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    out = labeler(images, labels)
    assert out.labels.shape == (1, 1800, 2500) and out.labels.dtype == torch.int64
    assert calls == [((369, 512), (1, 3, 369, 512))]  # CAMs, refinement and PAR at the working size
    assert out.cams.shape[-2:] == (3, 4)  # the CLIP input: long side 64 of the working image
    # the same as labelling the shrunk image and upsampling its label map (nearest)
    small = labeler(shrink_to(images, (369, 512)), labels)
    assert torch.equal(out.labels, upsample_labels(small.labels, (1800, 2500)))
    assert torch.equal(out.refined, small.refined)
    assert set(out.labels.unique().tolist()) <= {0, 1, 3}


def test_clip_input_is_capped_at_native_size(backbone, monkeypatch):
    shapes: list[tuple[int, ...]] = []
    labeler = _labeler(backbone, long_side=None, max_side=256)
    handle = labeler.backbone.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        out = labeler(_image(500, 700), torch.tensor([[0.0, 1.0, 0.0]]))
    finally:
        handle.remove()
    assert shapes and max(s[-1] for s in shapes) == 256 and max(s[-2] for s in shapes) == 192  # 183 -> 192
    assert out.labels.shape == (1, 500, 700)


@pytest.mark.parametrize(("h", "w", "cap"), [(40, 70, 1024), (375, 500, 1024), (256, 160, 256)])
def test_images_within_the_cap_give_bit_identical_outputs(backbone, monkeypatch, h, w, cap):
    images = _image(h, w, seed=h)
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    capped = _labeler(backbone, max_side=cap)
    uncapped = _labeler(backbone, max_side=None)
    calls = _record_head(capped, monkeypatch)
    a, b = capped(images, labels), uncapped(images, labels)
    assert calls == [((h, w), (1, 3, h, w))]
    for field in ("cams", "refined", "labels"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_max_side_is_validated_and_bounds_long_side(backbone):
    with pytest.raises(ValueError, match="max_side"):
        _labeler(backbone, max_side=0)
    with pytest.raises(ValueError, match="long_side"):
        _labeler(backbone, long_side=2048, max_side=1024)
    _labeler(backbone, long_side=2048, max_side=None)  # no cap: any long side


def test_config_key_cam_max_side(backbone):
    assert ModelConfig().cam_max_side == 1024
    for name in ("cdclip-voc", "clip-es", "weclip-voc", "cdclip-coco"):
        assert preset(name).model.cam_max_side == 1024
    with pytest.raises(ValueError, match=r"model\.cam_max_side"):
        ModelConfig(cam_max_side=0)
    with pytest.raises(ValueError, match=r"model\.cam_long_side"):
        ModelConfig(cam_long_side=2048, cam_max_side=1024)
    assert ModelConfig(cam_long_side=2048, cam_max_side=None).cam_max_side is None
    config = preset("clip-es")
    config = type(config).from_dict({**config.to_dict(), "model": {**config.to_dict()["model"], "cam_max_side": 512}})
    labeler = PseudoLabeler.from_config(config, NAMES, ("sky",), backbone)
    assert labeler.max_side == 512 and labeler.long_side is None
