"""The typed contract between a CLIP backbone and everything that reads it.

:class:`CLIPOutput` is what one forward of the image tower yields. The CAM methods
(:mod:`cdclip.cam`), the refinement (attention, CDA), the CAM head and the decoder read it by
field name; any backbone (open_clip, a test oracle, your own) returns this class.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = ["CLIPOutput"]


@dataclass
class CLIPOutput:
    """Everything one forward pass of the CLIP image tower yields (float32).

    Shape:
        - dense: (B, N, D)            last block, after ``ln_post`` and ``proj``, not normalised
        - global_embedding: (B, D)    mean of ``dense`` over the N patches (CLIP-ES / WeCLIP)
        - cls_embedding: (B, D)       class token after ``ln_post`` and ``proj`` (= encode_image)
        - attn: (B, L, N, N)          head-averaged attention of the requested blocks, CLS dropped
        - block_tokens: L' x (B, N, W) patch tokens after every block (empty unless asked for)
        - last_block_input: (B, 1 + N, W) tokens entering the last block (GradCAM), or None
        - last_block_ln1: (B, 1 + N, W) the last block's ``ln_1`` output, or None

    ``grid`` is the patch grid ``(h, w)`` with ``N = h * w``; ``attn_blocks`` the indices of the
    blocks whose attention is in ``attn``. With ``grad_last_block=True`` the last two fields require
    grad and ``dense``/``global_embedding`` depend on them, so GradCAM can differentiate.
    """

    dense: torch.Tensor
    global_embedding: torch.Tensor
    cls_embedding: torch.Tensor
    attn: torch.Tensor
    block_tokens: tuple[torch.Tensor, ...]
    grid: tuple[int, int]
    attn_blocks: tuple[int, ...] = ()
    last_block_input: torch.Tensor | None = None
    last_block_ln1: torch.Tensor | None = None

    def detached(self) -> CLIPOutput:
        """A copy whose tensors are detached and whose GradCAM leaves are dropped (None).

        Shape:
            - output: the same fields and shapes, ``last_block_input``/``last_block_ln1`` None
        """
        return dataclasses.replace(
            self,
            dense=self.dense.detach(),
            global_embedding=self.global_embedding.detach(),
            cls_embedding=self.cls_embedding.detach(),
            attn=self.attn.detach(),
            block_tokens=tuple(t.detach() for t in self.block_tokens),
            last_block_input=None,
            last_block_ln1=None,
        )
