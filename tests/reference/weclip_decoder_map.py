"""Seeded decoder weights shared by cdclip's ``WeCLIPDecoder`` and WeCLIP's own decoder.

WeCLIP (github.com/zbf1991/WeCLIP, commit 0f47db4, ``WeCLIP_model/model_attn_aff_voc.py``) splits
its trainable decoder over two modules: ``decoder_fts_fuse`` (a ``SegFormerHead``: one
``Linear → ReLU → Linear`` head per CLIP block, a 1×1 fusion convolution, ``Dropout2d(0.1)``) and
``decoder`` (a ``DecoderTransformer``: 3 pre-LN residual attention blocks of width 256 with 8
heads, then a 1×1 classifier). cdclip's :class:`cdclip.pipeline.decoder.WeCLIPDecoder` holds the
same parameters, with the same shapes, under other names; :data:`KEY_RULES` maps one layout onto
the other.

The weights are drawn here, from a seed alone (:func:`random_decoder_state`), in cdclip's key
layout, independently of either library's initialisation, so that ``tests/`` can regenerate them
without WeCLIP's code and ``tests/reference/record_weclip.py`` can load the very same tensors into
WeCLIP's modules (:func:`to_weclip`).

Every tensor is drawn (no zero biases, no unit LayerNorm gains), so a wrong key mapping, a
transposed weight or a swapped LayerNorm shows up as a numeric difference.

Structural equivalence is *not* complete: see the README's "WeCLIP" section for the differences
(QuickGELU vs GELU in the transformer MLP, the fp16 attention out-projection in WeCLIP, ...).

Nothing here imports WeCLIP or cdclip; only torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = [
    "DECODER_SEED",
    "KEY_RULES",
    "decoder_shapes",
    "from_weclip",
    "random_decoder_state",
    "to_weclip",
    "weclip_key",
]

#: the seed of the decoder weights in ``tests/data/reference/weclip_voc.npz``
DECODER_SEED = 1234

#: (cdclip key pattern, WeCLIP key template); WeCLIP keys are relative to the ``WeCLIP`` model
KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"heads_list\.(\d+)\.fc1\.(weight|bias)", r"decoder_fts_fuse.linears_modulelist.\1.proj.\2"),
    (r"heads_list\.(\d+)\.fc2\.(weight|bias)", r"decoder_fts_fuse.linears_modulelist.\1.proj_2.\2"),
    (r"fuse\.(weight|bias)", r"decoder_fts_fuse.linear_fuse.\1"),
    (r"layers\.(\d+)\.norm1\.(weight|bias)", r"decoder.transformer.resblocks.\1.ln_1.\2"),
    (r"layers\.(\d+)\.attn\.(in_proj_weight|in_proj_bias)", r"decoder.transformer.resblocks.\1.attn.\2"),
    (r"layers\.(\d+)\.attn\.out_proj\.(weight|bias)", r"decoder.transformer.resblocks.\1.attn.out_proj.\2"),
    (r"layers\.(\d+)\.norm2\.(weight|bias)", r"decoder.transformer.resblocks.\1.ln_2.\2"),
    (r"layers\.(\d+)\.mlp\.0\.(weight|bias)", r"decoder.transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"layers\.(\d+)\.mlp\.2\.(weight|bias)", r"decoder.transformer.resblocks.\1.mlp.c_proj.\2"),
    (r"classifier\.(weight|bias)", r"decoder.linear_pred.\1"),
)


def weclip_key(key: str) -> str:
    """The WeCLIP model key of one cdclip ``WeCLIPDecoder`` key (tensors need no reshaping)."""
    for pattern, template in KEY_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise KeyError(f"no WeCLIP counterpart for cdclip decoder key {key!r}")


def decoder_shapes(
    num_classes: int = 21,
    in_dim: int = 768,
    num_blocks: int = 11,
    dim: int = 256,
    layers: int = 3,
    mlp_ratio: int = 4,
) -> dict[str, tuple[int, ...]]:
    """cdclip ``WeCLIPDecoder`` key -> shape (WeCLIP VOC: 21 classes, 11 blocks, width 256, 3 layers)."""
    hidden = dim * mlp_ratio
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(num_blocks):
        shapes[f"heads_list.{i}.fc1.weight"] = (dim, in_dim)
        shapes[f"heads_list.{i}.fc1.bias"] = (dim,)
        shapes[f"heads_list.{i}.fc2.weight"] = (dim, dim)
        shapes[f"heads_list.{i}.fc2.bias"] = (dim,)
    shapes["fuse.weight"] = (dim, dim * num_blocks, 1, 1)
    shapes["fuse.bias"] = (dim,)
    for i in range(layers):
        p = f"layers.{i}."
        shapes[p + "norm1.weight"] = (dim,)
        shapes[p + "norm1.bias"] = (dim,)
        shapes[p + "attn.in_proj_weight"] = (3 * dim, dim)
        shapes[p + "attn.in_proj_bias"] = (3 * dim,)
        shapes[p + "attn.out_proj.weight"] = (dim, dim)
        shapes[p + "attn.out_proj.bias"] = (dim,)
        shapes[p + "norm2.weight"] = (dim,)
        shapes[p + "norm2.bias"] = (dim,)
        shapes[p + "mlp.0.weight"] = (hidden, dim)
        shapes[p + "mlp.0.bias"] = (hidden,)
        shapes[p + "mlp.2.weight"] = (dim, hidden)
        shapes[p + "mlp.2.bias"] = (dim,)
    shapes["classifier.weight"] = (num_classes, dim, 1, 1)
    shapes["classifier.bias"] = (num_classes,)
    return shapes


#: gain of the fusion convolution's weight and std of its bias: keep ``sigmoid(FᵀF)`` (WeCLIP's
#: ``attn_pred``) between ~0.55 and ~0.95 instead of saturating at 1 for the random CLIP of
#: ``cdclip.testing`` (gain 1 and bias std 0.1 give 0.95-0.997)
FUSE_GAIN = 0.05
FUSE_BIAS_STD = 0.01


def random_decoder_state(seed: int = DECODER_SEED, **sizes: int) -> dict[str, Tensor]:
    """Seeded float32 decoder weights in cdclip's ``WeCLIPDecoder`` layout.

    Keys are drawn in sorted order from one ``torch.Generator``: weights ``N(0, gain²/fan_in)``
    (gain 1; the fusion convolution :data:`FUSE_GAIN`), biases ``N(0, 0.1²)`` (the fusion's
    :data:`FUSE_BIAS_STD`), LayerNorm gains ``1 + N(0, 0.1²)`` and shifts ``N(0, 0.1²)``. The same seed gives bitwise-equal tensors on every machine.

    Shape:
        - output: key -> tensor, see :func:`decoder_shapes` (``sizes`` are its arguments)
    """
    shapes = decoder_shapes(**sizes)
    generator = torch.Generator().manual_seed(int(seed))
    state: dict[str, Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        noise = torch.randn(shape, generator=generator)
        if ".norm" in key:
            value = 1.0 + 0.1 * noise if key.endswith("weight") else 0.1 * noise
        elif key.endswith("bias"):
            value = (FUSE_BIAS_STD if key == "fuse.bias" else 0.1) * noise
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            gain = FUSE_GAIN if key == "fuse.weight" else 1.0
            value = noise * (gain / fan_in**0.5)
        state[key] = value
    return state


def to_weclip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """cdclip-layout decoder state -> WeCLIP-model keys (load with ``strict=False``)."""
    return {weclip_key(k): v for k, v in state.items()}


def from_weclip(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """WeCLIP-model state (any superset) -> cdclip ``WeCLIPDecoder`` layout (decoder keys only)."""
    inverse = {weclip_key(k): k for k in decoder_shapes()}
    return {inverse[k]: v for k, v in state.items() if k in inverse}
