"""One seed for every random number generator a run touches."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's legacy global and torch's (CPU and every CUDA device) generators.

    Every command calls it before it builds a model, so that randomly initialised backbones
    (``--weights none``) are the same in two runs with the same ``--seed``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002  (the legacy global RNG user code may rely on)
    torch.manual_seed(seed)
