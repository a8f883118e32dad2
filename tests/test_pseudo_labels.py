"""Refinement glue (none / attn / CDA from one call) and pseudo labels (DESIGN §3.4)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from oracle_backbone import tiny_openclip_backbone

from cdclip.affinity.cda import CDAModule, class_probs_from_features
from cdclip.cam.refine import CAMRefiner, attention_affinity, refine_cams
from cdclip.pipeline.pseudo_labels import PseudoLabeler, background_score, cams_to_labels, resize_for_clip
from cdclip.refine.par import PAR


def _scene(b=1, c=3, h=4, w=5, k=6, d=8, layers=3):
    torch.manual_seed(0)
    cams = torch.rand(b, c, h, w)
    out = SimpleNamespace(dense=torch.randn(b, h * w, d), attn=torch.rand(b, layers, h * w, h * w), grid=(h, w))
    text = F.normalize(torch.randn(k, d), dim=-1)
    return cams, out, text


def test_background_score():
    cams = torch.tensor([[[[0.2, 1.0]], [[0.5, 0.0]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(background_score(cams), torch.tensor([[[[0.5, 0.0]]]]))
    torch.testing.assert_close(background_score(cams, alpha=2.0), torch.tensor([[[[0.25, 0.0]]]]))
    assert bool((background_score(torch.zeros(1, 0, 2, 2)) == 1).all())
    with pytest.raises(ValueError, match="alpha"):
        background_score(cams, alpha=0)


def test_refine_methods_delegate_to_cda_module_on_present_classes():
    cams, out, text = _scene()
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    attn = out.attn[:, -2:].mean(1)
    torch.testing.assert_close(attention_affinity(out.attn, last=2), attn)
    probs = class_probs_from_features(out.dense, text, 100.0)
    for method in ("attn", "mean", "replace", "product"):
        got = refine_cams(cams, labels, out, text, method=method, attn_layers=2)
        ref = CDAModule(fusion=method)(cams[:, [0, 2]], probs, attn)
        torch.testing.assert_close(got[:, [0, 2]], ref)
        assert bool((got[:, 1] == 0).all())
        torch.testing.assert_close(CAMRefiner(method, attn_layers=2)(cams, labels, out, text), got)
    torch.testing.assert_close(refine_cams(cams, labels, out, text, "none"), cams * labels[:, :, None, None])
    with pytest.raises(ValueError, match="method"):
        refine_cams(cams, labels, out, text, method="crf")
    with pytest.raises(ValueError, match="text"):
        refine_cams(cams, labels, out, None, method="mean")


def test_cams_to_labels_maps_channels_to_class_ids():
    cams = torch.zeros(1, 20, 2, 2)
    cams[0, 14, 0, 0] = 1.0  # person (id 15) top-left
    cams[0, 6, 1, 1] = 0.9  # car (id 7) bottom-right
    cams[0, 3, :, :] = 1.0  # boat is not in the image: must never win
    labels = torch.zeros(1, 20)
    labels[0, [14, 6]] = 1
    out = cams_to_labels(cams, labels, size=(4, 4), background_at="patch")
    assert out.shape == (1, 4, 4) and out.dtype == torch.int64
    assert out[0, 0, 0] == 15 and out[0, 3, 3] == 7 and out[0, 0, 3] == 0
    assert set(out.unique().tolist()) <= {0, 7, 15}
    image = torch.rand(1, 3, 4, 4)
    with_par = cams_to_labels(cams, labels, (4, 4), image=image, par=PAR(num_iter=2))
    assert set(with_par.unique().tolist()) <= {0, 7, 15}
    none = cams_to_labels(cams, torch.zeros(1, 20), (4, 4), image=image, par=PAR())
    assert bool((none == 0).all())


def test_resize_for_clip_rounds_to_patch_multiples():
    x = torch.rand(1, 3, 375, 500)
    assert resize_for_clip(x, 512, 16).shape[-2:] == (384, 512)
    assert resize_for_clip(x, None, 16).shape[-2:] == (384, 512)
    assert resize_for_clip(torch.rand(1, 3, 32, 48), None, 16).shape[-2:] == (32, 48)


@pytest.mark.parametrize("cam", ["gradcam", "patch_text"])
def test_pseudo_labeler_end_to_end_with_random_clip(cam):
    backbone = tiny_openclip_backbone(image_size=64)
    names = ("cat", "dog", "person")
    images = torch.randint(0, 256, (1, 3, 40, 70), dtype=torch.uint8)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    results = {}
    for refine in ("none", "attn", "mean"):
        labeler = PseudoLabeler(backbone, names, ("sky",), cam=cam, refine=refine, par=PAR(num_iter=2), long_side=96)
        out = labeler(images, labels)
        assert out.cams.shape == (1, 3, 4, 6) and out.refined.shape == (1, 3, 4, 6)
        assert out.labels.shape == (1, 40, 70) and set(out.labels.unique().tolist()) <= {0, 1, 3}
        assert bool((out.cams[:, 1] == 0).all())
        results[refine] = out.refined
    torch.testing.assert_close(results["none"], out.cams)
    assert not torch.allclose(results["attn"], results["none"])
    with pytest.raises(ValueError, match="labels"):
        labeler(images, torch.ones(1, 2))


def test_par_at_reduced_scale_matches_explicit_resampling():
    """par_scale=0.5 (ToCo/WeCLIP) runs PAR on half-size masks and returns labels at full size."""
    gen = torch.Generator().manual_seed(3)
    cams = torch.rand(1, 4, 6, 8, generator=gen)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    image = torch.rand(1, 3, 48, 64, generator=gen) * 255
    par = PAR(num_iter=3)
    out = cams_to_labels(cams, labels, (48, 64), image=image, par=par, par_scale=0.5, background_at="patch")
    assert out.shape == (1, 48, 64)

    fg = cams[:, [0, 2]]
    stack = torch.cat([background_score(fg), fg], 1)
    stack = F.interpolate(stack, size=(48, 64), mode="bilinear", align_corners=False)
    stack = F.interpolate(stack, size=(24, 32), mode="bilinear", align_corners=False)
    stack = F.interpolate(par(image, stack), size=(48, 64), mode="bilinear", align_corners=False)
    expected = torch.tensor([0, 1, 3])[stack.argmax(1)]
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="par_scale"):
        cams_to_labels(cams, labels, (48, 64), image=image, par=par, par_scale=0.0)


def test_from_preset_is_the_code_of_cdclip_cams(voc_root, tmp_path, tiny_backbones):
    import warnings

    from cli_driver import tiny_cams_argv

    from cdclip.cli import main
    from cdclip.data import read_image
    from cdclip.data.palette import load_label_png
    from cdclip.pipeline.pseudo_labels import PseudoLabeler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(tiny_cams_argv(voc_root, tmp_path, "--seed", "3")) == 0
        labeler = PseudoLabeler.from_preset(
            "cdclip-voc", seed=3, overrides={"model.clip": "tinyclip-cli:x", "model.cam_long_side": 64, "model.par_iters": 1}
        )
    table = np.load(voc_root / "cls_labels_onehot.npy", allow_pickle=True).item()
    name = (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    labels = torch.as_tensor(table[name]).float()[None]
    out = labeler(read_image(voc_root / "JPEGImages" / f"{name}.jpg")[None], labels)
    keys = torch.nonzero(labels[0]).flatten()
    stored = np.load(tmp_path / "cams" / f"{name}.npz")
    np.testing.assert_array_equal(out.cams[0, keys].numpy().astype(np.float16), stored["cams"])
    np.testing.assert_array_equal(out.labels[0].numpy(), load_label_png(tmp_path / "pseudo" / f"{name}.png"))
