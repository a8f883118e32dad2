"""One call for every CAM refinement: none, the MHSA baseline (``attn``) and CDA (docs/method.md).

``refine_cams(cams, labels, output, text, method=...)`` with ``method`` one of

* ``"none"``: CAMs unchanged;
* ``"attn"``: CLIP-ES / WeCLIP MHSA affinity — mean attention of the last ``L`` blocks (8),
  Sinkhorn-like transition matrix, box mask, propagation;
* ``"mean"`` (CD-CLIP default), ``"replace"``, ``"product"``: CDA with per-patch class distributions
  ``P_i = softmax(logit_scale · cos(x_i, T))`` over the **full** text classifier (foreground classes
  and background words), fused with the attention as the name says.

All of it delegates to :class:`cdclip.affinity.cda.CDAModule`, so switching methods is one argument.
(The refinement of masks along image edges, PAR and the dense CRF, is :mod:`cdclip.refine`.)
Only each image's present classes are refined, packed into slots (:mod:`cdclip.cam.slots`), so
COCO's 80 classes and batches with different classes per image cost what their labels need.

WeCLIP's decoder-affinity refinement (from iteration 15k on VOC, 40k on COCO, and at validation)
replaces the attention average by :func:`decoder_refined_attention` (pass it as ``attention=``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from cdclip._checks import (
    check_choice,
    check_finite,
    check_floating,
    check_int,
    check_nonempty,
    check_positive,
    check_rank,
    check_unit_interval,
    full_precision,
)
from cdclip.affinity.cda import CDAModule, class_probs_from_features
from cdclip.backbones.output import CLIPOutput
from cdclip.cam.multiscale import check_labels
from cdclip.cam.slots import class_slots, gather_slots, scatter_slots
from cdclip.choices import REFINE_METHODS, RefineMethod

__all__ = ["REFINE_METHODS", "CAMRefiner", "attention_affinity", "decoder_refined_attention", "refine_cams"]


def attention_affinity(attn: Tensor, last: int = 8) -> Tensor:
    """Mean of the last ``last`` blocks' head-averaged attention (CLS already dropped).

    Shape:
        - attn: (B, L, N, N)
        - output: (B, N, N)
    """
    check_rank(attn, "attn", "B L N N")
    check_floating(attn, "attn")
    if attn.shape[1] == 0:
        raise ValueError("attn: the backbone returned no attention blocks; run it with attn_blocks > 0")
    check_nonempty(attn, "attn", "B L N N")
    check_int(last, "last", minimum=1)
    check_finite(attn, "attn")
    return attn[:, -last:].float().mean(dim=1)


@full_precision
def decoder_refined_attention(attn: Tensor, seg_affinity: Tensor, blocks: int = 6, eps: float = 1e-5) -> Tensor:
    """WeCLIP's attention refined by the decoder's affinity.

    Of the last ``blocks`` attention maps ``A_l`` (all of them when fewer are given, like a
    ``[-blocks:]`` slice), keep those with ``Σ(S − A_l) <= mean_l Σ(S − A_l)``
    (``S`` = the decoder's ``sigmoid(FᵀF)``), average them (``Σ m_l A_l / (Σ m_l + eps)``) and
    multiply by ``S`` element-wise. Computed in float32 or higher.

    Shape:
        - attn: (B, L, N, N) head-averaged attention, CLS dropped
        - seg_affinity: (B, N, N)
        - output: (B, N, N)
    """
    check_rank(attn, "attn", "B L N N")
    check_rank(seg_affinity, "seg_affinity", "B N N")
    check_floating(attn, "attn")
    check_floating(seg_affinity, "seg_affinity")
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks < 1 or attn.shape[1] == 0:
        raise ValueError(f"blocks: expected >= 1 blocks of a non-empty attn, got {blocks!r} of {attn.shape[1]}")
    check_nonempty(attn, "attn", "B L N N")
    check_positive(eps, "eps")
    if seg_affinity.shape[0] != attn.shape[0] or seg_affinity.shape[1:] != attn.shape[2:]:
        raise ValueError(
            f"seg_affinity: expected shape {(attn.shape[0], *attn.shape[2:])} for attn {tuple(attn.shape)}, "
            f"got {tuple(seg_affinity.shape)}"
        )
    check_finite(attn, "attn")
    check_finite(seg_affinity, "seg_affinity")
    dtype = torch.promote_types(attn.dtype, torch.float32)
    a = attn[:, -blocks:].to(dtype)
    s = seg_affinity.to(dtype)
    diff = (s[:, None] - a).flatten(2).sum(dim=-1)  # (B, blocks)
    keep = (diff <= diff.mean(dim=1, keepdim=True)).to(dtype)[:, :, None, None]
    mean = (keep * a).sum(dim=1) / (keep.sum(dim=1) + eps)
    return mean * s


def refine_cams(
    cams: Tensor,
    labels: Tensor,
    output: CLIPOutput,
    text: Tensor | None = None,
    method: RefineMethod = "mean",
    cda: CDAModule | None = None,
    attn_layers: int = 8,
    logit_scale: float = 100.0,
    attention: Tensor | None = None,
) -> Tensor:
    """Refine CAMs with the MHSA baseline or CDA using one backbone output.

    Args:
        cams: initial CAMs in [0, 1] on the backbone's patch grid.
        labels: image-level multi-hot labels (absent classes are not refined and stay 0).
        output: backbone output with ``attn`` (B, L, N, N) and ``dense`` (B, N, D).
        text: the full text classifier (foreground rows then background words); needed by CDA.
        method: one of :data:`REFINE_METHODS`.
        cda: the refinement module (its ``fusion`` is overridden by ``method``); default
            ``CDAModule()`` (γ = 0.5, θ = 0.4, exp affinity).
        attn_layers: number of last blocks averaged into the attention affinity (8).
        logit_scale: ``1/τ_cd`` of the class distributions (CLIP's 100).
        attention: an attention affinity (B, N, N) to use instead of the average of the last
            ``attn_layers`` blocks (e.g. :func:`decoder_refined_attention`).

    Shape:
        - cams: (B, C, h, w)
        - labels: (B, C)
        - text: (K, D)
        - attention: (B, N, N)
        - output: (B, C, h, w)
    """
    check_choice(method, "method", REFINE_METHODS)
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    check_nonempty(cams, "cams", "B C h w")
    check_unit_interval(cams, "cams")
    b, c, h, w = cams.shape
    present = check_labels(labels, b).to(cams.device)
    if present.shape[1] != c:
        raise ValueError(f"labels: expected (B, C={c}) for cams {tuple(cams.shape)}, got {tuple(labels.shape)}")
    if method == "none":
        return cams.float() * present[:, :, None, None]
    slots = class_slots(present)
    if slots.count == 0:
        return cams.new_zeros(b, c, h, w, dtype=torch.float32)
    # "replace" uses the class distributions only: no attention average to build
    attn = attention
    if attn is None and method != "replace":
        attn = attention_affinity(output.attn, attn_layers)
    attn = attn.to(cams.device) if attn is not None else None
    probs = None
    if method != "attn":
        if text is None:
            raise ValueError(f"text: method={method!r} needs the text classifier (K, D) for class distributions")
        probs = class_probs_from_features(output.dense.to(cams.device), text.to(cams.device), logit_scale)
    module = cda if cda is not None else CDAModule()
    refined = _with_fusion(module, method)(gather_slots(cams.float(), slots), probs, attn)
    return scatter_slots(refined.float(), slots, c)


def _with_fusion(module: CDAModule, fusion: str) -> CDAModule:
    if module.fusion == fusion:
        return module
    return CDAModule(**{**module.hparams(), "fusion": fusion})  # type: ignore[arg-type]


class CAMRefiner(nn.Module):
    """Module twin of :func:`refine_cams`: stores the method and the CDA hyper-parameters.

    Args:
        method: ``"none"``, ``"attn"``, ``"mean"`` (default), ``"replace"`` or ``"product"``.
        attn_layers: last blocks averaged into the attention affinity (8).
        logit_scale: ``1/τ_cd`` of the class distributions (100).
        **cda_kwargs: :class:`~cdclip.affinity.cda.CDAModule` options (``gamma``, ``box_threshold``,
            ``affinity``, ``sigma``, ``beta``, ``sinkhorn_iters``, ``power``, ``box_rule``).

    Shape:
        - cams: (B, C, h, w)
        - labels: (B, C)
        - text: (K, D)
        - output: (B, C, h, w)

    Examples:
        >>> import torch
        >>> from cdclip.testing import tiny_clip_backbone
        >>> clip = tiny_clip_backbone()
        >>> output = clip(torch.randn(1, 3, 64, 64), attn_blocks=2)
        >>> text = clip.encode_text(["a cat.", "a dog.", "grass."])
        >>> cams, labels = torch.rand(1, 2, 4, 4), torch.tensor([[1.0, 1.0]])
        >>> CAMRefiner("mean", attn_layers=2)(cams, labels, output, text).shape   # CDA fused with attention
        torch.Size([1, 2, 4, 4])
    """

    def __init__(
        self, method: RefineMethod = "mean", attn_layers: int = 8, logit_scale: float = 100.0, **cda_kwargs: Any
    ) -> None:
        super().__init__()
        check_choice(method, "method", REFINE_METHODS)
        self.method, self.attn_layers, self.logit_scale = method, int(attn_layers), float(logit_scale)
        fusion = method if method in ("attn", "mean", "replace", "product") else "attn"
        self.cda = CDAModule(fusion=fusion, **cda_kwargs)  # type: ignore[arg-type]

    def forward(
        self, cams: Tensor, labels: Tensor, output: CLIPOutput, text: Tensor | None = None, attention: Tensor | None = None
    ) -> Tensor:
        return refine_cams(
            cams, labels, output, text, self.method, self.cda, self.attn_layers, self.logit_scale, attention
        )

    def extra_repr(self) -> str:
        return f"method={self.method!r}, attn_layers={self.attn_layers}, logit_scale={self.logit_scale}"
