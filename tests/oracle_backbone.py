"""A test-only backbone whose features are built from the ground-truth masks (plumbing oracle).

Random CLIP weights cannot show that class indices, resizing, background handling and palette
writing line up; an oracle can: each patch's dense feature is the text embedding of the patch's
true class (a background word for background patches) plus noise, and attention stays inside a
small spatial neighbourhood. Run through the real pipeline (``patch_text`` CAMs → refinement →
PAR → pseudo labels → PNGs → mIoU), a correct pipeline must score close to the 16-pixel-grid bound.

The oracle has the duck-typed interface of :class:`cdclip.backbones.openclip.OpenCLIPBackbone`.
It recognises which sample an input shows by nearest-neighbour matching against the (resized,
optionally flipped) sample images, so the pipeline's own resizing is exercised, not bypassed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cdclip.backbones.openclip import CLIPOutput
from cdclip.backbones.text import build_text_classifier

# the oracle returns exactly what the real backbone returns
OracleOutput = CLIPOutput


class OracleBackbone:
    """Ground-truth features for a fixed set of (image uint8 (3,H,W), mask (H,W)) samples."""

    patch_size = 16
    logit_scale = 100.0
    device = torch.device("cpu")

    def __init__(
        self,
        samples: Sequence[tuple[torch.Tensor, torch.Tensor]],
        class_names: Sequence[str],
        background_words: Sequence[str],
        dim: int = 64,
        noise: float = 0.08,
        radius: float = 1.5,
        seed: int = 0,
    ) -> None:
        self.samples = [(img.float(), mask.long()) for img, mask in samples]
        self.num_classes = len(class_names)
        self.dim, self.noise, self.radius, self.seed = dim, noise, radius, seed
        self.text = build_text_classifier(self, class_names, background_words).embeddings

    # ---------------------------------------------------------------- interface
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for t in texts:  # a fixed random unit vector per prompt string
            g = torch.Generator().manual_seed(zlib.crc32(t.encode()))
            rows.append(F.normalize(torch.randn(self.dim, generator=g), dim=0))
        return torch.stack(rows)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255.0 - 0.5

    def __call__(
        self,
        images: torch.Tensor,
        attn_blocks: int | Sequence[int] = 8,
        grad_last_block: bool = False,
        return_block_tokens: bool = False,
    ) -> OracleOutput:
        b, _, height, width = images.shape
        h, w = height // self.patch_size, width // self.patch_size
        g = torch.Generator().manual_seed(self.seed)
        dense = []
        for x in images:
            mask = self._match(x)
            patch_class = self._patch_classes(mask, (height, width), (h, w))  # (N,) in 0..C
            rows = torch.where(
                patch_class > 0,
                (patch_class - 1).clamp_min(0),
                torch.full_like(patch_class, self.num_classes),  # first background word
            )
            feats = self.text[rows] + self.noise * torch.randn(h * w, self.dim, generator=g)
            dense.append(feats)
        dense_t = torch.stack(dense)
        n_blocks = attn_blocks if isinstance(attn_blocks, int) else len(attn_blocks)
        attn = self._local_attention(h, w)[None, None].expand(b, n_blocks, -1, -1)
        return OracleOutput(
            dense=dense_t,
            global_embedding=dense_t.mean(dim=1),
            cls_embedding=dense_t.mean(dim=1),
            attn=attn,
            block_tokens=(),
            grid=(h, w),
            attn_blocks=tuple(range(n_blocks)),
        )

    # ---------------------------------------------------------------- internals
    def _match(self, x: torch.Tensor) -> torch.Tensor:
        best, best_mask = float("inf"), None
        for img, mask in self.samples:
            ref = self.preprocess(F.interpolate(img[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0])
            for flipped in (False, True):
                r = ref.flip(-1) if flipped else ref
                err = float((r - x).pow(2).mean())
                if err < best:
                    best, best_mask = err, (mask.flip(-1) if flipped else mask)
        assert best_mask is not None and best < 1e-2, f"oracle: input matches no sample (error {best:.4f})"
        return best_mask

    def _patch_classes(self, mask: torch.Tensor, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        m = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
        valid = m != 255
        onehot = F.one_hot(m.clamp(0, self.num_classes) * valid, self.num_classes + 1).permute(2, 0, 1).float()
        onehot = onehot * valid[None]
        counts = F.adaptive_avg_pool2d(onehot[None], grid)[0]  # (C+1, h, w) class fractions per patch
        return counts.argmax(dim=0).flatten()

    def _local_attention(self, h: int, w: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).float()
        d2 = torch.cdist(pos, pos).pow(2)
        a = torch.exp(-d2 / (2 * self.radius**2)) * (d2 <= (2 * self.radius) ** 2)
        return a / a.sum(dim=1, keepdim=True)


def tiny_openclip_backbone(image_size: int = 224, layers: int = 3, seed: int = 0):
    """A small random open_clip CLIP (ViT, patch 16) wrapped as an OpenCLIPBackbone; builds in ms."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from cdclip.backbones.openclip import OpenCLIPBackbone

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=layers, width=64, head_width=16, patch_size=16, image_size=image_size),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return OpenCLIPBackbone(model)
