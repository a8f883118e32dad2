"""WeCLIP-style segmentation decoder on frozen CLIP per-block patch tokens (docs/training.md).

The frozen CLIP image tower already holds the semantics; the decoder only has to read it out:

1. one small MLP head per CLIP block (``Linear(W → E) → ReLU → Linear(E → E)``, W = 768, E = 256),
   applied to that block's patch tokens — blocks 1–11 of ViT-B/16 by default (all but the last,
   whose output is what GradCAM already explains);
2. the per-block maps are concatenated and fused by a 1×1 convolution to E channels, followed by
   2-D dropout (0.1 in WeCLIP). These *fused features* also feed the affinity loss ``L_aff``;
3. a few pre-LN transformer layers (3 layers, width E, 8 heads, MLP ratio 4) mix the patches
   globally — no position embedding, as in WeCLIP (the CLIP tokens carry position already);
4. a 1×1 classifier gives ``C + 1`` logits (background first) at the patch resolution, 1/16.

Everything runs on the token grid of the input, so any crop or image size works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import check_choice, check_rank, check_tensor
from cdclip.backbones.fp16_attention import self_attention_fp16_out
from cdclip.registry import register

__all__ = [
    "ACTIVATIONS",
    "BlockHead",
    "DecoderOutput",
    "QuickGELU",
    "TransformerLayer",
    "WeCLIPDecoder",
    "fuse_block_tokens",
]

Activation = Literal["gelu", "quick_gelu"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)


class QuickGELU(nn.Module):
    """``x · sigmoid(1.702 x)``: OpenAI CLIP's GELU approximation, which WeCLIP's decoder uses.

    Shape:
        - x: (*)
        - output: (*)
    """

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _activation(name: Activation) -> nn.Module:
    check_choice(name, "activation", ACTIVATIONS)
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class DecoderOutput(NamedTuple):
    """Decoder logits and the fused features (the affinity-loss input).

    Shape:
        - logits: (B, C + 1, h, w)
        - features: (B, E, h, w)
    """

    logits: Tensor
    features: Tensor


class BlockHead(nn.Module):
    """Two-layer MLP reading one CLIP block's patch tokens: ``Linear → ReLU → Linear``.

    Shape:
        - tokens: (B, N, W)
        - output: (B, N, E)
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(tokens)))


class TransformerLayer(nn.Module):
    """Pre-LN transformer layer: ``x + MHSA(LN(x))`` then ``x + MLP(LN(x))`` (GELU or QuickGELU MLP).

    Shape:
        - x: (B, N, E)
        - output: (B, N, E)
    """

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, activation: Activation = "gelu", fp16_out_proj: bool = False
    ) -> None:
        super().__init__()
        self.fp16_out_proj = bool(fp16_out_proj)
        if dim % heads:
            raise ValueError(f"heads: width {dim} is not divisible by {heads} heads")
        hidden = round(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), _activation(activation), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        if self.fp16_out_proj:
            x = x + self_attention_fp16_out(self.attn, h, False, None)[0]
        else:
            x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def fuse_block_tokens(
    block_tokens: Sequence[Tensor], heads: Sequence[nn.Module], fuse: nn.Module, grid: tuple[int, int]
) -> Tensor:
    """Per-block heads on each block's tokens, concatenated channel-wise and fused by ``fuse``.

    Shape:
        - block_tokens: L x (B, N, W) with N = h*w
        - output: (B, E, h, w)
    """
    if len(block_tokens) != len(heads):
        raise ValueError(
            f"block_tokens: expected {len(heads)} blocks (one per head), got {len(block_tokens)}"
        )
    h, w = grid
    maps = []
    for i, (tokens, head) in enumerate(zip(block_tokens, heads, strict=True)):
        check_rank(tokens, f"block_tokens[{i}]", "B N W")
        if tokens.shape[1] != h * w:
            raise ValueError(
                f"block_tokens[{i}]: expected N = {h}*{w} = {h * w} tokens, got {tokens.shape[1]}"
            )
        out = head(tokens)  # (B, N, E)
        maps.append(out.transpose(1, 2).reshape(out.shape[0], out.shape[2], h, w))
    return fuse(torch.cat(maps, dim=1))


@register("weclip_decoder", kind="decoder")
class WeCLIPDecoder(nn.Module):
    """Per-block MLP heads + 1×1 fusion + pre-LN transformer + 1×1 classifier (WeCLIP).

    Args:
        num_classes: output channels, **including background** (21 for VOC, 81 for COCO).
        in_dim: CLIP width W of the block tokens (768 for ViT-B/16).
        num_blocks: how many blocks' tokens come in (11: blocks 1–11 of ViT-B/16).
        dim: decoder width E (256).
        layers: transformer layers (3).
        heads: attention heads (8).
        mlp_ratio: transformer MLP hidden size / width (4).
        dropout: 2-D dropout after the fusion (0.1, WeCLIP).
        activation: the transformer MLP's activation, ``"quick_gelu"`` (WeCLIP) or ``"gelu"``.
        fp16_out_proj: the transformer's attention out-projections in float16 (WeCLIP).

    Shape:
        - block_tokens: num_blocks x (B, h*w, W)
        - output.logits: (B, num_classes, h, w)
        - output.features: (B, dim, h, w)

    Examples:
        >>> import torch
        >>> decoder = WeCLIPDecoder(num_classes=21, in_dim=64, num_blocks=3, dim=32, layers=1, heads=4)
        >>> tokens = [torch.randn(2, 4 * 5, 64) for _ in range(3)]   # one (B, h*w, W) per CLIP block
        >>> out = decoder(tokens, grid=(4, 5))
        >>> out.logits.shape, out.features.shape
        (torch.Size([2, 21, 4, 5]), torch.Size([2, 32, 4, 5]))
    """

    def __init__(
        self,
        num_classes: int,
        in_dim: int = 768,
        num_blocks: int = 11,
        dim: int = 256,
        layers: int = 3,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        activation: Activation = "quick_gelu",
        fp16_out_proj: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("num_classes", num_classes),
            ("in_dim", in_dim),
            ("num_blocks", num_blocks),
            ("dim", dim),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if layers < 0:
            raise ValueError(f"layers: expected >= 0, got {layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.num_classes, self.in_dim, self.num_blocks, self.dim = num_classes, in_dim, num_blocks, dim
        # ints as num_*: ``heads_list`` and ``layers`` are the module lists (their state_dict keys stay)
        self.num_layers, self.num_heads, self.mlp_ratio, self.dropout_p = layers, heads, mlp_ratio, dropout
        self.heads_list = nn.ModuleList(BlockHead(in_dim, dim) for _ in range(num_blocks))
        self.fuse = nn.Conv2d(dim * num_blocks, dim, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.activation = activation
        self.fp16_out_proj = bool(fp16_out_proj)
        self.layers = nn.ModuleList(
            TransformerLayer(dim, heads, mlp_ratio, activation, fp16_out_proj) for _ in range(layers)
        )
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)

    @property
    def heads(self) -> int:
        """The earlier name of :attr:`num_heads`."""
        return self.num_heads

    @property
    def layers_count(self) -> int:
        """The earlier name of :attr:`num_layers`."""
        return self.num_layers

    def forward(self, block_tokens: Sequence[Tensor], grid: tuple[int, int]) -> DecoderOutput:
        """Logits at the patch grid and the fused features.

        Shape:
            - block_tokens: num_blocks x (B, h*w, W)
            - output.logits: (B, num_classes, h, w)
            - output.features: (B, dim, h, w)
        """
        if isinstance(block_tokens, Tensor):
            raise TypeError(
                "block_tokens: expected a sequence of (B, N, W) tensors, one per block, got one tensor"
            )
        for i, tokens in enumerate(block_tokens):
            check_tensor(tokens, f"block_tokens[{i}]")
            if tokens.dim() == 3 and tokens.shape[-1] != self.in_dim:
                raise ValueError(
                    f"block_tokens[{i}]: expected width W = {self.in_dim}, got shape {tuple(tokens.shape)}"
                )
        h, w = int(grid[0]), int(grid[1])
        param_dtype = self.fuse.weight.dtype  # CLIP may run in fp16: the decoder reads its own dtype
        tokens = [t.to(param_dtype) for t in block_tokens]
        fused = self.dropout(fuse_block_tokens(tokens, self.heads_list, self.fuse, (h, w)))
        x = fused.flatten(2).transpose(1, 2)  # (B, N, E)
        for layer in self.layers:
            x = layer(x)
        x = x.transpose(1, 2).reshape(x.shape[0], self.dim, h, w)
        return DecoderOutput(self.classifier(x), fused)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, in_dim={self.in_dim}, num_blocks={self.num_blocks}, dim={self.dim}, "
            f"layers={self.num_layers}, heads={self.num_heads}, mlp_ratio={self.mlp_ratio}, dropout={self.dropout_p}, "
            f"activation={self.activation!r}, fp16_out_proj={self.fp16_out_proj}"
        )
