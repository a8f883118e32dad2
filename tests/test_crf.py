"""Dense CRF: input validation (no uint8 wrap-around), the missing-extra message, and refinement."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from cdclip.refine.crf import DenseCRF, dense_crf


def _has_pydensecrf() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def _scene(size: int = 40, edge: int = 20, leak: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Red left, blue right; foreground probability 0.6 leaks ``leak`` columns past the edge."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:, :edge] = (220, 30, 30)
    image[:, edge:] = (30, 30, 220)
    fg = np.full((size, size), 0.1, dtype=np.float32)
    fg[:, :edge] = 0.9
    fg[:, edge : edge + leak] = 0.6
    return image, np.stack([1.0 - fg, fg])


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.utils", None)
    image, probs = _scene()
    with pytest.raises(ImportError, match=r"pip install cdclip\[crf\]"):
        dense_crf(image, probs)


def test_float_image_is_refused_not_wrapped():
    image, probs = _scene()
    with pytest.raises(TypeError, match="denormalize"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(TypeError, match="uint8"):
        dense_crf(torch.from_numpy(image).float().permute(2, 0, 1), probs)


def test_integer_image_out_of_range_is_refused():
    image, probs = _scene()
    wide = image.astype(np.int64)
    wide[0, 0, 0] = 256  # casting would wrap this to 0
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        dense_crf(wide, probs)


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (np.full((2, 40, 40), 0.5, dtype=np.float32)[:, :30], "spatial size"),
        (np.full((40, 40), 0.5, dtype=np.float32), r"\(C, H, W\)"),
        (np.full((2, 40, 40), 3.0, dtype=np.float32), "softmax"),
        (np.full((2, 40, 40), np.nan, dtype=np.float32), "finite"),
    ],
)
def test_bad_probabilities(probs, match):
    image, _ = _scene()
    with pytest.raises(ValueError, match=match):
        dense_crf(image, probs)


def test_bad_image_shape():
    _, probs = _scene()
    with pytest.raises(ValueError, match="image"):
        dense_crf(np.zeros((40, 40), dtype=np.uint8), probs)


def test_crf_pulls_leak_back_to_colour_edge():
    image, probs = _scene()
    if not _has_pydensecrf():  # the extra is optional: then the call must say how to install it
        with pytest.raises(ImportError, match=r"cdclip\[crf\]"):
            dense_crf(image, probs)
        return
    refined = dense_crf(image, probs)
    assert refined.shape == probs.shape and refined.dtype == np.float32
    labels = refined.argmax(0)
    assert (probs.argmax(0)[:, 20:24] == 1).all()
    assert (labels[:, :20] == 1).all() and (labels[:, 20:] == 0).all()
    # tensors in, tensor out; (3, H, W) uint8 tensors accepted; the module uses the same defaults
    out = DenseCRF()(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(probs))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), refined, atol=1e-6)


def test_defaults_are_weclip_parameters_passed_to_pydensecrf():
    image, probs = _scene(size=24, edge=12, leak=3)
    if not _has_pydensecrf():
        with pytest.raises(ImportError, match=r"cdclip\[crf\]"):
            dense_crf(image, probs)
        return
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    crf = dcrf.DenseCRF2D(24, 24, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=64, srgb=5, rgbim=np.ascontiguousarray(image), compat=4)
    expected = np.asarray(crf.inference(10)).reshape(2, 24, 24)
    np.testing.assert_allclose(dense_crf(image, probs), expected, atol=1e-6)
    assert "srgb=5" in repr(DenseCRF())
