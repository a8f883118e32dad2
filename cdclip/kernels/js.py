"""Jensen–Shannon divergence between discrete distributions, matched and pairwise.

CD-CLIP compares the class distribution of every patch with that of every other patch. The
pairwise kernel is the hot spot, so it is written around one identity (natural log)::

    JS(p, q) = ½ Σ p log p + ½ Σ q log q − Σ m log m,          m = (p + q) / 2
             = ½ Σ p log p + ½ Σ q log q − ½ Σ s log s + ½ log 2 · Σ s,   s = p + q

The first two terms cost O(N·K); only ``Σ s log s`` is pairwise. It is computed in row blocks into
two reusable buffers, so memory never holds an ``N × M × K`` tensor, and when ``q`` is ``p`` only
the upper triangle is computed and mirrored. The result is exact (no approximation of the log).

Zero probabilities: ``0 log 0 = 0`` exactly, and gradients stay finite because the log argument is
clamped at the smallest normal float (the clamp only changes the log of exact zeros, whose product
with zero is zero anyway).

Input contract: every row must be a distribution — finite, non-negative, summing to 1 (± 1e-2,
twice the epsilon for float16/bfloat16) — and no dimension may be empty; anything else raises a
``ValueError`` naming the argument before a backend runs (one O(N·K) pass, one host sync). Under
``torch.autocast`` the kernel still computes in float32 (float64 for float64 inputs).

Backends of :func:`pairwise_js` (the ``backend`` argument):

- ``native`` — a fused C kernel (``js_native.c``, AVX2 + FMA, float32) that adds, takes the log,
  multiplies and reduces in registers, so nothing but the output touches memory; built on first
  use with the system C compiler and cached (``cdclip/kernels/_native.py``). Used for CPU work
  without autograd. About 3x faster than the torch blocks at N=1600, K=103 on a 2-core AVX2 CPU.
- ``torch`` — the blocked torch code below: any device, any dtype, autograd.
- ``compile`` — the torch blocks fused by ``torch.compile``.
- ``auto`` (default) — ``native`` where it applies and can be built, else ``torch``.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from cdclip._checks import (
    check_choice,
    check_distributions,
    check_floating,
    check_int,
    check_nonempty,
    check_rank,
    check_tensor,
    compute_dtype,
    full_precision,
)
from cdclip.constants import LN2
from cdclip.registry import register

__all__ = ["JSDivergence", "js_divergence", "pairwise_js"]

# Rows may miss 1 by this much: a distribution rounded to bfloat16 once is off by up to 2**-9, and
# a missing softmax is off by far more.
ROW_SUM_ATOL = 1e-2

Backend = Literal["auto", "native", "torch", "compile"]
BACKENDS: tuple[str, ...] = get_args(Backend)

# Elements of one ``(rows, K, M)`` block: 2**20 float32 = 4 MiB per buffer (two buffers), small
# enough to stay in the caches between the passes over a block; 2**22 and larger were up to 1.5x
# slower, 2**18 and smaller pay per-block overhead (benchmarks/js_kernel.py --block-sweep).
DEFAULT_BLOCK_ELEMENTS = 1 << 20
# On a GPU the caches matter less than the number of kernel launches: 64 MiB per buffer.
DEVICE_BLOCK_ELEMENTS = 1 << 24


def _check_backend(backend: object) -> None:
    check_choice(backend, "backend", BACKENDS)


def _tiny(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).tiny


def _sum_xlogx(x: Tensor) -> Tensor:
    """``Σ_k x log x`` over the last dim with ``0 log 0 = 0`` and finite gradients."""
    return (x * x.clamp_min(_tiny(x.dtype)).log()).sum(-1)


def _check_prob_layout(x: object, name: str, pattern: str) -> Tensor:
    """Shape, dtype and emptiness of a probability tensor; its values are :func:`check_distributions`' job."""
    x = check_tensor(x, name)
    check_rank(x, name, pattern)
    check_floating(x, name)
    check_nonempty(x, name, pattern)
    return x


@full_precision
def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Jensen–Shannon divergence between matched distributions over the last dimension.

    Natural log; values lie in ``[0, ln 2]``. Inputs in float16/bfloat16 are computed in float32,
    also under ``torch.autocast``.

    Args:
        p: probabilities, non-negative, summing to 1 over the last dim.
        q: probabilities with the same shape as ``p``.

    Raises:
        ValueError: shapes differ, an empty tensor, or rows that are not distributions (NaN,
            infinity, a negative entry, or a sum off 1 by more than 1e-2, twice the epsilon of
            float16/bfloat16).
        TypeError: not a floating-point tensor.

    Returns:
        The divergence per distribution pair, in float32 (float64 for float64 inputs).

    Shape:
        - p: (..., K)
        - q: (..., K)
        - output: (...)
    """
    check_tensor(p, "p")
    check_tensor(q, "q")
    check_floating(p, "p")
    check_floating(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"q: expected the shape of p {tuple(p.shape)}, got {tuple(q.shape)} (no broadcasting)")
    if p.dim() == 0:
        raise ValueError("p: expected shape (..., K) with at least one dim, got a scalar")
    if p.numel() == 0:
        raise ValueError(f"p: expected a non-empty tensor of shape (..., K), got {tuple(p.shape)}")
    check_distributions(p, "p", ROW_SUM_ATOL)
    check_distributions(q, "q", ROW_SUM_ATOL)
    dtype = torch.promote_types(compute_dtype(p), compute_dtype(q))
    p, q = p.to(dtype), q.to(dtype)
    s = p + q
    out = 0.5 * (_sum_xlogx(p) + _sum_xlogx(q) - _sum_xlogx(s)) + 0.5 * LN2 * s.sum(-1)
    return out.clamp(0.0, LN2)


def _cross_block(
    p_rows: Tensor, q_t: Tensor, s_buf: Tensor | None, l_buf: Tensor | None, has_zeros: bool = True
) -> Tensor:
    """``Σ_k s log s`` for ``s = p_rows[:, i] + q[:, j]``: ``(B, r, K), (B, K, M) -> (B, r, M)``.

    ``q`` comes transposed, class-major, so that every elementwise pass and the reduction over K run
    along the long, contiguous M axis (on a 2-core AVX2 CPU this layout was 1.2x faster than
    reducing over a contiguous K of ~100). Without autograd the two buffers are reused in place (no
    allocation per block); with autograd the plain out-of-place expression is used. ``has_zeros=False``
    (no zero in either input, the usual case after a softmax) skips the clamp pass.
    """
    if s_buf is None or l_buf is None:
        s = p_rows.unsqueeze(3) + q_t.unsqueeze(1)
        return (s * s.clamp_min(_tiny(s.dtype)).log()).sum(2)
    b, r, k = p_rows.shape
    m = q_t.shape[2]
    s = s_buf[: b * r * k * m].view(b, r, k, m)
    log_s = l_buf[: b * r * k * m].view(b, r, k, m)
    torch.add(p_rows.unsqueeze(3), q_t.unsqueeze(1), out=s)
    # log2 is ~10% faster than log in torch's vectorised CPU kernels; the ln 2 factor is applied
    # to the (B, r, M) result, not to every element
    if has_zeros:
        torch.clamp_min(s, _tiny(s.dtype), out=log_s)
        log_s.log2_()
    else:
        torch.log2(s, out=log_s)
    return log_s.mul_(s).sum(2).mul_(LN2)


_compiled_block: Callable[[Tensor, Tensor], Tensor] | None = None
_compile_failed = False


def _compiled_cross_block(p_rows: Tensor, q: Tensor) -> Tensor | None:
    """The fused (``torch.compile``) block, or ``None`` after warning once if compiling fails."""
    global _compiled_block, _compile_failed
    if _compile_failed:
        return None
    try:
        if _compiled_block is None:
            _compiled_block = torch.compile(lambda a, b: _cross_block(a, b, None, None), dynamic=True)
        return _compiled_block(p_rows, q)
    except Exception as err:  # no compiler, unsupported platform, inductor bug ...
        _compile_failed = True
        warnings.warn(
            f"pairwise_js: torch.compile fast path failed ({type(err).__name__}: {err}); "
            "falling back to the eager kernel for the rest of this process",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


_native_warned = False
# Every thread gets at least this many pair-class terms (~0.15 ms on one core), so small problems
# run on one thread and a many-core machine does not start 32 threads for a few milliseconds of
# work. Measured on 2 cores, two threads against one: 196 x 21 (2**19 terms) even, 196 x 45 1.3x,
# 400 x 45 1.5x, 1600 x 103 1.8x faster. A helper pays only while torch's OpenMP workers are not
# still spinning after a parallel torch op (they spin for milliseconds and take its core); the
# tiles are handed out dynamically, so then the calling thread just does more of them.
_NATIVE_TERMS_PER_THREAD = 1 << 18
# the kernel works in whole AVX registers of 8 float32 (the last one of a row masked)
_NATIVE_LANES = 8


def _native_library(requested: bool) -> ctypes.CDLL | None:
    """The built C kernel, or ``None`` after one warning.

    The warning is given when a build that should work failed, or for any reason when the native
    backend was ``requested`` by name; ``auto`` on an unsupported CPU or with ``CDCLIP_NATIVE=0``
    falls back silently.
    """
    global _native_warned
    from cdclip.kernels import _native

    try:
        library = _native.load("js_native")
    except _native.NativeUnavailable as err:
        if (requested or not err.expected) and not _native_warned:
            _native_warned = True
            warnings.warn(
                f"pairwise_js: the native kernel is unavailable ({err}); using the torch kernel "
                f"(about 3x slower on the CPU). Set {_native.NATIVE_ENV}=0 to skip it without this warning.",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    if library.cdclip_pairwise_js_f32.argtypes is None:  # first use: declare the C signatures
        pointer, i64 = ctypes.c_void_p, ctypes.c_int64
        library.cdclip_pairwise_js_f32.argtypes = [pointer] * 5 + [i64] * 4 + [ctypes.c_int32, ctypes.POINTER(i64)]
        library.cdclip_pairwise_js_f32.restype = None
        library.cdclip_js_row_terms_f32.argtypes = [pointer, pointer, i64, i64]
        library.cdclip_js_row_terms_f32.restype = None
        library.cdclip_log_f32.argtypes = [pointer, pointer, i64]
        library.cdclip_log_f32.restype = None
    return library


def _native_threads(b: int, n: int, m: int, k: int, symmetric: bool, available: int) -> int:
    """Threads for one call: at most ``available``, each with ``_NATIVE_TERMS_PER_THREAD`` terms or more."""
    registers = -(-k // _NATIVE_LANES) * _NATIVE_LANES
    terms = b * n * m * registers // (2 if symmetric else 1)
    return max(1, min(available, terms // _NATIVE_TERMS_PER_THREAD))


def _run_kernel(function: Callable[..., None], args: tuple, buffers: tuple[Tensor, ...]) -> None:
    """Call the C kernel; ``buffers`` only keeps the tensors behind ``args``' pointers alive."""
    function(*args)


def _native_pairwise(library: ctypes.CDLL, p: Tensor, q: Tensor, symmetric: bool) -> Tensor:
    """Pairwise JS of contiguous float32 CPU rows by the C kernel, on up to ``torch.get_num_threads()`` threads.

    No torch operation runs here but the allocations: the per-row terms are computed by the C code
    too, so that torch's OpenMP workers are idle, not spinning, when the helper threads start. The
    kernel hands out tiles of rows from a shared counter; ctypes releases the GIL, so the Python
    threads run it truly in parallel.
    """
    b, n, k = p.shape
    m = q.shape[1]
    u = torch.empty(b, n, dtype=torch.float32)
    library.cdclip_js_row_terms_f32(p.data_ptr(), u.data_ptr(), b * n, k)
    v = u
    if not symmetric:
        v = torch.empty(b, m, dtype=torch.float32)
        library.cdclip_js_row_terms_f32(q.data_ptr(), v.data_ptr(), b * m, k)
    out = torch.empty(b, n, m, dtype=torch.float32)
    next_item = ctypes.c_int64(0)
    args = (
        p.data_ptr(), q.data_ptr(), u.data_ptr(), v.data_ptr(), out.data_ptr(),
        b, n, m, k, int(symmetric), ctypes.byref(next_item),
    )  # fmt: skip
    function = library.cdclip_pairwise_js_f32
    threads = _native_threads(b, n, m, k, symmetric, torch.get_num_threads())
    # each helper holds the tensors themselves, not only their addresses: should the caller's join
    # be interrupted (Ctrl-C), a helper still finishing its tile writes into memory that is alive
    buffers = (p, q, u, v, out)
    helpers = [
        threading.Thread(target=_run_kernel, args=(function, args, buffers), daemon=True) for _ in range(threads - 1)
    ]
    for helper in helpers:
        helper.start()
    function(*args)  # the calling thread works too
    for helper in helpers:
        helper.join()
    return out


@full_precision
def pairwise_js(
    p: Tensor,
    q: Tensor | None = None,
    *,
    block_elements: int | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Jensen–Shannon divergence between every row of ``p`` and every row of ``q``.

    Exact, natural log, values in ``[0, ln 2]``; the diagonal is exactly 0 when ``q`` is omitted.
    Memory: the output plus two blocks of ``block_elements`` elements, never ``N × M × K``.

    Args:
        p: per-item distributions (for CD-CLIP: the class distribution of each patch).
        q: a second set; defaults to ``p`` (then the symmetry halves the work).
        block_elements: elements of one ``(rows, K, M)`` block of the torch backends
            (memory/speed trade-off); default 2**20 on the CPU (cache-sized) and 2**24 on
            accelerators (fewer kernel launches).
        backend: ``"auto"`` (default: the fused C kernel for CPU float32/16 work without
            autograd when it can be built, else the torch blocks), ``"native"`` (the same, asked
            for explicitly: a machine that cannot build it warns once), ``"torch"`` (blocked torch
            code, any device, dtype and autograd) or ``"compile"`` (torch blocks fused by
            ``torch.compile``). A fast path that is unavailable or fails falls back to the torch
            blocks with one warning, never an error.

    Returns:
        Divergences in float32 (float64 for float64 inputs), also under ``torch.autocast``.

    Raises:
        ValueError: bad or mismatched shapes, an empty dimension, or rows that are not
            distributions: NaN, infinity, a negative entry, or a row sum off 1 by more than 1e-2
            (twice the epsilon for float16/bfloat16). The check is one O(N·K) pass per input with
            one host sync, done before any backend runs.
        TypeError: not a floating-point tensor.

    Shape:
        - p: (B, N, K)
        - q: (B, M, K)
        - output: (B, N, M)
    """
    _check_prob_layout(p, "p", "B N K")
    symmetric = q is None or q is p
    if q is None:
        q = p
    _check_prob_layout(q, "q", "B M K")
    if q.shape[0] != p.shape[0] or q.shape[2] != p.shape[2]:
        raise ValueError(
            f"q: expected shape (B={p.shape[0]}, M, K={p.shape[2]}) to match p {tuple(p.shape)}, got {tuple(q.shape)}"
        )
    if block_elements is not None:
        check_int(block_elements, "block_elements", minimum=1)
    _check_backend(backend)
    check_distributions(p, "p", ROW_SUM_ATOL)
    if not symmetric:
        check_distributions(q, "q", ROW_SUM_ATOL)
    return _pairwise_js_checked(p, q, symmetric, block_elements, backend)


def _pairwise_js_checked(p: Tensor, q: Tensor, symmetric: bool, block_elements: int | None, backend: str) -> Tensor:
    """:func:`pairwise_js` on inputs whose shapes and values were validated (CDA checks them once).

    Dispatches to one backend: the C kernel (CPU float32 without autograd, ``auto``/``native``),
    the out-of-place torch blocks (autograd) or the in-place torch blocks (``torch``/``compile``).
    """
    if block_elements is None:
        block_elements = DEFAULT_BLOCK_ELEMENTS if p.device.type == "cpu" else DEVICE_BLOCK_ELEMENTS
    dtype = torch.promote_types(compute_dtype(p), compute_dtype(q))
    p = p.to(dtype).contiguous()
    q = p if symmetric else q.to(dtype).contiguous()
    needs_grad = torch.is_grad_enabled() and (p.requires_grad or q.requires_grad)
    if not needs_grad and backend in ("auto", "native") and p.device.type == "cpu" and dtype == torch.float32:
        library = _native_library(requested=backend == "native")
        if library is not None:
            return _native_pairwise(library, p, q, symmetric)
    if needs_grad:
        return _pairwise_autograd(p, q, symmetric, block_elements)
    return _pairwise_blocked(p, q, symmetric, block_elements, use_compile=backend == "compile")


def _row_terms(p: Tensor, q: Tensor, symmetric: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(Σ p log p, Σ q log q, Σ p, Σ q)`` per row, each computed once when ``q`` is ``p``.

    Shape:
        - p: (B, N, K)
        - q: (B, M, K)
        - output: (B, N), (B, M), (B, N), (B, M)
    """
    self_p = _sum_xlogx(p)
    self_q = self_p if symmetric else _sum_xlogx(q)
    mass_p = p.sum(-1)
    mass_q = mass_p if symmetric else q.sum(-1)
    return self_p, self_q, mass_p, mass_q


def _pairwise_autograd(p: Tensor, q: Tensor, symmetric: bool, block_elements: int) -> Tensor:
    """The torch backend with autograd: out-of-place row blocks, concatenated.

    Shape:
        - p: (B, N, K)
        - q: (B, M, K)
        - output: (B, N, M)
    """
    b, n, k = p.shape
    m = q.shape[1]
    self_p, self_q, mass_p, mass_q = _row_terms(p, q, symmetric)
    rows = max(1, block_elements // max(1, b * m * k))
    q_t = q.transpose(1, 2)
    cross = torch.cat([_cross_block(p[:, a : a + rows], q_t, None, None) for a in range(0, n, rows)], dim=1)
    base = 0.5 * (self_p.unsqueeze(2) + self_q.unsqueeze(1)) + 0.5 * LN2 * (mass_p.unsqueeze(2) + mass_q.unsqueeze(1))
    out = (base - 0.5 * cross).clamp(0.0, LN2)
    if symmetric:  # JS(p, p) = 0 exactly, not a rounding residue
        out = out.masked_fill(torch.eye(n, dtype=torch.bool, device=p.device), 0.0)
    return out


def _pairwise_blocked(p: Tensor, q: Tensor, symmetric: bool, block_elements: int, use_compile: bool) -> Tensor:
    """The torch backend without autograd: every N x M temporary is the output itself, updated in place.

    ``out = Σ s log s − Σ p log p − Σ q log q − log 2 · Σ s``, scaled by −½ at the end; with
    ``use_compile`` each block is the ``torch.compile`` fused one (eager where compiling fails).
    Shapes as :func:`_pairwise_autograd`: ``(B, N, K), (B, M, K) -> (B, N, M)``.
    """
    b, n, k = p.shape
    m = q.shape[1]
    self_p, self_q, mass_p, mass_q = _row_terms(p, q, symmetric)
    has_zeros = bool((p <= 0).any()) or (not symmetric and bool((q <= 0).any()))
    out = torch.empty(b, n, m, dtype=p.dtype, device=p.device)
    cap = min(max(block_elements, b * m * k), b * n * m * k)  # at least one row per block
    s_buf = l_buf = None
    if not use_compile:
        s_buf = torch.empty(cap, dtype=p.dtype, device=p.device)
        l_buf = torch.empty(cap, dtype=p.dtype, device=p.device)

    def block(p_rows: Tensor, cols: Tensor) -> Tensor:
        if use_compile:
            fused = _compiled_cross_block(p_rows, cols)
            if fused is not None:
                return fused
        return _cross_block(p_rows, cols, s_buf, l_buf, has_zeros)

    q_t = q.transpose(1, 2).contiguous()  # (B, K, M): see _cross_block
    a = 0
    while a < n:
        cols = m - a if symmetric else m  # the symmetric case fills the upper triangle only
        rows = max(1, cap // (b * cols * k))  # constant-size blocks as the triangle narrows
        e = min(a + rows, n)
        if symmetric:
            out[:, a:e, a:] = block(p[:, a:e], q_t[:, :, a:])
        else:
            out[:, a:e] = block(p[:, a:e], q_t)
        a = e
    return _finish_in_place(out, self_p, self_q, mass_p, mass_q, symmetric)


def _finish_in_place(
    out: Tensor, self_p: Tensor, self_q: Tensor, mass_p: Tensor, mass_q: Tensor, symmetric: bool
) -> Tensor:
    """``Σ s log s`` blocks → JS in place: mirror the upper triangle (symmetric), subtract the row terms, scale.

    Shape:
        - out: (B, N, M)
        - output: (B, N, M), the same tensor
    """
    if symmetric:
        # the lower triangle was never written: keep the upper one and add its mirror
        mirror = torch.triu(out, diagonal=1).transpose(1, 2)
        out.triu_().add_(mirror)
        del mirror
    out.sub_(self_p.unsqueeze(2)).sub_(self_q.unsqueeze(1))
    out.sub_(mass_p.unsqueeze(2), alpha=LN2).sub_(mass_q.unsqueeze(1), alpha=LN2)
    out.mul_(-0.5).clamp_(0.0, LN2)
    if symmetric:
        out.diagonal(dim1=1, dim2=2).zero_()
    return out


@register("js_divergence", kind="kernel")
class JSDivergence(nn.Module):
    """Pairwise Jensen–Shannon divergence kernel (the Module twin of :func:`pairwise_js`).

    Args:
        block_elements: elements per row block of the torch backends (None = per-device default).
        backend: ``auto`` | ``native`` | ``torch`` | ``compile``, see :func:`pairwise_js`.

    Shape:
        - p: (B, N, K)
        - q: (B, M, K), optional (defaults to p)
        - output: (B, N, M)

    Examples:
        >>> import torch
        >>> p = torch.softmax(torch.randn(2, 5, 4), dim=-1)   # 5 distributions over 4 classes per image
        >>> js = JSDivergence(backend="torch")(p)
        >>> js.shape, bool((js.diagonal(dim1=1, dim2=2) == 0).all())
        (torch.Size([2, 5, 5]), True)
    """

    def __init__(self, block_elements: int | None = None, backend: Backend = "auto") -> None:
        super().__init__()
        _check_backend(backend)
        if block_elements is not None:
            check_int(block_elements, "block_elements", minimum=1)
        self.block_elements = block_elements
        self.backend = backend

    def forward(self, p: Tensor, q: Tensor | None = None) -> Tensor:
        return pairwise_js(p, q, block_elements=self.block_elements, backend=self.backend)

    def extra_repr(self) -> str:
        return f"block_elements={self.block_elements}, backend={self.backend!r}"
