"""Dense CRF post-processing (optional extra: ``pip install cdclip[crf]``, i.e. pydensecrf2).

A fully connected CRF (Krähenbühl & Koltun, 2011) sharpens class probabilities along colour
edges. Defaults are WeCLIP's evaluation settings (``crf_proc`` in its ``test_msc_flip_voc.py``):
10 mean-field iterations, Gaussian kernel ``sxy = 3, compat = 3``, bilateral kernel
``sxy = 64, srgb = 5, compat = 4``; unaries are ``−log p`` with ``p`` clipped at 1e-5
(``pydensecrf.utils.unary_from_softmax``).

The image must be the original uint8 RGB picture. CLIP-ES casts a float image straight to uint8,
so values outside [0, 255] wrap around; here a non-uint8 image is refused (floats) or checked to
lie in [0, 255] (other integer types) — convert normalised images with
:func:`cdclip.data.transforms.denormalize`, which rounds and clamps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cdclip.registry import register

__all__ = ["DenseCRF", "dense_crf", "import_densecrf"]

_INSTALL_HINT = "dense CRF needs the optional dependency pydensecrf2: pip install cdclip[crf]"


def import_densecrf() -> tuple[Any, Any]:
    """``(pydensecrf.densecrf, unary_from_softmax)``, or an ``ImportError`` that says how to install them.

    Callers that will run the CRF later (the evaluator) call it first to fail before any work.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return dcrf, unary_from_softmax


_import_densecrf = import_densecrf  # the name before the evaluator needed it


def _image_hw3(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Validate an RGB uint8 image; accept (H, W, 3) arrays and (3, H, W) tensors; no wrap-around."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 3 and tensor.shape[0] == 3 and tensor.shape[-1] != 3:
            tensor = tensor.permute(1, 2, 0)
        array = tensor.numpy()
    else:
        array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image: expected shape (H, W, 3) (or a (3, H, W) tensor), got {array.shape}")
    if np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        raise TypeError(
            f"image: expected the uint8 RGB image, got dtype {array.dtype}; convert normalised images with "
            "cdclip.data.transforms.denormalize (rounds and clamps) instead of casting, which wraps around"
        )
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"image: expected uint8, got dtype {array.dtype}")
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"image: integer values must lie in [0, 255], got [{low}, {high}]")
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


def dense_crf(
    image: np.ndarray | torch.Tensor,
    probs: np.ndarray | torch.Tensor,
    num_iter: int = 10,
    pos_xy_std: float = 3.0,
    pos_w: float = 3.0,
    bi_xy_std: float = 64.0,
    bi_rgb_std: float = 5.0,
    bi_w: float = 4.0,
) -> np.ndarray | torch.Tensor:
    """Refine per-pixel class probabilities with a fully connected CRF.

    Args:
        image: the original RGB image, uint8 (other integer dtypes must lie in [0, 255]).
        probs: class probabilities (softmax output, upsampled to the image size), in [0, 1].
        num_iter: mean-field iterations (WeCLIP: 10).
        pos_xy_std, pos_w: Gaussian (smoothness) kernel width and weight (3, 3).
        bi_xy_std, bi_rgb_std, bi_w: bilateral (appearance) kernel widths and weight (64, 5, 4).

    Returns:
        refined probabilities, a tensor on ``probs``' device if ``probs`` is a tensor, else an array.

    Shape:
        - image: (H, W, 3) uint8 array, or (3, H, W) / (H, W, 3) uint8 tensor
        - probs: (C, H, W) float
        - output: (C, H, W) float32
    """
    rgb = _image_hw3(image)
    is_tensor = isinstance(probs, torch.Tensor)
    p = probs.detach().float().cpu().numpy() if is_tensor else np.asarray(probs)
    if p.ndim != 3:
        raise ValueError(f"probs: expected shape (C, H, W), got {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise TypeError(f"probs: expected floating-point probabilities, got dtype {p.dtype}")
    if p.shape[1:] != rgb.shape[:2]:
        raise ValueError(f"probs: spatial size {p.shape[1:]} differs from image size {rgb.shape[:2]}")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0 + 1e-4:
        raise ValueError("probs: expected finite probabilities in [0, 1] (apply softmax to logits first)")
    if not isinstance(num_iter, int) or num_iter < 0:
        raise ValueError(f"num_iter: expected a non-negative int, got {num_iter!r}")
    dcrf, unary_from_softmax = import_densecrf()

    num_classes, height, width = p.shape
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p.astype(np.float32))))
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=rgb, compat=bi_w)
    refined = np.asarray(crf.inference(num_iter), dtype=np.float32).reshape(num_classes, height, width)
    if is_tensor:
        return torch.from_numpy(refined).to(probs.device)
    return refined


@register("crf", kind="refiner")
class DenseCRF(nn.Module):
    """Dense CRF post-processing as a module; see :func:`dense_crf` (WeCLIP defaults).

    Shape:
        - image: (H, W, 3) uint8
        - probs: (C, H, W) float
        - output: (C, H, W) float32

    Examples:
        >>> import torch
        >>> image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
        >>> probs = torch.softmax(torch.randn(2, 8, 8), dim=0)
        >>> DenseCRF(num_iter=2)(image, probs).shape
        torch.Size([2, 8, 8])
    """

    def __init__(
        self,
        num_iter: int = 10,
        pos_xy_std: float = 3.0,
        pos_w: float = 3.0,
        bi_xy_std: float = 64.0,
        bi_rgb_std: float = 5.0,
        bi_w: float = 4.0,
    ) -> None:
        super().__init__()
        self.num_iter = num_iter
        self.pos_xy_std = pos_xy_std
        self.pos_w = pos_w
        self.bi_xy_std = bi_xy_std
        self.bi_rgb_std = bi_rgb_std
        self.bi_w = bi_w

    def forward(self, image: np.ndarray | torch.Tensor, probs: np.ndarray | torch.Tensor) -> Any:
        return dense_crf(
            image, probs, self.num_iter, self.pos_xy_std, self.pos_w, self.bi_xy_std, self.bi_rgb_std, self.bi_w
        )

    def extra_repr(self) -> str:
        return (
            f"num_iter={self.num_iter}, gaussian=(sxy={self.pos_xy_std}, compat={self.pos_w}), "
            f"bilateral=(sxy={self.bi_xy_std}, srgb={self.bi_rgb_std}, compat={self.bi_w})"
        )
