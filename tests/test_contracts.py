"""Input contracts of the public components (issue 10 A): invalid input raises, never a silent NaN.

Every test here failed before the contracts were added: the calls returned NaN, zeros or a result
that depended on an invalid input, or raised IndexError / RuntimeError / numpy errors instead of a
``ValueError`` naming the argument.
"""

from __future__ import annotations

import math

import pytest
import torch

import cdclip
from cdclip.affinity.boxes import box_mask
from cdclip.affinity.cda import cda_affinity, cda_refine, class_probs_from_cams, class_probs_from_features
from cdclip.affinity.transition import TransitionMatrix, transition_matrix
from cdclip.backbones.output import CLIPOutput
from cdclip.cam.gradcam import gradcam_scores
from cdclip.cam.patch_text import patch_text_cam
from cdclip.cam.refine import attention_affinity, decoder_refined_attention, refine_cams
from cdclip.kernels import _native
from cdclip.kernels.js import JSDivergence, js_divergence, pairwise_js
from cdclip.losses.boundary import BoundaryEnhancedLoss, boundary_enhanced_loss
from cdclip.metrics import ConfusionMatrix
from cdclip.minmax import minmax_normalize
from cdclip.prototypes.superclass import SuperClassPrototypes, superclass_prototypes
from cdclip.refine.par import PAR, par

NAN, INF = float("nan"), float("inf")
BACKENDS = ["torch"] + ([] if _native.why_unavailable() else ["native"])


def probs(b: int = 1, n: int = 6, k: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, k, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ JS
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda p: p.index_put_((torch.tensor(0), torch.tensor(2), torch.tensor(1)), torch.tensor(NAN)), "finite"),
        (lambda p: p.index_put_((torch.tensor(0), torch.tensor(2), torch.tensor(1)), torch.tensor(INF)), "finite"),
        (lambda p: p - 0.5, "non-negative"),
        (lambda p: p * 3.0, "rows summing to 1"),
    ],
    ids=["nan", "inf", "negative", "unnormalised"],
)
def test_pairwise_js_rejects_rows_that_are_not_distributions(backend, bad, match):
    with pytest.raises(ValueError, match=f"p: expected .*{match}"):
        pairwise_js(bad(probs()), backend=backend)
    with pytest.raises(ValueError, match=f"q: expected .*{match}"):
        pairwise_js(probs(), bad(probs(seed=1)), backend=backend)
    with pytest.raises(ValueError, match=match):
        JSDivergence(backend=backend)(bad(probs()))
    with pytest.raises(ValueError, match=f"q: expected .*{match}"):
        js_divergence(probs()[0], bad(probs(seed=1))[0])


def test_js_accepts_rows_rounded_to_bfloat16():
    p = probs(1, 30, 21)
    assert pairwise_js(p.bfloat16().double()).dtype == torch.float64  # off by up to 2**-9: still a distribution


@pytest.mark.parametrize("shape", [(0, 4, 3), (1, 0, 3), (1, 4, 0)], ids=["B=0", "N=0", "K=0"])
def test_js_empty_inputs_raise_value_error(shape):
    label = {0: "B", 1: "N", 2: "K"}[shape.index(0)]
    with pytest.raises(ValueError, match=f"p: expected a non-empty tensor .*{label}=0"):
        pairwise_js(torch.zeros(shape))
    with pytest.raises(ValueError, match="p: expected a non-empty"):
        js_divergence(torch.zeros(shape), torch.zeros(shape))


@pytest.mark.parametrize("block_elements", [0, -3, 2.5, NAN, True])
def test_js_block_elements_validated(block_elements):
    with pytest.raises(ValueError, match="block_elements"):
        pairwise_js(probs(), block_elements=block_elements)
    with pytest.raises(ValueError, match="block_elements"):
        JSDivergence(block_elements=block_elements)


# ------------------------------------------------------------------------------------------ CDA
@pytest.mark.parametrize(
    "kwargs",
    [dict(sigma=NAN), dict(sigma=0.0), dict(sigma=-1.0), dict(sigma=INF), dict(beta=NAN), dict(beta=0), dict(kind="cos")],
)
def test_cda_affinity_arguments_validated(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name}: expected"):
        cdclip.CDAAffinity(**kwargs)
    with pytest.raises(ValueError, match=f"{name}: expected"):
        cda_affinity(probs(), **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sigma=NAN), dict(beta=-2.0), dict(gamma=NAN), dict(box_threshold=1.5), dict(box_threshold=NAN),
        dict(sinkhorn_iters=-1), dict(sinkhorn_iters=1.5), dict(power=0), dict(power=2.0), dict(box_rule="x"),
    ],
)  # fmt: skip
def test_cda_module_arguments_validated(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name}: expected"):
        cdclip.CDAModule(**kwargs)
    with pytest.raises(ValueError, match=f"{name}: expected"):
        cda_refine(unit(1, 1, 2, 3), probs(), unit(1, 6, 6), **kwargs)


@pytest.mark.parametrize("value", [10.0, -1.0, 1.01, -0.01], ids=["x10", "negative", "just-above-1", "just-below-0"])
def test_cda_rejects_cams_outside_the_unit_interval(value):
    cams = unit(1, 2, 2, 3)
    cams[0, 1, 1, 2] = value  # before: x10 moved the refined maps, all-negative maps gave zeros
    with pytest.raises(ValueError, match=r"cams: expected values in \[0, 1\]"):
        cdclip.CDAModule(fusion="replace")(cams, probs())
    with pytest.raises(ValueError, match=r"cams: expected values in \[0, 1\]"):
        cda_refine(cams, probs(), unit(1, 6, 6), fusion="mean")
    with pytest.raises(ValueError, match=r"cams: expected finite"):
        cdclip.CDAModule(fusion="replace")(torch.full((1, 2, 2, 3), NAN), probs())


def test_cda_accepts_low_precision_cams_at_the_top_of_the_range():
    cams = unit(1, 2, 2, 3).bfloat16()
    cams[0, 0, 0, 0] = 1.0
    assert torch.isfinite(cdclip.CDAModule(fusion="replace")(cams, probs())).all()


def test_cda_rejects_non_finite_or_negative_attention():
    cams, p = unit(1, 2, 2, 3), probs()
    attn = unit(1, 6, 6)
    attn[0, 1, 2] = NAN
    with pytest.raises(ValueError, match="attn: expected finite"):
        cda_refine(cams, p, attn)
    with pytest.raises(ValueError, match="attn: expected a non-negative"):
        cda_refine(cams, p, unit(1, 6, 6) - 0.5)


def _scene_one_class() -> tuple[torch.Tensor, torch.Tensor]:
    cams = torch.zeros(1, 1, 4, 4)
    cams[0, 0, 1:3, 1:3] = torch.tensor([[1.0, 0.6], [0.5, 0.8]])
    attn = unit(1, 16, 16, seed=3) + torch.eye(16)
    return cams, attn


def test_cda_single_class_distribution_replace_falls_back_to_no_propagation():
    cams, _ = _scene_one_class()
    one_class = class_probs_from_cams(cams)  # K = 1: every row is [1.0]
    refined = cdclip.CDAModule(fusion="replace")(cams, one_class)
    expected = minmax_normalize(cams * box_mask(cams, 0.4))
    torch.testing.assert_close(refined, expected)
    assert refined.amax() > 0.99  # not the all-zero map of a uniform walk


@pytest.mark.parametrize("fusion", ["mean", "product"])
def test_cda_uninformative_distributions_fall_back_to_attention(fusion):
    cams, attn = _scene_one_class()
    identical = torch.tensor([0.2, 0.5, 0.3]).expand(1, 16, 3).contiguous()  # the same distribution everywhere
    for p in (class_probs_from_cams(cams), identical):
        refined = cdclip.CDAModule(fusion=fusion)(cams, p, attn)
        baseline = cdclip.CDAModule(fusion="attn")(cams, None, attn)
        torch.testing.assert_close(refined, baseline)
        assert refined.amax() > 0.99


def test_cda_fallback_is_per_image():
    cams, _ = _scene_one_class()
    cams2 = torch.cat([cams, cams])
    informative = probs(1, 16, 3, seed=5)
    mixed = torch.cat([torch.tensor([0.2, 0.5, 0.3]).expand(1, 16, 3), informative])
    out = cdclip.CDAModule(fusion="replace")(cams2, mixed)
    torch.testing.assert_close(out[:1], minmax_normalize(cams * box_mask(cams, 0.4)))
    torch.testing.assert_close(out[1:], cdclip.CDAModule(fusion="replace")(cams, informative))


# ------------------------------------------------------------------------------------------ empty inputs
def _sbe_args(b=1, c=3, h=4, w=4, n=16, d=8, big=8):
    return (unit(b, c, h, w), torch.ones(b, c), torch.randn(b, n, d), torch.randint(0, c + 1, (b, big, big)))


EMPTY_CASES = {
    "transition-N": (lambda: transition_matrix(torch.zeros(1, 0, 0)), "affinity"),
    "transition-B": (lambda: transition_matrix(torch.zeros(0, 3, 3)), "affinity"),
    "cda-C": (lambda: cdclip.CDAModule(fusion="replace")(torch.zeros(1, 0, 2, 2), probs(1, 4, 3)), "cams"),
    "cda-B": (lambda: cdclip.CDAModule(fusion="replace")(torch.zeros(0, 2, 2, 2), torch.zeros(0, 4, 3)), "cams"),
    "cda-h": (lambda: cdclip.CDAModule(fusion="replace")(torch.zeros(1, 2, 0, 3), torch.zeros(1, 0, 3)), "cams"),
    "cda-K": (lambda: cdclip.CDAModule(fusion="replace")(unit(1, 2, 2, 2), torch.zeros(1, 4, 0)), "probs"),
    "cda-affinity": (lambda: cdclip.CDAAffinity()(torch.zeros(1, 0, 3)), "probs"),
    "probs-from-cams": (lambda: class_probs_from_cams(torch.zeros(1, 0, 2, 2)), "cams"),
    "probs-from-features": (lambda: class_probs_from_features(torch.zeros(1, 4, 8), torch.zeros(0, 8)), "text"),
    "boxes-C": (lambda: box_mask(torch.zeros(1, 0, 2, 2)), "cams"),
    "boxes-h": (lambda: box_mask(torch.zeros(1, 2, 0, 2)), "cams"),
    "par-H": (lambda: par(torch.rand(1, 3, 0, 4), torch.rand(1, 2, 0, 4)), "masks"),
    "par-C": (lambda: par(torch.rand(1, 3, 4, 4), torch.rand(1, 0, 4, 4)), "masks"),
    "par-c": (lambda: par(torch.rand(1, 0, 4, 4), torch.rand(1, 2, 4, 4)), "image"),
    "par-B": (lambda: PAR(dilations=(1,))(torch.rand(0, 3, 4, 4), torch.rand(0, 2, 4, 4)), "masks"),
    "loss-K": (lambda: boundary_enhanced_loss(torch.zeros(1, 0, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), None), "logits"),
    "loss-B": (lambda: BoundaryEnhancedLoss()(torch.zeros(0, 3, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long)), "labels"),
    "loss-H": (lambda: BoundaryEnhancedLoss()(torch.zeros(1, 3, 0, 4), torch.zeros(1, 0, 4, dtype=torch.long)), "labels"),
    "sbe-B": (lambda: SuperClassPrototypes("fg", 3)(*_sbe_args(b=0)), "cams"),
    "sbe-h": (lambda: SuperClassPrototypes("fg", 3)(*_sbe_args(h=0, n=0)), "cams"),
    "sbe-H": (lambda: SuperClassPrototypes("fg", 3)(*_sbe_args(big=0)), "pseudo_labels"),
    "sbe-D": (lambda: SuperClassPrototypes("fg", 3)(*_sbe_args(d=0)), "features"),
    "patch-text-N": (lambda: patch_text_cam(torch.randn(1, 0, 4), torch.randn(3, 4), torch.ones(1, 2), (0, 0)), "features"),
    "patch-text-C": (lambda: patch_text_cam(torch.randn(1, 4, 4), torch.randn(3, 4), torch.ones(1, 0), (2, 2)), "labels"),
    "patch-text-D": (lambda: patch_text_cam(torch.randn(1, 4, 0), torch.randn(3, 0), torch.ones(1, 2), (2, 2)), "features"),
    "gradcam-K": (lambda: gradcam_scores(torch.randn(1, 4), torch.randn(0, 4), torch.ones(1, 0)), "text"),
    "attention-N": (lambda: attention_affinity(torch.rand(1, 2, 0, 0)), "attn"),
    "decoder-attention-N": (lambda: decoder_refined_attention(torch.rand(1, 2, 0, 0), torch.rand(1, 0, 0)), "attn"),
}


@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_empty_inputs_raise_a_value_error_naming_the_argument(case):
    call, name = EMPTY_CASES[case]
    with pytest.raises(ValueError, match=f"^{name}: "):
        call()


def test_confusion_matrix_counts_nothing_for_empty_updates_and_validates_its_arguments():
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long))
    assert int(cm.matrix.sum()) == 0 and math.isnan(cm.miou())
    for bad in (True, 0, 2.0, -1):
        with pytest.raises(ValueError, match="num_classes: expected a positive int"):
            ConfusionMatrix(bad)
    with pytest.raises(ValueError, match="ignore_index"):
        ConfusionMatrix(3, ignore_index=2.5)


# ------------------------------------------------------------------------------------------ non-finite inputs
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_boundary_loss_rejects_non_finite_logits(value):
    logits = torch.randn(1, 3, 4, 4)
    logits[0, 1, 3, 3] = value  # outside the band too: it would still poison the mean
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    band = torch.zeros(1, 4, 4, dtype=torch.bool)
    band[0, :2] = True
    for reduction in ("mean", "sum", "none"):
        with pytest.raises(ValueError, match="logits: expected finite"):
            BoundaryEnhancedLoss(reduction=reduction)(logits, labels, band)
    with pytest.raises(ValueError, match="logits: expected finite"):
        boundary_enhanced_loss(logits, labels, band, balanced=False)


def test_boundary_loss_rejects_logits_so_large_that_it_overflows():
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0], logits[:, 1] = 3e38, -3e38
    with pytest.raises(ValueError, match="logits: the cross-entropy overflowed"):
        BoundaryEnhancedLoss()(logits, torch.ones(1, 2, 2, dtype=torch.long), None)


@pytest.mark.parametrize("where", ["cams", "features", "labels"])
def test_sbe_rejects_non_finite_inputs(where):
    cams, labels, features, pseudo = _sbe_args()
    {"cams": cams, "features": features, "labels": labels}[where][0, 0] = NAN
    with pytest.raises(ValueError, match=f"{where}: expected finite"):
        superclass_prototypes(cams, labels, features, pseudo, "fg")


def test_sbe_rejects_cams_outside_the_unit_interval():
    cams, labels, features, pseudo = _sbe_args()
    with pytest.raises(ValueError, match=r"cams: expected values in \[0, 1\]"):
        SuperClassPrototypes("fg", 3)(cams * 5, labels, features, pseudo)


def test_transition_matrix_arguments_validated():
    for kwargs in (dict(sinkhorn_iters=1.5), dict(power=0), dict(eps=NAN), dict(eps=0.0)):
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"{name}: expected"):
            transition_matrix(unit(1, 3, 3), **kwargs)
        with pytest.raises(ValueError, match=f"{name}: expected"):
            TransitionMatrix(**kwargs)


def test_par_arguments_and_overflow():
    for kwargs in (dict(w_rgb=NAN), dict(w_rgb=0.0), dict(w_pos=-1.0), dict(w_pos=INF)):
        name = next(iter(kwargs))
        with pytest.raises(ValueError, match=f"{name}: expected"):
            PAR(**kwargs)
        with pytest.raises(ValueError, match=f"{name}: expected"):
            par(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), **kwargs)
    huge = torch.full((1, 2, 4, 4), 65000.0, dtype=torch.float16)
    with pytest.raises(ValueError, match="masks: the refined masks overflow"):
        par(torch.rand(1, 3, 4, 4), huge, dilations=(1,), num_iter=5)


def test_cam_functions_reject_non_finite_inputs():
    features = torch.randn(1, 4, 8)
    features[0, 0, 0] = NAN
    with pytest.raises(ValueError, match="features: expected finite"):
        patch_text_cam(features, torch.randn(3, 8), torch.ones(1, 2), (2, 2))
    with pytest.raises(ValueError, match="global_embedding: expected finite"):
        gradcam_scores(torch.full((1, 8), INF), torch.randn(3, 8), torch.ones(1, 2))
    with pytest.raises(ValueError, match="logit_scale"):
        gradcam_scores(torch.randn(1, 8), torch.randn(3, 8), torch.ones(1, 2), logit_scale=NAN)
    with pytest.raises(ValueError, match="attn: expected finite"):
        attention_affinity(torch.full((1, 2, 4, 4), NAN))
    output = CLIPOutput(
        dense=torch.randn(1, 4, 8), global_embedding=torch.randn(1, 8), cls_embedding=torch.randn(1, 8),
        attn=torch.rand(1, 2, 4, 4), block_tokens=(), grid=(2, 2),
    )  # fmt: skip
    with pytest.raises(ValueError, match="cams: expected finite"):
        refine_cams(torch.full((1, 2, 2, 2), NAN), torch.ones(1, 2), output, torch.randn(3, 8), method="none")


def test_found_by_fuzzing_huge_cam_scores_and_fully_masked_gradcam_scores():
    cams = torch.tensor([[[[3e38, 0.0, 1.0]], [[0.0, 3e38, 0.5]]]])  # (1, 2, 1, 3): score / 0.1 overflows
    out = class_probs_from_cams(cams)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 0.0]))
    scores = gradcam_scores(torch.randn(2, 4), torch.randn(2, 4), torch.zeros(2, 2))  # K = C, nothing present
    assert torch.equal(scores, torch.zeros(2, 2))
