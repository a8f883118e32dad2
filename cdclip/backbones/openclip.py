"""Frozen open_clip ViT as a dense-feature backbone for CAMs and CDA.

``cdclip.create("openclip:ViT-B-16@openai")`` builds an :class:`OpenCLIPBackbone` around an
``open_clip`` model (never a vendored CLIP). One forward pass returns everything the later stages
need (:class:`CLIPOutput`): per-block patch tokens (decoder), dense last-block features after
``ln_post``/``proj`` (patch–text CAMs, class distributions for CDA), head-averaged self-attention
of the requested blocks (MHSA affinity) and the global embedding (GradCAM scores).

Any input size that is a multiple of the patch size works: the position embeddings are
interpolated to the patch grid (bilinearly and rounded to float16 as CLIP-ES and WeCLIP do, or
bicubically: ``pos_interp`` / ``pos_fp16``) and cached per grid size. ``fp16_out_proj=True``
computes every attention out-projection in float16, in both towers, as WeCLIP's attention module
does even in a float32 model.

Weights (``weights=`` argument, or the ``@tag`` in the name):

* an open_clip pretrained tag (``"openai"``), read from open_clip's own cache or downloaded;
* a local checkpoint path (an open_clip ``.bin``/``.safetensors`` or OpenAI's ``ViT-B-16.pt``);
* ``None``: random initialisation (tests, offline smoke runs), with a warning.

Offline with no cached weights the factory fails at once with a message that says how to pass a
local file; it never retries.

``open_clip`` is imported inside the functions so that ``import cdclip`` stays light.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cdclip._checks import check_choice, check_floating, check_rank
from cdclip.backbones._hub import PretrainedWeightsError, cached_hub_file, hub_unavailable_reason
from cdclip.backbones.fp16_attention import self_attention_fp16_out
from cdclip.backbones.output import CLIPOutput
from cdclip.choices import POS_INTERPS, PosInterp
from cdclip.constants import CLIP_MEAN, CLIP_STD
from cdclip.registry import register

__all__ = [
    "CLIPOutput",
    "OpenCLIPBackbone",
    "block_forward",
    "create_openclip",
    "interpolate_pos_embed",
    "parse_openclip_name",
]

DEFAULT_NAME = "ViT-B-16@openai"
OPENAI_MEAN, OPENAI_STD = CLIP_MEAN, CLIP_STD  # the names before cdclip.constants
_FROM_NAME = object()  # sentinel: take the weights from the "@tag" part of the name


# ---------------------------------------------------------------------------------------- helpers
def parse_openclip_name(name: str) -> tuple[str, str | None]:
    """Split ``"ViT-B-16@openai"`` into ``("ViT-B-16", "openai")``; no ``@`` gives ``(name, None)``."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str such as 'ViT-B-16@openai', got {type(name).__name__}")
    name = name.strip() or DEFAULT_NAME
    model, _, tag = name.partition("@")
    if not model:
        raise ValueError(f"name: expected 'MODEL@TAG' such as 'ViT-B-16@openai', got {name!r}")
    return model, (tag or None)


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    mode: PosInterp = "bicubic",
    fp16: bool = False,
) -> torch.Tensor:
    """Resize a ViT position embedding (class token first) to a new patch grid.

    Args:
        pos_embed: the embedding of the pre-training grid.
        old_grid, new_grid: ``(h, w)`` patch grids.
        mode: ``"bilinear"`` (CLIP-ES, WeCLIP) or ``"bicubic"``.
        fp16: round the whole result to float16 (CLIP-ES and WeCLIP store it with ``.half()``);
            the returned tensor keeps the input dtype.

    Shape:
        - pos_embed: (1 + h0 * w0, W)
        - output: (1 + h * w, W)
    """
    check_rank(pos_embed, "pos_embed", "T W")
    h0, w0 = old_grid
    if pos_embed.shape[0] != 1 + h0 * w0:
        raise ValueError(f"pos_embed: expected {1 + h0 * w0} rows for grid {old_grid}, got {pos_embed.shape[0]}")
    check_choice(mode, "mode", POS_INTERPS)
    if tuple(new_grid) == (h0, w0):
        out = pos_embed
    else:
        cls, grid = pos_embed[:1], pos_embed[1:]
        grid = grid.float().reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=tuple(new_grid), mode=mode, align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos_embed.dtype)
        out = torch.cat([cls, grid], dim=0)
    return out.half().to(pos_embed.dtype) if fp16 else out


def block_forward(
    block: nn.Module,
    x: torch.Tensor,
    need_weights: bool = False,
    fp16_out_proj: bool = False,
    attn_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run one open_clip ``ResidualAttentionBlock`` and optionally return its attention weights.

    This is the only place that reaches inside an open_clip block. It repeats the block's own
    forward (``x + ls_1(attn(ln_1(x)))`` then ``x + ls_2(mlp(ln_2(x)))``) with the public
    ``nn.MultiheadAttention`` asked for head-averaged weights, which open_clip switches off.
    ``fp16_out_proj`` computes the attention by hand with the out-projection in float16.

    Shape:
        - x: (B, T, W)     batch-first tokens, class token first
        - output: (B, T, W), the ``ln_1`` output (B, T, W), weights (B, T, T) or None
    """
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or hasattr(block, "ln_1_kv"):
        raise TypeError(
            "block: expected an open_clip ResidualAttentionBlock with nn.MultiheadAttention "
            f"(default block type), got {type(block).__name__}"
        )
    h = block.ln_1(x)
    if fp16_out_proj:
        out, weights = self_attention_fp16_out(attn, h, need_weights, attn_mask)
    else:
        q = h if attn.batch_first else h.transpose(0, 1)
        out, weights = attn(
            q, q, q, need_weights=need_weights, average_attn_weights=True, attn_mask=attn_mask
        )
        if not attn.batch_first:
            out = out.transpose(0, 1)
    x = x + block.ls_1(out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, h, weights


def _resolve_blocks(attn_blocks: int | Sequence[int], depth: int) -> tuple[int, ...]:
    if isinstance(attn_blocks, int):
        if attn_blocks < 0:
            raise ValueError(f"attn_blocks: expected L >= 0 (the last L blocks), got {attn_blocks}")
        return tuple(range(max(0, depth - attn_blocks), depth))  # L > depth: every block
    out = []
    for i in attn_blocks:
        if not -depth <= int(i) < depth:
            raise ValueError(f"attn_blocks: block index {i} out of range for {depth} blocks")
        out.append(int(i) % depth)
    return tuple(sorted(set(out)))


# ---------------------------------------------------------------------------------------- backbone
class OpenCLIPBackbone(nn.Module):
    """A frozen open_clip CLIP model seen as a dense ViT backbone plus a text encoder.

    Args:
        model: an ``open_clip`` CLIP model with a ViT image tower (default attention blocks,
            class-token pooling, no attentional pooler).
        name: the open_clip model name (for the tokenizer and messages), e.g. ``"ViT-B-16"``.
        mean, std: the image normalisation the weights expect (OpenAI's by default).
        pos_interp: position-embedding interpolation, ``"bilinear"`` (CLIP-ES, WeCLIP) or
            ``"bicubic"``.
        pos_fp16: round the interpolated position embedding to float16 (CLIP-ES, WeCLIP).
        fp16_out_proj: attention out-projections in float16 in both towers (WeCLIP).

    The model is put in eval mode with ``requires_grad=False``; GradCAM still works because
    :meth:`forward` can make the last block's input a leaf that requires grad.

    Shape:
        - images: (B, 3, H, W) normalised, H and W multiples of the patch size
        - output.dense: (B, N, D) with N = (H/p)·(W/p)
        - output.attn: (B, L, N, N)
        - output.global_embedding: (B, D)

    Examples:
        >>> import torch
        >>> from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
        >>> model = CLIP(32, CLIPVisionCfg(layers=2, width=64, head_width=16, patch_size=16, image_size=64),
        ...              CLIPTextCfg(context_length=16, width=32, heads=2, layers=1))  # a tiny random CLIP
        >>> clip = OpenCLIPBackbone(model)                       # or cdclip.create("openclip:ViT-B-16@openai")
        >>> out = clip(torch.randn(1, 3, 64, 32), attn_blocks=1)
        >>> out.dense.shape, out.attn.shape, out.grid
        (torch.Size([1, 8, 32]), torch.Size([1, 1, 8, 8]), (4, 2))
    """

    def __init__(
        self,
        model: nn.Module,
        name: str | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        pos_interp: PosInterp = "bilinear",
        pos_fp16: bool = True,
        fp16_out_proj: bool = False,
    ) -> None:
        super().__init__()
        check_choice(pos_interp, "pos_interp", POS_INTERPS)
        self.pos_interp, self.pos_fp16, self.fp16_out_proj = pos_interp, bool(pos_fp16), bool(fp16_out_proj)
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise TypeError(f"model: expected an open_clip CLIP with a ViT image tower, got {type(model).__name__}")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise TypeError("model: attentional-pool / final_ln_after_pool image towers are not supported")
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._pos_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self._tokenizer: Any = None

    # ------------------------------------------------------------------ properties
    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def patch_size(self) -> int:
        p = self.visual.patch_size
        return int(p[0] if isinstance(p, (tuple, list)) else p)

    @property
    def depth(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    @property
    def embed_dim(self) -> int:
        return int(self.visual.proj.shape[1])

    @property
    def logit_scale(self) -> float:
        """CLIP's learnt temperature ``exp(logit_scale)`` (100 for the OpenAI weights)."""
        return float(self.model.logit_scale.detach().float().exp().reshape(-1)[0])

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def train(self, mode: bool = True) -> OpenCLIPBackbone:
        # frozen backbone: stays in eval mode whatever the caller asks for (no dropout)
        super().train(False)
        return self

    # ------------------------------------------------------------------ images
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0–255 float) RGB images → float32 normalised with the model's mean/std.

        Shape:
            - images: (B, 3, H, W)
            - output: (B, 3, H, W)
        """
        check_rank(images, "images", "B 3 H W")
        x = images.to(device=self.mean.device, dtype=torch.float32) / 255.0
        return (x - self.mean) / self.std

    def pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embedding for a patch grid, interpolated once per grid size and cached.

        Shape:
            - output: (1 + h * w, W)
        """
        pe = self.visual.positional_embedding
        key = (tuple(grid), pe.device, pe.dtype, pe.data_ptr(), pe._version, self.pos_interp, self.pos_fp16)
        cached = self._pos_cache.get(key)
        if cached is None:
            with torch.no_grad():
                cached = interpolate_pos_embed(
                    pe.detach(), tuple(self.visual.grid_size), tuple(grid), self.pos_interp, self.pos_fp16
                )
            if len(self._pos_cache) > 32:  # many sizes (multi-scale on varied images): stay bounded
                self._pos_cache.clear()
            self._pos_cache[key] = cached
        return cached

    def forward(
        self,
        images: torch.Tensor,
        attn_blocks: int | Sequence[int] = 8,
        grad_last_block: bool = False,
        return_block_tokens: bool = False,
    ) -> CLIPOutput:
        """Dense features, attention and global embedding of normalised images.

        Args:
            images: normalised images (see :meth:`preprocess`); H and W multiples of the patch size.
            attn_blocks: the last ``L`` blocks (int; all blocks when L exceeds the depth) or explicit
                block indices whose attention to return; 0 skips attention (fastest).
            grad_last_block: make the tokens entering the last block a leaf that requires grad
                (GradCAM); the earlier blocks always run without autograd.
            return_block_tokens: also return the patch tokens after every block (decoder input).

        Shape:
            - images: (B, 3, H, W)
            - output: see :class:`CLIPOutput`, with N = (H / patch) * (W / patch)
        """
        grid = self._check_input(images)
        blocks = _resolve_blocks(attn_blocks, self.depth)
        attn_list: list[torch.Tensor] = []
        tokens_list: list[torch.Tensor] | None = [] if return_block_tokens else None
        with torch.no_grad():
            x = self._embed(images, grid)
            for i in range(self.depth - 1):
                x = self._block(i, x, blocks, attn_list, tokens_list)[0]
        last_input = None
        if grad_last_block:
            x = x.detach().float().to(self.visual.conv1.weight.dtype).requires_grad_(True)
            last_input = x
        with torch.set_grad_enabled(grad_last_block or torch.is_grad_enabled()):
            x, h1 = self._block(self.depth - 1, x, blocks, attn_list, tokens_list)
            dense, cls_embedding, global_embedding = self._project(x)  # inside: GradCAM differentiates them
        n = grid[0] * grid[1]
        attn = torch.stack(attn_list, dim=1) if attn_list else dense.new_zeros(images.shape[0], 0, n, n)
        return CLIPOutput(
            dense=dense, global_embedding=global_embedding, cls_embedding=cls_embedding, attn=attn.detach(),
            block_tokens=tuple(tokens_list or ()), grid=grid, attn_blocks=blocks, last_block_input=last_input,
            last_block_ln1=h1 if grad_last_block else None,
        )  # fmt: skip

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``ln_post`` and ``proj`` of the last block's output: dense features, class token, their mean.

        Shape:
            - x: (B, 1 + N, W)
            - output: (B, N, D), (B, D), (B, D), float32
        """
        x = self.visual.ln_post(x)
        if self.visual.proj is not None:
            x = x @ self.visual.proj
        x = x.float()
        dense = x[:, 1:]
        return dense, x[:, 0], dense.mean(dim=1)

    def _check_input(self, images: torch.Tensor) -> tuple[int, int]:
        """The patch grid of normalised images whose sides are multiples of the patch size."""
        check_rank(images, "images", "B 3 H W")
        check_floating(images, "images")
        _, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"images: height and width must be multiples of the patch size {p}, got {height}x{width}")
        return height // p, width // p

    def _embed(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch embedding, class token, position embedding and ``ln_pre``: the first block's input.

        Shape:
            - images: (B, 3, H, W)
            - output: (B, 1 + N, W)
        """
        visual = self.visual
        x = visual.conv1(images.to(device=self.device, dtype=visual.conv1.weight.dtype))  # (B, W, h, w)
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(images.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed(grid).to(x.dtype)
        return visual.ln_pre(x)

    def _block(
        self, i: int, x: torch.Tensor, blocks: tuple[int, ...], attn_list: list[torch.Tensor],
        tokens_list: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Block ``i``; its attention (CLS dropped) and patch tokens are appended to the lists asked for.

        Shape:
            - x: (B, 1 + N, W)
            - output: (B, 1 + N, W), the block's ``ln_1`` output (B, 1 + N, W)
        """
        x, h1, weights = block_forward(self.visual.transformer.resblocks[i], x, i in blocks, self.fp16_out_proj)
        if weights is not None:
            attn_list.append(weights[:, 1:, 1:].float())
        if tokens_list is not None:
            tokens_list.append(x[:, 1:].float())
        return x, h1

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids for the text tower (open_clip's tokenizer for this model).

        Shape:
            - output: (K, context_length)
        """
        if self._tokenizer is None:
            import open_clip

            context = int(getattr(self.model, "context_length", 77))
            if self.name:
                self._tokenizer = open_clip.get_tokenizer(self.name, context_length=context)
            else:
                self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
        return self._tokenizer(list(texts))

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings (float32).

        Shape:
            - output: (K, D) with K = len(texts)
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a sequence of str")
        tokens = self.tokenize(texts).to(self.device)
        emb = self._encode_text_fp16_out(tokens) if self.fp16_out_proj else self.model.encode_text(tokens)
        return F.normalize(emb.float(), dim=-1)

    def _encode_text_fp16_out(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` with float16 attention out-projections (WeCLIP).

        Shape:
            - tokens: (K, context_length)
            - output: (K, D)
        """
        model = self.model
        if getattr(model, "text_pool_type", "argmax") != "argmax" or not hasattr(model, "token_embedding"):
            raise TypeError("fp16_out_proj: only CLIP text towers with argmax (EOT) pooling are supported")
        transformer = model.transformer
        dtype = transformer.get_cast_dtype() if hasattr(transformer, "get_cast_dtype") else model.token_embedding.weight.dtype
        x = model.token_embedding(tokens).to(dtype) + model.positional_embedding.to(dtype)
        mask = model.attn_mask
        for block in model.transformer.resblocks:
            x, _, _ = block_forward(block, x, fp16_out_proj=True, attn_mask=mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x @ model.text_projection

    def extra_repr(self) -> str:
        return f"name={self.name!r}, patch_size={self.patch_size}, depth={self.depth}, embed_dim={self.embed_dim}"


# ---------------------------------------------------------------------------------------- factory
def _cached_weights(model: str, tag: str, cache_dir: str | None) -> str | None:
    """Path of the weights for ``model@tag`` if open_clip's cache already holds them."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg:
        return None
    if "file" in cfg:
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        path = cached_hub_file(repo_id, names, cache_dir)
        if path is not None:
            return path
    url = cfg.get("url", "")
    if url:
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if path.is_file():
            return str(path)
    return None


def create_openclip(
    name: str = DEFAULT_NAME,
    weights: Any = _FROM_NAME,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    pos_interp: PosInterp = "bilinear",
    pos_fp16: bool = True,
    fp16_out_proj: bool = False,
) -> OpenCLIPBackbone:
    """Build an :class:`OpenCLIPBackbone` (registered as prefix ``openclip``).

    Args:
        name: ``"MODEL@TAG"`` (``"ViT-B-16@openai"``); the tag is used when ``weights`` is not given.
        weights: an open_clip pretrained tag, a local checkpoint path, or ``None`` / ``"none"`` for
            random initialisation (with a warning).
        device: where the model lives.
        precision: open_clip precision string (``"fp32"``, ``"fp16"``, ``"bf16"``); outputs are float32.
        cache_dir: open_clip's download cache (default: its own).
        pos_interp, pos_fp16, fp16_out_proj: see :class:`OpenCLIPBackbone`.

    Raises:
        RuntimeError: weights not cached and the hub unreachable (fails at once, no retries).
    """
    import open_clip

    model_name, weights = _model_and_weights(name, weights)
    if model_name not in open_clip.list_models():
        raise ValueError(f"name: unknown open_clip model {model_name!r}; known ViTs include ViT-B-16, ViT-B-32, ViT-L-14")
    kwargs: dict[str, Any] = {"precision": precision, "device": device}
    mean, std = CLIP_MEAN, CLIP_STD
    if weights is None:
        warnings.warn(
            f"cdclip: building open_clip {model_name} with RANDOM weights (weights=None); "
            "CAMs and pseudo labels will be meaningless",
            UserWarning,
            stacklevel=2,
        )
        model = open_clip.create_model(model_name, pretrained=None, **kwargs)
    elif os.path.isfile(str(weights)):
        model = _load_local(open_clip, model_name, str(weights), kwargs)
    else:
        model, mean, std = _load_tag(open_clip, model_name, weights, cache_dir, kwargs)
    return OpenCLIPBackbone(
        model, name=model_name, mean=mean, std=std, pos_interp=pos_interp, pos_fp16=pos_fp16,
        fp16_out_proj=fp16_out_proj,
    )


def _model_and_weights(name: str, weights: Any) -> tuple[str, Any]:
    """The open_clip model of ``"MODEL@TAG"`` and the weights to load: ``weights``, else the tag; None = random."""
    from cdclip.pipeline.clip_backbone import is_random_weights

    model_name, tag = parse_openclip_name(name)
    if weights is _FROM_NAME:
        if tag is None:
            raise ValueError(
                f"weights: {name!r} names no pretrained tag; use 'MODEL@TAG' (e.g. 'ViT-B-16@openai'), "
                "weights='/path/to/checkpoint' or weights=None for random initialisation"
            )
        weights = tag
    if isinstance(weights, str) and (is_random_weights(weights) or not weights.strip()):
        weights = None  # so does an empty string here
    return model_name, weights


def _load_tag(
    open_clip: Any, model_name: str, weights: Any, cache_dir: str | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, Sequence[float], Sequence[float]]:
    """The model of an open_clip pretrained tag and the image statistics it expects.

    Read from the local cache when it is there; otherwise downloaded, unless the hub is
    unreachable, which fails at once with a message saying how to pass a local file.
    """
    cfg = open_clip.get_pretrained_cfg(model_name, str(weights))
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"weights: {weights!r} is neither a file nor an open_clip tag for {model_name} (tags: {tags})")
    mean, std = cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD)
    path = _cached_weights(model_name, str(weights), cache_dir)
    reason = hub_unavailable_reason() if path is None else None
    if reason is not None:
        raise PretrainedWeightsError(
            f"open_clip weights for {model_name}@{weights} are not in the local cache and {reason}. "
            "Pass a local checkpoint instead: "
            f"create_openclip('{model_name}', weights='/path/to/{model_name}.pt') or on the command line "
            f"`--weights /path/to/{model_name}.pt` (OpenAI's ViT-B-16.pt or an open_clip "
            "open_clip_pytorch_model.bin), or fill the cache on a connected machine with "
            f"`python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{weights}')\"`."
        )
    if path is not None:
        quick_gelu = bool(cfg.get("quick_gelu", False))
        return open_clip.create_model(model_name, pretrained=path, force_quick_gelu=quick_gelu, **kwargs), mean, std
    return open_clip.create_model(model_name, pretrained=str(weights), cache_dir=cache_dir, **kwargs), mean, std


def _load_local(open_clip: Any, model_name: str, path: str, kwargs: dict[str, Any]) -> nn.Module:
    """Load a local checkpoint; OpenAI ``.pt`` archives need QuickGELU, open_clip files say nothing."""
    openai_archive = path.endswith(".pt")
    try:
        return open_clip.create_model(
            model_name, pretrained=path, force_quick_gelu=openai_archive, weights_only=False, **kwargs
        )
    except Exception as err:
        raise PretrainedWeightsError(f"weights: could not load {path!r} into open_clip {model_name}: {err}") from err


register("openclip", create_openclip, kind="backbone", prefix=True)
