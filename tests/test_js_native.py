"""The fused C kernel of the JS divergence: accuracy, threads, the build cache and the fallbacks."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

import cdclip.kernels.js as js_mod
from cdclip.functional import pairwise_js
from cdclip.kernels import _native

LN2 = math.log(2)


def _cannot_build() -> str | None:
    """A reason only for what the kernel cannot change: the CPU, the switch, no compiler at all."""
    try:
        return _native.why_unavailable() or (_native._compiler() and None)
    except _native.NativeUnavailable as err:
        return str(err)


pytestmark = pytest.mark.skipif(_cannot_build() is not None, reason=f"native kernels cannot run here: {_cannot_build()}")


def softmax_rows(*shape: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=gen) * scale, dim=-1)


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """An empty kernel cache and no remembered library or failure for this test."""
    monkeypatch.setenv(_native.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setattr(_native, "_failed", {})
    monkeypatch.setattr(js_mod, "_native_warned", False)
    return tmp_path / "cache"


@pytest.fixture
def started(monkeypatch) -> list[int]:
    """One entry per helper thread the kernel starts."""
    calls: list[int] = []
    real_thread = js_mod.threading.Thread

    def counting_thread(*args, **kwargs):
        calls.append(1)
        return real_thread(*args, **kwargs)

    monkeypatch.setattr(js_mod.threading, "Thread", counting_thread)
    return calls


def test_native_is_the_default_on_this_cpu():
    assert js_mod._native_library(requested=True) is not None


@pytest.mark.parametrize("k", [1, 7, 8, 9, 21, 103])
@pytest.mark.parametrize("n,m", [(1, 1), (2, 5), (17, 17), (45, 33)])
def test_native_matches_scipy_for_any_k_and_size(n, m, k):
    """Masked last registers (k not a multiple of 8), odd column counts, tile edges (16 rows, 32 columns)."""
    p = softmax_rows(2, n, k, seed=n * 100 + k)
    q = softmax_rows(2, m, k, seed=m * 100 + k + 1)
    for b in range(2):
        ref_pq = cdist(p[b].double().numpy(), q[b].double().numpy(), "jensenshannon") ** 2
        ref_pp = cdist(p[b].double().numpy(), p[b].double().numpy(), "jensenshannon") ** 2
        np.testing.assert_allclose(pairwise_js(p, q, backend="native")[b].double().numpy(), ref_pq, atol=2e-6, rtol=0)
        out_pp = pairwise_js(p, backend="native")[b]
        np.testing.assert_allclose(out_pp.double().numpy(), ref_pp, atol=2e-6, rtol=0)
        assert torch.equal(out_pp, out_pp.T)  # the mirror is written, not recomputed
        assert torch.all(out_pp.diagonal() == 0)


def test_native_equals_the_torch_blocks():
    p = softmax_rows(3, 150, 45, seed=1)
    q = softmax_rows(3, 70, 45, seed=2)
    torch.testing.assert_close(pairwise_js(p, backend="native"), pairwise_js(p, backend="torch"), rtol=0, atol=2e-6)
    torch.testing.assert_close(pairwise_js(p, q, backend="native"), pairwise_js(p, q, backend="torch"), rtol=0, atol=2e-6)


def test_native_zero_probabilities_and_bounds():
    p = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    out = pairwise_js(p, backend="native")
    assert torch.isfinite(out).all()
    assert out[0, 0, 1].item() == pytest.approx(LN2, abs=1e-6)  # disjoint supports: the maximum
    assert torch.all(out >= 0) and torch.all(out <= LN2)
    ref = cdist(p[0].double().numpy(), p[0].double().numpy(), "jensenshannon") ** 2
    np.testing.assert_allclose(out[0].double().numpy(), ref, atol=1e-6)


def test_native_propagates_nan_like_the_torch_blocks():
    # pairwise_js itself rejects NaN before any backend runs (tests/test_contracts.py); the kernel
    # underneath must still confine a NaN to its own row and column
    p = softmax_rows(1, 4, 8, seed=3)
    p[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="p: expected finite probabilities"):
        pairwise_js(p, backend="native")
    out = js_mod._native_pairwise(js_mod._native_library(requested=True), p, p, True)
    assert torch.isnan(out[0, 1, [0, 2, 3]]).all() and torch.isnan(out[0, [0, 2, 3], 1]).all()
    assert torch.isfinite(out[0, 0, 2])


def test_threads_give_bitwise_the_same_result(monkeypatch, started):
    p = softmax_rows(2, 300, 103, seed=4)
    monkeypatch.setattr(js_mod, "_NATIVE_TERMS_PER_THREAD", 1)  # split however small
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pairwise_js(p, backend="native")
        assert not started
        torch.set_num_threads(3)
        three = pairwise_js(p, backend="native")
        assert len(started) == 2  # two helpers beside the calling thread
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)  # every entry is computed by one thread, in one order


def test_threads_follow_the_work(started):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        pairwise_js(softmax_rows(1, 50, 21, seed=11), backend="native")  # 50*50*24/2 = 30k terms: one thread
        assert not started
        n = 1024  # 1024*1024*24/2 = 12.6M terms: 48 shares of 2**18, so all 8 threads
        pairwise_js(softmax_rows(1, n, 21, seed=12), backend="native")
        assert len(started) == 7
    finally:
        torch.set_num_threads(before)


def test_autograd_and_float64_use_the_torch_blocks(monkeypatch):
    def no_native(*args, **kwargs):
        raise AssertionError("the native kernel must not run here")

    monkeypatch.setattr(js_mod, "_native_pairwise", no_native)
    p = softmax_rows(1, 6, 5, seed=5).requires_grad_()
    pairwise_js(p, backend="native").sum().backward()
    assert torch.isfinite(p.grad).all()
    pairwise_js(p.detach().double(), backend="native")


def test_the_kernels_logarithm_against_float64():
    library = js_mod._native_library(requested=True)
    tiny = torch.finfo(torch.float32).tiny
    x = torch.cat([
        torch.logspace(math.log10(tiny), math.log10(2.0), 100_000, dtype=torch.float64).float(),
        torch.rand(100_000, generator=torch.Generator().manual_seed(6)),
        torch.tensor([1.0, 2.0, 0.5, math.sqrt(2.0), 1.41421354, 1.41421366, tiny]),
    ])
    x = torch.cat([x, torch.ones((-x.numel()) % 8)])
    out = torch.empty_like(x)
    library.cdclip_log_f32(x.data_ptr(), out.data_ptr(), x.numel())
    exact = x.double().log()
    ulp = torch.finfo(torch.float32).eps * exact.abs().clamp_min(1e-30)
    assert ((out.double() - exact).abs() / ulp).max() <= 2.0  # within 2 float32 ulp everywhere
    assert out[x == 1.0].eq(0.0).all()  # log 1 is exactly 0


def test_kernels_logarithm_clamps_zero():
    library = js_mod._native_library(requested=True)
    x = torch.zeros(8)
    out = torch.empty(8)
    library.cdclip_log_f32(x.data_ptr(), out.data_ptr(), 8)
    assert torch.all(out == math.log(torch.finfo(torch.float32).tiny))  # finite, so 0 · log 0 = 0


def test_build_is_cached_by_source_hash(fresh_native):
    library = _native.load("js_native")
    built = list((fresh_native / "kernels").glob("js_native-*.so"))
    assert len(built) == 1 and library is _native.load("js_native")
    assert not list((fresh_native / "kernels").glob("*.tmp.so"))  # no temporary left behind


def test_missing_compiler_is_named(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(_native.NativeUnavailable, match=r"no C compiler found \(tried \$CC='/nonexistent/cc': "):
        _native.load("js_native")
    with pytest.raises(_native.NativeUnavailable, match="no C compiler"):  # remembered: no second attempt
        _native.load("js_native")


def test_cc_with_arguments_is_split_like_a_shell_would(fresh_native, monkeypatch):
    plain = _native._compiler()[0]
    _native.load("js_native")
    monkeypatch.setattr(_native, "_loaded", {})
    monkeypatch.setenv("CC", f"{plain} -DCDCLIP_EXTRA_FLAG=1")  # like "ccache gcc" or "gcc -m64"
    assert _native._compiler() == [plain, "-DCDCLIP_EXTRA_FLAG=1"]
    assert _native.load("js_native") is not None
    assert len(list((fresh_native / "kernels").glob("js_native-*.so"))) == 2  # another command, another build


def test_failed_build_shows_the_compiler_error(fresh_native, tmp_path: Path):
    broken = tmp_path / "broken.c"
    broken.write_text("void f(void) { this is not C; }\n")
    with pytest.raises(_native.NativeUnavailable, match=r"building broken.c failed \(.*cc .*-O3.*\):\n  .*broken.c:1:\d+: error"):
        _native.load("broken_kernel", source=broken)
    assert not list((fresh_native / "kernels").glob("*"))  # nothing half-built in the cache


def test_unwritable_cache_builds_in_a_temporary_folder(fresh_native, monkeypatch):
    real_build = _native._build
    calls = []

    def build(source, target, compiler):
        calls.append(target)
        if len(calls) == 1:
            raise OSError(30, "Read-only file system", str(target.parent))
        real_build(source, target, compiler)

    monkeypatch.setattr(_native, "_build", build)
    assert _native.load("js_native") is not None
    assert calls[1].parent != calls[0].parent and calls[1].name == calls[0].name


def test_disabled_by_environment(fresh_native, monkeypatch):
    monkeypatch.setenv(_native.NATIVE_ENV, "0")
    assert "CDCLIP_NATIVE=0" in _native.why_unavailable()
    p = softmax_rows(1, 20, 9, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto: silent, this was asked for
        out = pairwise_js(p)
    torch.testing.assert_close(out, pairwise_js(p, backend="torch"))
    with pytest.warns(RuntimeWarning, match="disabled by CDCLIP_NATIVE=0"):  # asked for by name: say why not
        pairwise_js(p, backend="native")


def test_failed_build_falls_back_once_with_a_warning(fresh_native, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    p = softmax_rows(1, 20, 9, seed=8)
    expected = pairwise_js(p, backend="torch")
    with pytest.warns(RuntimeWarning, match=r"native kernel is unavailable \(no C compiler found"):
        out = pairwise_js(p)
    torch.testing.assert_close(out, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        torch.testing.assert_close(pairwise_js(p), expected)
        torch.testing.assert_close(pairwise_js(p, backend="native"), expected)


def test_native_allocates_only_the_output_and_row_terms(monkeypatch):
    p = softmax_rows(1, 64, 13, seed=9)  # 13 classes: the last register of each row is masked, not padded
    sizes = []
    real_empty, real_zeros = torch.empty, torch.Tensor.new_zeros

    def spy_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        sizes.append(t.numel())
        return t

    def spy_zeros(self, *args, **kwargs):
        t = real_zeros(self, *args, **kwargs)
        sizes.append(t.numel())
        return t

    monkeypatch.setattr(js_mod.torch, "empty", spy_empty)
    monkeypatch.setattr(torch.Tensor, "new_zeros", spy_zeros)
    pairwise_js(p, backend="native")
    assert sorted(sizes) == [64, 64 * 64]  # the per-row terms and the output, no copy of the rows
    sizes.clear()
    pairwise_js(p, softmax_rows(1, 10, 13, seed=10), backend="native")
    assert sorted(sizes) == [10, 64, 64 * 10]


def test_row_terms_match_torch():
    library = js_mod._native_library(requested=True)
    for k in (1, 5, 8, 13, 103):
        x = softmax_rows(37, k, seed=k)
        x[3, 0] = 0.0  # an exact zero
        u = torch.empty(37)
        library.cdclip_js_row_terms_f32(x.data_ptr(), u.data_ptr(), 37, k)
        xd = x.double()
        expected = 0.5 * torch.where(xd > 0, xd * xd.log(), 0.0).sum(-1) + 0.5 * LN2 * xd.sum(-1)
        torch.testing.assert_close(u.double(), expected, rtol=0, atol=1e-6)
