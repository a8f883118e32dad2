"""CDA: class-distribution-aware affinity and CAM refinement (CD-CLIP, DESIGN §3.3).

Patches of one class have similar probability distributions over *all* classes, even where the
CAM of that class is weak. CDA turns the Jensen–Shannon divergence between those distributions
into an affinity, fuses it with (or replaces) the attention affinity, and propagates CAMs along
the resulting random walk, completing under-activated objects.

Drop-in use with any CAM method (no CLIP needed)::

    from cdclip import CDAModule, class_probs_from_cams

    cda = CDAModule(fusion="replace")               # or "mean" with an attention map
    probs = class_probs_from_cams(all_class_scores)  # (B, N, C) from the CAMs of all classes
    refined = cda(cams, probs)                        # (B, C, h, w), min-max normalised

With CLIP, the distributions come from the dense patch features and the text classifier
(foreground classes plus background words): ``class_probs_from_features(features, text)``.

Sharpness. JS between clearly different class distributions is often only ~0.3·ln 2, so the flat
map ``1 − JS/ln 2`` gives background patches an affinity of ~0.7 to the object and the walk leaks
activation into the background. The default is ``exp(−JS/σ)`` with ``σ = 0.05``: two patches
whose distributions differ like object and background (JS ≈ 0.2) get ``exp(−4) ≈ 0.02``, while
patches of one class (JS ≲ 0.02) keep ≥ 0.67. ``tests/test_cda.py`` builds the scene that fixed
this choice (an object in two parts that attention never joins) and checks that the default
lights the second part while the background stays dark, and that the flat map does not.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_choice, check_finite, check_floating, check_rank, compute_dtype
from cdclip.affinity.boxes import BOX_RULES, BoxRule, box_mask
from cdclip.affinity.transition import transition_matrix
from cdclip.kernels.js import pairwise_js
from cdclip.minmax import minmax_normalize
from cdclip.registry import register

__all__ = [
    "CDAAffinity",
    "CDAModule",
    "cda_affinity",
    "cda_refine",
    "class_probs_from_cams",
    "class_probs_from_features",
    "minmax_normalize",
]

AffinityKind = Literal["exp", "power", "linear"]
Fusion = Literal["mean", "replace", "product", "attn"]
FUSIONS: tuple[str, ...] = ("mean", "replace", "product", "attn")
AFFINITY_KINDS: tuple[str, ...] = ("exp", "power", "linear")
LN2 = math.log(2.0)


# --------------------------------------------------------------------------- class distributions
def class_probs_from_features(features: Tensor, text: Tensor, logit_scale: float = 100.0) -> Tensor:
    """Per-patch class distribution from dense features and a text classifier.

    ``P_i = softmax(logit_scale · cos(x_i, t_k))`` over all ``K`` text embeddings (foreground
    classes and background words). ``logit_scale`` is ``1/τ_cd``; CLIP's is 100.

    Shape:
        - features: (B, N, D)
        - text: (K, D)
        - output: (B, N, K)
    """
    check_rank(features, "features", "B N D")
    check_rank(text, "text", "K D")
    check_floating(features, "features")
    check_floating(text, "text")
    if features.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"text: expected embedding dim D={features.shape[-1]} to match features {tuple(features.shape)}, "
            f"got {tuple(text.shape)}"
        )
    dtype = compute_dtype(features)
    x = F.normalize(features.to(dtype), dim=-1)
    t = F.normalize(text.to(dtype), dim=-1)
    return torch.softmax(logit_scale * x @ t.T, dim=-1)


def class_probs_from_cams(
    cams: Tensor,
    temperature: float = 0.1,
    background: bool = False,
    alpha: float = 1.0,
) -> Tensor:
    """Per-patch class distribution from the CAM scores of all classes (no text classifier).

    Every CAM method scores each class at each patch; a softmax over those scores is the class
    distribution CDA compares (DESIGN §3.3). The background score ``(1 − max_c M_c)^α`` is off by
    default: it depends on the absolute CAM level, so a weakly activated part of an object would
    look like background, which is exactly what CDA is meant to repair.

    Args:
        cams: CAMs of **all** classes (not only the present ones), each in [0, 1].
        temperature: softmax temperature on the scores.
        background: append the background score as an extra class.
        alpha: exponent of the background score.

    Shape:
        - cams: (B, C, h, w)
        - output: (B, h*w, C) or (B, h*w, C+1) with ``background``
    """
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    check_finite(cams, "cams")
    if temperature <= 0:
        raise ValueError(f"temperature: expected a positive float, got {temperature}")
    scores = cams.to(compute_dtype(cams)).flatten(2).transpose(1, 2)  # (B, N, C)
    if background:
        bg = (1.0 - scores.amax(dim=-1, keepdim=True)).clamp_min(0.0) ** alpha
        scores = torch.cat([bg, scores], dim=-1)
    return torch.softmax(scores / temperature, dim=-1)


def check_probs(probs: Tensor, name: str = "probs", atol: float = 1e-3) -> None:
    """Raise unless ``probs`` is ``(B, N, K)``, finite, non-negative, rows summing to 1.

    The tolerance widens to twice the dtype's epsilon for low-precision inputs: a bfloat16
    softmax row legitimately sums to 1 ± 0.004.
    """
    check_rank(probs, name, "B N K")
    check_floating(probs, name)
    check_finite(probs, name)
    atol = max(atol, 2 * torch.finfo(probs.dtype).eps)
    if bool((probs < 0).any()):
        raise ValueError(f"{name}: expected non-negative probabilities, got min {probs.min().item():.3g}")
    err = (probs.sum(-1, dtype=torch.float64) - 1.0).abs().max().item() if probs.numel() else 0.0
    if err > atol:
        raise ValueError(
            f"{name}: expected rows summing to 1 over the last dim (K={probs.shape[-1]}, tolerance {atol}), "
            f"got a row off by {err:.3g}; apply softmax first"
        )


# --------------------------------------------------------------------------- affinity
def cda_affinity(probs: Tensor, kind: AffinityKind = "exp", sigma: float = 0.05, beta: float = 8.0) -> Tensor:
    """Class-distribution-aware affinity from pairwise Jensen–Shannon divergence.

    ``exp``: ``exp(−JS/σ)`` (default); ``power``: ``(1 − JS/ln 2)^β``; ``linear``: ``1 − JS/ln 2``
    (the flat map, kept for ablations: it leaks into the background).

    Shape:
        - probs: (B, N, K)
        - output: (B, N, N), values in [0, 1], 1 on the diagonal
    """
    check_probs(probs)
    return _affinity_from_probs(probs, kind, sigma, beta)


def _affinity_from_probs(probs: Tensor, kind: str, sigma: float, beta: float) -> Tensor:
    """:func:`cda_affinity` without re-validating ``probs`` (callers have checked it)."""
    if kind not in AFFINITY_KINDS:
        raise ValueError(f"kind: expected one of {AFFINITY_KINDS}, got {kind!r}")
    if sigma <= 0:
        raise ValueError(f"sigma: expected a positive float, got {sigma}")
    if beta <= 0:
        raise ValueError(f"beta: expected a positive float, got {beta}")
    js = pairwise_js(probs)
    if kind == "exp":
        return torch.exp(-js / sigma)
    similarity = (1.0 - js / LN2).clamp(0.0, 1.0)
    return similarity if kind == "linear" else similarity**beta


@register("cda_affinity", kind="affinity")
class CDAAffinity(nn.Module):
    """Class-distribution-aware affinity (Module twin of :func:`cda_affinity`).

    Args:
        kind: ``"exp"`` (default), ``"power"`` or ``"linear"``.
        sigma: scale of ``exp(−JS/σ)``.
        beta: exponent of ``(1 − JS/ln 2)^β``.

    Shape:
        - probs: (B, N, K)
        - output: (B, N, N)
    """

    def __init__(self, kind: AffinityKind = "exp", sigma: float = 0.05, beta: float = 8.0) -> None:
        super().__init__()
        if kind not in AFFINITY_KINDS:
            raise ValueError(f"kind: expected one of {AFFINITY_KINDS}, got {kind!r}")
        self.kind, self.sigma, self.beta = kind, sigma, beta

    def forward(self, probs: Tensor) -> Tensor:
        return cda_affinity(probs, self.kind, self.sigma, self.beta)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, sigma={self.sigma}, beta={self.beta}"


# --------------------------------------------------------------------------- refinement
def _check_fusion(fusion: str, gamma: float) -> None:
    if fusion not in FUSIONS:
        raise ValueError(f"fusion: expected one of {FUSIONS}, got {fusion!r}")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma: expected a weight in [0, 1], got {gamma}")


def cda_refine(
    cams: Tensor,
    probs: Tensor | None = None,
    attn: Tensor | None = None,
    *,
    fusion: Fusion = "mean",
    gamma: float = 0.5,
    box_threshold: float = 0.4,
    affinity: AffinityKind = "exp",
    sigma: float = 0.05,
    beta: float = 8.0,
    sinkhorn_iters: int = 3,
    power: int = 2,
    box_rule: BoxRule = "inclusive",
) -> Tensor:
    """Refine CAMs by propagating them along the fused CDA / attention transition matrix.

    ``T = γ·τ(A_attn) + (1−γ)·τ(A_cd)`` (``mean``), ``τ(A_cd)`` (``replace``),
    ``τ(A_attn ⊙ A_cd)`` (``product``) or ``τ(A_attn)`` (``attn``: the MHSA baseline, CDA off).
    Each class map is masked to its boxes and propagated: ``M'_c = T · (box_c ⊙ vec(M_c))``,
    then min–max normalised.

    Args:
        cams: CAMs to refine (typically of the image's present classes), in [0, 1].
        probs: per-patch class distributions (see :func:`class_probs_from_features` and
            :func:`class_probs_from_cams`); required unless ``fusion="attn"``.
        attn: non-negative attention affinity (e.g. head- and block-averaged attention without the
            CLS token); required for ``mean``, ``product`` and ``attn``.
        fusion: how the two affinities are combined.
        gamma: weight of the attention transition matrix in ``mean``.
        box_threshold: box-mask threshold θ (0.4 VOC, 0.7 COCO).
        affinity, sigma, beta: see :func:`cda_affinity`.
        sinkhorn_iters, power: see :func:`~cdclip.affinity.transition.transition_matrix`.
        box_rule: ``"inclusive"`` or ``"clip-es"`` (see :func:`~cdclip.affinity.boxes.box_mask`).

    Returns:
        Refined CAMs in float32 (float64 for float64 input), each map min–max normalised.

    Shape:
        - cams: (B, C, h, w)
        - probs: (B, h*w, K)
        - attn: (B, h*w, h*w)
        - output: (B, C, h, w)
    """
    _check_fusion(fusion, gamma)
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    check_finite(cams, "cams")
    b, c, h, w = cams.shape
    n = h * w
    needs_attn = fusion in ("mean", "product", "attn")
    needs_probs = fusion in ("mean", "product", "replace")
    if needs_probs:
        if probs is None:
            raise ValueError(
                f"probs: fusion={fusion!r} needs per-patch class distributions (B, N={n}, K); build them with "
                "class_probs_from_features(features, text) or class_probs_from_cams(cams_of_all_classes)"
            )
        check_probs(probs)
        if probs.shape[0] != b or probs.shape[1] != n:
            raise ValueError(
                f"probs: expected shape (B={b}, N=h*w={n}, K) for cams {tuple(cams.shape)}, got {tuple(probs.shape)}"
            )
    if needs_attn:
        if attn is None:
            raise ValueError(f"attn: fusion={fusion!r} needs an attention affinity (B, N={n}, N={n}); got None")
        check_rank(attn, "attn", "B N N")
        check_floating(attn, "attn")
        if attn.shape[1] != attn.shape[2]:
            raise ValueError(f"attn: expected a square (B, N, N) affinity, got {tuple(attn.shape)}")
        if attn.shape[0] != b or attn.shape[1] != n:
            raise ValueError(
                f"attn: expected shape (B={b}, N=h*w={n}, N={n}) for cams {tuple(cams.shape)}, got {tuple(attn.shape)}"
            )

    dtype = compute_dtype(cams)
    tm = {"sinkhorn_iters": sinkhorn_iters, "power": power}
    # probs was validated above; the affinity must not repeat the O(N·K) check and its host syncs
    a_cd = _affinity_from_probs(probs, affinity, sigma, beta) if needs_probs else None  # type: ignore[arg-type]
    a_attn = attn.to(dtype) if needs_attn else None  # type: ignore[union-attr]
    if fusion == "attn":
        trans = transition_matrix(a_attn, **tm)  # type: ignore[arg-type]
    elif fusion == "replace":
        trans = transition_matrix(a_cd, **tm)  # type: ignore[arg-type]
    elif fusion == "product":
        trans = transition_matrix(a_attn * a_cd.to(dtype), **tm)  # type: ignore[operator,union-attr]
    else:
        trans = gamma * transition_matrix(a_attn, **tm) + (1.0 - gamma) * transition_matrix(a_cd, **tm)  # type: ignore[arg-type]
    trans = trans.to(dtype)

    masked = cams.to(dtype) * box_mask(cams, box_threshold, box_rule)
    refined = torch.bmm(trans, masked.flatten(2).transpose(1, 2))  # (B, N, C)
    return minmax_normalize(refined.transpose(1, 2).reshape(b, c, h, w))


@register("cda", kind="refiner")
class CDAModule(nn.Module):
    """Class-distribution-aware CAM refinement: a drop-in for any CAM method.

    Args:
        fusion: ``"mean"`` (default), ``"replace"`` (CDA only), ``"product"`` or ``"attn"``
            (the attention baseline, CDA off).
        gamma: weight of the attention transition matrix in ``mean``.
        box_threshold: box-mask threshold θ (0.4 for VOC, 0.7 for COCO).
        affinity: ``"exp"`` (default), ``"power"`` or ``"linear"``.
        sigma: scale of ``exp(−JS/σ)`` (0.05).
        beta: exponent of ``(1 − JS/ln 2)^β`` (8).
        sinkhorn_iters: column/row normalisation rounds (3).
        power: power of the transition matrix (2).
        box_rule: ``"inclusive"`` (default) or ``"clip-es"`` box ends.

    Example (CAMs from any method, no text classifier)::

        cda = CDAModule(fusion="replace")
        probs = class_probs_from_cams(cams_all_classes)        # (B, N, C)
        refined = cda(cams_all_classes[:, present], probs)      # (B, C', h, w)

    Shape:
        - cams: (B, C, h, w)
        - probs: (B, h*w, K)
        - attn: (B, h*w, h*w)
        - output: (B, C, h, w)
    """

    def __init__(
        self,
        fusion: Fusion = "mean",
        gamma: float = 0.5,
        box_threshold: float = 0.4,
        affinity: AffinityKind = "exp",
        sigma: float = 0.05,
        beta: float = 8.0,
        sinkhorn_iters: int = 3,
        power: int = 2,
        box_rule: BoxRule = "inclusive",
    ) -> None:
        super().__init__()
        _check_fusion(fusion, gamma)
        check_choice(box_rule, "box_rule", BOX_RULES)
        self.box_rule = box_rule
        if affinity not in AFFINITY_KINDS:
            raise ValueError(f"affinity: expected one of {AFFINITY_KINDS}, got {affinity!r}")
        self.fusion, self.gamma, self.box_threshold = fusion, gamma, box_threshold
        self.affinity, self.sigma, self.beta = affinity, sigma, beta
        self.sinkhorn_iters, self.power = sinkhorn_iters, power

    def hparams(self) -> dict[str, object]:
        """The constructor arguments, e.g. ``CDAModule(**{**m.hparams(), "fusion": "attn"})``."""
        names = (
            "fusion", "gamma", "box_threshold", "affinity", "sigma", "beta", "sinkhorn_iters", "power", "box_rule"
        )
        return {name: getattr(self, name) for name in names}

    def forward(self, cams: Tensor, probs: Tensor | None = None, attn: Tensor | None = None) -> Tensor:
        return cda_refine(cams, probs, attn, **self.hparams())  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
