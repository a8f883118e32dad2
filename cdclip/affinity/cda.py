"""CDA: class-distribution-aware affinity and CAM refinement (CD-CLIP, docs/method.md, CDA).

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

Input contract (validated, never normalised silently): CAMs are finite and in ``[0, 1]`` (as
every CAM method here returns them, min–max normalised; a tolerance of 1e-4, twice the dtype's
epsilon for float16/bfloat16) — anything else raises ``ValueError: cams: ...``; class
distributions are finite, non-negative rows summing to 1; attention is finite and non-negative;
no dimension may be empty. CDA's output does not depend on the CAMs' overall scale, but a map that
is negative or offset would be refined as a different map, so a range error is the honest answer.

Uninformative distributions. When every patch of an image has the same class distribution (one
class, ``K = 1``; or identical rows everywhere), the CDA affinity is constant and its transition
matrix uniform: propagating along it would flatten every map to a constant, i.e. all zeros after
the min–max normalisation. For such an image (all CDA affinities within 1e-4 of 1) CDA falls back:
``mean`` and ``product`` use the attention transition matrix alone (the ``attn`` result), and
``replace``, which has no attention, does not propagate (the identity): the box-masked CAM,
min–max normalised. Under ``torch.autocast`` everything runs in float32 (float64 stays float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import (
    check_choice,
    check_dense_inputs,
    check_distributions,
    check_finite,
    check_floating,
    check_fraction,
    check_int,
    check_nonempty,
    check_positive,
    check_rank,
    check_unit_interval,
    compute_dtype,
    full_precision,
)
from cdclip.affinity.boxes import BOX_RULES, BoxRule, box_mask
from cdclip.affinity.transition import transition_matrix
from cdclip.choices import AFFINITY_KINDS, AffinityKind
from cdclip.constants import LN2
from cdclip.kernels.js import _pairwise_js_checked
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

Fusion = Literal["mean", "replace", "product", "attn"]
FUSIONS: tuple[str, ...] = get_args(Fusion)
# an image whose CDA affinities all lie this close to 1 has uninformative class distributions
UNINFORMATIVE_ATOL = 1e-4


# --------------------------------------------------------------------------- class distributions
@full_precision
def class_probs_from_features(features: Tensor, text: Tensor, logit_scale: float = 100.0) -> Tensor:
    """Per-patch class distribution from dense features and a text classifier.

    ``P_i = softmax(logit_scale · cos(x_i, t_k))`` over all ``K`` text embeddings (foreground
    classes and background words). ``logit_scale`` is ``1/τ_cd``; CLIP's is 100.

    Shape:
        - features: (B, N, D)
        - text: (K, D)
        - output: (B, N, K)
    """
    check_dense_inputs((features, "features", "B N D"), (text, "text", "K D"))
    check_positive(logit_scale, "logit_scale")
    if features.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"text: expected embedding dim D={features.shape[-1]} to match features {tuple(features.shape)}, "
            f"got {tuple(text.shape)}"
        )
    dtype = compute_dtype(features)
    x = F.normalize(features.to(dtype), dim=-1)
    t = F.normalize(text.to(dtype), dim=-1)
    return torch.softmax(logit_scale * x @ t.T, dim=-1)


@full_precision
def class_probs_from_cams(
    cams: Tensor,
    temperature: float = 0.1,
    background: bool = False,
    alpha: float = 1.0,
) -> Tensor:
    """Per-patch class distribution from the CAM scores of all classes (no text classifier).

    Every CAM method scores each class at each patch; a softmax over those scores is the class
    distribution CDA compares (docs/method.md, CDA). The background score ``(1 − max_c M_c)^α`` is off by
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
    check_dense_inputs((cams, "cams", "B C h w"))
    check_positive(temperature, "temperature")
    check_positive(alpha, "alpha")
    scores = cams.to(compute_dtype(cams)).flatten(2).transpose(1, 2)  # (B, N, C)
    if background:
        bg = (1.0 - scores.amax(dim=-1, keepdim=True)).clamp_min(0.0) ** alpha
        scores = torch.cat([bg, scores], dim=-1)
    # shift by the maximum before dividing: a huge score over a small temperature must not
    # overflow to inf (inf - inf = NaN inside the softmax)
    return torch.softmax((scores - scores.amax(dim=-1, keepdim=True)) / temperature, dim=-1)


def check_class_distributions(probs: Tensor, name: str = "probs", atol: float = 1e-3) -> None:
    """Raise unless ``probs`` is a non-empty ``(B, N, K)`` of class distributions: finite,
    non-negative rows summing to 1 (layout and values, unlike the kernel's layout-only check).

    The tolerance widens to twice the dtype's epsilon for low-precision inputs: a bfloat16
    softmax row legitimately sums to 1 ± 0.004.

    Shape:
        - probs: (B, N, K)
    """
    check_rank(probs, name, "B N K")
    check_floating(probs, name)
    check_nonempty(probs, name, "B N K")
    check_distributions(probs, name, atol)


check_probs = check_class_distributions  # the earlier name, kept for callers


def _check_affinity_args(kind: object, sigma: object, beta: object, name: str = "kind") -> None:
    check_choice(kind, name, AFFINITY_KINDS)
    check_positive(sigma, "sigma")
    check_positive(beta, "beta")


# --------------------------------------------------------------------------- affinity
@full_precision
def cda_affinity(probs: Tensor, kind: AffinityKind = "exp", sigma: float = 0.05, beta: float = 8.0) -> Tensor:
    """Class-distribution-aware affinity from pairwise Jensen–Shannon divergence.

    ``exp``: ``exp(−JS/σ)`` (default); ``power``: ``(1 − JS/ln 2)^β``; ``linear``: ``1 − JS/ln 2``
    (the flat map, kept for ablations: it leaks into the background).

    Shape:
        - probs: (B, N, K)
        - output: (B, N, N), values in [0, 1], 1 on the diagonal
    """
    _check_affinity_args(kind, sigma, beta)
    check_class_distributions(probs)
    return _affinity_from_probs(probs, kind, sigma, beta)


def _affinity_from_probs(probs: Tensor, kind: str, sigma: float, beta: float) -> Tensor:
    """:func:`cda_affinity` without re-validating its arguments (callers have checked them)."""
    js = _pairwise_js_checked(probs, probs, True, None, "auto")
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

    Examples:
        >>> import torch
        >>> probs = torch.softmax(torch.randn(1, 16, 3), dim=-1)   # a 4 x 4 grid, 3 classes
        >>> CDAAffinity(kind="exp", sigma=0.05)(probs).shape
        torch.Size([1, 16, 16])
    """

    def __init__(self, kind: AffinityKind = "exp", sigma: float = 0.05, beta: float = 8.0) -> None:
        super().__init__()
        _check_affinity_args(kind, sigma, beta)
        self.kind, self.sigma, self.beta = kind, sigma, beta

    def forward(self, probs: Tensor) -> Tensor:
        return cda_affinity(probs, self.kind, self.sigma, self.beta)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, sigma={self.sigma}, beta={self.beta}"


# --------------------------------------------------------------------------- refinement
def _check_refine_args(
    fusion: object, gamma: object, box_threshold: object, affinity: object, sigma: object, beta: object,
    sinkhorn_iters: object, power: object, box_rule: object,
) -> None:  # fmt: skip
    """Validate every hyper-parameter of :func:`cda_refine` (each error names its argument)."""
    check_choice(fusion, "fusion", FUSIONS)
    check_fraction(gamma, "gamma", "a weight")
    check_fraction(box_threshold, "box_threshold")
    _check_affinity_args(affinity, sigma, beta, name="affinity")
    check_int(sinkhorn_iters, "sinkhorn_iters", minimum=0)
    check_int(power, "power", minimum=1)
    check_choice(box_rule, "box_rule", BOX_RULES)


def _check_attn(attn: Tensor | None, fusion: str, b: int, n: int, cams_shape: tuple[int, ...]) -> None:
    if attn is None:
        raise ValueError(f"attn: fusion={fusion!r} needs an attention affinity (B, N={n}, N={n}); got None")
    check_rank(attn, "attn", "B N N")
    check_floating(attn, "attn")
    if attn.shape[1] != attn.shape[2]:
        raise ValueError(f"attn: expected a square (B, N, N) affinity, got {tuple(attn.shape)}")
    if attn.shape[0] != b or attn.shape[1] != n:
        raise ValueError(f"attn: expected shape (B={b}, N=h*w={n}, N={n}) for cams {cams_shape}, got {tuple(attn.shape)}")
    check_finite(attn, "attn")
    if bool((attn < 0).any()):
        raise ValueError("attn: expected a non-negative affinity, got negative entries")


def _check_probs_for_cams(probs: Tensor | None, fusion: str, b: int, n: int, cams_shape: tuple[int, ...]) -> None:
    if probs is None:
        raise ValueError(
            f"probs: fusion={fusion!r} needs per-patch class distributions (B, N={n}, K); build them with "
            "class_probs_from_features(features, text) or class_probs_from_cams(cams_of_all_classes)"
        )
    check_rank(probs, "probs", "B N K")
    if probs.shape[0] != b or probs.shape[1] != n:
        raise ValueError(f"probs: expected shape (B={b}, N=h*w={n}, K) for cams {cams_shape}, got {tuple(probs.shape)}")
    check_class_distributions(probs)


def _uninformative(a_cd: Tensor) -> Tensor:
    """Per image: every CDA affinity is within ``UNINFORMATIVE_ATOL`` of 1 (identical distributions).

    Shape:
        - a_cd: (B, N, N)
        - output: (B,) bool
    """
    return a_cd.flatten(1).amin(dim=1) >= 1.0 - UNINFORMATIVE_ATOL


@full_precision
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
    present: Tensor | Sequence[Tensor] | None = None,
    normalize: bool = True,
) -> Tensor:
    """Refine CAMs by propagating them along the fused CDA / attention transition matrix.

    ``T = γ·τ(A_attn) + (1−γ)·τ(A_cd)`` (``mean``), ``τ(A_cd)`` (``replace``),
    ``τ(A_attn ⊙ A_cd)`` (``product``) or ``τ(A_attn)`` (``attn``: the MHSA baseline, CDA off).
    Each class map is masked to its boxes and propagated: ``M'_c = T · (box_c ⊙ vec(M_c))``,
    then min–max normalised. An image whose class distributions are all identical (``K = 1``)
    falls back to the attention transition (``mean``, ``product``) or to no propagation
    (``replace``); see the module docstring. Runs in float32 or higher under any autocast.

    Args:
        cams: CAMs to refine (typically of the image's present classes), finite and in [0, 1].
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
        present: the classes of each image, when ``cams`` holds every class: a ``(B, C)`` bool mask
            or one tensor of class indices per image. Absent classes come out as zero maps, so a
            batch whose images have different classes is one call. Each map is propagated on its
            own, so the present maps equal those of refining only the present CAMs.
        normalize: min–max normalise each refined map (default). ``False`` returns the propagated
            values ``T · (box ⊙ M)`` for methods that threshold absolute scores.

    Raises:
        ValueError: a bad hyper-parameter, shape or empty dimension; CAMs outside [0, 1] or not
            finite; ``probs`` rows that are not distributions; negative or non-finite ``attn``; a
            ``present`` mask of the wrong shape or out-of-range indices.

    Returns:
        Refined CAMs in float32 (float64 for float64 input), each map min–max normalised unless
        ``normalize=False``.

    Shape:
        - cams: (B, C, h, w)
        - probs: (B, h*w, K)
        - attn: (B, h*w, h*w)
        - output: (B, C, h, w)
    """
    _check_refine_args(fusion, gamma, box_threshold, affinity, sigma, beta, sinkhorn_iters, power, box_rule)
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    check_nonempty(cams, "cams", "B C h w")
    check_unit_interval(cams, "cams")
    b, c, h, w = cams.shape
    n = h * w
    needs_attn = fusion in ("mean", "product", "attn")
    needs_probs = fusion in ("mean", "product", "replace")
    if needs_probs:
        _check_probs_for_cams(probs, fusion, b, n, tuple(cams.shape))
    if needs_attn:
        _check_attn(attn, fusion, b, n, tuple(cams.shape))

    dtype = compute_dtype(cams)
    trans = _fused_transition(probs, attn, fusion, gamma, affinity, sigma, beta, sinkhorn_iters, power, dtype)

    masked = cams.to(dtype) * box_mask(cams, box_threshold, box_rule)
    refined = torch.bmm(trans, masked.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
    if normalize:
        refined = minmax_normalize(refined)
    if present is not None:
        refined = refined * _present_mask(present, b, c).to(refined.device)[:, :, None, None]
    return refined


def _present_mask(present: Tensor | Sequence[Tensor], batch: int, classes: int) -> Tensor:
    """``present`` as a (B, C) float mask: from a bool/0-1 mask or one index tensor per image."""
    if isinstance(present, Tensor):
        if tuple(present.shape) != (batch, classes):
            raise ValueError(f"present: expected a (B, C) = ({batch}, {classes}) mask, got {tuple(present.shape)}")
        return (present > 0).float()
    if len(present) != batch:
        raise ValueError(f"present: expected one index tensor per image ({batch}), got {len(present)}")
    mask = torch.zeros(batch, classes)
    for i, index in enumerate(present):
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= classes):
            raise ValueError(f"present[{i}]: class indices must lie in [0, {classes}), got {index.tolist()}")
        mask[i, index] = 1.0
    return mask


def _fused_transition(
    probs: Tensor | None, attn: Tensor | None, fusion: str, gamma: float, affinity: str, sigma: float, beta: float,
    sinkhorn_iters: int, power: int, dtype: torch.dtype,
) -> Tensor:  # fmt: skip
    """The fused transition matrix of :func:`cda_refine` (arguments validated), with the fallback
    for images whose class distributions carry no information (see the module docstring).

    Shape:
        - probs: (B, N, K)
        - attn: (B, N, N)
        - output: (B, N, N)
    """
    tm = {"sinkhorn_iters": sinkhorn_iters, "power": power}
    a_attn = attn.to(dtype) if attn is not None else None
    t_attn = transition_matrix(a_attn, **tm) if a_attn is not None else None
    if fusion == "attn":
        return t_attn.to(dtype)  # type: ignore[union-attr]
    # probs was validated by the caller; the affinity must not repeat the O(N·K) check and its host syncs
    a_cd = _affinity_from_probs(probs, affinity, sigma, beta).to(dtype)  # type: ignore[arg-type]
    if fusion == "product":
        t_cd = transition_matrix(a_attn * a_cd, **tm)  # type: ignore[operator]
    else:
        t_cd = transition_matrix(a_cd, **tm)
    if t_attn is not None:
        fallback = t_attn
    else:
        fallback = torch.eye(a_cd.shape[-1], dtype=t_cd.dtype, device=t_cd.device).expand_as(t_cd)
    t_cd = torch.where(_uninformative(a_cd)[:, None, None], fallback.to(t_cd.dtype), t_cd)
    if fusion == "mean":
        return (gamma * t_attn + (1.0 - gamma) * t_cd).to(dtype)  # type: ignore[operator]
    return t_cd.to(dtype)


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
        normalize: min–max normalise each refined map (default); ``False`` keeps the propagated scores.

    Shape:
        - cams: (B, C, h, w)
        - probs: (B, h*w, K)
        - attn: (B, h*w, h*w)
        - output: (B, C, h, w)

    Examples:
        >>> import torch
        >>> cams_all = torch.rand(1, 3, 8, 8)                     # CAMs of all 3 classes from any method
        >>> probs = class_probs_from_cams(cams_all)               # (B, N, C) class distributions
        >>> cda = CDAModule(fusion="replace")
        >>> cda(cams_all[:, [0, 2]], probs).shape                 # refine the present classes 0 and 2
        torch.Size([1, 2, 8, 8])
        >>> refined = cda(cams_all, probs, present=torch.tensor([[1, 0, 1]]))  # every class, per-image labels
        >>> refined.shape, float(refined[0, 1].abs().sum())       # the absent class: a zero map
        (torch.Size([1, 3, 8, 8]), 0.0)
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
        normalize: bool = True,
    ) -> None:
        super().__init__()
        _check_refine_args(fusion, gamma, box_threshold, affinity, sigma, beta, sinkhorn_iters, power, box_rule)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize: expected True or False, got {normalize!r}")
        self.box_rule, self.normalize = box_rule, normalize
        self.fusion, self.gamma, self.box_threshold = fusion, gamma, box_threshold
        self.affinity, self.sigma, self.beta = affinity, sigma, beta
        self.sinkhorn_iters, self.power = sinkhorn_iters, power

    def hparams(self) -> dict[str, object]:
        """The constructor arguments, e.g. ``CDAModule(**{**m.hparams(), "fusion": "attn"})``."""
        names = (
            "fusion", "gamma", "box_threshold", "affinity", "sigma", "beta", "sinkhorn_iters", "power", "box_rule",
            "normalize",
        )
        return {name: getattr(self, name) for name in names}

    def forward(self, cams: Tensor, probs: Tensor | None = None, attn: Tensor | None = None,
                present: Tensor | Sequence[Tensor] | None = None) -> Tensor:  # fmt: skip
        """See :func:`cda_refine`; ``present`` marks each image's classes when ``cams`` holds all of them."""
        return cda_refine(cams, probs, attn, present=present, **self.hparams())  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
