"""One image reader for every dataset and command: 16-bit, EXIF orientation, odd modes, bad files."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cdclip.data import ImageFolder
from cdclip.data._io import DataFileError, read_image

BACKENDS = ("auto", "pil")


def _rgb(h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _hwc(image: torch.Tensor) -> np.ndarray:
    assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
    return image.permute(1, 2, 0).numpy()


def _png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG (grey, grey + alpha, RGB or RGBA by channel count) written by hand: PIL cannot."""
    h, w, c = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def _grey16(h: int = 10, w: int = 14) -> np.ndarray:
    values = np.linspace(0, 65535, h * w).astype(np.uint16).reshape(h, w)
    values[0, :3] = (255, 256, 65535)  # 8-bit values would be clipped to white by convert("RGB")
    return values


# ------------------------------------------------------------------------------------ 16 bit
@pytest.mark.parametrize("backend", BACKENDS)
def test_16bit_grey_png_is_scaled_not_wrapped_or_clipped(tmp_path, backend):
    values = _grey16()
    path = tmp_path / "g16.png"
    Image.frombytes("I;16", (values.shape[1], values.shape[0]), values.astype("<u2").tobytes()).save(path)
    with Image.open(path) as pil:
        assert pil.mode == "I;16"
    got = _hwc(read_image(path, backend=backend))
    expected = (values >> 8).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(got[:, :, c], expected)
    assert got[0, :3, 0].tolist() == [0, 1, 255]


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_colour_pngs_match_between_decoders(tmp_path, channels):
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 65536, (9, 13, channels), dtype=np.uint16)
    path = _png16(tmp_path / f"c{channels}.png", pixels)
    auto, pil = (_hwc(read_image(path, backend=b)) for b in BACKENDS)
    np.testing.assert_array_equal(auto, pil)
    colour = pixels[:, :, :1].repeat(3, axis=2) if channels == 2 else pixels[:, :, :3]
    np.testing.assert_array_equal(auto, (colour >> 8).astype(np.uint8))


# ------------------------------------------------------------------------------------ EXIF
def _exif_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path, backend, orientation):
    path = _exif_jpeg(tmp_path / f"o{orientation}.jpg", _rgb(12, 20), orientation)
    got = read_image(path, backend=backend)
    with Image.open(path) as pil:
        expected = np.asarray(ImageOps.exif_transpose(pil).convert("RGB"))
        stored = np.asarray(pil.convert("RGB"))
    assert tuple(got.shape[-2:]) == expected.shape[:2] == ((20, 12) if orientation in (6, 8) else (12, 20))
    np.testing.assert_array_equal(_hwc(got), expected)
    # exif=False gives the stored pixels
    np.testing.assert_array_equal(_hwc(read_image(path, backend=backend, exif=False)), stored)


def test_exif_orientation_6_on_a_500x333_photo_gives_a_333x500_image(tmp_path):
    path = _exif_jpeg(tmp_path / "portrait.jpg", _rgb(333, 500), 6)
    assert tuple(read_image(path).shape) == (3, 500, 333)


# ------------------------------------------------------------------------------------ other modes
@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("L", ".png"), ("LA", ".png"), ("P", ".png"), ("RGBA", ".png"), ("CMYK", ".jpg"), ("L", ".jpg"), ("1", ".png")],
)
def test_other_modes_become_the_same_rgb_with_both_decoders(tmp_path, mode, suffix):
    rgba = Image.fromarray(_rgb()).convert("RGBA")
    rgba.putalpha(100)
    pil = rgba.convert(mode) if mode != "P" else rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    path = tmp_path / f"{mode}{suffix}"
    pil.save(path)
    auto, via_pil = (_hwc(read_image(path, backend=b)) for b in BACKENDS)
    with Image.open(path) as reread:
        expected = np.asarray(reread.convert("RGB"))  # alpha dropped, the stored colour kept
    np.testing.assert_array_equal(via_pil, expected)
    np.testing.assert_array_equal(auto, expected)


def test_32bit_float_images_are_refused_by_name(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.zeros((4, 5), dtype=np.float32)).save(path)
    with pytest.raises(DataFileError, match=r"float\.tif") as info:
        read_image(path)
    assert "mode 'F'" in str(info.value)


# ------------------------------------------------------------------------------------ bad files
def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "b_good.jpg"
    Image.fromarray(_rgb()).save(good, quality=95)
    data = good.read_bytes()
    (folder / "a_empty.jpg").write_bytes(b"")
    (folder / "c_truncated.jpg").write_bytes(data[: len(data) // 2])
    png = folder / "d_cut.png"
    Image.fromarray(_rgb(40, 40)).save(png)
    png.write_bytes(png.read_bytes()[:-30])
    return {p.stem: p for p in folder.iterdir()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_truncated_files_raise_naming_the_file(tmp_path, backend):
    files = _bad_files(tmp_path)
    with pytest.raises(DataFileError, match="0 bytes") as info:
        read_image(files["a_empty"], backend=backend)
    assert info.value.path == files["a_empty"]
    for stem in ("c_truncated", "d_cut"):
        with pytest.raises(DataFileError, match="truncated") as info:
            read_image(files[stem], backend=backend)
        assert info.value.path == files[stem]
    with pytest.raises(DataFileError, match="not found"):
        read_image(tmp_path / "missing.jpg", backend=backend)


# ------------------------------------------------------------------------------------ ImageFolder
def test_image_folder_items_and_names(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "x.jpg")
    _exif_jpeg(tmp_path / "y.JPG", _rgb(12, 20), 6)
    Image.fromarray(_rgb()).save(tmp_path / "x.png")  # same stem as x.jpg
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.jpg").mkdir()  # a folder with an image suffix is not an image
    ds = ImageFolder(tmp_path, ("cat", "dog"))
    assert ds.names == ["x.jpg", "x.png", "y"] and len(ds) == 3
    item = ds[2]
    assert set(item) == {"image", "labels", "name"} and item["name"] == "y"
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (3, 20, 12)
    assert item["labels"].dtype == torch.float32 and item["labels"].tolist() == [1.0, 1.0]
    assert ds.path_of("y") == tmp_path / "y.JPG"
    with pytest.raises(FileNotFoundError, match="root"):
        ImageFolder(tmp_path / "nope", ("cat",))
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path / "sub.jpg", ("cat",))
    with pytest.raises(ValueError, match="class_names"):
        ImageFolder(tmp_path, ())


def test_image_folder_skips_and_counts_bad_files(tmp_path):
    _bad_files(tmp_path)
    ds = ImageFolder(tmp_path, ("cat",))  # skip_bad=True by default for a folder
    assert ds.skip_bad and len(ds) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = [ds.try_get(i) for i in range(len(ds))]
        assert [g["name"] if g is not None else None for g in got] == [None, "b_good", None, None]
        assert ds.num_skipped == 3 and [s.name for s in ds.skipped] == ["a_empty", "c_truncated", "d_cut"]
        assert ds.try_get(0) is None and ds.num_skipped == 3  # recorded once
        assert ds[2]["name"] == "b_good"  # indexing substitutes the next good sample (DataLoader)
    strict = ImageFolder(tmp_path, ("cat",), skip_bad=False)
    with pytest.raises(DataFileError, match="a_empty"):
        strict.try_get(0)
    with pytest.raises(DataFileError, match="c_truncated"):
        strict[2]


def test_try_get_on_voc_without_skip_bad_is_plain_indexing(voc_root):
    from cdclip.data.voc import VOCSegmentation

    ds = VOCSegmentation(voc_root, "val")
    assert ds.try_get(0)["name"] == ds[0]["name"] == ds.names[0]
    with pytest.raises(IndexError):
        ds.try_get(len(ds))


# ------------------------------------------------------------------------------------ cdclip cams --images
@pytest.fixture
def tiny_backbone():
    from oracle_backbone import tiny_openclip_backbone

    from cdclip.registry import registry

    registry.register("tinyclip-io", lambda name, **kw: tiny_openclip_backbone(image_size=64, layers=1),
                      kind="backbone", prefix=True, override=True)  # fmt: skip
    yield "tinyclip-io:any"
    registry.unregister("tinyclip-io")


def test_cams_images_reads_16bit_and_exif_like_the_datasets(tmp_path, tiny_backbone):
    from cdclip.cli import main
    from cdclip.data.palette import load_label_png

    folder = tmp_path / "imgs"
    folder.mkdir()
    values = _grey16(24, 40)
    Image.frombytes("I;16", (40, 24), values.astype("<u2").tobytes()).save(folder / "deep.png")
    _exif_jpeg(folder / "turned.jpg", _rgb(24, 40), 6)
    out = tmp_path / "out"
    argv = ["cams", "--images", str(folder), "--classes", "cat,dog", "--out", str(out), "--backbone", tiny_backbone,
            "--long-side", "32", "--par-iters", "0", "--refine", "none", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert load_label_png(out / "pseudo" / "turned.png").shape == (40, 24)  # portrait, as the photo is seen
    assert load_label_png(out / "pseudo" / "deep.png").shape == (24, 40)
    with Image.open(out / "overlay" / "deep.png") as overlay:
        left = np.asarray(overlay.convert("RGB"))[:, :40].astype(int)
    # the overlay blends the label colours with the image at 50%: a 16-bit black-to-white ramp
    # that was wrapped (uint16 -> uint8) or clipped would not show the ramp's dark half
    grey = (values >> 8).astype(int)
    assert left[-1, -1].mean() > 100 and left[0, 3].mean() < left[-1, -1].mean()
    assert grey[0, 3] < grey[-1, -1]
