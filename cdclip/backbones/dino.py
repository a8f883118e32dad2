"""Frozen DINO / DINOv2 ViT (timm) giving dense, L2-normalised patch features for SBE.

SBE (docs/method.md, SBE) needs DINO's structure, not its classifier: the patch tokens of the last block
(after the final norm), one ``D'``-vector per patch, L2-normalised so that prototype similarity is a
cosine. ``DinoBackbone`` wraps any timm ViT (default ``vit_base_patch16_224.dino``; DINOv2 ViT-S/14
``vit_small_patch14_dinov2.lvd142m`` and DINO ViT-B/8 ``vit_base_patch8_224.dino`` work the same) and

* accepts any input size: timm's ``dynamic_img_size`` resizes the position embedding and
  ``dynamic_img_pad`` pads the right/bottom edge up to a multiple of the patch size, so the grid is
  ``(ceil(H / p), ceil(W / p))``;
* resamples the feature map to another grid on request (``grid=(h, w)``: bilinear, then
  re-normalised), e.g. ViT-B/8 or ViT-S/14 features onto the CLIP ViT-B/16 CAM grid;
* is frozen by default (eval mode, ``requires_grad=False``, no autograd graph).

Weights, in order: a local file (``checkpoint_path=``: timm ``.safetensors``/``.bin`` or the
original DINO/DINOv2 ``.pth``, converted by timm's filter), the Hugging Face cache (``pretrained=True``:
downloaded once when online; offline with no cached copy fails *immediately* with a message saying
how to pass a file — no retry loops), or random initialisation (``pretrained=False``/``None``, for
tests; warns). Built through the registry as ``cdclip.create("timm:vit_base_patch16_224.dino")``.

timm is imported only when a backbone is built: ``import cdclip`` stays light.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_choice, check_tensor
from cdclip.backbones._hub import PretrainedWeightsError, cached_hub_file, hub_unavailable_reason
from cdclip.feature_maps import check_grid, map_to_tokens, resample_features, tokens_to_map
from cdclip.registry import register

__all__ = [
    "DEFAULT_DINO",
    "DinoBackbone",
    "PretrainedWeightsError",
    "create_timm_backbone",
    "resample_features",
]

DEFAULT_DINO = "vit_base_patch16_224.dino"
Feature = Literal["tokens", "keys"]
FEATURES: tuple[str, ...] = get_args(Feature)
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------------- weights
def _hub_cache_dir(cache_dir: str | os.PathLike[str] | None) -> str | None:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None  # huggingface_hub's own default


def _weights_message(model_name: str, hub_id: str | None, url: str | None, reason: str) -> str:
    lines = [
        f"cdclip: pretrained weights for timm model {model_name!r} are not available: {reason}.",
        "Provide them in one of these ways:",
        f"  * pass a local file: cdclip.create('timm:{model_name}', checkpoint_path='/path/to/weights')"
        " (a timm .safetensors/.bin, or the original DINO/DINOv2 .pth)",
    ]
    if hub_id:
        lines.append(
            f"  * or fill the Hugging Face cache once on a machine with internet (repo {hub_id!r}), e.g. "
            f"`python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\"`, "
            "and copy ~/.cache/huggingface (or set HF_HOME / HF_HUB_CACHE)"
        )
    if url:
        lines.append(f"  * the original release is at {url}")
    lines.append("  * or pass pretrained=False for a randomly initialised model (tests only).")
    return "\n".join(lines)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    # original DINO training checkpoints wrap the weights: {"teacher": {"backbone.x": ...}, ...}
    for key in ("teacher", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    prefixes = ("module.", "backbone.")
    return {next((k[len(p) :] for p in prefixes if k.startswith(p)), k): v for k, v in state.items()}


def _load_weights_file(model: nn.Module, path: Path) -> nn.Module:
    """Load a local weight file into a timm ViT, whatever timm version reads it.

    The state dict goes through the model family's own ``checkpoint_filter_fn`` (it converts
    original DINO/DINOv2 key names and resamples position embeddings), then ``load_state_dict``.
    Loading is done here rather than through timm's ``pretrained_cfg_overlay`` because some timm
    releases route local files of some tags to their JAX ``.npz`` loader.
    """
    import importlib

    state = _read_state_dict(path)
    family = importlib.import_module(type(model).__module__)
    filter_fn = getattr(family, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches
        raise ValueError(f"checkpoint_path: {str(path)!r} does not fit {type(model).__name__}: {err}") from err
    missing = [k for k in missing if not k.startswith("head")]
    unexpected = [k for k in unexpected if not k.startswith(("head", "fc_norm.", "dino_head", "ibot_head"))]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint_path: {str(path)!r} does not fit {type(model).__name__}: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"
        )
    return model


def _build_timm(
    model_name: str,
    pretrained: bool | None,
    checkpoint_path: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    timm_kwargs: dict[str, Any],
) -> nn.Module:
    """The timm ViT with its weights: a local file, else the Hugging Face cache / hub, else random."""
    import timm  # heavy, imported only here

    kwargs: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True, "dynamic_img_pad": True}
    kwargs.update(timm_kwargs)
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint_path: no file at {str(path)!r}")
        return _load_weights_file(_create_timm(timm, model_name, kwargs, pretrained=False), path)
    if not pretrained:
        model = _create_timm(timm, model_name, kwargs, pretrained=False)
        warnings.warn(
            f"cdclip: timm model {model_name!r} is randomly initialised (pretrained={pretrained!r}); "
            "its features carry no DINO structure. Use this for tests only.",
            UserWarning,
            stacklevel=3,
        )
        return model
    return _pretrained_timm(timm, model_name, cache_dir, kwargs)


def _create_timm(timm: Any, model_name: str, kwargs: dict[str, Any], **extra: Any) -> nn.Module:
    """``timm.create_model``; an unknown model name or tag is a ``ValueError`` naming ``model_name``."""
    try:
        return timm.create_model(model_name, **kwargs, **extra)
    except RuntimeError as err:
        if "Unknown model" in str(err) or "Invalid pretrained tag" in str(err):
            raise ValueError(f"model_name: timm does not know {model_name!r} ({err})") from err
        raise


def _pretrained_timm(
    timm: Any, model_name: str, cache_dir: str | os.PathLike[str] | None, kwargs: dict[str, Any]
) -> nn.Module:
    """Pretrained weights from the Hugging Face cache, else downloaded; offline, an error saying what to do."""
    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except Exception:  # unknown tag: timm.create_model raises the informative error below
        cfg = None
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    url = getattr(cfg, "url", None) if cfg is not None else None
    cached = None
    if hub_id:
        repo_id, _, revision = hub_id.partition("@")
        cached = cached_hub_file(repo_id, _HUB_FILES, _hub_cache_dir(cache_dir), revision or None)
    if cached is not None:
        return _load_weights_file(_create_timm(timm, model_name, kwargs, pretrained=False), Path(cached))
    reason = hub_unavailable_reason()
    if reason is not None:
        raise PretrainedWeightsError(
            _weights_message(model_name, hub_id, url, f"not in the Hugging Face cache and {reason}")
        )
    try:
        if cache_dir is not None:
            kwargs["cache_dir"] = os.fspath(cache_dir)
        return _create_timm(timm, model_name, kwargs, pretrained=True)
    except (OSError, RuntimeError) as err:  # hub / HTTP errors: say how to provide the file
        raise PretrainedWeightsError(
            _weights_message(model_name, hub_id, url, f"download failed ({type(err).__name__}: {err})")
        ) from err


# ---------------------------------------------------------------------- module
class DinoBackbone(nn.Module):
    """Dense L2-normalised patch features of a (frozen) timm DINO / DINOv2 ViT.

    Args:
        model_name: any timm ViT name, with pretrained tag (``"vit_base_patch16_224.dino"``,
            ``"vit_small_patch14_dinov2.lvd142m"``, ``"vit_base_patch8_224.dino"``; small random models
            such as ``"vit_tiny_patch16_224"`` for tests).
        pretrained: load pretrained weights from the Hugging Face cache (downloading when online).
            ``False``/``None``: random initialisation, with a warning.
        checkpoint_path: a local weight file; takes precedence over ``pretrained``.
        frozen: eval mode, no gradients, no autograd graph (the default, as in CD-CLIP).
        feature: ``"tokens"`` — last-block patch tokens after the final norm (default);
            ``"keys"`` — keys of the last attention layer (often used for DINO segmentation).
        normalize_input: images come in ``[0, 1]`` (``uint8`` is divided by 255) and are normalised
            with the model's mean/std here; set False for images already normalised for this model.
        grid: default output grid ``(h, w)``; ``None`` keeps the native patch grid.
        cache_dir: Hugging Face cache to look in (default: ``HF_HUB_CACHE`` / ``HF_HOME`` / hub default).
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``depth=2`` for tiny test models).

    Raises:
        PretrainedWeightsError: pretrained weights requested, not cached, and not downloadable.
        FileNotFoundError: ``checkpoint_path`` does not exist.

    Shape:
        - images: (B, 3, H, W)
        - output: (B, N', D') with N' = h'·w', (h', w') = grid or (ceil(H/p), ceil(W/p))

    Examples:
        >>> import torch
        >>> dino = DinoBackbone("vit_tiny_patch16_224", pretrained=False, depth=1)  # random weights: tests only
        >>> dino(torch.rand(1, 3, 64, 48)).shape                 # 4 x 3 patches of 16 px
        torch.Size([1, 12, 192])
        >>> dino.feature_map(torch.rand(1, 3, 64, 48), grid=(8, 8)).shape
        torch.Size([1, 192, 8, 8])
    """

    def __init__(
        self,
        model_name: str = DEFAULT_DINO,
        pretrained: bool | None = True,
        checkpoint_path: str | os.PathLike[str] | None = None,
        frozen: bool = True,
        feature: Feature = "tokens",
        normalize_input: bool = True,
        grid: tuple[int, int] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name: expected a timm model name, got {model_name!r}")
        check_choice(feature, "feature", FEATURES)
        self.model_name = model_name
        self.feature = feature
        self.frozen = bool(frozen)
        self.normalize_input = bool(normalize_input)
        self.grid = check_grid(grid, "grid") if grid is not None else None
        self.model = _build_timm(model_name, pretrained, checkpoint_path, cache_dir, dict(timm_kwargs))
        if not hasattr(self.model, "patch_embed") or not hasattr(self.model, "blocks"):
            raise ValueError(f"model_name: {model_name!r} is not a ViT with patch tokens")
        patch = self.model.patch_embed.patch_size
        self.patch_size: tuple[int, int] = (int(patch[0]), int(patch[1]))
        self.embed_dim: int = int(self.model.embed_dim)
        self.num_prefix_tokens: int = int(getattr(self.model, "num_prefix_tokens", 1))
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.485, 0.456, 0.406))
        std = cfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> DinoBackbone:
        """A frozen backbone stays in eval mode (dropout, drop-path off) whatever ``mode`` says."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Native patch grid ``(ceil(H / p), ceil(W / p))`` for an ``H × W`` input."""
        return math.ceil(height / self.patch_size[0]), math.ceil(width / self.patch_size[1])

    def _prepare(self, images: Tensor) -> Tensor:
        check_tensor(images, "images")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise TypeError(f"images: expected a floating-point or uint8 tensor, got dtype {images.dtype}")
        dtype = next(self.model.parameters()).dtype
        images = images.to(dtype)
        if self.normalize_input:
            images = (images - self.mean.to(dtype)) / self.std.to(dtype)
        return images

    def _tokens(self, images: Tensor) -> Tensor:
        if self.feature == "tokens":
            out = self.model.forward_features(images)
            return out[:, self.num_prefix_tokens :]
        captured: list[Tensor] = []
        attn = self.model.blocks[-1].attn
        if not hasattr(attn, "qkv"):
            raise ValueError(f"feature='keys': the last block of {self.model_name!r} has no fused qkv projection")
        handle = attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model.forward_features(images)
        finally:
            handle.remove()
        qkv = captured[-1]
        b, n, _ = qkv.shape
        keys = qkv.reshape(b, n, 3, self.embed_dim)[:, :, 1]
        return keys[:, self.num_prefix_tokens :]

    def feature_map(self, images: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Features as a map, resampled to ``grid`` (or the module's default grid) when given.

        Shape:
            - images: (B, 3, H, W)
            - output: (B, D', h, w)
        """
        images = self._prepare(images)
        native = self.grid_size(images.shape[-2], images.shape[-1])
        target = check_grid(grid, "grid") if grid is not None else (self.grid or native)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            tokens = self._tokens(images)
        if tokens.shape[1] != native[0] * native[1]:
            raise RuntimeError(
                f"{self.model_name}: got {tokens.shape[1]} patch tokens for a {native[0]}x{native[1]} grid"
            )
        fmap = tokens_to_map(tokens, native)
        # normalise before resampling: every patch direction weighs the same in the interpolation
        fmap = F.normalize(fmap.float(), dim=1, eps=1e-12)
        return resample_features(fmap, target)

    def forward(self, images: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """L2-normalised patch tokens, row-major, on ``grid`` (default: native patch grid).

        Shape:
            - images: (B, 3, H, W)
            - output: (B, N', D')
        """
        return map_to_tokens(self.feature_map(images, grid))

    def extra_repr(self) -> str:
        return (
            f"model_name={self.model_name!r}, feature={self.feature!r}, patch_size={self.patch_size}, "
            f"embed_dim={self.embed_dim}, frozen={self.frozen}, grid={self.grid}"
        )


@register("timm", kind="backbone", prefix=True)
def create_timm_backbone(model_name: str = DEFAULT_DINO, **kwargs: Any) -> DinoBackbone:
    """Dense DINO/DINOv2 features from timm: ``cdclip.create("timm:vit_base_patch16_224.dino")``."""
    return DinoBackbone(model_name or DEFAULT_DINO, **kwargs)


@register("dino", kind="backbone")
def create_dino_backbone(model_name: str = DEFAULT_DINO, **kwargs: Any) -> DinoBackbone:
    """The default DINO backbone (timm ``vit_base_patch16_224.dino``) under a short name."""
    return DinoBackbone(model_name, **kwargs)
