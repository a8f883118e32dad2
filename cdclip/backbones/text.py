"""CLIP text classifier: foreground class embeddings followed by background-word embeddings.

``T = [t_1 .. t_C ; b_1 .. b_{K-C}]`` (docs/method.md): each row is the L2-normalised mean over prompt
templates of the L2-normalised text embeddings (CLIP zero-shot recipe, as in CLIP-ES). Built once
per (model, names, background words, templates, style) and cached in memory on the model (weakly:
the cache dies with the model) and on disk (``$CDCLIP_CACHE_DIR/text``, keyed by the weights'
fingerprint and the prompts), so a second run skips the text tower.

Any object with ``encode_text(list[str]) -> (K, D)`` works as the model (duck-typed), so custom
backbones and test oracles plug in.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from cdclip.data.prompts import DEFAULT_TEMPLATES, format_prompts, prompt_names

__all__ = ["TextClassifier", "TextEncoder", "build_text_classifier", "clear_text_cache"]


class TextEncoder(Protocol):
    """Anything that embeds texts, e.g. :class:`~cdclip.backbones.openclip.OpenCLIPBackbone`.

    Shape:
        - encode_text output: (K, D) for K texts
    """

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor: ...


@dataclass(frozen=True)
class TextClassifier:
    """A text classifier and the names behind its rows.

    Shape:
        - embeddings: (K, D), L2-normalised, foreground rows first
    """

    embeddings: torch.Tensor
    class_names: tuple[str, ...]
    background_words: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """C, the number of foreground rows."""
        return len(self.class_names)

    @property
    def foreground(self) -> torch.Tensor:
        """The foreground rows.

        Shape:
            - output: (C, D)
        """
        return self.embeddings[: self.num_classes]

    @property
    def background(self) -> torch.Tensor:
        """The background-word rows.

        Shape:
            - output: (K - C, D)
        """
        return self.embeddings[self.num_classes :]

    def to(self, device: torch.device | str) -> TextClassifier:
        return TextClassifier(self.embeddings.to(device), self.class_names, self.background_words)


_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], torch.Tensor]] = weakref.WeakKeyDictionary()


def clear_text_cache() -> None:
    """Forget every cached text classifier."""
    _CACHE.clear()


def _embed(model: TextEncoder, phrases: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """One text-tower call per phrase (its templates batched), averaged over the templates.

    One call per phrase, as CLIP-ES and WeCLIP encode: the CPU's rounding depends on the batch, and
    with float16 out-projections a batch of all phrases moves the embeddings by ~6e-5, enough to
    move GradCAM on random weights by 0.03.
    """
    if not phrases:
        return torch.zeros(0, 0)
    rows = []
    for phrase in phrases:
        emb = F.normalize(model.encode_text(format_prompts(phrase, templates)).float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows)


def build_text_classifier(
    model: TextEncoder,
    class_names: Sequence[str],
    background_words: Sequence[str] = (),
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    style: str = "clip_es",
    overrides: Mapping[str, str] | None = None,
) -> TextClassifier:
    """Text classifier for ``class_names`` (+ background words), cached per model.

    Args:
        model: anything with ``encode_text(list[str]) -> (n, D)`` (e.g. :class:`OpenCLIPBackbone`).
        class_names: foreground names in label order (dataset spellings or a custom list).
        background_words: extra background classes (see :func:`cdclip.data.prompts.background_words`).
        templates: prompt templates with a ``{}`` placeholder; embeddings are averaged over them.
        style, overrides: how names become phrases (:func:`cdclip.data.prompts.prompt_names`).

    Shape:
        - output.embeddings: (C + len(background_words), D)
    """
    if isinstance(class_names, str) or isinstance(background_words, str):
        raise TypeError("class_names / background_words: expected sequences of str, got a single str")
    if len(class_names) == 0:
        raise ValueError("class_names: expected at least one class name")
    if isinstance(templates, str):
        templates = (templates,)
    names = tuple(class_names)
    bg = tuple(background_words)
    phrases = prompt_names(names, style=style, overrides=overrides)
    key = (phrases, bg, tuple(templates))
    try:
        per_model = _CACHE.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no caching
        per_model = {}
    emb = per_model.get(key)
    if emb is None:
        emb = _load_or_embed(model, phrases, bg, tuple(templates))
        per_model[key] = emb
    return TextClassifier(emb, names, bg)


def _embed_all(model: TextEncoder, phrases: Sequence[str], bg: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    fg = _embed(model, phrases, templates)
    return torch.cat([fg, _embed(model, bg, templates).to(fg)], dim=0) if bg else fg


def _load_or_embed(model: TextEncoder, phrases: Sequence[str], bg: Sequence[str],
                   templates: Sequence[str]) -> torch.Tensor:  # fmt: skip
    """The embeddings from the disk cache, or computed (one call per phrase) and stored there.

    The file is keyed by everything that changes the numbers: the weights' fingerprint, the model's
    class and float16 options, the device type, the torch version, the phrases and the templates.
    It holds exactly what was computed, so a cached run equals an uncached one bit for bit.
    ``CDCLIP_TEXT_CACHE=0`` turns the disk cache off; models that are not ``nn.Module`` never use it.
    """
    path = _disk_path(model, phrases, bg, templates)
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(cached, torch.Tensor) and cached.shape[0] == len(phrases) + len(bg):
                return cached.to(_device_of(model))
        except Exception:  # a damaged cache file is recomputed and rewritten
            pass
    emb = _embed_all(model, phrases, bg, templates)
    if path is not None:
        from cdclip.atomic import atomic_path

        with atomic_path(path) as tmp:
            torch.save(emb.detach().cpu(), tmp)
    return emb


def _device_of(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _disk_path(model: Any, phrases: Sequence[str], bg: Sequence[str], templates: Sequence[str]) -> Any:
    import hashlib
    import json
    import os

    from torch import nn

    if os.environ.get("CDCLIP_TEXT_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if not isinstance(model, nn.Module):
        return None
    from cdclip.cache_dir import cache_dir
    from cdclip.fingerprint import weights_fingerprint

    options = {k: getattr(model, k) for k in ("fp16_out_proj", "name") if isinstance(getattr(model, k, None), (bool, str))}
    key = json.dumps([weights_fingerprint(model), type(model).__qualname__, options, _device_of(model).type,
                      torch.__version__, list(phrases), list(bg), list(templates)])  # fmt: skip
    return cache_dir() / "text" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
