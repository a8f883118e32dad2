"""The CLIP backbone a :class:`~cdclip.pipeline.config.ModelConfig` names, built through the registry.

One place for ``cdclip train``, ``cdclip cams``, :func:`~cdclip.pipeline.model.build_model` and
:meth:`~cdclip.pipeline.pseudo_labels.PseudoLabeler.from_preset`, so that every path passes the
same options (precision, position embeddings, float16 out-projections) to open_clip backbones.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["build_clip_backbone", "is_random_weights"]

_RANDOM = ("none", "random")


def is_random_weights(weights: str | None) -> bool:
    """``"none"`` / ``"random"`` (any case) ask for randomly initialised weights."""
    return weights is not None and weights.strip().lower() in _RANDOM


def build_clip_backbone(model: Any, device: str | torch.device = "cpu", weights: str | None = None) -> Any:
    """``create(model.clip, ...)`` with the config's open_clip options.

    Args:
        model: a :class:`~cdclip.pipeline.config.ModelConfig`.
        device: where the backbone goes.
        weights: a checkpoint path or open_clip tag; ``"none"`` for random weights; ``None`` takes
            ``model.clip_weights`` (``None`` there too: the tag in ``model.clip``).
    """
    from cdclip.registry import create

    weights = weights if weights is not None else model.clip_weights
    kwargs: dict[str, Any] = {"device": device}
    if model.clip.startswith("openclip:"):
        kwargs.update(
            precision=model.clip_precision, pos_interp=model.clip_pos_interp, pos_fp16=model.clip_pos_fp16,
            fp16_out_proj=model.clip_fp16_out_proj,
        )  # fmt: skip
    if weights is not None:
        kwargs["weights"] = None if is_random_weights(weights) else weights
    return create(model.clip, **kwargs)
