"""Jensen–Shannon kernel against scipy, properties, gradients, dtypes and memory layout."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist, jensenshannon

import cdclip
import cdclip.kernels.js as js_mod
from cdclip.functional import js_divergence, pairwise_js

LN2 = math.log(2)


def dirichlet(*shape: int, alpha: float = 0.5, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch._standard_gamma(torch.full(shape, alpha, dtype=torch.float64), generator=gen)
    return (x / x.sum(-1, keepdim=True)).to(dtype)


@pytest.mark.parametrize(
    "dtype,atol,backend",
    [(torch.float64, 1e-12, "torch"), (torch.float32, 2e-6, "torch"), (torch.float32, 2e-6, "native")],
)
def test_pairwise_matches_scipy_cdist(dtype, atol, backend):
    p = dirichlet(2, 37, 21, dtype=dtype, seed=1)
    q = dirichlet(2, 23, 21, dtype=dtype, seed=2)
    for b in range(2):
        ref_pp = cdist(p[b].double().numpy(), p[b].double().numpy(), "jensenshannon") ** 2
        ref_pq = cdist(p[b].double().numpy(), q[b].double().numpy(), "jensenshannon") ** 2
        out_pp = pairwise_js(p, backend=backend)[b].double().numpy()
        np.testing.assert_allclose(out_pp, ref_pp, atol=atol, rtol=0)
        np.testing.assert_allclose(pairwise_js(p, q, backend=backend)[b].double().numpy(), ref_pq, atol=atol, rtol=0)


def test_matched_matches_scipy_jensenshannon():
    p, q = dirichlet(50, 13, seed=3), dirichlet(50, 13, seed=4)
    ref = jensenshannon(p.numpy(), q.numpy(), axis=-1) ** 2
    np.testing.assert_allclose(js_divergence(p, q).numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("block_elements", [1, 7, 100, 5000, 1 << 22])
def test_block_size_does_not_change_the_result(block_elements):
    p = dirichlet(2, 19, 5, seed=5)
    q = dirichlet(2, 11, 5, seed=6)
    full_pp = cdist(p[0].numpy(), p[0].numpy(), "jensenshannon") ** 2
    np.testing.assert_allclose(pairwise_js(p, block_elements=block_elements)[0].numpy(), full_pp, atol=1e-12)
    np.testing.assert_allclose(
        pairwise_js(p, q, block_elements=block_elements), pairwise_js(p, q, block_elements=1 << 22), atol=1e-14
    )


def test_zero_probabilities_exact_values_and_finite_gradients():
    p = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]], dtype=torch.float64)
    out = pairwise_js(p)
    assert out[0, 0, 1].item() == pytest.approx(LN2, abs=1e-15)  # disjoint supports: the maximum
    ref = cdist(p[0].numpy(), p[0].numpy(), "jensenshannon") ** 2
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-15)
    leaf = p.clone().requires_grad_()
    pairwise_js(leaf).sum().backward()
    assert torch.isfinite(leaf.grad).all()
    leaf2 = p.clone().requires_grad_()
    js_divergence(leaf2[0, 0], leaf2[0, 1]).backward()
    assert torch.isfinite(leaf2.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    p = dirichlet(1, 30, 21, seed=7)
    out = pairwise_js(p.to(dtype))
    assert out.dtype == torch.float32
    # the only error left is the rounding of the inputs themselves
    np.testing.assert_allclose(out.double().numpy(), pairwise_js(p.to(dtype).double()).numpy(), atol=2e-6)
    assert js_divergence(p[0, 0].to(dtype), p[0, 1].to(dtype)).dtype == torch.float32


def test_gradcheck_float64():
    p = dirichlet(2, 5, 4, alpha=2.0, seed=8).requires_grad_()
    q = dirichlet(2, 3, 4, alpha=2.0, seed=9).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: pairwise_js(a, block_elements=20), (p,))
    assert torch.autograd.gradcheck(lambda a, b: pairwise_js(a, b, block_elements=20), (p, q))
    assert torch.autograd.gradcheck(js_divergence, (p, dirichlet(2, 5, 4, alpha=2.0, seed=10).requires_grad_()))


def test_module_equals_functional_and_registry():
    p = dirichlet(2, 9, 6, seed=11)
    module = cdclip.JSDivergence(block_elements=64)
    torch.testing.assert_close(module(p), pairwise_js(p))
    torch.testing.assert_close(cdclip.create("js_divergence")(p), pairwise_js(p))
    assert "block_elements=64" in repr(module)


def test_no_n_by_m_by_k_tensor(monkeypatch):
    """The pairwise term is computed in blocks: no tensor ever holds N*M*K elements."""
    p = dirichlet(1, 64, 16, dtype=torch.float32, seed=12)
    largest = 0
    real_empty = torch.empty

    def spy(*args, **kwargs):
        nonlocal largest
        t = real_empty(*args, **kwargs)
        largest = max(largest, t.numel())
        return t

    monkeypatch.setattr(js_mod.torch, "empty", spy)
    pairwise_js(p, block_elements=4096, backend="torch")
    assert 0 < largest <= 4096 < 64 * 64 * 16


def test_compile_failure_falls_back_once_with_warning(monkeypatch):
    p = dirichlet(1, 12, 5, dtype=torch.float32, seed=13)
    expected = pairwise_js(p)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(js_mod, "_compiled_block", None)
    monkeypatch.setattr(js_mod, "_compile_failed", False)
    monkeypatch.setattr(js_mod.torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="falling back to the eager kernel"):
        out = pairwise_js(p, backend="compile")
    torch.testing.assert_close(out, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        torch.testing.assert_close(pairwise_js(p, backend="compile"), expected)


@pytest.mark.parametrize(
    "args,exc,match",
    [
        ((torch.rand(4, 5),), ValueError, r"p: expected shape \(B, N, K\)"),
        ((torch.ones(1, 3, 4, dtype=torch.long),), TypeError, "p: expected a floating-point tensor"),
        ((torch.rand(1, 3, 4), torch.rand(1, 3, 5)), ValueError, "q: expected shape"),
        ((torch.rand(1, 3, 4), torch.rand(2, 3, 4)), ValueError, "q: expected shape"),
        (([[0.5, 0.5]],), TypeError, "p: expected a torch.Tensor"),
    ],
)
def test_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        pairwise_js(*args)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match=r"backend: expected one of \('auto', 'native', 'torch', 'compile'\), got 'numba'"):
        pairwise_js(torch.rand(1, 3, 4).softmax(-1), backend="numba")
    with pytest.raises(ValueError, match="backend: expected one of"):
        cdclip.JSDivergence(backend="fast")


def test_matched_shapes_are_not_broadcast():
    with pytest.raises(ValueError, match="no broadcasting"):
        js_divergence(torch.rand(3, 4), torch.rand(1, 4))


prob_rows = st.integers(min_value=1, max_value=9).flatmap(
    lambda k: st.lists(
        # exact zeros and ordinary values (scipy itself returns inf on subnormal inputs, so they are no oracle)
        st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1.0)), min_size=k, max_size=k).filter(lambda r: sum(r) > 1e-3),
        min_size=1,
        max_size=8,
    )
)


@settings(max_examples=60, deadline=None)
@given(rows=prob_rows)
def test_properties(rows):
    p = torch.tensor(rows, dtype=torch.float64)
    p = (p / p.sum(-1, keepdim=True))[None]
    out = pairwise_js(p)[0]
    assert torch.all(out >= 0) and torch.all(out <= LN2 + 1e-12)  # bounds
    torch.testing.assert_close(out, out.T, rtol=0, atol=1e-14)  # symmetry
    assert torch.all(out.diagonal() == 0)  # zero diagonal, exactly
    torch.testing.assert_close(out, pairwise_js(p, p.clone())[0], rtol=0, atol=1e-12)  # q = p path
    ref = cdist(p[0].numpy(), p[0].numpy(), "jensenshannon") ** 2
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
