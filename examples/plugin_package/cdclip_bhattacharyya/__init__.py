"""An example cdclip plugin: the Bhattacharyya affinity between per-patch class distributions.

``pyproject.toml`` lists :func:`register` in the ``cdclip.plugins`` entry-point group, so cdclip
calls it with its registry the first time a name is unknown (or when everything is listed);
``cdclip.create("bhattacharyya_affinity")`` then builds :class:`BhattacharyyaAffinity`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # cdclip imports this module, never the other way round
    from cdclip.registry import Registry

__all__ = ["BhattacharyyaAffinity", "register"]


class BhattacharyyaAffinity(nn.Module):
    """Affinity ``(Σ_k √(p_ik · p_jk))^γ`` of class distributions: 1 for equal rows, 0 for disjoint ones.

    An alternative to CDA's ``exp(−JS/σ)``: the Bhattacharyya coefficient is one matrix product of
    the square-rooted distributions, and ``γ`` sharpens it the way ``σ`` sharpens the JS kernel
    (object and background patches must end far apart, or propagation leaks).

    Args:
        gamma: sharpening exponent (8).

    Shape:
        - probs: (B, N, K), rows summing to 1
        - output: (B, N, N), values in [0, 1]
    """

    def __init__(self, gamma: float = 8.0) -> None:
        super().__init__()
        if not gamma > 0:
            raise ValueError(f"gamma: expected a positive number, got {gamma!r}")
        self.gamma = float(gamma)

    def forward(self, probs: Tensor) -> Tensor:
        if probs.dim() != 3 or not probs.is_floating_point():
            raise ValueError(f"probs: expected a floating (B, N, K) tensor, got {tuple(probs.shape)} {probs.dtype}")
        root = probs.clamp_min(0).sqrt()
        # rounding can push the coefficient of equal rows a hair above 1
        return torch.bmm(root, root.transpose(1, 2)).clamp(0.0, 1.0) ** self.gamma

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


def register(registry: Registry) -> None:
    """Entry point: cdclip passes its registry; the origin shown by ``cdclip list`` is this plugin."""
    registry.register("bhattacharyya_affinity", BhattacharyyaAffinity, kind="affinity")
