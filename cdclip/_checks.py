"""Input validation shared by the public functions.

Every check raises an error that names the argument, the expected shape or dtype (einops notation)
and what was received; nothing is silently broadcast.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from cdclip.choices import check_choice  # torch-free, for the light modules (configuration, prompts)

__all__ = [
    "check_choice",
    "check_dense_inputs",
    "check_distributions",
    "check_finite",
    "check_floating",
    "check_fraction",
    "check_int",
    "check_integer_labels",
    "check_nonempty",
    "check_positive",
    "check_rank",
    "check_same",
    "check_tensor",
    "check_unit_interval",
    "compute_dtype",
    "full_precision",
    "low_precision_atol",
]

F = TypeVar("F", bound=Callable[..., Any])


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


def check_dense_inputs(*inputs: tuple[torch.Tensor, str, str]) -> None:
    """Rank, floating dtype, no empty dimension and finite values of every ``(tensor, name, pattern)``.

    Each check runs over all inputs before the next one starts, so the error raised first is the
    one of :func:`check_rank` of every input, then :func:`check_floating` of every input, and so on.
    """
    for x, name, pattern in inputs:
        check_rank(x, name, pattern)
    for x, name, _ in inputs:
        check_floating(x, name)
    for x, name, pattern in inputs:
        check_nonempty(x, name, pattern)
    for x, name, _ in inputs:
        check_finite(x, name)


def check_floating(x: torch.Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` has a floating dtype."""
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinity."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")


def check_integer_labels(x: torch.Tensor, name: str, what: str = "integer class ids") -> None:
    """Raise ``TypeError`` unless ``x`` holds integers (a bool, floating or complex dtype is refused)."""
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name}: expected {what}, got dtype {x.dtype}")


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


def check_nonempty(x: torch.Tensor, name: str, pattern: str) -> None:
    """Raise ``ValueError`` if any dimension of ``x`` is 0, naming it by its ``pattern`` label.

    ``pattern`` is the einops-style shape already checked by :func:`check_rank` (``"B C h w"``).
    """
    dims = pattern.split()
    for label, size in zip(dims, x.shape):
        if size == 0:
            raise ValueError(f"{name}: expected a non-empty tensor of shape ({', '.join(dims)}), got {label}=0 in {tuple(x.shape)}")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_float(value: object) -> float | None:
    """``float(value)`` for real numbers and one-element tensors; ``None`` for anything else."""
    if _is_real(value):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool and not value.is_complex():
        return float(value.item())
    return None


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """A finite real ``> 0`` (``>= 0`` with ``allow_zero``) as float, else ``ValueError`` naming ``name``."""
    v = _as_float(value)
    if v is None or not math.isfinite(v) or not (v >= 0 if allow_zero else v > 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")
    return v


def check_fraction(value: object, name: str, what: str = "a number") -> float:
    """A finite real in ``[0, 1]`` as float, else ``ValueError`` naming ``name`` (``expected {what} in [0, 1]``)."""
    if not (_is_real(value) and 0.0 <= value <= 1.0):  # type: ignore[operator]  # NaN fails the comparison
        raise ValueError(f"{name}: expected {what} in [0, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_int(value: object, name: str, minimum: int = 0) -> int:
    """An integer (``int`` or numpy integer, not ``bool``) ``>= minimum`` as int, else ``ValueError`` naming ``name``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def low_precision_atol(dtype: torch.dtype, atol: float) -> float:
    """``atol`` widened to twice the dtype's epsilon (a bfloat16 value is only good to ~0.004)."""
    return max(atol, 2 * torch.finfo(dtype).eps) if dtype.is_floating_point else atol


def check_unit_interval(x: torch.Tensor, name: str, atol: float = 1e-4) -> None:
    """Raise ``ValueError`` unless every value of ``x`` is finite and in ``[0, 1]`` (± ``atol``).

    One O(numel) pass and one host sync; NaN and infinity fail it too.
    """
    if x.numel() == 0:
        return
    low, high = torch.aminmax(x.detach().reshape(-1))
    low_v, high_v = torch.stack([low, high]).float().tolist()
    tol = low_precision_atol(x.dtype, atol)
    if not (-tol <= low_v and high_v <= 1.0 + tol):  # NaN fails both comparisons
        if not (math.isfinite(low_v) and math.isfinite(high_v)):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
        raise ValueError(
            f"{name}: expected values in [0, 1] (e.g. min-max normalised CAMs), got min {low_v:.4g}, max {high_v:.4g}"
        )


def check_distributions(x: torch.Tensor, name: str, atol: float = 1e-3) -> None:
    """Raise ``ValueError`` unless the rows of ``x`` (last dim) are finite, non-negative and sum to 1.

    Cheap: one minimum and one row sum (O(numel), no full-size temporary but the (…,) row sums) and
    a single host sync. A NaN or infinity anywhere makes its row sum non-finite, so it is caught by
    the sum check. The tolerance widens to twice the dtype's epsilon for float16/bfloat16.
    """
    if x.numel() == 0:
        return
    detached = x.detach()
    low = detached.amin()
    err = (detached.sum(-1, dtype=torch.float64) - 1.0).abs().amax()
    low_v, err_v = torch.stack([low.double(), err]).tolist()
    tol = low_precision_atol(x.dtype, atol)
    if not (math.isfinite(low_v) and math.isfinite(err_v)):
        raise ValueError(f"{name}: expected finite probabilities, got NaN or inf")
    if low_v < 0:
        raise ValueError(f"{name}: expected non-negative probabilities, got min {low_v:.3g}")
    if err_v > tol:
        raise ValueError(
            f"{name}: expected rows summing to 1 over the last dim (K={x.shape[-1]}, tolerance {tol:.3g}), "
            f"got a row off by {err_v:.3g}; apply softmax first"
        )


def _autocast_devices() -> list[str]:
    return [device for device in ("cpu", "cuda") if torch.is_autocast_enabled(device)]


def full_precision(fn: F) -> F:
    """Decorator: run ``fn`` with every active autocast (CPU and CUDA) turned off.

    Numerically delicate code (JS, Sinkhorn, transition matrices, CDA, PAR, the losses) must not
    have its matrix products silently run in bfloat16/float16 by an enclosing ``torch.autocast``;
    inside, the code casts its inputs with :func:`compute_dtype` itself. Costs two flag lookups
    when no autocast is active.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        devices = _autocast_devices()
        if not devices:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device in devices:
                stack.enter_context(torch.autocast(device_type=device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
