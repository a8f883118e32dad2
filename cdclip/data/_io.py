"""File reading shared by the datasets: images, masks, split lists, label files, bad-file handling.

Every reader raises :class:`DataFileError` (an ``OSError``) naming the file when a file is
missing or cannot be decoded, so that a broken dataset fails with the path to look at rather than
deep inside a decoder. :class:`SegmentationDataset` implements the opt-in ``skip_bad=True`` policy
shared by VOC and COCO: bad samples are skipped, counted and listed in ``dataset.skipped``.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors

__all__ = [
    "DataFileError",
    "MissingFilesError",
    "SegmentationDataset",
    "Skipped",
    "list_stems",
    "load_label_dict",
    "read_image",
    "read_mask",
    "read_split",
]

Sample = dict[str, Any]

# how many missing names an error message lists before it says "and N more"
_LIST_LIMIT = 20


class DataFileError(OSError):
    """A data file is missing or cannot be decoded; ``.path`` is the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{reason}: {self.path}")


class MissingFilesError(FileNotFoundError):
    """Several ids of a split have no file; all of them are listed at once (``.missing``)."""

    def __init__(self, what: str, missing: Sequence[tuple[str, Path]]) -> None:
        self.what = what
        self.missing = list(missing)
        super().__init__(self.message("skip_bad=True"))

    def message(self, skip_option: str) -> str:
        """The error text with ``skip_option`` as the way out (the CLI says ``--skip-bad``)."""
        shown = "\n".join(f"  {name}: {path}" for name, path in self.missing[:_LIST_LIMIT])
        more = len(self.missing) - _LIST_LIMIT
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return f"{len(self.missing)} {self.what} missing (pass {skip_option} to skip them):\n{shown}{tail}"


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".strip()


# PIL modes of 16-bit grey images (PNG "I;16", TIFF "I;16B", ...): scaled to 8 bit as v >> 8
_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112


def _to_uint8(image: torch.Tensor) -> torch.Tensor | None:
    """8-bit pixels: uint8 as is, uint16 as ``v >> 8`` (PIL's own 16 → 8 bit rule); None otherwise.

    Shape:
        - image: (3, H, W) uint8 or uint16
        - output: (3, H, W) uint8
    """
    if image.dtype == torch.uint8:
        return image
    if image.dtype == torch.uint16:  # torch has no shifts for uint16: go through int32
        return (image.to(torch.int32) >> 8).to(torch.uint8)
    return None


def _decode_torchvision(path: Path, exif: bool = True) -> torch.Tensor | None:
    """(3, H, W) uint8 via torchvision.io, or None when unavailable or it cannot decode the file.

    EXIF orientation is applied with ``exif`` (``apply_exif_orientation``: the same pixels as PIL's
    ``ImageOps.exif_transpose`` and free) and 16-bit PNGs, which torchvision returns as uint16,
    are scaled to 8 bit; anything else unexpected (an animated GIF, another dtype) returns None so
    that PIL decides.
    """
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work and
            # are faster than PIL here, and PIL takes over once they are gone
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_image, read_file

            image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=exif)
    except (ImportError, AttributeError, RuntimeError, ValueError, TypeError):
        return None
    if image.ndim != 3 or image.shape[0] != 3:
        return None
    return _to_uint8(image)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _pil_rgb(pil: Image.Image, exif: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 of an open PIL image: EXIF orientation applied, 16-bit scaled, alpha dropped.

    ``convert("RGB")`` alone is wrong for 16-bit grey (mode ``I;16``/``I``): PIL clips every value
    above 255 to white. Palette, grey, grey + alpha, RGBA and CMYK go through ``convert("RGB")``
    (alpha is dropped, the stored colour is kept, as torchvision's RGB mode does).
    """
    if exif and pil.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        pil = ImageOps.exif_transpose(pil)
    if pil.mode in _PIL_16BIT:
        return _grey_to_rgb((np.asarray(pil).astype(np.uint16) >> 8).astype(np.uint8))
    if pil.mode == "I":  # 32-bit int: PIL's mode for 16-bit grey PNGs before Pillow 10.4
        values = np.asarray(pil)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"32-bit integer image with values in [{values.min()}, {values.max()}], expected 0..65535")
        return _grey_to_rgb((values.astype(np.uint16) >> 8).astype(np.uint8))
    if pil.mode == "F":
        raise ValueError("floating-point image (PIL mode 'F'): expected 8- or 16-bit integer pixels")
    return np.array(pil.convert("RGB"))  # a writable copy


def _decode_pil(path: Path, exif: bool = True) -> torch.Tensor:
    try:
        with Image.open(path) as pil:
            array = _pil_rgb(pil, exif)
    except Exception as err:  # PIL raises many types for broken files
        raise DataFileError(path, f"cannot decode image ({_describe(err)})") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike[str], backend: str = "auto", exif: bool = True) -> tv_tensors.Image:
    """Decode an image file into an RGB uint8 image, the same way for every dataset and command.

    * EXIF orientation is applied (a portrait photo stored landscape with orientation 6 comes
      back portrait, as every viewer shows it); ``exif=False`` returns the stored pixels;
    * 16-bit PNGs (grey, grey + alpha, RGB, RGBA) are scaled to 8 bit as ``v >> 8``;
    * grey, palette and CMYK files become RGB; an alpha channel is dropped;
    * an empty, truncated or undecodable file raises :class:`DataFileError` naming it (the
      datasets' ``skip_bad=True`` skips and counts it).

    ``backend="auto"`` uses ``torchvision.io.decode_image`` (libjpeg-turbo, ~1.5 ms against PIL's
    ~2.2 ms for a VOC image, see ``benchmarks/data_loading.py``) and falls back to PIL for what it
    cannot read (BMP, a truncated file: PIL then names the error); ``"pil"`` and ``"torchvision"``
    force one decoder. Both give identical pixels for the files both read.

    Shape:
        - output: (3, H, W) uint8
    """
    if backend not in ("auto", "pil", "torchvision"):
        raise ValueError(f"backend: expected 'auto', 'pil' or 'torchvision', got {backend!r}")
    path = Path(path)
    try:
        info = path.stat()
    except OSError:
        info = None
    if info is None or not stat.S_ISREG(info.st_mode):
        raise DataFileError(path, "image file not found")
    if info.st_size == 0:
        raise DataFileError(path, "image file is empty (0 bytes)")
    image = _decode_torchvision(path, exif) if backend != "pil" else None
    if image is None:
        if backend == "torchvision":
            raise DataFileError(path, "torchvision cannot decode image")
        image = _decode_pil(path, exif)
    return tv_tensors.Image(image)


def read_mask(path: str | os.PathLike[str]) -> tv_tensors.Mask:
    """Read a label PNG whose pixel values are class indices (palette or grey PNG).

    RGB masks are refused: their colours would need a palette to become indices.

    Shape:
        - output: (H, W) int64
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "mask file not found")
    try:
        with Image.open(path) as pil:
            if pil.mode not in ("P", "L", "I", "I;16"):
                raise DataFileError(
                    path, f"mask must be a palette or grey PNG holding class indices, got mode {pil.mode!r}"
                )
            array = np.array(pil)
    except DataFileError:
        raise
    except Exception as err:
        raise DataFileError(path, f"cannot decode mask ({_describe(err)})") from err
    return tv_tensors.Mask(torch.from_numpy(array.astype(np.int64, copy=False)))


def read_split(path: str | os.PathLike[str]) -> list[str]:
    """Image ids of a split file.

    Accepts bare ids (``2007_000032``) and the two-column lines of the WSSS repos
    (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``): the id is the stem of
    the first column. Blank lines and ``#`` comments are ignored; duplicates keep their first place.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "split file not found")
    ids: dict[str, None] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            first = text.split()[0]
            ids.setdefault(Path(first).stem if ("/" in first or "." in first) else first, None)
    return list(ids)


def load_label_dict(path: str | os.PathLike[str], num_classes: int) -> dict[str, np.ndarray]:
    """Image-level labels from a ``cls_labels_onehot.npy`` file: ``{id: float32[num_classes]}``.

    The file is the pickled dictionary the WSSS repos ship (``np.save`` of a dict); each value is
    the multi-hot foreground vector, background excluded.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "label file not found")
    try:
        loaded = np.load(path, allow_pickle=True)
        table = loaded.item() if isinstance(loaded, np.ndarray) and loaded.dtype == object else loaded
    except Exception as err:
        raise DataFileError(path, f"cannot read label file ({_describe(err)})") from err
    if not isinstance(table, dict):
        raise DataFileError(path, f"label file must hold a dict {{id: multi-hot}}, got {type(table).__name__}")
    labels: dict[str, np.ndarray] = {}
    for key, value in table.items():
        vector = np.asarray(value, dtype=np.float32).reshape(-1)
        if vector.shape != (num_classes,):
            raise DataFileError(path, f"label of {key!r} has shape {vector.shape}, expected ({num_classes},)")
        if not np.isfinite(vector).all():
            raise DataFileError(path, f"label of {key!r} holds NaN or inf, expected 0/1 values")
        labels[str(key)] = vector
    return labels


def list_stems(directory: Path, suffix: str) -> set[str]:
    """Stems of the files in ``directory`` ending in ``suffix`` (one ``scandir``, no per-file stat)."""
    if not directory.is_dir():
        return set()
    n = len(suffix)
    with os.scandir(directory) as entries:
        return {e.name[:-n] for e in entries if e.name.endswith(suffix)}


@dataclass(frozen=True)
class Skipped:
    """A sample left out by ``skip_bad=True``: its name, the offending file and why."""

    name: str
    path: Path
    reason: str


class SegmentationDataset(Dataset):
    """Common base: a list of sample names, a loader per name, a transform and bad-file policy.

    Subclasses set ``self.names`` and implement ``load(index) -> dict``. With ``skip_bad=False``
    (default) a bad file raises :class:`DataFileError`. With ``skip_bad=True``, samples whose files
    are missing are dropped when the dataset is built, and samples that fail to decode are
    replaced by the next good one; both are recorded in ``self.skipped`` (per process: each
    DataLoader worker keeps its own list).
    """

    names: list[str]

    def __init__(self, transform: Callable[[Sample], Any] | None = None, skip_bad: bool = False) -> None:
        self.transform = transform
        self.skip_bad = bool(skip_bad)
        self.skipped: list[Skipped] = []
        self._bad_indices: set[int] = set()

    @property
    def num_skipped(self) -> int:
        """How many samples were skipped so far (missing at build time plus failed decodes)."""
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def _drop_missing(self, missing: list[tuple[str, Path]], what: str) -> None:
        """Raise one error listing every missing file, or drop those samples with ``skip_bad``."""
        if not missing:
            return
        if not self.skip_bad:
            raise MissingFilesError(what, missing)
        bad = {name for name, _ in missing}
        self.skipped.extend(Skipped(name, path, f"{what} missing") for name, path in missing)
        self.names = [n for n in self.names if n not in bad]
        warnings.warn(f"skip_bad: {len(bad)} sample(s) skipped, {what} missing", RuntimeWarning, stacklevel=3)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        index %= len(self)
        if not self.skip_bad:
            sample = self.load(index)
        else:
            sample = self._load_skipping(index)
        return self.transform(sample) if self.transform is not None else sample

    def try_get(self, index: int) -> Any | None:
        """``dataset[index]``, or None when that sample is bad and ``skip_bad`` is on (it is recorded in ``skipped``).

        For one pass over the dataset (``cdclip cams``, evaluation): ``dataset[index]`` with
        ``skip_bad`` substitutes the next good sample, which a training DataLoader needs but which
        would process (and score) that sample twice in a pass over every index. Without
        ``skip_bad`` a bad file raises :class:`DataFileError` as ``dataset[index]`` does.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        index %= len(self)
        if not self.skip_bad:
            return self[index]
        if index in self._bad_indices:
            return None
        try:
            sample = self.load(index)
        except DataFileError as err:
            self._record_bad(index, err, stacklevel=2)
            return None
        return self.transform(sample) if self.transform is not None else sample

    def _record_bad(self, index: int, err: DataFileError, stacklevel: int) -> None:
        self._bad_indices.add(index)
        self.skipped.append(Skipped(self.names[index], err.path, err.reason))
        warnings.warn(f"skip_bad: skipping {self.names[index]} ({err})", RuntimeWarning, stacklevel=stacklevel + 1)

    def _load_skipping(self, index: int) -> Sample:
        for step in range(len(self)):
            current = (index + step) % len(self)
            if current in self._bad_indices:
                continue
            try:
                return self.load(current)
            except DataFileError as err:
                self._record_bad(current, err, stacklevel=3)
        raise DataFileError(Path(self.names[index]), "every sample of the dataset failed to load")

    @staticmethod
    def _labels_tensor(vector: np.ndarray | Iterable[float]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(vector, dtype=np.float32)).clone()
