"""Seeded random CLIP weights for tests, smoke runs and comparisons with other codebases.

Pretrained weights cannot always be had (offline machines, CI). :func:`random_clip_state_dict`
makes a CLIP state dict in OpenAI's key layout (the layout open_clip, CLIP-ES and WeCLIP all load)
from a seed alone, independent of any library's own initialisation, so the same tensors can be
regenerated anywhere and fed to cdclip and to another method's code.

Two choices make the weights useful for comparisons:

* the keys' projection of every image-tower attention block is tied to the queries' projection,
  so attention is ``softmax(q qᵀ / √d)``: sharply non-uniform (a random ViT otherwise has
  near-uniform attention, which hides bugs in anything attention-based);
* every value is rounded to float16, as OpenAI's released weights are, so a codebase that loads
  the weights through float16 (OpenAI's ``clip.load`` does) sees exactly the same numbers.

``open_clip`` is imported inside the functions (``import cdclip`` stays light).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["random_clip_backbone", "random_clip_state_dict", "save_random_clip", "tiny_clip_backbone"]


def _std(key: str, shape: torch.Size) -> float:
    """Standard deviation of the normal draw for one tensor (0: a constant, see :func:`_const`)."""
    if ".ln" in key or key.startswith("ln_") or key.endswith("bias"):
        return 0.0
    if key in ("logit_scale",):
        return 0.0
    if key.endswith(("positional_embedding", "class_embedding", "proj", "text_projection")):
        return shape[0] ** -0.5 if len(shape) == 2 else shape[-1] ** -0.5
    if key.endswith("token_embedding.weight"):
        return 0.02
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return fan_in**-0.5


def _const(key: str, shape: torch.Size) -> Tensor:
    if key == "logit_scale":
        return torch.full(shape, math.log(100.0))  # OpenAI's trained temperature
    if key.endswith("weight"):  # LayerNorm gains
        return torch.ones(shape)
    return torch.zeros(shape)


def random_clip_state_dict(model: str = "ViT-B-16", seed: int = 0, tie_keys: bool = True) -> dict[str, Tensor]:
    """A seeded random CLIP state dict in OpenAI's layout, float16-representable float32 values.

    Args:
        model: an open_clip model name (only its shapes are used).
        seed: the seed; the same seed gives bitwise-equal tensors on every machine.
        tie_keys: tie the keys' projection to the queries' in the image tower's attention blocks.

    Shape:
        - output: key -> tensor, the shapes of open_clip's ``model`` (e.g. ViT-B/16: 149.6M values)
    """
    import open_clip

    template = open_clip.create_model(model, pretrained=None, force_quick_gelu=True, device="meta")
    shapes = {k: v.shape for k, v in template.state_dict().items() if k != "attn_mask"}
    generator = torch.Generator().manual_seed(int(seed))
    state: dict[str, Tensor] = {}
    for key in sorted(shapes):
        shape = shapes[key]
        std = _std(key, shape)
        value = _const(key, shape) if std == 0.0 else torch.randn(shape, generator=generator) * std
        state[key] = value.half().float()
    if tie_keys:
        for key, value in state.items():
            if key.startswith("visual.") and key.endswith(("attn.in_proj_weight", "attn.in_proj_bias")):
                width = value.shape[0] // 3
                value[width : 2 * width] = value[:width]
    return state


def save_random_clip(path: str | os.PathLike[str], model: str = "ViT-B-16", seed: int = 0) -> Path:
    """Write :func:`random_clip_state_dict` as a ``.pt`` file that OpenAI-style loaders read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = random_clip_state_dict(model, seed)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def random_clip_backbone(model: str = "ViT-B-16", seed: int = 0, **backbone_kwargs: Any) -> Any:
    """An :class:`~cdclip.backbones.openclip.OpenCLIPBackbone` holding :func:`random_clip_state_dict`.

    The open_clip model is built with QuickGELU, as OpenAI's layout (and CLIP-ES / WeCLIP) expects;
    ``backbone_kwargs`` go to the backbone (``pos_interp``, ``pos_fp16``, ``fp16_out_proj``).
    """
    import open_clip

    from cdclip.backbones.openclip import OpenCLIPBackbone

    clip = open_clip.create_model(model, pretrained=None, force_quick_gelu=True)
    clip.load_state_dict(random_clip_state_dict(model, seed), strict=False)
    return OpenCLIPBackbone(clip, name=model, **backbone_kwargs)


def tiny_clip_backbone(image_size: int = 64, layers: int = 2, seed: int = 0) -> Any:
    """A small random open_clip ViT (patch 16, width 64, embeddings of 32) as an OpenCLIPBackbone.

    Built in milliseconds from ``seed`` alone (the global RNG is left as it was): for examples,
    tests and smoke runs, never for results.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from cdclip.backbones.openclip import OpenCLIPBackbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(
            embed_dim=32,
            vision_cfg=CLIPVisionCfg(layers=layers, width=64, head_width=16, patch_size=16, image_size=image_size),
            text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
        )
    return OpenCLIPBackbone(model)
