"""The single-stage CD-CLIP model: frozen CLIP (+ DINO), online pseudo labels, trainable decoder.

One :meth:`CDCLIP.training_step` does, for a batch of augmented crops (docs/method.md, docs/training.md):

1. one frozen CLIP forward giving the per-block patch tokens (decoder input), the attention of
   the last blocks and dense features (affinities), and a differentiable last block (GradCAM);
2. the decoder's logits at 1/16 and its fused features; from ``model.seg_affinity_from`` on (and
   at validation) their ``sigmoid(FᵀF)`` refines the attention (WeCLIP);
3. the one :class:`~cdclip.cam.head.CAMHead` shared with ``cdclip cams``: GradCAM of the classes
   present in ``batch["labels"]`` (from the label files unless a preset reproduces WeCLIP's leak),
   refinement (CDA or attention), background, PAR on the crop, argmax; with
   ``data.pad_label="void"`` the crop padding (``batch["valid"] == False``) gets the void label 255;
4. SBE when a DINO backbone is given and ``λ_be > 0``: super-class prototype CAMs, the boundary
   band and the band-corrected labels;
5. the logits bilinearly upsampled to the crop, and the loss ``L = L_seg + λ_aff·L_aff + λ_be·L_be``.

The backbones stay frozen (eval mode, ``requires_grad=False``); only the decoder learns. Pseudo
labels are computed without autograd. :meth:`CDCLIP.predict` gives full-resolution logits for
evaluation. Backbones are duck-typed (see :mod:`cdclip.pipeline.pseudo_labels`), so tests inject
tiny random models.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_floating, check_rank
from cdclip.backbones.output import CLIPOutput
from cdclip.backbones.text import build_text_classifier
from cdclip.cam.head import PseudoLabelOutput
from cdclip.cam.multiscale import check_labels
from cdclip.choices import AMPS, Amp, check_choice
from cdclip.constants import CLIP_MEAN, CLIP_STD
from cdclip.data import classnames
from cdclip.device import amp_dtype
from cdclip.losses.affinity import affinity_loss
from cdclip.losses.boundary import boundary_enhanced_loss
from cdclip.losses.segmentation import balanced_cross_entropy
from cdclip.pipeline.config import LossConfig, ModelConfig, TrainConfig
from cdclip.pipeline.decoder import DecoderOutput  # also registers "weclip_decoder"
from cdclip.pipeline.pseudo_labels import build_cam_head
from cdclip.prototypes.superclass import SBEOutput, SuperClassPrototypes

__all__ = ["CDCLIP", "build_model", "dataset_classes", "load_decoder_checkpoint"]


def dataset_classes(dataset: str) -> tuple[str, ...]:
    """Foreground class names of ``"voc"`` (20) or ``"coco"`` (80), in label order.

    The name before :func:`cdclip.data.classnames.class_names`, which it returns; unlike that one
    it accepts only these two spellings.
    """
    if dataset not in ("voc", "coco"):
        raise ValueError(f"dataset: expected 'voc' or 'coco', got {dataset!r}")
    return classnames.class_names(dataset)


def _decoder_blocks(cfg: ModelConfig, backbone: Any) -> int:
    """CLIP blocks fed to the decoder: ``cfg.decoder_blocks``, default all but the last."""
    depth = int(getattr(backbone, "depth", 12))
    blocks = cfg.decoder_blocks if cfg.decoder_blocks is not None else max(1, depth - 1)
    if blocks > depth:
        raise ValueError(f"config.decoder_blocks: the backbone has {depth} blocks, got {blocks}")
    return blocks


def _build_decoder(cfg: ModelConfig, backbone: Any, num_classes: int, num_blocks: int) -> nn.Module:
    """The registered ``cfg.decoder`` sized from the config and the backbone (``C + 1`` outputs)."""
    from cdclip.registry import create

    return create(
        cfg.decoder, num_classes=num_classes + 1, in_dim=int(backbone.width), num_blocks=num_blocks,
        dim=cfg.decoder_dim, layers=cfg.decoder_layers, heads=cfg.decoder_heads, mlp_ratio=cfg.decoder_mlp_ratio,
        dropout=cfg.decoder_dropout, activation=cfg.decoder_activation, fp16_out_proj=cfg.decoder_fp16_out_proj,
    )  # fmt: skip


def _build_sbe(cfg: ModelConfig, class_names: tuple[str, ...], ignore_index: int) -> SuperClassPrototypes:
    """SBE as the config describes it (class names are needed by the per-class groupings only)."""
    return SuperClassPrototypes(
        cfg.grouping, class_names=class_names if cfg.grouping in ("identity", "fg") else None,
        seed_threshold=cfg.seed_threshold, band_kernel=cfg.band_kernel, weighting=cfg.prototype_weighting,
        ignore_index=ignore_index, feature_resolution=cfg.sbe_feature_resolution, fill_ignored=cfg.sbe_fill_ignored,
    )  # fmt: skip


def _pixel_stat(value: Sequence[float] | None, backbone: Any, name: str, default: Sequence[float]) -> Tensor:
    """A ``(1, 3, 1, 1)`` float32 image statistic: ``value``, else the backbone's ``name``, else ``default``.

    Shape:
        - output: (1, 3, 1, 1)
    """
    stat = torch.tensor(value, dtype=torch.float32) if value is not None else getattr(backbone, name, None)
    if isinstance(stat, Tensor):
        return stat.detach().float().reshape(1, 3, 1, 1).clone()
    return torch.tensor(default).view(1, 3, 1, 1)


class CDCLIP(nn.Module):
    """Frozen CLIP + text classifier + trainable decoder (+ frozen DINO for SBE).

    Args:
        backbone: an :class:`~cdclip.backbones.openclip.OpenCLIPBackbone` (or a duck-typed object
            with ``patch_size``, ``width``, ``depth``, ``logit_scale``, ``encode_text`` and
            ``__call__(images, attn_blocks=, grad_last_block=, return_block_tokens=)``).
        class_names: foreground class names in label order (C of them).
        background_words: background words appended to the text classifier.
        config: :class:`ModelConfig` (CAM, refinement, PAR, SBE and decoder settings).
        loss: :class:`LossConfig` (loss weights; ``lambda_be = 0`` switches SBE off).
        dino: a :class:`~cdclip.backbones.dino.DinoBackbone` (anything with
            ``feature_map(images in [0, 1]) -> (B, D', h', w')``); ``None`` switches SBE off.
        decoder: a decoder module ``(block_tokens, grid) -> DecoderOutput``; default: the
            registered ``config.decoder`` sized from the config and the backbone.
        pad_label: ``"void"`` (crop padding ignored by the losses) or ``"pseudo"`` (padding keeps
            its pseudo labels and is trained on, WeCLIP).
        pixel_stats: ``(mean, std)`` the batch images are normalised with (0–1 scale; used to
            undo the normalisation for DINO); default: the backbone's own.
        amp: the decoder's mixed precision on CUDA, ``"none"``, ``"bf16"`` or ``"fp16"``
            (``TrainConfig.amp``; ignored on the CPU).

    Shape:
        - batch["image"]: (B, 3, H, W) normalised with CLIP's mean/std, H and W multiples of 16
        - batch["labels"]: (B, C) multi-hot image labels
        - batch["valid"]: (B, H, W) bool, False on crop padding (optional)
        - predict output: (B, C + 1, H, W) logits, background first

    Examples:
        >>> import torch
        >>> from cdclip.pipeline.config import ModelConfig
        >>> from cdclip.testing import tiny_clip_backbone
        >>> config = ModelConfig(decoder_dim=32, decoder_heads=4, decoder_layers=1, par_iters=1)
        >>> model = CDCLIP(tiny_clip_backbone(layers=3), ["cat", "dog"], config=config)
        >>> batch = {"image": torch.randn(2, 3, 64, 64), "labels": torch.tensor([[1.0, 0.0], [1.0, 1.0]])}
        >>> out = model.training_step(batch)
        >>> out["loss"].shape, out["pseudo_labels"].shape
        (torch.Size([]), torch.Size([2, 64, 64]))
        >>> model.predict(batch["image"]).shape                   # background and the two classes
        torch.Size([2, 3, 64, 64])
    """

    def __init__(
        self,
        backbone: Any,
        class_names: Sequence[str],
        background_words: Sequence[str] = (),
        config: ModelConfig | None = None,
        loss: LossConfig | None = None,
        dino: Any = None,
        decoder: nn.Module | None = None,
        pad_label: str = "void",
        pixel_stats: tuple[Sequence[float], Sequence[float]] | None = None,
        amp: Amp = "none",
    ) -> None:
        super().__init__()
        check_choice(amp, "amp", AMPS)
        self.config = config if config is not None else ModelConfig()
        self.loss_config = loss if loss is not None else LossConfig()
        cfg = self.config
        self.backbone = backbone
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        classifier = build_text_classifier(
            backbone, self.class_names, background_words, cfg.templates, style=cfg.prompt_style
        )
        self.register_buffer("text", classifier.embeddings.detach().float().clone(), persistent=False)
        self.num_blocks = _decoder_blocks(cfg, backbone)
        self.decoder = decoder if decoder is not None else _build_decoder(cfg, backbone, self.num_classes, self.num_blocks)
        self.head = build_cam_head(cfg)
        self.pad_label = pad_label
        self.use_sbe = dino is not None and self.loss_config.lambda_be > 0
        self.dino = dino if self.use_sbe else None
        self.sbe = _build_sbe(cfg, self.class_names, self.loss_config.ignore_index) if self.use_sbe else None
        mean, std = pixel_stats if pixel_stats is not None else (None, None)
        self.register_buffer("pixel_mean", _pixel_stat(mean, backbone, "mean", CLIP_MEAN), persistent=False)
        self.register_buffer("pixel_std", _pixel_stat(std, backbone, "std", CLIP_STD), persistent=False)
        # mixed precision of the decoder, CUDA only (the Trainer scales fp16 gradients to match)
        self.amp_dtype: torch.dtype | None = amp_dtype(amp)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @property
    def patch_size(self) -> int:
        return int(self.backbone.patch_size)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters that learn: the decoder's (CLIP and DINO stay frozen)."""
        return [p for p in self.decoder.parameters() if p.requires_grad]

    def _autocast(self) -> Any:
        device = self.device
        enabled = self.amp_dtype is not None and device.type == "cuda"
        return torch.autocast(
            device_type=device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=enabled
        )

    def _clip_forward(self, images: Tensor, with_cams: bool, with_seg_affinity: bool = False) -> CLIPOutput:
        attn = self.head.attn_blocks(with_seg_affinity) if with_cams else 0
        grad = with_cams and self.head.needs_grad
        return self.backbone(images, attn_blocks=attn, grad_last_block=grad, return_block_tokens=True)

    def uses_seg_affinity(self, iteration: int | None, validation: bool = False) -> bool:
        """Whether WeCLIP's decoder-affinity refinement runs: from ``seg_affinity_from`` and at validation."""
        start = self.config.seg_affinity_from
        if start is None:
            return False
        return validation or (iteration is not None and iteration >= start)

    def _decode(self, output: CLIPOutput) -> DecoderOutput:
        tokens = [t.detach() for t in output.block_tokens[: self.num_blocks]]
        if len(tokens) < self.num_blocks:
            raise RuntimeError(
                f"backbone: returned {len(tokens)} block token maps, the decoder needs {self.num_blocks}"
            )
        with self._autocast():
            return self.decoder(tokens, output.grid)

    def _check_images(self, images: Tensor) -> None:
        check_rank(images, "images", "B 3 H W")
        check_floating(images, "images")

    # ------------------------------------------------------------------ pseudo labels
    @torch.no_grad()
    def _pseudo_labels(
        self,
        output: CLIPOutput,
        decoded: DecoderOutput | None,
        images: Tensor,
        present: Tensor,
        valid: Tensor | None,
        seg: bool,
    ) -> PseudoLabelOutput:
        seg_affinity = None
        if seg:
            features = decoded.features.detach().float().flatten(2)  # (B, E, N)
            seg_affinity = torch.sigmoid(features.transpose(1, 2) @ features)
        size = (images.shape[-2], images.shape[-1])
        scale = float(getattr(self.backbone, "logit_scale", 100.0))
        result = self.head(output, self.text, present, size, image=images, seg_affinity=seg_affinity, logit_scale=scale)
        if valid is not None and self.pad_label == "void":
            result.labels = result.labels.masked_fill(~valid, self.loss_config.ignore_index)
        return result

    def pseudo_labels(self, batch: Mapping[str, Any], iteration: int | None = None) -> PseudoLabelOutput:
        """Online pseudo labels of a batch, as in :meth:`training_step` (``iteration=None``: validation).

        Shape:
            - batch["image"]: (B, 3, H, W)
            - output.labels: (B, H, W)
        """
        images, present, valid = self._batch(batch)
        seg = self.uses_seg_affinity(iteration, validation=iteration is None)
        output = self._clip_forward(images, with_cams=True, with_seg_affinity=seg)
        decoded = self._decode(output) if seg else None
        return self._pseudo_labels(output, decoded, images, present, valid, seg)

    # ------------------------------------------------------------------ training
    def _batch(self, batch: Mapping[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
        if not isinstance(batch, Mapping) or "image" not in batch or "labels" not in batch:
            raise ValueError("batch: expected a mapping with 'image' (B, 3, H, W) and 'labels' (B, C)")
        device = self.device
        images = batch["image"].to(device, non_blocking=True).float()
        self._check_images(images)
        b, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"images: crop size must be a multiple of the patch size {p}, got {height}x{width}"
            )
        present = check_labels(batch["labels"], b).to(device)
        if present.shape[1] != self.num_classes:
            raise ValueError(
                f"labels: expected (B, C={self.num_classes}) image labels, got {tuple(batch['labels'].shape)}"
            )
        valid = batch.get("valid")
        if valid is not None:
            valid = valid.to(device).bool()
            if tuple(valid.shape) != (b, height, width):
                raise ValueError(f"valid: expected shape {(b, height, width)}, got {tuple(valid.shape)}")
        return images, present, valid

    def training_step(self, batch: Mapping[str, Any], iteration: int | None = None) -> dict[str, Tensor]:
        """Losses and pseudo labels of one batch.

        Returns a dict with ``loss`` (the total, differentiable w.r.t. the decoder), ``loss_seg``,
        ``loss_aff``, ``loss_be`` (detached), ``pseudo_labels`` (B, H, W) int64 and, with SBE,
        ``corrected_labels`` (B, H, W) and ``band`` (B, H, W) bool. ``iteration`` (0-based; the
        Trainer passes it) switches WeCLIP's decoder-affinity refinement on from
        ``model.seg_affinity_from``; without it the refinement stays off.

        Shape:
            - batch["image"]: (B, 3, H, W)
            - batch["labels"]: (B, C)
            - batch["valid"]: (B, H, W) optional
            - output["pseudo_labels"]: (B, H, W)
        """
        images, present, valid = self._batch(batch)
        seg = self.uses_seg_affinity(iteration)
        output = self._clip_forward(images, with_cams=True, with_seg_affinity=seg)
        decoded = self._decode(output)
        result = self._pseudo_labels(output, decoded, images, present, valid, seg)
        sbe_out = self._sbe(images, result.refined, present, result.labels)
        logits = F.interpolate(decoded.logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        losses = self._losses(logits, decoded.features, result.labels, sbe_out)
        out: dict[str, Tensor] = {**losses, "pseudo_labels": result.labels}
        if sbe_out is not None:
            out["corrected_labels"] = sbe_out.corrected_labels
            out["band"] = sbe_out.band
        return out

    @torch.no_grad()
    def _sbe(self, images: Tensor, refined: Tensor, present: Tensor, pseudo: Tensor) -> SBEOutput | None:
        """SBE on the refined CAMs and DINO's features of the un-normalised images (None without SBE).

        Shape:
            - images: (B, 3, H, W) normalised
            - refined: (B, C, h, w)
            - pseudo: (B, H, W)
        """
        if self.sbe is None:
            return None
        pixels = (images * self.pixel_std + self.pixel_mean).clamp(0.0, 1.0)
        features = self.dino.feature_map(pixels)
        return self.sbe(refined, present, features, pseudo)

    def _losses(self, logits: Tensor, features: Tensor, pseudo: Tensor, sbe_out: SBEOutput | None) -> dict[str, Tensor]:
        """``loss = L_seg + λ_aff·L_aff + λ_be·L_be`` and its three terms (detached).

        Shape:
            - logits: (B, C + 1, H, W) at the crop size
            - features: (B, E, h, w)
            - pseudo: (B, H, W)
        """
        lc = self.loss_config
        seg_target = sbe_out.corrected_labels if (sbe_out is not None and lc.seg_on_corrected) else pseudo
        loss_seg = balanced_cross_entropy(logits, seg_target, ignore_index=lc.ignore_index)
        loss_aff = (
            affinity_loss(features.float(), pseudo, lc.aff_radius, lc.ignore_index, lc.aff_similarity)
            if lc.lambda_aff > 0
            else logits.new_zeros(())
        )
        if sbe_out is not None:
            loss_be = boundary_enhanced_loss(
                logits, sbe_out.corrected_labels, sbe_out.band, ignore_index=lc.ignore_index, balanced=lc.be_balanced
            )
        else:
            loss_be = logits.new_zeros(())
        loss = loss_seg + lc.lambda_aff * loss_aff + lc.lambda_be * loss_be
        return {"loss": loss, "loss_seg": loss_seg.detach(), "loss_aff": loss_aff.detach(), "loss_be": loss_be.detach()}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Same as :meth:`training_step` (so DDP wrappers see a forward)."""
        return self.training_step(batch)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Segmentation logits at the input resolution (decoder in eval mode, no dropout).

        Images whose sides are not multiples of the patch size are resized up to the next
        multiple for CLIP; the 1/16 logits are then upsampled bilinearly to ``(H, W)``.

        Shape:
            - images: (B, 3, H, W) normalised with CLIP's mean/std
            - output: (B, C + 1, H, W) float32
        """
        self._check_images(images)
        height, width = images.shape[-2:]
        p = self.patch_size
        size = (math.ceil(height / p) * p, math.ceil(width / p) * p)
        x = images.to(self.device).float()
        if size != (height, width):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        was_training = self.decoder.training
        self.decoder.eval()
        try:
            output = self._clip_forward(x, with_cams=False)
            logits = self._decode(output).logits.float()
        finally:
            self.decoder.train(was_training)
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)

    def load_decoder(self, checkpoint: str | os.PathLike[str] | Mapping[str, Any]) -> CDCLIP:
        """Load decoder weights from a training checkpoint (path or loaded dict) or a bare state dict."""
        state = load_decoder_checkpoint(checkpoint)
        self.decoder.load_state_dict(state)
        return self


def load_decoder_checkpoint(checkpoint: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Tensor]:
    """The decoder state dict inside a :class:`~cdclip.pipeline.trainer.Trainer` checkpoint.

    Shape:
        - output: name -> tensor of the decoder's parameters and buffers
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint: expected a path or a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("decoder", checkpoint)
    return dict(state)


def build_model(
    config: TrainConfig,
    device: str | torch.device | None = None,
    class_names: Sequence[str] | None = None,
    background_words: Sequence[str] | None = None,
    backbone: Any = None,
    dino: Any = None,
) -> CDCLIP:
    """Build :class:`CDCLIP` from a :class:`TrainConfig` (backbones from the registry unless given).

    The DINO backbone is only built when ``loss.lambda_be > 0`` and ``model.dino`` is set. Every
    RNG is seeded with ``config.seed`` before the backbones are built (random weights are then
    reproducible) and torch's again before the decoder is initialised.

    Shape:
        - output.predict: (B, 3, H, W) -> (B, C + 1, H, W)
    """
    from cdclip.data.prompts import background_words as bg_words
    from cdclip.registry import create
    from cdclip.seeding import seed_everything

    cfg = config.model
    device = torch.device(device if device is not None else config.device)
    seed_everything(config.seed)  # randomly initialised backbones (weights "none") are part of the run's seed
    if backbone is None:
        from cdclip.pipeline.clip_backbone import build_clip_backbone

        backbone = build_clip_backbone(cfg, device)
    if dino is None and cfg.dino and config.loss.lambda_be > 0:
        from cdclip.pipeline.clip_backbone import is_random_weights

        dkwargs: dict[str, Any] = {}
        if cfg.dino_weights is not None:
            if is_random_weights(cfg.dino_weights):
                dkwargs["pretrained"] = False
            else:
                dkwargs["checkpoint_path"] = cfg.dino_weights
        dino = create(cfg.dino, **dkwargs)
    names = tuple(class_names) if class_names is not None else classnames.class_names(config.data.dataset)
    words = tuple(background_words) if background_words is not None else bg_words(cfg.background)
    torch.manual_seed(config.seed)  # the decoder initialisation is part of the run's seed
    from cdclip.data.transforms import normalization_stats

    stats = normalization_stats(config.data.normalize)
    model = CDCLIP(
        backbone, names, words, cfg, config.loss, dino=dino, pad_label=config.data.pad_label, pixel_stats=stats,
        amp=config.amp,
    )
    return model.to(device)
