"""Frozen configuration dataclasses of single-stage CD-CLIP training (docs/training.md).

``TrainConfig`` holds five sections — :class:`ModelConfig`, :class:`DataConfig`,
:class:`OptimConfig`, :class:`LossConfig` and the run settings — with the WeCLIP recipe as
defaults. Presets :func:`voc` and :func:`coco` differ only where the datasets differ (iterations,
box threshold θ, super-classes, background words, split).

Plain dictionaries go in and out (``TrainConfig.from_dict`` / ``to_dict``): unknown keys raise a
``ValueError`` that names the key, its section and close matches, so a typo in a YAML file never
silently trains with a default. YAML itself is read only by the command line (``cdclip train``).

Every *inferred* choice of the method (docs/method.md) is a named field here so that ablations
are one override away, e.g. ``--set model.refine=attn`` (CDA off) or ``--set loss.lambda_be=0``
(SBE off).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from cdclip.choices import (
    AFFINITY_KINDS,
    AMPS,
    BACKGROUND_AT,
    BOX_RULES,
    CAM_METHODS,
    CAM_TARGETS,
    DATASETS,
    FEATURE_RESOLUTIONS,
    LABEL_SOURCES,
    PAD_FILLS,
    PAD_LABELS,
    POS_INTERPS,
    PRECISIONS,
    PROTOTYPE_WEIGHTINGS,
    REFINE_METHODS,
    RESIZE_MODES,
    SIMILARITIES,
    check_choice,
)
from cdclip.device import default_device

__all__ = [
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "coco",
    "preset",
    "voc",
]

# foreground classes per dataset (label ids 0..N, 0 = background)
DATASET_CLASSES = {"voc": 20, "coco": 80}
# the configuration lists WeCLIP's value first in these two messages (the components list them the
# other way round), so they keep their own Literal rather than cdclip.choices'
DecoderActivation = Literal["quick_gelu", "gelu"]
ACTIVATIONS: tuple[str, ...] = get_args(DecoderActivation)
DataNormalization = Literal["imagenet", "clip"]
NORMALIZATIONS: tuple[str, ...] = get_args(DataNormalization)
# the names before cdclip.choices
REFINE_CHOICES, CAM_CHOICES, AMP_CHOICES, AFFINITY_CHOICES = REFINE_METHODS, CAM_METHODS, AMPS, AFFINITY_KINDS

T = TypeVar("T")


def _positive(value: float, name: str, strict: bool = True) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (value <= 0 if strict else value < 0)
    ):
        raise ValueError(
            f"{name}: expected a {'positive' if strict else 'non-negative'} number, got {value!r}"
        )


@dataclass(frozen=True)
class ModelConfig:
    """The frozen backbones, the pseudo-label pipeline and the decoder.

    Args:
        clip: registered CLIP backbone name (``openclip:MODEL@TAG``).
        clip_weights: checkpoint path or open_clip tag overriding the name's tag; ``"none"`` =
            random weights (smoke tests only); ``None`` = the tag in ``clip``.
        clip_precision: open_clip precision of the frozen CLIP (``fp32``, ``fp16``, ``bf16``).
        clip_pos_interp: position-embedding interpolation (``bilinear``: CLIP-ES and WeCLIP;
            ``bicubic``).
        clip_pos_fp16: round the interpolated position embedding to float16 (CLIP-ES, WeCLIP).
        clip_fp16_out_proj: attention out-projections in float16 in both towers (WeCLIP's
            attention module; off by default: a precision artefact, not part of the method).
        dino: registered DINO backbone (``timm:vit_base_patch16_224.dino``); ``None`` disables SBE.
        dino_weights: local DINO weight file (``None``: the Hugging Face cache).
        templates: prompt templates of the text classifier.
        prompt_style: how class names become phrases (``clip_es``, ``plain``, ``raw``).
        background: background word list (``voc``, ``coco``, ``none``).
        cam: initial CAM method (``gradcam``, docs/baselines.md; ``patch_text`` alternative).
        cam_target: GradCAM activations and gradients at the last block's ``ln_1`` output
            (``ln1_out``: CLIP-ES, WeCLIP) or at the tokens entering it (``block_in``).
        cam_resize, cam_long_side, cam_scales, cam_flip: the training-free input of ``cdclip cams``:
            resize mode (``pil_bicubic``: CLIP-ES; ``bilinear``), long side (``None``: native size,
            sides rounded up to 16), CAM scales and horizontal flip.
        cam_max_side: working-resolution cap of ``cdclip cams`` (long side in pixels, 1024;
            ``None``: no cap): a larger image is shrunk to it (antialiased) for CLIP, the CAMs and
            PAR, and its label map is upsampled back (nearest); ``cam_long_side`` may not exceed it.
        refine: CAM refinement: ``mean`` (CDA fused with attention, default), ``replace``,
            ``product``, ``attn`` (MHSA baseline, CDA off) or ``none``.
        attn_layers: last CLIP blocks averaged into the attention affinity (8).
        gamma: weight of the attention transition matrix in the ``mean`` fusion (0.5).
        box_threshold: box-mask θ (0.4 VOC, 0.7 COCO).
        box_rule: box ends, ``inclusive`` (cdclip) or ``clip-es`` (CLIP-ES / WeCLIP: uint8 threshold,
            boxes touching the right/bottom edge lose that column/row).
        cda_affinity, cda_sigma, cda_beta: JS → affinity map (``exp(−JS/σ)`` with σ = 0.05).
        cd_logit_scale: ``1/τ_cd`` of the per-patch class distributions (100).
        bg_alpha: background score exponent α.
        bg_threshold: constant background score (CLIP-ES's evaluation threshold); ``None``: ``(1 − max)^α``.
        background_at: ``image`` (refined maps upsampled to the crop, then background: WeCLIP) or
            ``patch`` (background on the patch grid, then upsampled).
        seg_affinity_from: iteration (0-based) from which WeCLIP's decoder-affinity refinement of the
            CAMs runs in training (15000 VOC, 40000 COCO; it always runs at validation); ``None``: never.
        seg_affinity_blocks: last attention blocks that refinement chooses from (6 VOC, 10 COCO).
        par_iters: PAR iterations on the crop (0 disables PAR).
        par_dilations: PAR neighbourhood dilations.
        par_scale: PAR resolution relative to the crop (1.0; 0.5 is 4× cheaper).
        grouping: SBE super-classes (``voc``, ``coco``, ``identity``, ``fg``).
        seed_threshold, band_kernel, prototype_weighting: SBE options (docs/method.md, SBE).
        sbe_feature_resolution: ``cam`` (DINO features resampled to the CAM grid) or ``native``.
        sbe_fill_ignored: also relabel ignored pseudo-label pixels inside the band.
        decoder: registered decoder name.
        decoder_dim, decoder_layers, decoder_heads, decoder_mlp_ratio, decoder_dropout: decoder sizes
            (WeCLIP: 256, 3, 8, 4, dropout 0.1 after the fusion).
        decoder_blocks: CLIP blocks fed to the decoder (``None``: all but the last, i.e. blocks
            1–11 of ViT-B/16).
        decoder_activation: the decoder transformer's MLP activation (``quick_gelu``: WeCLIP; ``gelu``).
        decoder_fp16_out_proj: the decoder transformer's attention out-projections in float16 (WeCLIP).
    """

    clip: str = "openclip:ViT-B-16@openai"
    clip_weights: str | None = None
    clip_precision: str = "fp32"
    clip_pos_interp: str = "bilinear"
    clip_pos_fp16: bool = True
    clip_fp16_out_proj: bool = False
    dino: str | None = "timm:vit_base_patch16_224.dino"
    dino_weights: str | None = None
    templates: tuple[str, ...] = ("a clean origami {}.",)
    prompt_style: str = "clip_es"
    background: str = "voc"
    cam: str = "gradcam"
    cam_target: str = "ln1_out"
    cam_resize: str = "pil_bicubic"
    cam_long_side: int | None = None
    cam_max_side: int | None = 1024
    cam_scales: tuple[float, ...] = (1.0,)
    cam_flip: bool = False
    refine: str = "mean"
    attn_layers: int = 8
    gamma: float = 0.5
    box_threshold: float = 0.4
    box_rule: str = "inclusive"
    cda_affinity: str = "exp"
    cda_sigma: float = 0.05
    cda_beta: float = 8.0
    cd_logit_scale: float = 100.0
    bg_alpha: float = 1.0
    bg_threshold: float | None = None
    background_at: str = "image"
    seg_affinity_from: int | None = 15000
    seg_affinity_blocks: int = 6
    par_iters: int = 20
    par_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    par_scale: float = 1.0
    grouping: str = "voc"
    seed_threshold: float = 0.5
    band_kernel: int = 5
    prototype_weighting: str = "mask"
    sbe_feature_resolution: str = "cam"
    sbe_fill_ignored: bool = False
    decoder: str = "weclip_decoder"
    decoder_dim: int = 256
    decoder_layers: int = 3
    decoder_heads: int = 8
    decoder_mlp_ratio: float = 4.0
    decoder_dropout: float = 0.1
    decoder_blocks: int | None = None
    decoder_activation: str = "quick_gelu"
    decoder_fp16_out_proj: bool = False

    def __post_init__(self) -> None:
        """Validate every field; each error names its key (the groups run in this order)."""
        self._check_cam_settings()
        self._check_refinement_settings()
        self._check_decoder_and_sbe_settings()

    def _check_cam_settings(self) -> None:
        """The initial CAMs and their input: method, target, resizing, sizes, background, decoder affinity."""
        check_choice(self.cam, "model.cam", CAM_METHODS)
        check_choice(self.cam_target, "model.cam_target", CAM_TARGETS)
        check_choice(self.cam_resize, "model.cam_resize", RESIZE_MODES)
        check_choice(self.clip_pos_interp, "model.clip_pos_interp", POS_INTERPS)
        check_choice(self.box_rule, "model.box_rule", BOX_RULES)
        check_choice(self.background_at, "model.background_at", BACKGROUND_AT)
        check_choice(self.decoder_activation, "model.decoder_activation", ACTIVATIONS)
        if self.cam_long_side is not None and self.cam_long_side < 1:
            raise ValueError(f"model.cam_long_side: expected a positive int or None, got {self.cam_long_side!r}")
        if self.cam_max_side is not None and self.cam_max_side < 1:
            raise ValueError(f"model.cam_max_side: expected a positive int or None, got {self.cam_max_side!r}")
        if None not in (self.cam_max_side, self.cam_long_side) and self.cam_long_side > self.cam_max_side:
            raise ValueError(
                f"model.cam_long_side: expected at most model.cam_max_side={self.cam_max_side}, got "
                f"{self.cam_long_side}; raise model.cam_max_side (or set it to null) for a larger CLIP input"
            )
        if not self.cam_scales or any(v <= 0 for v in self.cam_scales):
            raise ValueError(f"model.cam_scales: expected positive scales, got {self.cam_scales!r}")
        if self.bg_threshold is not None and not 0.0 <= self.bg_threshold <= 1.0:
            raise ValueError(f"model.bg_threshold: expected a value in [0, 1] or None, got {self.bg_threshold!r}")
        if self.seg_affinity_from is not None and self.seg_affinity_from < 0:
            raise ValueError(f"model.seg_affinity_from: expected >= 0 or None, got {self.seg_affinity_from!r}")
        if self.seg_affinity_blocks < 1:
            raise ValueError(f"model.seg_affinity_blocks: expected >= 1, got {self.seg_affinity_blocks!r}")

    def _check_refinement_settings(self) -> None:
        """Refinement (CDA, attention, box mask), CLIP precision, SBE choices and PAR."""
        check_choice(self.refine, "model.refine", REFINE_METHODS)
        check_choice(self.cda_affinity, "model.cda_affinity", AFFINITY_KINDS)
        check_choice(self.clip_precision, "model.clip_precision", PRECISIONS)
        check_choice(self.prototype_weighting, "model.prototype_weighting", PROTOTYPE_WEIGHTINGS)
        check_choice(self.sbe_feature_resolution, "model.sbe_feature_resolution", FEATURE_RESOLUTIONS)
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"model.gamma: expected a weight in [0, 1], got {self.gamma!r}")
        if not 0.0 <= self.box_threshold <= 1.0:
            raise ValueError(f"model.box_threshold: expected a value in [0, 1], got {self.box_threshold!r}")
        if not 0.0 < self.par_scale <= 1.0:
            raise ValueError(f"model.par_scale: expected a fraction in (0, 1], got {self.par_scale!r}")
        if self.par_iters < 0 or self.attn_layers < 1:
            raise ValueError(
                f"model.par_iters / model.attn_layers: expected >= 0 / >= 1, got {self.par_iters} / {self.attn_layers}"
            )

    def _check_decoder_and_sbe_settings(self) -> None:
        """Decoder sizes, the SBE band, positive scales, PAR dilations and the prompt templates."""
        if self.decoder_heads >= 1 and self.decoder_dim % self.decoder_heads:
            raise ValueError(
                f"model.decoder_dim: expected a multiple of decoder_heads={self.decoder_heads}, got {self.decoder_dim}"
            )
        if self.band_kernel < 1 or self.band_kernel % 2 == 0:
            raise ValueError(f"model.band_kernel: expected an odd positive int, got {self.band_kernel!r}")
        if self.decoder_blocks is not None and self.decoder_blocks < 1:
            raise ValueError(f"model.decoder_blocks: expected >= 1 or None, got {self.decoder_blocks!r}")
        for key in ("cda_sigma", "cda_beta", "cd_logit_scale", "bg_alpha", "decoder_mlp_ratio"):
            _positive(getattr(self, key), f"model.{key}")
        if not self.par_dilations or any(d < 1 for d in self.par_dilations):
            raise ValueError(f"model.par_dilations: expected one or more positive ints, got {self.par_dilations!r}")
        if not 0.0 <= self.seed_threshold <= 1.0 or not 0.0 <= self.decoder_dropout < 1.0:
            raise ValueError(
                f"model.seed_threshold / model.decoder_dropout: expected [0, 1] / [0, 1), "
                f"got {self.seed_threshold!r} / {self.decoder_dropout!r}"
            )
        if min(self.decoder_dim, self.decoder_layers, self.decoder_heads) < 1:
            raise ValueError(
                "model.decoder_dim / decoder_layers / decoder_heads: expected >= 1, got "
                f"{self.decoder_dim} / {self.decoder_layers} / {self.decoder_heads}"
            )
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError(
                f"model.templates: expected templates with a '{{}}' placeholder, got {self.templates!r}"
            )


@dataclass(frozen=True)
class DataConfig:
    """Training data and augmentation (WeCLIP/ToCo recipe).

    Args:
        dataset: ``voc`` or ``coco``.
        root: the ``VOC2012`` or COCO folder (set on the command line with ``--data-root``).
        split: training split (``train_aug`` VOC, ``train2014`` COCO).
        label_file: image-level label file (default: the dataset's own; never the masks).
        batch_size: images per iteration (4).
        crop_size: square training crop (320; a multiple of the patch size 16).
        scale_range: random rescale factor range (0.5–2.0).
        flip_prob: horizontal flip probability.
        num_workers: DataLoader workers.
        normalize: image statistics for CLIP's input and PAR: ``imagenet`` (WeCLIP: ImageNet
            mean/std, applied on the 0–255 scale) or ``clip`` (OpenAI CLIP's; in ``cdclip cams``
            the backbone's own ``preprocess``).
        pad_fill: crop padding colour, ``mean`` (0 after normalisation) or ``black`` (WeCLIP).
        pad_label: ``void`` (padding is ignored by the losses, cdclip) or ``pseudo`` (padding gets
            pseudo labels and is trained on, WeCLIP).
        labels_from: image classes from the label ``file`` (default) or from the ground-truth
            ``mask`` (WeCLIP's behaviour, a label leak: only to reproduce WeCLIP, with a warning).
    """

    dataset: str = "voc"
    root: str | None = None
    split: str = "train_aug"
    label_file: str | None = None
    batch_size: int = 4
    crop_size: int = 320
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5
    num_workers: int = 4
    normalize: str = "imagenet"
    pad_fill: str = "mean"
    pad_label: str = "void"
    labels_from: str = "file"

    def __post_init__(self) -> None:
        check_choice(self.dataset, "data.dataset", DATASETS)
        check_choice(self.normalize, "data.normalize", NORMALIZATIONS)
        check_choice(self.pad_fill, "data.pad_fill", PAD_FILLS)
        check_choice(self.pad_label, "data.pad_label", PAD_LABELS)
        check_choice(self.labels_from, "data.labels_from", LABEL_SOURCES)
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size: expected >= 1, got {self.batch_size!r}")
        if self.crop_size < 16 or self.crop_size % 16:
            raise ValueError(
                f"data.crop_size: expected a positive multiple of the patch size 16, got {self.crop_size!r}"
            )
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(
                f"data.scale_range: expected (low, high) with 0 < low <= high, got {self.scale_range!r}"
            )
        if not 0.0 <= self.flip_prob <= 1.0 or self.num_workers < 0:
            raise ValueError(
                f"data.flip_prob / data.num_workers: expected [0, 1] / >= 0, got {self.flip_prob!r} / {self.num_workers!r}"
            )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then polynomial decay (WeCLIP's ``PolyWarmupAdamW`` recipe).

    WeCLIP builds four parameter groups (backbone, backbone norms, classification head,
    segmentation head) but only the segmentation head — the decoder — holds parameters, at
    ``lr × 10``. So the decoder effectively trains at ``2e-3``; ``decoder_lr_mult`` keeps that
    explicit. Any other trainable parameter (none in CD-CLIP) would get ``lr``.

    Args:
        lr: base learning rate (2e-4).
        decoder_lr_mult: decoder learning-rate multiplier (10).
        weight_decay: AdamW weight decay (0.01), for every group as in WeCLIP.
        betas, eps: AdamW moments and epsilon.
        warmup_iters: linear warm-up iterations (50), from ``warmup_ratio × lr``.
        warmup_ratio: starting fraction of the learning rate (1e-6).
        power: poly decay exponent (1.0): ``lr · (1 − it / iters)^power``.
        grad_clip: max gradient norm (0 disables clipping, the WeCLIP default).
    """

    lr: float = 2e-4
    decoder_lr_mult: float = 10.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_iters: int = 50
    warmup_ratio: float = 1e-6
    power: float = 1.0
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        _positive(self.lr, "optim.lr")
        _positive(self.decoder_lr_mult, "optim.decoder_lr_mult")
        _positive(self.weight_decay, "optim.weight_decay", strict=False)
        _positive(self.grad_clip, "optim.grad_clip", strict=False)
        _positive(self.power, "optim.power", strict=False)
        if self.warmup_iters < 0 or not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(
                f"optim.warmup_iters / optim.warmup_ratio: expected >= 0 / [0, 1], "
                f"got {self.warmup_iters!r} / {self.warmup_ratio!r}"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas: expected two values in [0, 1), got {self.betas!r}")


@dataclass(frozen=True)
class LossConfig:
    """``L = L_seg + λ_aff · L_aff + λ_be · L_be`` (docs/training.md).

    Args:
        lambda_aff: weight of the WeCLIP affinity loss (0.1).
        lambda_be: weight of the SBE boundary-enhanced loss (1.0, inferred); 0 disables SBE (and
            DINO is then not run).
        aff_radius: affinity-loss radius in patches (8).
        aff_similarity: ``sigmoid`` (WeCLIP) or ``cosine``.
        be_balanced: balance ``L_be`` between background and foreground pixels like ``L_seg``.
        seg_on_corrected: ``L_seg`` against the SBE-corrected labels instead of the raw pseudo
            labels (False: the band correction only enters through ``L_be``).
        ignore_index: void label (255).
    """

    lambda_aff: float = 0.1
    lambda_be: float = 1.0
    aff_radius: int = 8
    aff_similarity: str = "sigmoid"
    seg_on_corrected: bool = False
    be_balanced: bool = True
    ignore_index: int = 255

    def __post_init__(self) -> None:
        _positive(self.lambda_aff, "loss.lambda_aff", strict=False)
        _positive(self.lambda_be, "loss.lambda_be", strict=False)
        check_choice(self.aff_similarity, "loss.aff_similarity", SIMILARITIES)
        if self.aff_radius < 0:
            raise ValueError(f"loss.aff_radius: expected >= 0, got {self.aff_radius!r}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run: the four sections and the run settings.

    Args:
        model, data, optim, loss: the sections.
        iters: training iterations (30k VOC, 80k COCO).
        seed: seeds the decoder initialisation, the data order and the augmentation.
        device: ``cuda``/``cpu``/``cuda:1`` (default: ``cuda`` when a GPU is usable, else ``cpu``).
        amp: mixed precision for the decoder on CUDA: ``none``, ``bf16`` or ``fp16`` (ignored on CPU).
        out_dir: where the checkpoint and the log go.
        log_every: iterations between JSONL log lines (losses averaged over the window).
        checkpoint_every: iterations between checkpoints (also written at the end and on a crash).
        keep_checkpoints: also keep a copy ``iter_XXXXXXX.pt`` of every periodic checkpoint.
        progress: show a tqdm progress bar.

    Shape:
        - no tensors: a frozen record of plain values (``to_dict`` / ``from_dict`` round-trip)
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    iters: int = 30000
    seed: int = 0
    device: str = field(default_factory=default_device)
    amp: str = "none"
    out_dir: str = "runs/cdclip"
    log_every: int = 50
    checkpoint_every: int = 2000
    keep_checkpoints: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice(self.amp, "amp", AMPS)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {self.seed!r}")
        classes = DATASET_CLASSES[self.data.dataset]
        if 0 <= self.loss.ignore_index <= classes:
            raise ValueError(
                f"loss.ignore_index: {self.loss.ignore_index} is a class id of {self.data.dataset} (0..{classes}); "
                "expected a value outside it, such as 255"
            )
        if self.iters < 1 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"iters / log_every / checkpoint_every: expected >= 1, got "
                f"{self.iters!r} / {self.log_every!r} / {self.checkpoint_every!r}"
            )

    # ------------------------------------------------------------------ dict round trip
    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), ready for JSON/YAML."""
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
        """Build from a (partial) nested dict on top of ``base`` (default: the plain defaults).

        Raises:
            ValueError: an unknown key (named with its section and close matches) or a bad value.
            TypeError: a value of the wrong type.
        """
        return _build(cls, data, base if base is not None else cls(), "")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level fields replaced (sections as dataclasses or dicts)."""
        return TrainConfig.from_dict(changes, base=self)


# ---------------------------------------------------------------------------- helpers
def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type[T], data: Mapping[str, Any] | Any, base: T, prefix: str) -> T:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise TypeError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
            section = prefix.rstrip(".") or "the top level"
            raise ValueError(
                f"unknown config key {prefix}{key!r} in {section} (known: {', '.join(names)}){hint}"
            )
        hint_type = hints[key]
        current = getattr(base, key)
        if dataclasses.is_dataclass(hint_type):
            changes[key] = _build(hint_type, value, current, f"{prefix}{key}.")  # type: ignore[arg-type]
        else:
            changes[key] = _coerce(value, hint_type, f"{prefix}{key}")
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check ``value`` against a field annotation; lists become tuples, ints become floats."""
    origin = get_origin(hint)
    args = get_args(hint)
    if origin is not None and type(None) in args:  # Optional[X] / X | None
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise TypeError(f"{name}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{name}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
        return value
    if hint is float:
        return _finite_float(value, name)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def _finite_float(value: Any, name: str) -> float:
    """A finite float; numeric strings are read too (YAML 1.1, as PyYAML speaks it, reads ``1e-4`` as text)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise TypeError(f"{name}: expected a number, got str {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """Apply dotted overrides such as ``{"optim.lr": 1e-4, "loss.lambda_be": 0}``.

    Raises:
        ValueError: unknown keys (named, with close matches).
    """
    nested: dict[str, Any] = {}
    for dotted, value in overrides.items():
        parts = str(dotted).split(".")
        if not all(parts):
            raise ValueError(f"override: expected KEY or SECTION.KEY, got {dotted!r}")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override: {dotted!r} conflicts with another override of {part!r}")
            node = child
        node[parts[-1]] = value
    return TrainConfig.from_dict(nested, base=config)


# ---------------------------------------------------------------------------- presets
def voc() -> TrainConfig:
    """The ``cdclip-voc`` preset (PASCAL VOC 2012 train_aug, 30k iterations, θ = 0.4)."""
    return preset("cdclip-voc")


def coco() -> TrainConfig:
    """The ``cdclip-coco`` preset (MS COCO 2014, 80k iterations, θ = 0.7, 12 supercategories)."""
    return preset("cdclip-coco")


def preset(name: str) -> TrainConfig:
    """The shipped preset called ``name`` (see :mod:`cdclip.presets`; ``voc``/``coco`` are aliases)."""
    from cdclip.presets import load_preset

    return load_preset(name)
