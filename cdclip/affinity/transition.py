"""Affinity → random-walk transition matrix (CLIP-ES / WeCLIP refinement step).

``τ(A)``: alternate column and row normalisation (a few Sinkhorn-like rounds, which makes the
matrix close to doubly stochastic so that no patch dominates the propagation), symmetrise
``(A + Aᵀ) / 2``, then raise to a power (``A·A`` by default: two random-walk steps).
Always computed in float32 or higher, also under ``torch.autocast`` (which would otherwise run
the matrix power in bfloat16, with row sums anywhere in 0.9–1.5): in float16 the column sums of a
1024×1024 attention map underflow and the normalisation divides by zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cdclip._checks import (
    check_finite,
    check_floating,
    check_int,
    check_nonempty,
    check_positive,
    check_rank,
    compute_dtype,
    full_precision,
)
from cdclip.registry import register

__all__ = ["TransitionMatrix", "transition_matrix"]


def _check_square(affinity: Tensor, name: str) -> None:
    check_rank(affinity, name, "B N N")
    check_floating(affinity, name)
    if affinity.shape[1] != affinity.shape[2]:
        raise ValueError(f"{name}: expected a square affinity (B, N, N), got {tuple(affinity.shape)}")
    check_nonempty(affinity, name, "B N N")


def _check_args(sinkhorn_iters: object, power: object, eps: object) -> None:
    check_int(sinkhorn_iters, "sinkhorn_iters", minimum=0)
    check_int(power, "power", minimum=1)
    check_positive(eps, "eps")


@full_precision

def transition_matrix(
    affinity: Tensor,
    sinkhorn_iters: int = 3,
    power: int = 2,
    eps: float = 1e-12,
) -> Tensor:
    """Transition matrix of a non-negative affinity.

    Args:
        affinity: non-negative pairwise affinity (attention weights, CDA affinity ...).
        sinkhorn_iters: rounds of column-then-row normalisation.
        power: matrix power applied after symmetrising (1 = none, 2 = ``A·A``).
        eps: floor on row/column sums so that an all-zero row stays zero instead of NaN.

    Returns:
        The transition matrix in float32 (float64 for float64 input), also under autocast.

    Raises:
        ValueError: not square, an empty dimension, NaN/inf or negative entries, bad arguments.

    Shape:
        - affinity: (B, N, N)
        - output: (B, N, N)
    """
    _check_square(affinity, "affinity")
    _check_args(sinkhorn_iters, power, eps)
    check_finite(affinity, "affinity")
    if bool((affinity < 0).any()):
        raise ValueError("affinity: expected non-negative values, got negative entries")
    t = affinity.to(compute_dtype(affinity))
    for _ in range(sinkhorn_iters):
        t = t / t.sum(dim=1, keepdim=True).clamp_min(eps)  # columns
        t = t / t.sum(dim=2, keepdim=True).clamp_min(eps)  # rows
    t = 0.5 * (t + t.transpose(1, 2))
    out = t
    for _ in range(power - 1):
        out = torch.bmm(out, t)
    return out


@register("transition_matrix", kind="affinity")
class TransitionMatrix(nn.Module):
    """Module twin of :func:`transition_matrix`.

    Shape:
        - affinity: (B, N, N)
        - output: (B, N, N)

    Examples:
        >>> import torch
        >>> t = TransitionMatrix(sinkhorn_iters=3, power=2)(torch.rand(1, 6, 6))
        >>> t.shape, bool(torch.allclose(t, t.transpose(1, 2)))
        (torch.Size([1, 6, 6]), True)
    """

    def __init__(self, sinkhorn_iters: int = 3, power: int = 2, eps: float = 1e-12) -> None:
        super().__init__()
        _check_args(sinkhorn_iters, power, eps)
        self.sinkhorn_iters, self.power, self.eps = sinkhorn_iters, power, eps

    def forward(self, affinity: Tensor) -> Tensor:
        return transition_matrix(affinity, self.sinkhorn_iters, self.power, self.eps)

    def extra_repr(self) -> str:
        return f"sinkhorn_iters={self.sinkhorn_iters}, power={self.power}"
