"""Every CLIP-ES / WeCLIP behaviour is a named option: box ends, slots, label rule, WeCLIP's
decoder-affinity refinement, presets, QuickGELU, padding and label sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracle_backbone import tiny_openclip_backbone

from cdclip.affinity.boxes import box_mask
from cdclip.cam.gradcam import check_target, clip_gradcam
from cdclip.cam.labels import background_score, cams_to_labels
from cdclip.cam.refine import decoder_refined_attention
from cdclip.cam.slots import class_slots, gather_slots, scatter_slots
from cdclip.pipeline.config import TrainConfig
from cdclip.pipeline.decoder import QuickGELU, WeCLIPDecoder
from cdclip.presets import list_presets, load_preset, preset_dict


# ------------------------------------------------------------------------------------- boxes
def _map(h: int, w: int, cells: list[tuple[int, int]], value: float = 1.0) -> torch.Tensor:
    m = torch.zeros(1, 1, h, w)
    for y, x in cells:
        m[0, 0, y, x] = value
    return m


def test_clip_es_box_rule_loses_the_edge_column_only_where_a_box_touches_it():
    cams = _map(5, 6, [(1, 1), (1, 2), (2, 1), (2, 2), (3, 4), (3, 5)])
    inclusive = box_mask(cams, 0.4, "inclusive")[0, 0]
    clip_es = box_mask(cams, 0.4, "clip-es")[0, 0]
    # interior box rows 1-2, cols 1-2: whole under both rules
    assert bool(inclusive[1:3, 1:3].all()) and bool(clip_es[1:3, 1:3].all())
    # the box of row 3, cols 4-5 touches the right edge: CLIP-ES keeps col 4 only
    assert bool(inclusive[3, 4:6].all())
    assert bool(clip_es[3, 4]) and not bool(clip_es[3, 5])
    assert int(inclusive.sum()) == 6 and int(clip_es.sum()) == 5


def test_clip_es_box_rule_gives_no_box_to_a_region_in_the_last_row_or_column():
    right = _map(4, 4, [(0, 3), (1, 3)])
    bottom = _map(4, 4, [(3, 1), (3, 2)])
    assert not bool(box_mask(right, 0.4, "clip-es").any())
    assert not bool(box_mask(bottom, 0.4, "clip-es").any())
    assert int(box_mask(right, 0.4, "inclusive").sum()) == 2


def test_clip_es_box_rule_thresholds_the_uint8_quantised_map():
    # uint8(0.5 * 255) = 127 and int(0.4 * 255) = 102: 0.401 -> 102 is not above; float 0.401 > 0.4 is
    cams = _map(3, 4, [(1, 1)], 1.0)
    cams[0, 0, 1, 2] = 0.401
    assert bool(box_mask(cams, 0.4, "inclusive")[0, 0, 1, 2])
    assert not bool(box_mask(cams, 0.4, "clip-es")[0, 0, 1, 2])
    with pytest.raises(ValueError, match="rule: expected one of"):
        box_mask(cams, 0.4, "exclusive")


# ------------------------------------------------------------------------------------- slots
def test_class_slots_pack_each_images_classes_in_label_order():
    present = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    slots = class_slots(present)
    assert slots.count == 3
    assert slots.index[0].tolist() == [1, 3, 4] and slots.valid[0].tolist() == [True] * 3
    assert slots.index[1, 0] == 0 and slots.valid[1].tolist() == [True, False, False]
    assert not bool(slots.valid[2].any())
    maps = torch.rand(3, 5, 2, 2) * present[:, :, None, None]
    packed = gather_slots(maps, slots)
    torch.testing.assert_close(packed[0], maps[0, [1, 3, 4]])
    assert bool((packed[1, 1:] == 0).all())
    torch.testing.assert_close(scatter_slots(packed, slots, 5), maps)


def test_batched_gradcam_equals_each_image_alone():
    tiny = tiny_openclip_backbone(image_size=64, layers=2, seed=3)
    text = torch.nn.functional.normalize(torch.randn(6, tiny.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    images = torch.randn(2, 3, 48, 64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    out = tiny(images, attn_blocks=0, grad_last_block=True)
    batched = clip_gradcam(out, text, labels, tiny.logit_scale)
    for i in range(2):
        one = tiny(images[i : i + 1], attn_blocks=0, grad_last_block=True)
        torch.testing.assert_close(batched[i : i + 1], clip_gradcam(one, text, labels[i : i + 1], tiny.logit_scale),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
    assert check_target("ln_1") == "ln1_out" and check_target("input") == "block_in"
    with pytest.raises(ValueError, match="target: expected one of"):
        check_target("ln_2")


# ------------------------------------------------------------------------------------- labels
def test_background_after_upsampling_is_weclips_order():
    gen = torch.Generator().manual_seed(0)
    cams = torch.rand(1, 3, 4, 5, generator=gen)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    size = (16, 20)
    fg = F.interpolate(cams[:, [0, 2]], size=size, mode="bilinear", align_corners=False)
    stack = torch.cat([1 - fg.amax(1, keepdim=True), fg], 1)
    expected = torch.tensor([0, 1, 3])[stack.argmax(1)]
    assert torch.equal(cams_to_labels(cams, labels, size, background_at="image"), expected)
    patch = cams_to_labels(cams, labels, size, background_at="patch")
    assert not torch.equal(patch, expected)  # the order matters on these maps
    # CLIP-ES's evaluation: a constant background score
    const = cams_to_labels(cams, labels, size, bg_threshold=0.7)
    expected_const = torch.tensor([0, 1, 3])[torch.cat([torch.full_like(fg[:, :1], 0.7), fg], 1).argmax(1)]
    assert torch.equal(const, expected_const)
    assert bool((background_score(cams, threshold=0.3) == 0.3).all())


def test_labels_of_a_batch_use_each_images_own_classes():
    cams = torch.zeros(2, 4, 2, 2)
    cams[0, 1] = 0.9
    cams[1, 3] = 0.8
    cams[1, 1] = 1.0  # class 1 is absent from image 1: must never win there
    labels = torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 1]])
    out = cams_to_labels(cams, labels, (2, 2))
    assert set(out[0].unique().tolist()) <= {0, 2} and set(out[1].unique().tolist()) <= {0, 4}
    assert bool((out[1] == 4).all())


# ------------------------------------------------------------------------------------- WeCLIP refinement
def test_decoder_refined_attention_follows_weclips_rule():
    gen = torch.Generator().manual_seed(0)
    attn = torch.rand(2, 8, 6, 6, generator=gen)  # block sums differ (no ties at the mean)
    seg = torch.rand(2, 6, 6, generator=gen)
    got = decoder_refined_attention(attn, seg, blocks=6)
    for b in range(2):  # the rule written out with loops, one image at a time
        blocks = attn[b, -6:]
        diffs = [float((seg[b] - blocks[i]).sum()) for i in range(6)]
        mean = sum(diffs) / 6
        keep = [i for i in range(6) if diffs[i] <= mean]
        avg = sum(blocks[i] for i in keep) / (len(keep) + 1e-5)
        torch.testing.assert_close(got[b], avg * seg[b])
    assert decoder_refined_attention(attn.half(), seg.half(), 6).dtype == torch.float32
    with pytest.raises(ValueError, match="seg_affinity: expected shape"):
        decoder_refined_attention(attn, seg[:, :5, :5], 6)


# ------------------------------------------------------------------------------------- presets
def test_presets_load_and_defaults_are_cdclip_voc():
    names = {p["name"] for p in list_presets()}
    assert {"clip-es", "clip-es-coco", "weclip-voc", "weclip-coco", "cdclip-voc", "cdclip-coco"} <= names
    assert {"ablation-attn-voc", "ablation-cda-voc", "ablation-cda-sbe-voc"} <= names
    for name in names:
        assert isinstance(load_preset(name), TrainConfig)
    assert load_preset("cdclip-voc") == TrainConfig()
    assert load_preset("voc") == load_preset("cdclip-voc")  # the old name is an alias
    assert load_preset("ablation-cda-sbe-voc") == load_preset("cdclip-voc")


def test_weclip_preset_reproduces_its_quirks_and_cdclip_drops_the_leak():
    weclip, ours = load_preset("weclip-voc"), load_preset("cdclip-voc")
    assert weclip.data.labels_from == "mask" and ours.data.labels_from == "file"
    assert weclip.model.clip_fp16_out_proj and not ours.model.clip_fp16_out_proj
    assert weclip.model.decoder_fp16_out_proj and not ours.model.decoder_fp16_out_proj
    assert (weclip.data.pad_fill, weclip.data.pad_label) == ("black", "pseudo")
    assert weclip.model.box_rule == "clip-es" and ours.model.box_rule == "inclusive"
    assert weclip.model.refine == "attn" and ours.model.refine == "mean"
    assert weclip.loss.lambda_be == 0 and ours.loss.lambda_be == 1.0
    for cfg in (weclip, ours):
        assert cfg.model.cam_target == "ln1_out" and cfg.model.clip_pos_interp == "bilinear"
        assert cfg.model.decoder_activation == "quick_gelu" and cfg.data.normalize == "imagenet"
        assert cfg.model.background_at == "image" and cfg.model.par_scale == 1.0


def test_voc_and_coco_presets_differ_only_in_dataset_settings():
    voc, coco = preset_dict("weclip-voc"), preset_dict("weclip-coco")
    differing = {
        (section, key)
        for section in voc
        if isinstance(voc[section], dict)
        for key in set(voc[section]) | set(coco.get(section, {}))
        if voc[section].get(key) != coco.get(section, {}).get(key)
    }
    assert differing == {
        ("model", "background"), ("model", "box_threshold"), ("model", "seg_affinity_from"),
        ("model", "seg_affinity_blocks"), ("model", "grouping"), ("data", "dataset"), ("data", "split"),
    }  # fmt: skip
    c = load_preset("weclip-coco")
    assert (c.model.box_threshold, c.model.seg_affinity_from, c.model.seg_affinity_blocks, c.iters) == (0.7, 40000, 10, 80000)


def test_unknown_preset_names_close_matches():
    with pytest.raises(ValueError, match="did you mean weclip-voc"):
        load_preset("weclip-vco")


# ------------------------------------------------------------------------------------- decoder, data
def test_decoder_activation_option():
    torch.manual_seed(0)
    quick = WeCLIPDecoder(21, in_dim=32, num_blocks=2, dim=16, layers=1, heads=2)
    assert isinstance(quick.layers[0].mlp[1], QuickGELU)
    gelu = WeCLIPDecoder(21, in_dim=32, num_blocks=2, dim=16, layers=1, heads=2, activation="gelu")
    assert isinstance(gelu.layers[0].mlp[1], torch.nn.GELU)
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    with pytest.raises(ValueError, match="activation: expected one of"):
        WeCLIPDecoder(21, in_dim=32, num_blocks=2, dim=16, layers=1, heads=2, activation="relu")
    half = WeCLIPDecoder(21, in_dim=32, num_blocks=2, dim=16, layers=1, heads=2, fp16_out_proj=True).eval()
    half.load_state_dict(quick.state_dict())
    tokens = [torch.randn(1, 12, 32) for _ in range(2)]
    a, b = quick.eval()(tokens, (3, 4)).logits, half(tokens, (3, 4)).logits
    assert 0 < float((a - b).abs().max()) < 1e-2  # only the out-projection's float16 rounding differs


def test_labels_from_mask_reads_the_mask_and_warns():
    from cdclip.pipeline.config import DataConfig
    from cdclip.pipeline.trainer import TrainingTransform, build_dataset, labels_from_mask

    mask = torch.tensor([[0, 3, 255], [15, 15, 0]])
    got = labels_from_mask(mask, 20)
    assert got.nonzero().flatten().tolist() == [2, 14]
    from torchvision import tv_tensors

    raw_mask = torch.zeros(8, 8, dtype=torch.int64)
    raw_mask[2, 2] = 5
    sample = {"image": tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8)), "mask": tv_tensors.Mask(raw_mask),
              "labels": torch.ones(20), "name": "x"}  # fmt: skip
    data = DataConfig(crop_size=16, labels_from="mask", pad_fill="black", normalize="clip")
    out = TrainingTransform(data)(sample)
    assert out["labels"].nonzero().flatten().tolist() == [4]  # from the mask, not the label vector
    # black padding: the padded pixels are black before normalisation
    from cdclip.data.transforms import CLIP_MEAN, CLIP_STD

    pad = out["image"][:, ~out["valid"]]
    expected = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])[:, None]
    torch.testing.assert_close(pad, expected.expand_as(pad))
    with pytest.warns(UserWarning, match="label leak"), pytest.raises(FileNotFoundError):
        build_dataset(DataConfig(root="/nonexistent", labels_from="mask"))
    assert np.isfinite(out["image"].numpy()).all()
