"""SBE super-class prototypes, boundary band and corrected labels on constructed scenes with known answers.

Scene (label map 64×64, CAM and feature grid 16×16, i.e. stride 4): two touching objects in rows
16..47, the left one in columns 8..31, the right one in columns 32..55, background elsewhere. DINO
features are one unit direction per object plus background (small noise); the left object's CAM
over-activates two cells into the right object, and the pseudo labels claim ``over`` extra pixel
columns of the right object for the left class.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import cdclip
from cdclip.data.classnames import COCO_CLASSES, VOC_CLASSES
from cdclip.prototypes.superclass import SBEOutput, SuperClassPrototypes, boundary_band, superclass_prototypes

PERSON = VOC_CLASSES.index("person")
DOG = VOC_CLASSES.index("dog")
CAT = VOC_CLASSES.index("cat")
CAR = VOC_CLASSES.index("car")
ROWS = slice(20, 44)  # interior rows: away from the objects' top/bottom edges and corners
EDGE = 32  # first column of the right object


def scene(
    left: int = PERSON,
    right: int = DOG,
    over: int = 2,
    noise: float = 0.05,
    seed: int = 0,
    num_classes: int = 20,
    features_like_classes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = w = 16
    feats = torch.zeros(1, 8, h, w)
    feats[:, 0] = 1.0  # background direction
    feats[:, :, 4:12, 2:8] = 0.0
    feats[:, 1, 4:12, 2:8] = 1.0  # left object
    feats[:, :, 4:12, 8:14] = 0.0
    feats[:, 2, 4:12, 8:14] = 1.0  # right object
    feats = feats + noise * torch.randn(feats.shape, generator=g)
    cams = torch.zeros(1, num_classes, h, w)
    cams[0, left, 4:12, 2:8] = 1.0
    cams[0, left, 4:12, 8:10] = 0.8  # over-activation across the shared edge
    cams[0, right, 4:12, 8:14] = 0.9
    labels = torch.zeros(1, num_classes)
    labels[0, [left, right]] = 1.0
    y = torch.zeros(1, 64, 64, dtype=torch.long)
    y[0, 16:48, 8 : EDGE + over] = left + 1
    y[0, 16:48, EDGE + over : 56] = right + 1
    return cams, labels, feats, y


def band_columns(band: torch.Tensor) -> list[int]:
    """Columns of the band that hold on every interior row (the vertical edges)."""
    return band[0, ROWS].all(0).nonzero().flatten().tolist()


def test_band_lies_on_the_true_edge_and_correction_removes_over_activation() -> None:
    cams, labels, feats, y = scene(PERSON, DOG, over=2)
    out = superclass_prototypes(cams, labels, feats, y, "voc")
    assert isinstance(out, SBEOutput)
    # S* follows DINO: person left of column 32, animal from 32 on (super-classes 1 and 2)
    s_row = out.superclass_map[0, 30]
    assert s_row[8:32].eq(1).all() and s_row[32:56].eq(2).all() and s_row[:6].eq(0).all()
    # k = 5: the band is the 2 columns either side of each vertical edge, and nothing else inside
    assert band_columns(out.band) == [6, 7, 8, 9, 30, 31, 32, 33, 54, 55, 56, 57]
    assert out.band[0, ROWS].any(0).nonzero().flatten().tolist() == band_columns(out.band)
    # the over-activated columns 32, 33 become dog; nothing else changes inside the rows
    fixed = out.corrected_labels[0, ROWS]
    assert fixed[:, 32:34].eq(DOG + 1).all()
    expected = y[0, ROWS].clone()
    expected[:, 32:34] = DOG + 1
    assert torch.equal(fixed, expected)


def test_over_activation_into_background_is_corrected_to_background() -> None:
    cams, labels, feats, y = scene(PERSON, DOG, over=0)
    y[0, 14:16, 12:28] = PERSON + 1  # pseudo label leaks 2 rows above the person
    out = superclass_prototypes(cams, labels, feats, y)
    assert out.band[0, 14:18, 12:28].all()
    assert out.corrected_labels[0, 14:16, 12:28].eq(0).all()
    assert torch.equal(out.corrected_labels[0, ROWS], y[0, ROWS])


def test_same_superclass_neighbours_are_not_corrected() -> None:
    cams, labels, feats, y = scene(CAT, DOG, over=2)
    out = superclass_prototypes(cams, labels, feats, y)
    assert out.valid[0].tolist() == [True, False, True, False, False]  # background, animal
    assert out.superclass_map[0, ROWS, 8:56].eq(2).all()
    assert band_columns(out.band) == [6, 7, 8, 9, 54, 55, 56, 57]  # no band between cat and dog
    assert not out.band[0, ROWS, 28:36].any()
    assert torch.equal(out.corrected_labels[0, ROWS], y[0, ROWS])  # the cat over-activation stays


def test_band_width_is_the_kernel() -> None:
    cams, labels, feats, y = scene(PERSON, DOG, over=4)
    narrow = superclass_prototypes(cams, labels, feats, y, band_kernel=5)
    wide = superclass_prototypes(cams, labels, feats, y, band_kernel=9)
    assert 28 in band_columns(wide.band) and 35 in band_columns(wide.band)
    assert narrow.corrected_labels[0, ROWS, 32:34].eq(DOG + 1).all()
    assert narrow.corrected_labels[0, ROWS, 34:36].eq(PERSON + 1).all()  # outside a 5-wide band
    assert wide.corrected_labels[0, ROWS, 32:36].eq(DOG + 1).all()
    assert torch.equal(superclass_prototypes(cams, labels, feats, y, band_kernel=1).corrected_labels, y)


def test_present_class_without_confident_seed_falls_back_cleanly() -> None:
    cams, labels, feats, y = scene(PERSON, DOG, over=2)
    cams[0, DOG] *= 0.4  # max 0.36 < seed_threshold: animal has no seed
    out = superclass_prototypes(cams, labels, feats, y)
    assert out.valid[0].tolist() == [True, True, False, False, False]
    for t in (out.superclass_cams, out.prototypes, out.prototype_cams):
        assert torch.isfinite(t).all()
    assert out.prototypes[0, 2].eq(0).all() and out.prototype_cams[0, 2].eq(0).all()
    assert not out.superclass_map.eq(2).any()  # excluded from the argmax
    norms = out.prototypes[0, :2].norm(dim=-1)
    assert torch.allclose(norms, torch.ones(2), atol=1e-6)


def test_image_with_nothing_valid_keeps_its_labels() -> None:
    cams, labels, feats, y = scene()
    y_ignored = torch.full_like(y, 255)
    out = superclass_prototypes(cams, torch.zeros_like(labels), feats, y_ignored)
    assert out.valid[0].tolist() == [False] * 5  # background has no seed: every pseudo label is ignored
    assert out.superclass_map.eq(255).all() and not out.band.any()
    assert torch.equal(out.corrected_labels, y_ignored)
    assert torch.isfinite(out.prototype_cams).all() and torch.isfinite(out.prototypes).all()


def test_superclass_cams_are_max_over_present_members_and_background_complement() -> None:
    cams, labels, feats, y = scene(CAT, DOG)
    cams[0, CAR] = 0.7  # absent class: must not count
    out = superclass_prototypes(cams, labels, feats, y)
    animal = torch.maximum(cams[0, CAT], cams[0, DOG])
    assert torch.allclose(out.superclass_cams[0, 2], animal)
    assert torch.allclose(out.superclass_cams[0, 0], 1 - animal)
    assert out.superclass_cams[0, 3].eq(0).all()  # vehicle: car is absent
    assert out.prototype_cams.amax(dim=(-1, -2))[0, [0, 2]].allclose(torch.ones(2))


def test_feature_layouts_and_resampling_agree() -> None:
    cams, labels, feats, y = scene()
    ref = superclass_prototypes(cams, labels, feats, y)
    tokens = superclass_prototypes(cams, labels, feats.flatten(2).transpose(1, 2), y)
    fine = feats.repeat_interleave(2, -1).repeat_interleave(2, -2)  # a stride-2 grid (32×32) of the same scene
    resampled = superclass_prototypes(cams, labels, fine, y)  # bilinear 32→16 averages equal 2×2 blocks
    native = superclass_prototypes(cams, labels, fine, y, feature_resolution="native")
    for other in (tokens, resampled):
        assert torch.equal(other.band, ref.band) and torch.equal(other.corrected_labels, ref.corrected_labels)
        assert torch.allclose(other.prototypes, ref.prototypes, atol=1e-5)
    assert native.prototype_cams.shape == (1, 5, 32, 32)
    assert band_columns(native.band) == band_columns(ref.band)
    assert torch.equal(native.corrected_labels[0, ROWS], ref.corrected_labels[0, ROWS])


def test_cam_weighting_and_batch_consistency() -> None:
    a = scene(PERSON, DOG, over=2, seed=1)
    b = scene(CAT, DOG, over=2, seed=2)
    batch = [torch.cat([u, v]) for u, v in zip(a, b)]
    out = superclass_prototypes(*batch, weighting="cam")
    for i, single in enumerate((a, b)):
        one = superclass_prototypes(*single, weighting="cam")
        assert torch.equal(out.band[i], one.band[0])
        assert torch.equal(out.corrected_labels[i], one.corrected_labels[0])
        assert torch.allclose(out.prototypes[i], one.prototypes[0], atol=1e-6)
    assert band_columns(out.band[:1]) == [6, 7, 8, 9, 30, 31, 32, 33, 54, 55, 56, 57]


def test_fill_ignored_relabels_ignored_band_pixels_only_when_asked() -> None:
    cams, labels, feats, y = scene(PERSON, DOG, over=0)
    y[0, ROWS, 30:34] = 255
    kept = superclass_prototypes(cams, labels, feats, y)
    filled = superclass_prototypes(cams, labels, feats, y, fill_ignored=True)
    assert kept.corrected_labels[0, ROWS, 30:34].eq(255).all()
    assert filled.corrected_labels[0, ROWS, 30:32].eq(PERSON + 1).all()
    assert filled.corrected_labels[0, ROWS, 32:34].eq(DOG + 1).all()


def test_dtypes_float64_and_bfloat16() -> None:
    cams, labels, feats, y = scene()
    ref = superclass_prototypes(cams, labels, feats, y)
    out64 = superclass_prototypes(cams.double(), labels, feats.double(), y)
    assert out64.prototypes.dtype == torch.float64 and torch.equal(out64.corrected_labels, ref.corrected_labels)
    out16 = superclass_prototypes(cams.bfloat16(), labels.bool(), feats.bfloat16(), y.int())
    assert out16.prototypes.dtype == torch.float32 and torch.equal(out16.band, ref.band)


def test_coco_grouping_and_identity_grouping() -> None:
    cams, labels, feats, y = scene(COCO_CLASSES.index("person"), COCO_CLASSES.index("dog"), num_classes=80)
    out = superclass_prototypes(cams, labels, feats, y, "coco")
    assert out.superclass_cams.shape == (1, 13, 16, 16)
    assert out.corrected_labels[0, ROWS, 32:34].eq(COCO_CLASSES.index("dog") + 1).all()
    # identity: cat and dog are separate super-classes, so the cat over-activation is corrected
    cams, labels, feats, y = scene(CAT, DOG, over=2)
    ident = superclass_prototypes(cams, labels, feats, y, "identity")
    assert ident.superclass_cams.shape[1] == 21
    assert ident.corrected_labels[0, ROWS, 32:34].eq(DOG + 1).all()


def test_module_registry_and_function_agree() -> None:
    module = cdclip.create("superclass_prototypes", grouping="voc", band_kernel=5)
    assert isinstance(module, SuperClassPrototypes)
    assert cdclip.SuperClassPrototypes is SuperClassPrototypes
    import cdclip.functional as CF

    assert CF.boundary_band is boundary_band
    cams, labels, feats, y = scene()
    a, b = module(cams, labels, feats, y), superclass_prototypes(cams, labels, feats, y)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert "band_kernel=5" in repr(module)
    assert SuperClassPrototypes("fg")(cams, labels, feats, y).superclass_cams.shape[1] == 2


def test_bad_inputs_raise_clear_errors() -> None:
    cams, labels, feats, y = scene()
    with pytest.raises(ValueError, match="class counts differ"):
        superclass_prototypes(cams, torch.zeros(1, 21), feats, y)
    with pytest.raises(ValueError, match="covers 20 classes but cams have C = 21"):
        superclass_prototypes(torch.zeros(1, 21, 16, 16), torch.zeros(1, 21), feats, y, "voc")
    with pytest.raises(TypeError, match="pseudo_labels"):
        superclass_prototypes(cams, labels, feats, y.float())
    with pytest.raises(ValueError, match=r"class ids in 0..20 or 255, got \[40\]"):
        superclass_prototypes(cams, labels, feats, torch.full_like(y, 40))
    with pytest.raises(ValueError, match="band_kernel"):
        superclass_prototypes(cams, labels, feats, y, band_kernel=4)
    with pytest.raises(ValueError, match="weighting"):
        superclass_prototypes(cams, labels, feats, y, weighting="soft")
    with pytest.raises(ValueError, match="seed_threshold"):
        superclass_prototypes(cams, labels, feats, y, seed_threshold=1.5)
    with pytest.raises(ValueError, match="batch size"):
        superclass_prototypes(cams, labels, torch.cat([feats, feats]), y)
    with pytest.raises(ValueError, match="feature_grid"):
        superclass_prototypes(cams, labels, torch.randn(1, 250, 8), y)
    with pytest.raises(ValueError, match="cams"):
        superclass_prototypes(cams[0], labels, feats, y)
    with pytest.raises(TypeError, match="floating"):
        superclass_prototypes(cams, labels, feats.long(), y)


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_boundary_band_matches_scipy_grey_morphology(kernel: int) -> None:
    """Outside oracle: scipy's grey dilation/erosion (reflect mode never invents a label at the border)."""
    rng = np.random.default_rng(kernel)
    blocks = rng.integers(0, 4, size=(2, 6, 7))
    labels = np.kron(blocks, np.ones((1, 5, 5), dtype=np.int64))  # (2, 30, 35) blocky label maps
    band = boundary_band(torch.from_numpy(labels), kernel)
    for i in range(2):
        dil = ndimage.grey_dilation(labels[i], size=(kernel, kernel), mode="reflect")
        ero = ndimage.grey_erosion(labels[i], size=(kernel, kernel), mode="reflect")
        assert np.array_equal(band[i].numpy(), dil != ero)


def test_boundary_band_ignores_ignored_pixels() -> None:
    labels = torch.zeros(1, 9, 9, dtype=torch.long)
    labels[0, :, 5:] = 255
    assert not boundary_band(labels, 3).any()  # one label next to ignore: no boundary
    labels[0, :, 7:] = 1
    assert not boundary_band(labels, 5).any()  # the labels are 3 columns apart: out of reach of k = 5
    band = boundary_band(labels, 7)
    assert band[0].any(0).nonzero().flatten().tolist() == [4, 7] and band[0, :, [4, 7]].all()
    with pytest.raises(TypeError):
        boundary_band(labels.float())
