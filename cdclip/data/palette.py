"""Label maps as palette PNGs, and colour pictures of labels and heat maps.

Predictions and pseudo labels are saved the way the datasets ship their masks: a one-channel
palette ("P" mode) PNG whose pixel values *are* the class indices, so any tool reads the indices
back exactly and image viewers show the colours.

* ``"voc"``: the PASCAL VOC palette (the bit-interleaving colour map of the VOC devkit); 0 is
  black background and 255 (void) is the devkit's cream ``(224, 224, 192)``.
* ``"coco"``: the same colour map for the 81 COCO indices (0 background, 1..80 in category-id
  order), with 255 (void) drawn white.

Shape:
    - label: (H, W) integers in [0, 255]
    - colour picture: (H, W, 3) uint8
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cdclip.constants import VOID

__all__ = [
    "coco_palette",
    "colorize",
    "get_palette",
    "heatmap",
    "load_label_png",
    "overlay",
    "save_label_png",
    "voc_palette",
]


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: the bits of each index spread over R, G and B.

    Index ``i``'s bits ``b0 b1 b2 | b3 b4 b5 | ...`` go, three at a time, to the most significant
    free bit of R, G and B respectively (the devkit's ``labelcolormap``).

    Shape:
        - output: (n, 3) uint8
    """
    if not isinstance(n, int) or not 1 <= n <= 256:
        raise ValueError(f"voc_palette: n must be an int in [1, 256], got {n!r}")
    index = np.arange(n, dtype=np.int64)
    colours = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):  # bit ``3·shift + channel`` of the index sets bit ``7 − shift``
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)


def coco_palette() -> np.ndarray:
    """The 81-class COCO palette: VOC colours for 0..80, 255 (void) white, everything else black.

    Shape:
        - output: (256, 3) uint8
    """
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:81] = voc_palette(81)
    colours[VOID] = 255
    return colours


def get_palette(palette: str | np.ndarray = "voc") -> np.ndarray:
    """A (256, 3) uint8 palette from its name (``"voc"``, ``"coco"``) or an explicit array.

    Shape:
        - output: (256, 3) uint8
    """
    if isinstance(palette, str):
        if palette == "voc":
            return voc_palette(256)
        if palette == "coco":
            return coco_palette()
        raise ValueError(f"palette: expected 'voc', 'coco' or a (n, 3) uint8 array, got {palette!r}")
    colours = np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= colours.shape[0] <= 256:
        raise ValueError(f"palette: expected shape (n, 3) with n <= 256, got {colours.shape}")
    out = np.zeros((256, 3), dtype=np.uint8)
    out[: colours.shape[0]] = colours.astype(np.uint8)
    return out


def _label_array(label: np.ndarray | torch.Tensor, name: str = "label") -> np.ndarray:
    """Validate an integer (H, W) label map with values in [0, 255]; return it as uint8."""
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{name}: expected shape (H, W), got {label.shape}")
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == np.bool_):
        raise TypeError(f"{name}: expected an integer label map, got dtype {label.dtype}")
    if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
        raise ValueError(
            f"{name}: values must lie in [0, 255] to fit a palette PNG, got [{label.min()}, {label.max()}]"
        )
    return label.astype(np.uint8)


def save_label_png(
    path: str | os.PathLike[str],
    label: np.ndarray | torch.Tensor,
    palette: str | np.ndarray = "voc",
) -> Path:
    """Write ``label`` as a palette PNG whose pixel values are the class indices.

    Parent directories are created. Returns the path written.

    Shape:
        - label: (H, W) integers in [0, 255]
    """
    path = Path(path)
    values = _label_array(label)
    # built from raw bytes as mode "P": the stored values are exactly the indices (no quantisation)
    image = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
    image.putpalette(get_palette(palette).reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)
    return path


def load_label_png(path: str | os.PathLike[str], palette: str | np.ndarray = "voc") -> np.ndarray:
    """Read a label PNG back to class indices.

    Palette ("P"), grey ("L") and 16/32-bit ("I;16", "I") PNGs hold the indices directly. An RGB
    PNG is mapped back through ``palette``; a colour that is not in it raises ``ValueError``.

    Shape:
        - output: (H, W) int64
    """
    path = Path(path)
    with Image.open(path) as image:
        mode = image.mode
        if mode in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
            return np.asarray(image).astype(np.int64)
        if mode in ("RGB", "RGBA"):
            rgb = np.asarray(image.convert("RGB")).astype(np.int64)
        else:
            raise ValueError(f"load_label_png: unsupported PNG mode {mode!r} in {path}")
    colours = get_palette(palette).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    # first index wins when a palette repeats a colour (black fills unused entries)
    unique_codes, first = np.unique(table, return_index=True)
    pos = np.searchsorted(unique_codes, code).clip(0, len(unique_codes) - 1)
    found = unique_codes[pos] == code
    if not found.all():
        y, x = np.argwhere(~found)[0]
        raise ValueError(f"load_label_png: colour {tuple(rgb[y, x])} at ({y}, {x}) of {path} is not in the palette")
    return first[pos].astype(np.int64)


def colorize(label: np.ndarray | torch.Tensor, palette: str | np.ndarray = "voc") -> np.ndarray:
    """Colour picture of a label map.

    Shape:
        - label: (H, W) integers in [0, 255]
        - output: (H, W, 3) uint8
    """
    return get_palette(palette)[_label_array(label)]


def heatmap(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """A blue→cyan→yellow→red colour picture of values in [0, 1] (clipped), e.g. a CAM.

    Shape:
        - values: (H, W) float
        - output: (H, W, 3) uint8
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"heatmap: values must have shape (H, W), got {v.shape}")
    v = np.nan_to_num(v, nan=0.0).clip(0.0, 1.0)
    # piecewise-linear "jet": each channel is a tent function of the value
    red = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    green = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    blue = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return (np.stack([red, green, blue], axis=-1) * 255.0 + 0.5).astype(np.uint8)


def overlay(
    image: np.ndarray | torch.Tensor,
    label_or_heatmap: np.ndarray | torch.Tensor,
    alpha: float = 0.5,
    palette: str | np.ndarray = "voc",
) -> np.ndarray:
    """Blend a label map (integer) or a heat map (float in [0, 1]) over an RGB image.

    Integer maps are coloured with ``palette``; void (255) pixels keep the plain image. Float maps
    are coloured with :func:`heatmap`.

    Shape:
        - image: (H, W, 3) uint8 (a (3, H, W) tensor is accepted too)
        - label_or_heatmap: (H, W)
        - output: (H, W, 3) uint8
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"overlay: image must have shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"overlay: image must be uint8, got {image.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    values = label_or_heatmap
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.shape != image.shape[:2]:
        raise ValueError(f"overlay: map shape {values.shape} differs from image shape {image.shape[:2]}")
    if np.issubdtype(values.dtype, np.floating):
        colour = heatmap(values).astype(np.float64)
        weight = np.full(values.shape, alpha)
    else:
        colour = colorize(values, palette).astype(np.float64)
        weight = np.where(values == VOID, 0.0, alpha)
    blended = (1.0 - weight[..., None]) * image.astype(np.float64) + weight[..., None] * colour
    return (blended + 0.5).clip(0, 255).astype(np.uint8)
