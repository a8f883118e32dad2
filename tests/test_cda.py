"""CDA affinity and refinement: the constructed two-part scene, oracles and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scenes import two_part_scene

import cdclip
from cdclip.affinity.boxes import box_mask
from cdclip.affinity.cda import CDAModule, minmax_normalize
from cdclip.affinity.transition import transition_matrix
from cdclip.functional import (
    cda_affinity,
    cda_refine,
    class_probs_from_cams,
    class_probs_from_features,
    pairwise_js,
)


def levels(refined: torch.Tensor, scene) -> tuple[float, float, float]:
    r = refined[0, 0]
    return r[scene.part_a].mean().item(), r[scene.part_b].mean().item(), r[scene.background].mean().item()


@pytest.fixture(scope="module")
def scene():
    s = two_part_scene()
    assert 0.25 < s.js_object_background / math.log(2) < 0.35  # the realistic, hard case
    return s


def test_attn_baseline_leaves_second_part_dark(scene):
    a, b, bg = levels(cdclip.CDAModule(fusion="attn")(scene.cams, None, scene.attn), scene)
    assert a > 0.8
    assert b < 0.02 and bg < 0.02


def test_replace_lights_second_part_and_keeps_background_dark(scene):
    a, b, bg = levels(cdclip.CDAModule(fusion="replace")(scene.cams, scene.probs), scene)
    assert b > 0.9 * a and b > 0.75
    assert bg < 0.05


def test_mean_lands_in_between(scene):
    refined = cdclip.CDAModule(fusion="mean")(scene.cams, scene.probs, scene.attn)
    a, b, bg = levels(refined, scene)
    assert 0.15 < b / a < 0.75
    assert bg < 0.05


def test_flat_affinity_leaks_into_background(scene):
    """Why the default is sharp: the flat map 1 - JS/ln2 lights the background several times more."""
    _, _, bg_default = levels(cdclip.CDAModule(fusion="replace")(scene.cams, scene.probs), scene)
    _, _, bg_flat = levels(cdclip.CDAModule(fusion="replace", affinity="linear")(scene.cams, scene.probs), scene)
    _, b_flat_mean, _ = levels(
        cdclip.CDAModule(fusion="mean", affinity="linear")(scene.cams, scene.probs, scene.attn), scene
    )
    assert bg_flat > 3 * bg_default
    assert b_flat_mean < 0.05  # and in `mean` the flat map barely reaches the second part


def test_product_cannot_cross_where_attention_is_zero(scene):
    _, b, _ = levels(cdclip.CDAModule(fusion="product")(scene.cams, scene.probs, scene.attn), scene)
    assert b < 0.02


def test_refinement_matches_explicit_formula():
    gen = torch.Generator().manual_seed(0)
    b, c, h, w, k = 2, 3, 5, 6, 7
    cams = torch.rand(b, c, h, w, generator=gen, dtype=torch.float64)
    probs = torch.softmax(torch.randn(b, h * w, k, generator=gen, dtype=torch.float64) * 3, -1)
    attn = torch.rand(b, h * w, h * w, generator=gen, dtype=torch.float64)
    out = cda_refine(cams, probs, attn, fusion="mean", gamma=0.3, sigma=0.1, box_threshold=0.5)

    def tau(a):
        for _ in range(3):
            a = a / a.sum(0, keepdims=True)
            a = a / a.sum(1, keepdims=True)
        a = (a + a.T) / 2
        return a @ a

    for i in range(b):
        js = pairwise_js(probs[i : i + 1])[0].numpy()
        t = 0.3 * tau(attn[i].numpy()) + 0.7 * tau(np.exp(-js / 0.1))
        for j in range(c):
            m = cams[i, j].numpy()
            mask = box_mask(cams[i : i + 1, j : j + 1], 0.5)[0, 0].numpy()
            r = t @ (mask * m).reshape(-1)
            r = (r - r.min()) / (1e-7 + r.max() - r.min())  # pytorch-grad-cam's min-max (CLIP-ES)
            np.testing.assert_allclose(out[i, j].numpy().reshape(-1), r, atol=1e-10)


def test_box_mask_union_of_inclusive_boxes():
    cams = torch.zeros(1, 2, 8, 8)
    cams[0, 0, 1, 1] = cams[0, 0, 2, 2] = 1.0  # one 8-connected region -> box rows 1..2, cols 1..2
    cams[0, 0, 6, 5:7] = 0.9  # a second region -> its own box
    cams[0, 0, 4, 4] = 0.3  # below 0.4 * max: no box
    mask = box_mask(cams, 0.4)[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:3, 1:3] = True
    expected[6, 5:7] = True
    assert torch.equal(mask[0], expected)
    assert not mask[1].any()  # an all-zero map has no box (and no NaN downstream)


def test_transition_matrix_properties_and_float32_for_half():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 30, 30, generator=gen)
    t1 = transition_matrix(a, power=1)
    torch.testing.assert_close(t1, t1.transpose(1, 2))
    torch.testing.assert_close(t1.sum(-1), torch.ones(2, 30), atol=2e-2, rtol=0)  # near doubly stochastic
    half = transition_matrix(a.half())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    zero_row = a.clone()
    zero_row[:, 3] = 0
    zero_row[:, :, 3] = 0
    assert torch.isfinite(transition_matrix(zero_row)).all()


def test_empty_and_constant_cams_give_zeros_not_nan(scene):
    cams = torch.zeros(1, 2, 16, 16)
    cams[0, 1] = scene.cams[0, 0]
    out = cdclip.CDAModule()(cams, scene.probs, scene.attn)
    assert torch.isfinite(out).all()
    assert out[0, 0].abs().max() == 0
    assert torch.isfinite(minmax_normalize(torch.ones(1, 1, 4, 4))).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(scene, dtype):
    out = cdclip.CDAModule()(scene.cams.to(dtype), scene.probs.to(dtype), scene.attn.to(dtype))
    ref = cdclip.CDAModule()(scene.cams, scene.probs, scene.attn)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05


def test_module_equals_functional_and_registry(scene):
    kwargs = dict(fusion="mean", gamma=0.4, sigma=0.07)
    module = cdclip.CDAModule(**kwargs)
    torch.testing.assert_close(module(scene.cams, scene.probs, scene.attn), cda_refine(scene.cams, scene.probs, scene.attn, **kwargs))
    torch.testing.assert_close(cdclip.create("cda", **kwargs)(scene.cams, scene.probs, scene.attn), module(scene.cams, scene.probs, scene.attn))
    aff = cdclip.create("cda_affinity", kind="power", beta=4.0)
    torch.testing.assert_close(aff(scene.probs), cda_affinity(scene.probs, "power", beta=4.0))
    assert "fusion='mean'" in repr(module)


def test_gradients_flow_to_cams(scene):
    cams = scene.cams.clone().double().requires_grad_()
    out = cdclip.CDAModule(fusion="mean")(cams, scene.probs.double(), scene.attn.double())
    out[0, 0][scene.part_b].sum().backward()
    assert torch.isfinite(cams.grad).all() and cams.grad.abs().sum() > 0


def test_class_probs_from_features_is_clip_softmax():
    gen = torch.Generator().manual_seed(2)
    feats, text = torch.randn(2, 6, 8, generator=gen), torch.randn(5, 8, generator=gen)
    probs = class_probs_from_features(feats, text, logit_scale=100.0)
    f = feats / feats.norm(dim=-1, keepdim=True)
    t = text / text.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(probs, torch.softmax(100 * f @ t.T, -1))


def test_drop_in_without_text_classifier(scene):
    """A CAM method with no text classifier: class distributions from its own CAM scores."""
    h = w = 16
    all_cams = torch.zeros(1, 3, h, w)
    all_cams[0, 0] = scene.cams[0, 0]  # the object class fires on part A only
    all_cams[0, 0][scene.part_b] = 0.35  # and weakly on part B
    all_cams[0, 1][scene.background] = 0.5  # some unrelated class on the background
    probs = class_probs_from_cams(all_cams)
    assert probs.shape == (1, h * w, 3)
    assert class_probs_from_cams(all_cams, background=True).shape == (1, h * w, 4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, h * w))
    refined = cdclip.CDAModule(fusion="replace")(all_cams[:, :1], probs)
    a, b, bg = levels(refined, scene)
    assert b > 0.5 * a and bg < 0.2


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(cams=torch.rand(2, 16, 16)), ValueError, r"cams: expected shape \(B, C, h, w\)"),
        (dict(probs=torch.softmax(torch.rand(1, 255, 4), -1)), ValueError, r"probs: expected shape \(B=1, N=h\*w=256"),
        (dict(probs=torch.rand(1, 256, 4) + 1), ValueError, "rows summing to 1"),
        (dict(probs=torch.full((1, 256, 4), float("nan"))), ValueError, "probs: expected finite"),
        (dict(probs=torch.tensor([[-0.5, 1.5]]).repeat(256, 1)[None]), ValueError, "non-negative"),
        (dict(attn=torch.rand(1, 256, 255)), ValueError, "attn: expected a square"),
        (dict(attn=torch.rand(1, 100, 100)), ValueError, r"attn: expected shape \(B=1, N=h\*w=256"),
        (dict(attn=None), ValueError, "attn: fusion='mean' needs"),
        (dict(probs=None), ValueError, "probs: fusion='mean' needs"),
        (dict(cams=torch.ones(1, 1, 16, 16, dtype=torch.long)), TypeError, "cams: expected a floating-point"),
    ],
)
def test_bad_input(scene, kwargs, exc, match):
    args = dict(cams=scene.cams, probs=scene.probs, attn=scene.attn)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        cdclip.CDAModule(fusion="mean")(args["cams"], args["probs"], args["attn"])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="fusion: expected one of"):
        cdclip.CDAModule(fusion="sum")
    with pytest.raises(ValueError, match="gamma: expected a weight in"):
        cdclip.CDAModule(gamma=1.5)
    with pytest.raises(ValueError, match="affinity: expected one of"):
        cdclip.CDAModule(affinity="cosine")


# ---------------------------------------------------------------------------- per-image classes
def _all_class_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(3, 5, 6, 7, generator=g)
    probs = torch.softmax(4 * torch.randn(3, 42, 5, generator=g), dim=-1)
    attn = torch.softmax(6 * torch.randn(3, 42, 42, generator=g), dim=-1)  # peaked: the maps are not flat
    present = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    return cams, probs, attn, present


@pytest.mark.parametrize("fusion", ["mean", "replace", "product", "attn"])
def test_cda_with_a_present_mask_equals_refining_each_images_classes(fusion):
    cams, probs, attn, present = _all_class_inputs()
    cda = CDAModule(fusion=fusion)
    batched = cda(cams, probs, attn, present=present)
    assert batched.shape == cams.shape
    for i in range(3):
        alone = cda(cams[i : i + 1, present[i]], probs[i : i + 1], attn[i : i + 1])
        torch.testing.assert_close(batched[i, present[i]], alone[0], rtol=0, atol=1e-6)
        assert not batched[i, ~present[i]].any()  # absent classes are zero maps
    indices = [torch.nonzero(row).flatten() for row in present]
    torch.testing.assert_close(cda(cams, probs, attn, present=indices), batched, rtol=0, atol=0)


def test_cda_normalize_false_keeps_the_propagated_scores():
    cams, probs, attn, _ = _all_class_inputs(1)
    raw = CDAModule(normalize=False)(cams, probs, attn)
    normalised = CDAModule()(cams, probs, attn)
    assert float(raw.amax()) > 1.0 or float(raw.amin()) > 0.0  # not min-max normalised
    flat = raw.flatten(2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    torch.testing.assert_close(((flat - lo) / (1e-7 + hi - lo)).reshape(raw.shape), normalised, rtol=0, atol=1e-6)


def test_cda_present_is_validated():
    cams, probs, attn, present = _all_class_inputs()
    with pytest.raises(ValueError, match="present"):
        CDAModule()(cams, probs, attn, present=present[:, :4])
    with pytest.raises(ValueError, match=r"present\[1\]"):
        CDAModule()(cams, probs, attn, present=[torch.tensor([0]), torch.tensor([7]), torch.tensor([])])
    with pytest.raises(TypeError, match="normalize"):
        CDAModule(normalize="yes")
