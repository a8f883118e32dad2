"""PAR: the refinement pulls leaking masks back to colour edges, and matches the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cdclip
from cdclip.refine.par import PAR, par, par_affinity

DIRS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _reference_par(image: np.ndarray, masks: np.ndarray, dilations, num_iter, w_rgb=0.3, w_pos=0.01):
    """Independent float64 numpy PAR: materialise every neighbour by clamped index gathering."""
    _, height, width = image.shape
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    offsets = [(d * dy, d * dx) for d in dilations for dy, dx in DIRS]

    def neighbours(x):  # (c, H, W) -> (c, P, H, W)
        return np.stack(
            [x[:, np.clip(rows + dy, 0, height - 1), np.clip(cols + dx, 0, width - 1)] for dy, dx in offsets],
            axis=1,
        )

    near = neighbours(image)
    std = near.std(axis=1, ddof=1, keepdims=True)
    logits = -((np.abs(near - image[:, None]) / (std + 1e-8) / w_rgb) ** 2).mean(axis=0)
    weights = np.exp(logits - logits.max(axis=0))
    weights /= weights.sum(axis=0)
    dist = np.array([math.hypot(dy, dx) for dy, dx in offsets])
    pos = -((dist / dist.std(ddof=1) / w_rgb) ** 2)
    pos = np.exp(pos - pos.max())
    weights = weights + w_pos * (pos / pos.sum())[:, None, None]
    for _ in range(num_iter):
        masks = (neighbours(masks) * weights[None]).sum(axis=1)
    return masks


def _two_colour_scene(size: int = 32, edge: int = 16, leak: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Red left half, blue right half; the foreground mask covers the red half plus ``leak`` columns."""
    image = torch.zeros(1, 3, size, size)
    image[:, 0, :, :edge] = 1.0
    image[:, 2, :, edge:] = 1.0
    image += 0.02 * torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    fg = torch.zeros(1, 1, size, size)
    fg[..., : edge + leak] = 0.9
    masks = torch.cat([1.0 - fg, fg], dim=1)  # [background, foreground]
    return image, masks


def test_leak_over_colour_edge_is_pulled_back():
    image, masks = _two_colour_scene()
    before = masks.argmax(1)[0]
    assert (before[:, 16:20] == 1).all()  # the mask leaks 4 columns into the blue half
    refined = par(image, masks, dilations=(1, 2, 4, 8), num_iter=20)
    after = refined.argmax(1)[0]
    assert (after[:, :16] == 1).all(), "the red half must stay foreground"
    assert (after[:, 16:] == 0).all(), "the leak over the edge must be pulled back"


def test_matches_independent_numpy_formula():
    rng = np.random.default_rng(0)
    image = rng.random((1, 3, 12, 14))
    masks = rng.random((1, 4, 12, 14))
    dilations = (1, 2, 3)
    expected = _reference_par(image[0], masks[0], dilations, num_iter=3)
    got = par(torch.tensor(image, dtype=torch.float32), torch.tensor(masks, dtype=torch.float32), dilations, 3)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-4, atol=1e-5)
    got64 = par(torch.tensor(image), torch.tensor(masks), dilations, 3)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64[0].numpy(), expected, rtol=1e-9, atol=1e-10)


def test_weights_are_softmax_plus_position_term():
    image = torch.rand(2, 3, 10, 11)
    weights = par_affinity(image, dilations=(1, 2))
    assert weights.shape == (2, 16, 10, 11)
    torch.testing.assert_close(weights.sum(1), torch.full((2, 10, 11), 1.01))
    assert (weights > 0).all()


def test_invariant_to_per_channel_normalisation():
    image, masks = _two_colour_scene(size=20, edge=10, leak=2)
    mean = torch.tensor([0.481, 0.458, 0.408]).view(1, 3, 1, 1)
    std = torch.tensor([0.269, 0.261, 0.276]).view(1, 3, 1, 1)
    raw = par(image * 255.0, masks, dilations=(1, 2, 4), num_iter=5)
    normalised = par((image - mean) / std, masks, dilations=(1, 2, 4), num_iter=5)
    torch.testing.assert_close(raw, normalised, rtol=1e-4, atol=1e-5)


def test_batched_equals_one_by_one_and_resizes_image():
    image = torch.rand(3, 3, 24, 20)
    masks = torch.rand(3, 5, 12, 10)
    batched = par(image, masks, dilations=(1, 2), num_iter=4)
    single = torch.cat([par(image[i : i + 1], masks[i : i + 1], dilations=(1, 2), num_iter=4) for i in range(3)])
    assert batched.shape == (3, 5, 12, 10)
    torch.testing.assert_close(batched, single)


def test_half_precision_input_is_computed_in_float32():
    image, masks = _two_colour_scene(size=16, edge=8, leak=2)
    out_half = par(image.half(), masks.half(), dilations=(1, 2), num_iter=10)
    # the same (half-rounded) inputs given in float32: only the final cast to half may differ
    out_float = par(image.half().float(), masks.half().float(), dilations=(1, 2), num_iter=10)
    assert out_half.dtype == torch.float16
    assert torch.isfinite(out_half).all()
    torch.testing.assert_close(out_half, out_float.half())


def test_flat_image_and_constant_mask_stay_constant_up_to_growth():
    image = torch.full((1, 3, 9, 9), 0.5)  # zero colour spread: weights must not be NaN
    masks = torch.full((1, 2, 9, 9), 0.25)
    out = par(image, masks, dilations=(1, 2), num_iter=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, masks * 1.01**3)


def test_module_registry_and_gradients():
    module = cdclip.create("par", dilations=(1, 2), num_iter=2)
    assert isinstance(module, PAR) and module.num_iter == 2
    image = torch.rand(1, 3, 8, 8)
    masks = torch.rand(1, 2, 8, 8, requires_grad=True)
    module(image, masks).sum().backward()
    assert masks.grad is not None and torch.isfinite(masks.grad).all()
    assert "dilations=(1, 2)" in repr(module)


def test_uint8_image_accepted_and_zero_iterations_identity():
    image = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    masks = torch.rand(1, 2, 8, 8)
    torch.testing.assert_close(par(image, masks, num_iter=0), masks)
    assert par(image, masks, dilations=(1,), num_iter=1).shape == masks.shape


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image": torch.rand(3, 8, 8)}, ValueError, "image"),
        ({"masks": torch.rand(2, 8, 8)}, ValueError, "masks"),
        ({"masks": torch.ones(1, 2, 8, 8, dtype=torch.long)}, TypeError, "masks"),
        ({"image": torch.rand(2, 3, 8, 8)}, ValueError, "batch"),
        ({"dilations": (0, 1)}, ValueError, "dilations"),
        ({"num_iter": -1}, ValueError, "num_iter"),
        ({"masks": torch.full((1, 2, 8, 8), float("nan"))}, ValueError, "masks"),
    ],
)
def test_bad_inputs_raise(kwargs, error, match):
    args = {"image": torch.rand(1, 3, 8, 8), "masks": torch.rand(1, 2, 8, 8), "dilations": (1,), "num_iter": 1}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        par(**args)
