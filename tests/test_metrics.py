"""ConfusionMatrix against an independent np.bincount count, on real VOC masks and random data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cdclip.data.classnames import VOC_CLASSES_WITH_BG
from cdclip.metrics import ConfusionMatrix, confusion_matrix


def _bincount_matrix(pred: np.ndarray, target: np.ndarray, n: int, ignore: int = 255) -> np.ndarray:
    keep = target != ignore
    return np.bincount(n * target[keep].astype(int) + pred[keep].astype(int), minlength=n * n).reshape(n, n)


def _bincount_miou(matrix: np.ndarray) -> float:
    ious = []
    for c in range(matrix.shape[0]):
        tp, fn, fp = matrix[c, c], matrix[c].sum() - matrix[c, c], matrix[:, c].sum() - matrix[c, c]
        if tp + fn + fp > 0:
            ious.append(tp / (tp + fn + fp))
    return float(np.mean(ious))


def _voc_mask(voc_root, name: str) -> np.ndarray:
    return np.array(Image.open(voc_root / "SegmentationClassAug" / f"{name}.png"), dtype=np.int64)


def test_matches_bincount_on_real_masks(voc_root):
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(21)
    total = np.zeros((21, 21), dtype=np.int64)
    for name in ["2007_004189", "2011_000003", "2008_002176"]:
        target = _voc_mask(voc_root, name)
        # corrupt a prediction: random class on 30 % of pixels, void pixels become background
        pred = np.where(target == 255, 0, target)
        flip = rng.random(target.shape) < 0.3
        pred = np.where(flip, rng.integers(0, 21, target.shape), pred)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
        total += _bincount_matrix(pred, target, 21)
    assert np.array_equal(cm.matrix.numpy(), total)
    assert cm.miou() == pytest.approx(_bincount_miou(total), abs=1e-12)
    assert 0.0 < cm.miou() < 1.0


def test_perfect_prediction_gives_one(voc_root):
    cm = ConfusionMatrix(21)
    target = _voc_mask(voc_root, "2011_000003")
    pred = target.copy()
    pred[target == 255] = 7  # predictions on void pixels never count
    cm.update(pred, target)
    assert cm.miou() == 1.0
    present = np.unique(target[target != 255])
    assert np.all(cm.iou()[present] == 1.0)
    assert np.isnan(np.delete(cm.iou(), present)).all()


def test_ignore_pixels_never_count():
    target = torch.tensor([[0, 1, 255], [255, 2, 255]])
    pred_a = torch.tensor([[0, 1, 0], [1, 2, 2]])
    pred_b = torch.tensor([[0, 1, 2], [0, 2, 1]])  # differs only where target is void
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(pred_a, target)
    b.update(pred_b, target)
    assert torch.equal(a.matrix, b.matrix)
    assert int(a.matrix.sum()) == 3
    assert a.miou() == 1.0


def test_iou_nan_for_absent_class_and_nanmean():
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))
    iou = cm.iou()
    # class 0: tp 1, fp 1 -> 1/2; class 1: tp 2, fn 1 -> 2/3; classes 2, 3: absent -> NaN
    np.testing.assert_allclose(iou[:2], [0.5, 2 / 3])
    assert np.isnan(iou[2:]).all()
    assert cm.miou() == pytest.approx((0.5 + 2 / 3) / 2)
    assert cm.pixel_accuracy() == pytest.approx(0.75)


def test_any_shape_reset_and_merge():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 5, (2, 3, 7, 9))
    target = rng.integers(0, 5, (2, 3, 7, 9))
    target[0, 0] = 255
    cm = ConfusionMatrix(5)
    cm.update(pred, target)
    assert np.array_equal(cm.matrix.numpy(), _bincount_matrix(pred.ravel(), target.ravel(), 5))
    other = ConfusionMatrix(5)
    other.update(pred, target)
    cm.merge(other)
    assert np.array_equal(cm.matrix.numpy(), 2 * _bincount_matrix(pred.ravel(), target.ravel(), 5))
    cm.reset()
    assert int(cm.matrix.sum()) == 0 and np.isnan(cm.miou())


def test_all_reduce_is_noop_without_distributed():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm
    assert torch.equal(cm.matrix, before)


def test_all_reduce_sums_over_processes(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.fail("torch.distributed is not available in this build")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cm = ConfusionMatrix(3)
        cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
        before = cm.matrix.clone()
        cm.all_reduce()  # one process: the sum is the matrix itself, but through the collective
        assert torch.equal(cm.matrix, before)
    finally:
        dist.destroy_process_group()


def test_table_lists_classes_in_percent():
    cm = ConfusionMatrix(21)
    cm.update(torch.tensor([0, 15, 15, 0]), torch.tensor([0, 15, 0, 0]))
    text = cm.table(VOC_CLASSES_WITH_BG)
    assert "person" in text and "background" in text and "aeroplane" in text
    assert "50.00" in text  # person: tp 1, fp 1
    assert "66.67" in text  # background: tp 2, fn 1
    assert text.splitlines()[-1].startswith("| mIoU")
    with pytest.raises(ValueError, match="class_names"):
        cm.table(["a", "b"])


def test_bad_inputs():
    with pytest.raises(TypeError, match="pred"):
        confusion_matrix(torch.rand(4), torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.zeros(5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="target"):
        confusion_matrix(torch.zeros(2, dtype=torch.long), torch.tensor([0, 21]), 21)
    with pytest.raises(ValueError, match="pred"):
        confusion_matrix(torch.tensor([0, 30]), torch.tensor([0, 1]), 21)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
