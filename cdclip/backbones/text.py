"""CLIP text classifier: foreground class embeddings followed by background-word embeddings.

``T = [t_1 .. t_C ; b_1 .. b_{K-C}]`` (DESIGN §2): each row is the L2-normalised mean over prompt
templates of the L2-normalised text embeddings (CLIP zero-shot recipe, as in CLIP-ES). Built once
per (model, names, background words, templates, style) and cached in memory on the model (weakly:
the cache dies with the model).

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
        """(C, D) foreground rows."""
        return self.embeddings[: self.num_classes]

    @property
    def background(self) -> torch.Tensor:
        """(K - C, D) background-word rows."""
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
        fg = _embed(model, phrases, templates)
        emb = torch.cat([fg, _embed(model, bg, templates).to(fg)], dim=0) if bg else fg
        per_model[key] = emb
    return TextClassifier(emb, names, bg)
