"""Input validation shared by the public functions.

Every check raises an error that names the argument, the expected shape or dtype (einops notation)
and what was received; nothing is silently broadcast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_finite", "check_floating", "check_rank", "check_same", "check_tensor", "compute_dtype"]


def check_tensor(x: object, name: str) -> torch.Tensor:
    """Raise ``TypeError`` unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_rank(x: torch.Tensor, name: str, pattern: str) -> None:
    """Raise ``ValueError`` unless ``x`` has as many dimensions as ``pattern`` has names.

    ``pattern`` is an einops-style shape such as ``"B C h w"``.
    """
    check_tensor(x, name)
    dims = pattern.split()
    if x.dim() != len(dims):
        raise ValueError(
            f"{name}: expected shape ({', '.join(dims)}) with {len(dims)} dims, got {tuple(x.shape)}"
        )


def check_floating(x: torch.Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a floating dtype."""
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")


def check_same(sizes: Sequence[tuple[str, int]], what: str) -> None:
    """Raise ``ValueError`` unless every ``(label, size)`` pair has the same size."""
    values = {s for _, s in sizes}
    if len(values) > 1:
        listing = ", ".join(f"{label}={size}" for label, size in sizes)
        raise ValueError(f"mismatched {what}: {listing}")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is promoted to float32.

    Numerically delicate code (JS, Sinkhorn, transition matrices, PAR) calls this so that float16
    and bfloat16 inputs are computed in float32.
    """
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_choice(value: object, name: str, choices: Sequence[object]) -> None:
    """Raise a ValueError naming ``name``, the allowed ``choices`` and the value received."""
    if value not in tuple(choices):
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
