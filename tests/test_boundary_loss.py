"""Losses: balanced segmentation CE, SBE boundary-enhanced loss, WeCLIP affinity loss."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import cdclip
from cdclip.losses.affinity import AffinityLoss, affinity_labels, affinity_loss, radius_mask
from cdclip.losses.boundary import BoundaryEnhancedLoss, boundary_enhanced_loss
from cdclip.losses.segmentation import BalancedCrossEntropy, balanced_cross_entropy
from cdclip.prototypes.superclass import superclass_prototypes


def random_case(b: int = 2, k: int = 4, h: int = 6, w: int = 7, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(b, k, h, w, generator=g, dtype=dtype)
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < 0.2] = 255
    band = torch.rand(b, h, w, generator=g) < 0.5
    return logits, labels, band


def weclip_seg_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The WeCLIP/ToCo formula with torch's own ignore_index handling (outside oracle)."""
    bg = labels.clone()
    bg[labels != 0] = 255
    fg = labels.clone()
    fg[labels == 0] = 255
    return 0.5 * (F.cross_entropy(logits, bg, ignore_index=255) + F.cross_entropy(logits, fg, ignore_index=255))


# ---------------------------------------------------------------------- balanced CE
def test_balanced_ce_matches_the_weclip_formula() -> None:
    logits, labels, _ = random_case()
    assert torch.allclose(balanced_cross_entropy(logits, labels), weclip_seg_loss(logits, labels), atol=1e-6)
    per_pixel = balanced_cross_entropy(logits, labels, reduction="none")
    torch_pp = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    assert torch.allclose(per_pixel, torch_pp, atol=1e-6)
    assert torch.allclose(balanced_cross_entropy(logits, labels, reduction="sum"), torch_pp.sum(), atol=1e-5)
    assert per_pixel[labels == 255].eq(0).all()


def test_balanced_ce_empty_parts_give_zero_not_nan() -> None:
    logits, labels, _ = random_case()
    logits.requires_grad_(True)
    only_bg = torch.where(labels == 255, labels, torch.zeros_like(labels))
    loss = balanced_cross_entropy(logits, only_bg)
    bg_only_ce = F.cross_entropy(logits, only_bg, ignore_index=255)
    assert torch.allclose(loss, 0.5 * bg_only_ce)  # the empty foreground part contributes 0
    all_ignored = torch.full_like(labels, 255)
    zero = balanced_cross_entropy(logits, all_ignored)
    zero.backward()
    assert zero.item() == 0.0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() == 0


def test_balanced_ce_module_and_half_precision() -> None:
    logits, labels, _ = random_case()
    module = cdclip.create("balanced_ce")
    assert isinstance(module, BalancedCrossEntropy)
    half = module(logits.half(), labels)
    assert half.dtype == torch.float32 and torch.allclose(half, module(logits, labels), atol=1e-2)


# ---------------------------------------------------------------------- boundary loss
def test_boundary_loss_is_balanced_ce_on_the_band() -> None:
    logits, labels, band = random_case()
    masked = torch.where(band, labels, torch.full_like(labels, 255))
    loss = boundary_enhanced_loss(logits, labels, band)
    assert torch.allclose(loss, weclip_seg_loss(logits, masked), atol=1e-6)
    # gradients only reach band pixels
    x = logits.clone().requires_grad_(True)
    boundary_enhanced_loss(x, labels, band).backward()
    assert x.grad.abs().sum(1)[~band].eq(0).all() and x.grad.abs().sum() > 0
    # reductions
    none = boundary_enhanced_loss(logits, labels, band, reduction="none")
    assert none[~band].eq(0).all()
    assert torch.allclose(boundary_enhanced_loss(logits, labels, band, reduction="sum"), none.sum())
    plain = boundary_enhanced_loss(logits, labels, band, balanced=False)
    assert torch.allclose(plain, F.cross_entropy(logits, masked, ignore_index=255), atol=1e-6)
    # band=None: labels already restricted
    assert torch.allclose(boundary_enhanced_loss(logits, masked, None), loss)


def test_empty_band_gives_a_zero_loss_that_backpropagates() -> None:
    logits, labels, _ = random_case()
    logits.requires_grad_(True)
    for balanced in (True, False):
        loss = boundary_enhanced_loss(logits, labels, torch.zeros_like(labels, dtype=torch.bool), balanced=balanced)
        assert loss.item() == 0.0 and loss.requires_grad
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() == 0


@pytest.mark.parametrize(("balanced", "reduction"), [(True, "mean"), (False, "mean"), (True, "sum")])
def test_boundary_loss_gradcheck_float64(balanced: bool, reduction: str) -> None:
    logits, labels, band = random_case(b=2, k=3, h=4, w=5, dtype=torch.float64)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: boundary_enhanced_loss(x, labels, band, balanced=balanced, reduction=reduction), (logits,)
    )
    assert torch.autograd.gradcheck(lambda x: balanced_cross_entropy(x, labels, reduction="none"), (logits,))


def test_size_mismatches_raise_and_resize_logits_works() -> None:
    logits, labels, band = random_case(h=8, w=8)
    small = logits[..., ::2, ::2].contiguous()
    with pytest.raises(ValueError, match=r"band: spatial size \(8, 8\) differs from logits size \(4, 4\)"):
        boundary_enhanced_loss(small, labels, band)
    with pytest.raises(ValueError, match=r"logits: spatial size \(4, 4\) differs from labels size \(8, 8\)"):
        balanced_cross_entropy(small, labels)
    with pytest.raises(ValueError, match=r"band: shape \(2, 4, 4\) differs from labels shape \(2, 8, 8\)"):
        boundary_enhanced_loss(logits, labels, band[..., ::2, ::2])
    resized = boundary_enhanced_loss(small, labels, band, resize_logits=True)
    manual = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(resized, boundary_enhanced_loss(manual, labels, band))


def test_bad_inputs_raise_clear_errors() -> None:
    logits, labels, band = random_case()
    with pytest.raises(ValueError, match=r"class ids in 0..3 or 255 \(K = 4 logits\), got \[7\]"):
        balanced_cross_entropy(logits, torch.full_like(labels, 7))
    with pytest.raises(ValueError, match="reduction"):
        boundary_enhanced_loss(logits, labels, band, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        BoundaryEnhancedLoss(reduction="avg")
    with pytest.raises(TypeError, match="band"):
        boundary_enhanced_loss(logits, labels, band.long())
    with pytest.raises(TypeError, match="labels"):
        boundary_enhanced_loss(logits, labels.float(), band)
    with pytest.raises(ValueError, match="batch size"):
        balanced_cross_entropy(logits, labels[:1])
    with pytest.raises(ValueError, match="logits"):
        balanced_cross_entropy(logits[0], labels)


def test_module_accepts_sbe_output_and_is_registered() -> None:
    torch.manual_seed(0)
    cams = torch.rand(1, 20, 8, 8)
    labels = torch.zeros(1, 20)
    labels[0, [11, 14]] = 1
    feats = torch.randn(1, 16, 8, 8)
    pseudo = torch.tensor([0, 12, 15])[torch.randint(0, 3, (1, 32, 32))]  # background, dog, person
    sbe = superclass_prototypes(cams, labels, feats, pseudo)
    logits = torch.randn(1, 21, 32, 32)
    module = cdclip.create("boundary_enhanced_loss")
    assert isinstance(module, BoundaryEnhancedLoss)
    assert torch.equal(module(logits, sbe), boundary_enhanced_loss(logits, sbe.corrected_labels, sbe.band))
    with pytest.raises(ValueError, match="either"):
        module(logits, sbe, sbe.band)


# ---------------------------------------------------------------------- affinity loss
def test_affinity_labels_against_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (1, 5, 6), generator=g)
    labels[0, 0, 0] = 255
    radius = 2
    target = affinity_labels(labels, (5, 6), radius=radius)
    flat = labels.flatten().tolist()
    for i, j in itertools.product(range(30), repeat=2):
        (ri, ci), (rj, cj) = divmod(i, 6), divmod(j, 6)
        if 255 in (flat[i], flat[j]) or max(abs(ri - rj), abs(ci - cj)) > radius:
            expected = 255
        else:
            expected = int(flat[i] == flat[j])
        assert target[0, i, j].item() == expected
    assert radius_mask((5, 6), 0).equal(torch.eye(30, dtype=torch.bool))


def test_affinity_loss_known_answers_and_gradients() -> None:
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, :, 8:] = 1
    # features on a 4×4 grid, one direction per label, scaled so sigmoid saturates
    feats = torch.zeros(1, 2, 4, 4)
    feats[0, 0, :, :2] = 10.0
    feats[0, 1, :, 2:] = 10.0
    perfect = affinity_loss(feats, labels, radius=8)
    assert perfect.item() < 0.26  # positives ~0; negatives sit at sigmoid(0) = 0.5 -> 0.25
    cos = affinity_loss(feats, labels, radius=8, similarity="cosine")
    assert cos.item() == pytest.approx(0.0, abs=1e-6)
    wrong = affinity_loss(torch.flip(feats, dims=[-1]) * 0 + 10.0, labels, radius=8, similarity="cosine")
    assert wrong.item() == pytest.approx(0.5, abs=1e-6)  # everything similar: every negative costs 1
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    loss = AffinityLoss(radius=1)(x, torch.randint(0, 3, (2, 16, 16)))
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    ignored = affinity_loss(x, torch.full((2, 16, 16), 255))
    assert ignored.item() == 0.0
    assert isinstance(cdclip.create("affinity_loss"), AffinityLoss)
    with pytest.raises(ValueError, match="similarity"):
        affinity_loss(x, labels.expand(2, -1, -1), similarity="dot")
    with pytest.raises(ValueError, match="batch size"):
        affinity_loss(x, labels)
