"""Numerics under autocast (issue 10 B): the delicate parts run in float32 or higher.

Before, ``torch.autocast("cpu", torch.bfloat16)`` ran the matrix products of the transition
matrix and of CDA in bfloat16: the outputs came back in bfloat16, transition rows summed to
0.92–1.50 and ``fusion="attn"`` was off by 0.79 from the float64 computation.
"""

from __future__ import annotations

import pytest
import torch

import cdclip
from cdclip._checks import full_precision
from cdclip.affinity.cda import cda_affinity, cda_refine, class_probs_from_features
from cdclip.affinity.transition import transition_matrix
from cdclip.kernels.js import js_divergence, pairwise_js
from cdclip.losses.boundary import boundary_enhanced_loss
from cdclip.prototypes.superclass import superclass_prototypes
from cdclip.refine.par import par


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def scene() -> dict[str, torch.Tensor]:
    g = gen(0)
    n, h, w = 64, 8, 8
    cams = torch.rand(2, 3, h, w, generator=g)
    probs = (3 * torch.randn(2, n, 5, generator=g)).softmax(-1)
    attn = torch.rand(2, n, n, generator=g) ** 4
    return {"cams": cams, "probs": probs, "attn": attn}


def test_autocast_is_really_on_in_these_tests():
    a = torch.rand(4, 4)
    with bf16_autocast():
        assert (a @ a).dtype == torch.bfloat16  # what the components must not inherit


def test_transition_matrix_float32_and_rows_sum_to_one():
    a = torch.rand(2, 50, 50, generator=gen(1)) + 0.1
    with bf16_autocast():
        t = transition_matrix(a, sinkhorn_iters=50)  # converged: doubly stochastic, and so is its square
        t_default = transition_matrix(a)
    assert t.dtype == torch.float32 and t_default.dtype == torch.float32
    torch.testing.assert_close(t.sum(-1), torch.ones(2, 50), atol=1e-5, rtol=0)
    ref = transition_matrix(a.double())
    torch.testing.assert_close(t_default.double(), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(t_default.sum(-1).double(), ref.sum(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", ["attn", "mean", "replace", "product"])
def test_cda_refine_float32_and_close_to_float64(scene, fusion):
    with bf16_autocast():
        out = cdclip.CDAModule(fusion=fusion)(scene["cams"], scene["probs"], scene["attn"])
    ref = cda_refine(scene["cams"].double(), scene["probs"].double(), scene["attn"].double(), fusion=fusion)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 1e-4


def test_cda_affinity_js_and_class_probs_are_float32_under_autocast(scene):
    p = scene["probs"]
    features, text = torch.randn(2, 64, 16, generator=gen(2)), torch.randn(5, 16, generator=gen(3))
    with bf16_autocast():
        js = pairwise_js(p)
        matched = js_divergence(p[0], p[1])
        affinity = cda_affinity(p)
        from_features = class_probs_from_features(features, text)
    for out in (js, matched, affinity, from_features):
        assert out.dtype == torch.float32
    torch.testing.assert_close(js.double(), pairwise_js(p.double()), atol=1e-6, rtol=0)
    torch.testing.assert_close(affinity.double(), cda_affinity(p.double()), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        from_features.double(), class_probs_from_features(features.double(), text.double()), atol=1e-5, rtol=0
    )


def test_par_float32_under_autocast():
    image = torch.rand(1, 3, 16, 16, generator=gen(4))
    masks = torch.rand(1, 2, 16, 16, generator=gen(5))
    with bf16_autocast():
        out = par(image, masks, dilations=(1, 2), num_iter=5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), par(image.double(), masks.double(), dilations=(1, 2), num_iter=5), atol=1e-5, rtol=0)


def test_boundary_loss_and_sbe_float32_under_autocast():
    g = gen(6)
    logits = torch.randn(2, 4, 8, 8, generator=g)
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)
    band = torch.rand(2, 8, 8, generator=g) > 0.5
    with bf16_autocast():
        loss = boundary_enhanced_loss(logits, labels, band)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - boundary_enhanced_loss(logits.double(), labels, band).item()) < 1e-5

    cams = torch.rand(1, 3, 4, 4, generator=g)
    features = torch.randn(1, 16, 8, generator=g)
    pseudo = torch.randint(0, 4, (1, 8, 8), generator=g)
    with bf16_autocast():
        out = superclass_prototypes(cams, torch.ones(1, 3), features, pseudo, "fg")
    ref = superclass_prototypes(cams.double(), torch.ones(1, 3), features.double(), pseudo, "fg")
    assert out.prototypes.dtype == torch.float32 and out.prototype_cams.dtype == torch.float32
    torch.testing.assert_close(out.prototype_cams.double(), ref.prototype_cams, atol=1e-5, rtol=0)
    assert torch.equal(out.corrected_labels, ref.corrected_labels)


def test_full_precision_restores_autocast_afterwards():
    @full_precision
    def inner() -> bool:
        return torch.is_autocast_enabled("cpu")

    with bf16_autocast():
        assert inner() is False
        assert torch.is_autocast_enabled("cpu")
    assert inner() is False
