"""A cheap fingerprint of a module's weights: which frozen backbone made an output.

Hashing every byte of a ViT-B/16 (600 MB) would take about a second; the fingerprint hashes, per
tensor, its name, shape, dtype and an evenly strided sample of at most 16,384 of its values (no
reduction, so the thread count cannot change it). Two different checkpoints, or two random
initialisations with different seeds, differ in it; the same weights always give the same string on
any device. It is a sample, not a checksum: weights that differ only between sampled positions (a
few edited values) would share it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["weights_fingerprint"]

_SAMPLE = 16384


def weights_fingerprint(*modules: nn.Module | Mapping[str, torch.Tensor] | None) -> str:
    """SHA-256 (hex, 16 characters) over the parameters and buffers of ``modules``.

    Each argument is a module, a state dict, or ``None`` (skipped).
    """
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        if module is None:
            continue
        state = module.state_dict() if isinstance(module, nn.Module) else module
        for name, tensor in sorted(state.items()):
            if not isinstance(tensor, torch.Tensor):
                continue
            flat = tensor.detach().reshape(-1)
            digest.update(f"{index}:{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            if flat.numel() == 0:
                continue
            if not (flat.is_floating_point() or flat.is_complex()):
                flat = flat.long()
            step = max(1, flat.numel() // _SAMPLE)
            sample = flat[::step][:_SAMPLE].to(device="cpu", dtype=torch.float64)
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
