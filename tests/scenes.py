"""Constructed scenes with known answers, shared by the tests and the docs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cdclip.kernels.js import js_divergence


@dataclass(frozen=True)
class TwoPartScene:
    """One object split into two parts that attention never joins.

    The CAM fires on part A only; both parts share one class distribution that differs from the
    background's by JS ≈ 0.3·ln 2 (the hard, realistic case for a flat affinity).
    """

    cams: torch.Tensor  # (1, 1, h, w)
    probs: torch.Tensor  # (1, N, K)
    attn: torch.Tensor  # (1, N, N)
    part_a: torch.Tensor  # (h, w) bool
    part_b: torch.Tensor  # (h, w) bool
    background: torch.Tensor  # (h, w) bool
    js_object_background: float


def two_part_scene(h: int = 16, w: int = 16, noise: float = 0.3, seed: int = 0) -> TwoPartScene:
    gen = torch.Generator().manual_seed(seed)
    region = torch.zeros(h, w, dtype=torch.long)  # 0 background, 1 part A, 2 part B
    region[4:12, 1:5] = 1
    region[4:12, 10:14] = 2
    part_a, part_b, background = region == 1, region == 2, region == 0

    # class distributions over K = 4: two background words, the object class, another class
    obj_logits = torch.tensor([0.6, 0.2, 2.0, 0.0])
    bg_logits = torch.tensor([2.1, 1.5, 0.2, 0.0])
    logits = torch.where(background.flatten()[:, None], bg_logits, obj_logits)
    logits = logits + noise * torch.randn(h * w, 4, generator=gen)
    probs = torch.softmax(logits, dim=-1)[None]
    js = js_divergence(torch.softmax(obj_logits, -1), torch.softmax(bg_logits, -1)).item()

    # attention: local 5x5 windows that never leave a region
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs, reg = ys.flatten(), xs.flatten(), region.flatten()
    near = ((ys[:, None] - ys[None]).abs() <= 2) & ((xs[:, None] - xs[None]).abs() <= 2)
    attn = (near & (reg[:, None] == reg[None])).float()[None]

    cams = part_a.float()[None, None] * (0.8 + 0.2 * torch.rand(1, 1, h, w, generator=gen))
    return TwoPartScene(cams, probs, attn, part_a, part_b, background, js)
