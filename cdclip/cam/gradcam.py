"""GradCAM for CLIP (CLIP-ES style), batched and differentiable, grid taken from the input.

For each present class ``c`` of an image (docs/baselines.md):

1. scores ``s_k = logit_scale · cos(g, t_k)`` with ``g`` the global embedding (mean of the
   last-block patch tokens after ``ln_post``/``proj``) and ``t_k`` the text classifier rows;
   softmax over {present classes} ∪ {background words} (absent classes are masked out, which is
   the same softmax CLIP-ES takes over its per-image list);
2. gradient of the softmax score of ``c`` w.r.t. the output of the last block's ``ln_1``
   (``target="ln1_out"``, default: what CLIP-ES's and WeCLIP's hook on ``resblocks[-1].ln_1``
   records, activations and gradients alike) or the tokens entering that block
   (``target="block_in"``);
3. channel weights ``α_d`` = spatial mean of the gradient; ``CAM = ReLU(Σ_d α_d A_d)``;
4. min–max normalisation per map, ``(x − min) / (1e-7 + max − min)``, twice, as pytorch-grad-cam
   does for one target layer; absent classes stay 0.

Unlike pytorch-grad-cam (which CLIP-ES vendors) nothing is hard-coded to a 14×14 grid, no numpy
round trip happens, and ``create_graph=True`` keeps the CAM differentiable. Images are
independent in the last block, so one backward pass serves slot ``j`` of every image (its
``j``-th present class): a batch costs as many passes as its most labelled image has classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_choice, check_dense_inputs, check_floating, check_positive, check_rank
from cdclip.backbones.output import CLIPOutput
from cdclip.cam.multiscale import CAMResult, check_labels, multiscale_cams
from cdclip.cam.slots import class_slots
from cdclip.choices import CAM_TARGETS as TARGETS
from cdclip.choices import CAMTarget as Target
from cdclip.minmax import minmax_normalize
from cdclip.registry import register

__all__ = ["TARGETS", "CLIPGradCAM", "check_target", "clip_gradcam", "gradcam_scores"]

_TARGET_ALIASES = {"ln_1": "ln1_out", "input": "block_in"}  # names before 0.2


def check_target(target: str) -> Target:
    """The canonical GradCAM target name (old names ``ln_1``/``input`` accepted)."""
    target = _TARGET_ALIASES.get(target, target)
    check_choice(target, "target", TARGETS)
    return target  # type: ignore[return-value]


def gradcam_scores(global_embedding: Tensor, text: Tensor, labels: Tensor, logit_scale: float = 100.0) -> Tensor:
    """Softmax over present classes and background words of ``logit_scale · cos(g, t_k)``.

    ``text`` holds the C foreground rows first (C = ``labels.shape[1]``), then the background words.

    Shape:
        - global_embedding: (B, D)
        - text: (K, D) with K >= C
        - labels: (B, C) multi-hot
        - output: (B, K), zero at absent classes
    """
    check_dense_inputs((global_embedding, "global_embedding", "B D"), (text, "text", "K D"))
    check_positive(logit_scale, "logit_scale")
    c = check_labels(labels, global_embedding.shape[0]).shape[1]
    if text.shape[0] < c or text.shape[1] != global_embedding.shape[1]:
        raise ValueError(
            f"text: expected (K >= C={c}, D={global_embedding.shape[1]}), got {tuple(text.shape)}"
        )
    logits = logit_scale * F.normalize(global_embedding.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[:, :c] = labels.to(logits.device) > 0
    probs = logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)
    # no background words and no present class: every score is masked, all zeros (not 0/0 = NaN)
    return torch.where(keep.any(dim=-1, keepdim=True), probs, torch.zeros_like(probs))


def clip_gradcam(
    output: CLIPOutput,
    text: Tensor,
    labels: Tensor,
    logit_scale: float = 100.0,
    target: Target = "ln1_out",
    create_graph: bool = False,
) -> Tensor:
    """GradCAM of CLIP's softmax scores for the present classes.

    Args:
        output: a :class:`~cdclip.backbones.openclip.CLIPOutput` from a forward with
            ``grad_last_block=True`` (needs ``global_embedding``, ``grid`` and
            ``last_block_ln1`` / ``last_block_input``).
        text: text classifier, C foreground rows then background words.
        labels: image-level multi-hot labels.
        logit_scale: CLIP temperature of the scores (the backbone's ``logit_scale``, 100 for OpenAI).
        target: ``"ln1_out"`` (the last block's ``ln_1`` output, CLIP-ES / WeCLIP) or
            ``"block_in"`` (the tokens entering the last block).
        create_graph: keep the graph of the gradients (CAMs differentiable w.r.t. the tokens).

    Shape:
        - text: (K, D)
        - labels: (B, C)
        - output: (B, C, h, w), each present map min–max normalised to [0, 1], absent maps 0
    """
    target = check_target(target)
    source = output.last_block_ln1 if target == "ln1_out" else output.last_block_input
    if source is None or not source.requires_grad:
        raise ValueError(
            "output: GradCAM needs the backbone forward run with grad_last_block=True "
            f"(the {target!r} tokens of the last block carry no gradient)"
        )
    b = output.global_embedding.shape[0]
    h, w = output.grid
    labels = check_labels(labels, b)
    c = labels.shape[1]
    slots = class_slots(labels.to(source.device))
    cams = output.global_embedding.new_zeros(b, c, h * w, dtype=torch.float32)
    if slots.count == 0:
        return cams.reshape(b, c, h, w)
    rows = torch.arange(b, device=source.device)
    with torch.enable_grad():
        probs = gradcam_scores(output.global_embedding, text, labels, logit_scale)
        acts = source[:, 1:].float()  # drop the class token: (B, N, W)
        for j in range(slots.count):
            index, valid = slots.index[:, j], slots.valid[:, j]
            score = (probs[rows, index] * valid.to(probs)).sum()
            (grad,) = torch.autograd.grad(
                score, source, retain_graph=create_graph or j < slots.count - 1, create_graph=create_graph
            )
            alpha = grad[:, 1:].float().mean(dim=1, keepdim=True)  # (B, 1, W)
            cam = F.relu((acts * alpha).sum(dim=-1))  # (B, N)
            cams = cams.index_put((rows[valid], index[valid]), cam[valid])
    # pytorch-grad-cam (CLIP-ES, WeCLIP) normalises each layer's map and again after averaging the
    # layers; with one layer that is min-max twice, and with its 1e-7 the two differ where GradCAM's
    # raw range is small (random ViTs: ~1e-5), and at the peak that CLIP-ES's uint8 box rule reads
    cams = minmax_normalize(minmax_normalize(cams.reshape(b, c, h, w))) * labels.to(cams)[:, :, None, None]
    return cams if create_graph else cams.detach()


@register("gradcam", kind="cam")
class CLIPGradCAM(nn.Module):
    """CLIP-ES GradCAM as a CAM method (Module twin of :func:`clip_gradcam`).

    Args:
        logit_scale: temperature of the scores; ``None`` uses the backbone's (100 for OpenAI CLIP).
        target: ``"ln1_out"`` (default, CLIP-ES's and WeCLIP's hook point) or ``"block_in"``.
        scales: input scales whose CAMs are averaged (on the scale-1.0 grid).
        flip: also average horizontally flipped inputs.

    ``forward(backbone, images, labels, text)`` runs the backbone itself (multi-scale / flip);
    :meth:`cams_from_output` works on one existing forward.

    Shape:
        - images: (B, 3, H, W) normalised, H and W multiples of the patch size
        - labels: (B, C)
        - text: (K, D)
        - output.cams: (B, C, H / p, W / p)

    Examples:
        >>> import torch
        >>> from cdclip.testing import tiny_clip_backbone
        >>> clip = tiny_clip_backbone()
        >>> text = clip.encode_text(["a cat.", "a dog.", "grass."])   # two classes, then a background word
        >>> result = CLIPGradCAM()(clip, torch.randn(1, 3, 64, 64), torch.tensor([[1.0, 0.0]]), text)
        >>> result.cams.shape, float(result.cams[0, 1].abs().sum())   # the absent dog: a zero map
        (torch.Size([1, 2, 4, 4]), 0.0)
    """

    needs_grad = True

    def __init__(
        self,
        logit_scale: float | None = None,
        target: Target = "ln1_out",
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> None:
        super().__init__()
        self.logit_scale, self.target = logit_scale, check_target(target)
        self.scales, self.flip = tuple(float(s) for s in scales), bool(flip)

    def cams_from_output(self, output: CLIPOutput, text: Tensor, labels: Tensor, logit_scale: float | None = None) -> Tensor:
        """GradCAM of one forward run with ``grad_last_block=True`` (``logit_scale``: the backbone's).

        Shape:
            - text: (K, D); labels: (B, C)
            - output: (B, C, h, w)
        """
        scale = self.logit_scale if self.logit_scale is not None else (logit_scale or 100.0)
        return clip_gradcam(output, text, labels, scale, self.target)

    def forward(
        self, backbone: Any, images: Tensor, labels: Tensor, text: Tensor, attn_blocks: int | Sequence[int] = 8
    ) -> CAMResult:
        check_rank(images, "images", "B 3 H W")
        check_floating(images, "images")
        scale = self.logit_scale if self.logit_scale is not None else float(getattr(backbone, "logit_scale", 100.0))

        def fn(out: CLIPOutput) -> Tensor:
            return clip_gradcam(out, text, labels, scale, self.target)

        return multiscale_cams(fn, backbone, images, self.scales, self.flip, attn_blocks, needs_grad=True)

    def extra_repr(self) -> str:
        return f"target={self.target!r}, scales={self.scales}, flip={self.flip}, logit_scale={self.logit_scale}"
