"""Multi-head self-attention with the out-projection in float16, as WeCLIP's attention computes it.

WeCLIP's attention module (its ``clip/myAtt.py``) runs every out-projection as
``F.linear(x.half(), W.half(), b.half())``, in CLIP's image and text towers and in its decoder,
even when the model is float32. The rest (in-projection, softmax) stays in the input dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["self_attention_fp16_out"]


def self_attention_fp16_out(
    attn: nn.MultiheadAttention, h: torch.Tensor, need_weights: bool, attn_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head self-attention whose out-projection runs in float16 (WeCLIP's attention).

    Shape:
        - h: (B, T, W) batch-first
        - output: (B, T, W) in ``h``'s dtype, head-averaged weights (B, T, T) or None
    """
    b, t, width = h.shape
    heads = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, t, heads, width // heads).transpose(1, 2) for z in (q, k, v))
    scores = (q / math.sqrt(width // heads)) @ k.transpose(-2, -1)
    if attn_mask is not None:
        scores = scores + attn_mask.to(scores.dtype)
    probs = scores.softmax(dim=-1)
    context = (probs @ v).transpose(1, 2).reshape(b, t, width)
    out_proj = attn.out_proj
    bias = out_proj.bias.half() if out_proj.bias is not None else None
    out = F.linear(context.half(), out_proj.weight.half(), bias).to(h.dtype)
    return out, (probs.mean(dim=1) if need_weights else None)
