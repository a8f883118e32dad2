"""VOCSegmentation on the real VOC samples: items equal their files, labels come from label files."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from cdclip.data import VOCSegmentation
from cdclip.data._io import DataFileError, MissingFilesError, read_split
from cdclip.data.classnames import VOC_CLASSES
from cdclip.data.transforms import train_transform


def _pil_image(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def _pil_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def _copy_voc(voc_root: Path, dest: Path, ids: list[str], labels: dict | None = None, split: str = "train") -> Path:
    """A small VOC2012 folder in ``dest`` with the given ids (and optionally edited labels)."""
    root = dest / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in ids:
        shutil.copy(voc_root / "JPEGImages" / f"{name}.jpg", root / "JPEGImages")
        shutil.copy(voc_root / "SegmentationClassAug" / f"{name}.png", root / "SegmentationClassAug")
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    if labels is None:
        full = np.load(voc_root / "cls_labels_onehot.npy", allow_pickle=True).item()
        labels = {name: full[name] for name in ids}
    np.save(root / "cls_labels_onehot.npy", labels)
    return root


@pytest.mark.parametrize("split", ["train", "train_aug", "val"])
def test_items_match_their_files(voc_root, split):
    ds = VOCSegmentation(voc_root, split)
    ids = [line.strip() for line in (voc_root / "ImageSets/Segmentation" / f"{split}.txt").read_text().split()]
    label_table = np.load(voc_root / "cls_labels_onehot.npy", allow_pickle=True).item()
    assert ds.names == ids and len(ds) == len(ids)
    for i, name in enumerate(ids):
        item = ds[i]
        assert set(item) == {"image", "mask", "labels", "name"}
        assert item["name"] == name
        assert isinstance(item["image"], tv_tensors.Image) and item["image"].dtype == torch.uint8
        assert np.array_equal(item["image"].numpy(), _pil_image(voc_root / "JPEGImages" / f"{name}.jpg"))
        assert isinstance(item["mask"], tv_tensors.Mask) and item["mask"].dtype == torch.int64
        assert np.array_equal(item["mask"].numpy(), _pil_mask(voc_root / "SegmentationClassAug" / f"{name}.png"))
        assert item["labels"].dtype == torch.float32 and item["labels"].shape == (20,)
        assert np.array_equal(item["labels"].numpy(), label_table[name])


def test_label_file_wins_over_mask(voc_root, tmp_path):
    name = "2008_002176"  # mask holds person only
    full = np.load(voc_root / "cls_labels_onehot.npy", allow_pickle=True).item()
    edited = full[name].copy()
    edited[VOC_CLASSES.index("dog")] = 1.0  # the label file names a class the mask lacks
    root = _copy_voc(voc_root, tmp_path, [name], labels={name: edited})
    item = VOCSegmentation(root, "train")[0]
    mask_classes = set(np.unique(item["mask"].numpy())) - {0, 255}
    assert VOC_CLASSES.index("dog") + 1 not in mask_classes
    assert np.array_equal(item["labels"].numpy(), edited)
    assert item["labels"][VOC_CLASSES.index("dog")] == 1.0
    assert item["labels"][VOC_CLASSES.index("person")] == 1.0


def test_explicit_label_file_argument(voc_root, tmp_path):
    name = "2011_000003"
    other = tmp_path / "other_labels.npy"
    vector = np.zeros(20, dtype=np.float32)
    vector[VOC_CLASSES.index("cat")] = 1.0
    np.save(other, {name: vector})
    root = _copy_voc(voc_root, tmp_path, [name])
    item = VOCSegmentation(root, "train", label_file=other)[0]
    assert np.array_equal(item["labels"].numpy(), vector)


def test_labels_from_xml_annotations(voc_root, tmp_path):
    name = "2011_000003"
    root = _copy_voc(voc_root, tmp_path, [name])
    (root / "cls_labels_onehot.npy").unlink()
    (root / "Annotations").mkdir()
    xml = (
        "<annotation><filename>x.jpg</filename>"
        "<object><name>person</name><difficult>0</difficult><part><name>head</name></part></object>"
        "<object><name>boat</name><difficult>1</difficult></object>"
        "<object><name>sheep</name></object></annotation>"
    )
    (root / "Annotations" / f"{name}.xml").write_text(xml)
    item = VOCSegmentation(root, "train")[0]
    expected = {VOC_CLASSES.index(c) for c in ("person", "boat", "sheep")}
    assert set(np.flatnonzero(item["labels"].numpy())) == expected  # sheep is not in the mask
    (root / "Annotations" / f"{name}.xml").write_text(xml.replace("sheep", "unicorn"))
    with pytest.raises(DataFileError, match=re.escape(f"{name}.xml")):
        VOCSegmentation(root, "train")[0]


def test_official_mask_dir(voc_root):
    ds = VOCSegmentation(voc_root, "val", mask_dir="SegmentationClass")
    for i, name in enumerate(ds.names):
        assert np.array_equal(ds[i]["mask"].numpy(), _pil_mask(voc_root / "SegmentationClass" / f"{name}.png"))


def test_two_column_split_lines(voc_root, tmp_path):
    ids = ["2011_000003", "2007_004189"]
    root = _copy_voc(voc_root, tmp_path, ids)
    lines = [f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png" for n in ids]
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(lines) + "\n\n")
    assert read_split(root / "ImageSets/Segmentation/train.txt") == ids
    assert VOCSegmentation(root, "train").names == ids
    assert VOCSegmentation(root, root / "ImageSets/Segmentation/train.txt").names == ids


def test_missing_images_reported_all_at_once(voc_root, tmp_path):
    ids = ["2011_000003", "2007_004189"]
    root = _copy_voc(voc_root, tmp_path, ids)
    ghosts = ["2099_000001", "2099_000002", "2099_000003"]
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids + ghosts) + "\n")
    with pytest.raises(MissingFilesError) as info:
        VOCSegmentation(root, "train")
    message = str(info.value)
    assert "3 image(s) missing" in message
    assert all(g in message for g in ghosts)
    assert [name for name, _ in info.value.missing] == ghosts
    with pytest.warns(RuntimeWarning, match="skip"):
        ds = VOCSegmentation(root, "train", skip_bad=True)
    assert ds.names == ids and ds.num_skipped == 3
    assert {s.name for s in ds.skipped} == set(ghosts)


def test_missing_labels_reported(voc_root, tmp_path):
    ids = ["2011_000003", "2007_004189"]
    root = _copy_voc(voc_root, tmp_path, ids, labels={"2011_000003": np.zeros(20, np.float32)})
    with pytest.raises(MissingFilesError, match="2007_004189"):
        VOCSegmentation(root, "train")


def test_corrupt_image_and_mask_name_the_file(voc_root, tmp_path):
    ids = ["2011_000003", "2007_004189", "2008_002176"]
    root = _copy_voc(voc_root, tmp_path, ids)
    (root / "JPEGImages" / "2011_000003.jpg").write_bytes(b"not a jpeg at all")
    (root / "SegmentationClassAug" / "2007_004189.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = VOCSegmentation(root, "train")
    with pytest.raises(DataFileError, match=re.escape("2011_000003.jpg")):
        ds[0]
    with pytest.raises(DataFileError, match=re.escape("2007_004189.png")):
        ds[1]
    assert ds[2]["name"] == "2008_002176"
    lenient = VOCSegmentation(root, "train", skip_bad=True)
    with pytest.warns(RuntimeWarning):
        item = lenient[0]
    assert item["name"] == "2008_002176"  # both bad samples skipped, the next good one served
    assert lenient.num_skipped == 2
    assert {s.path.name for s in lenient.skipped} == {"2011_000003.jpg", "2007_004189.png"}


def test_test_split_has_no_mask_and_unknown_split_lists_choices(voc_root, tmp_path):
    root = _copy_voc(voc_root, tmp_path, ["2011_000025"], split="test")
    (root / "cls_labels_onehot.npy").unlink()
    item = VOCSegmentation(root, "test")[0]
    assert set(item) == {"image", "name"}
    with pytest.raises(FileNotFoundError, match="available: test"):
        VOCSegmentation(root, "val")
    (root / "ImageSets/Segmentation/train.txt").write_text("2011_000025\n")
    with pytest.raises(FileNotFoundError, match="label_file"):
        VOCSegmentation(root, "train")


def test_grey_jpeg_becomes_rgb(voc_root, tmp_path):
    root = _copy_voc(voc_root, tmp_path, ["2011_000003"])
    path = root / "JPEGImages" / "2011_000003.jpg"
    Image.open(path).convert("L").save(path, quality=95)
    item = VOCSegmentation(root, "train")[0]
    assert item["image"].shape[0] == 3
    assert np.array_equal(item["image"].numpy(), _pil_image(path))


def test_dataloader_batches_with_train_transform(voc_root):
    ds = VOCSegmentation(voc_root, "train_aug", transform=train_transform(crop_size=64))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False)))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 64, 64) and batch["mask"].dtype == torch.int64
    assert batch["labels"].shape == (3, 20)
    assert list(batch["name"]) == ds.names[:3]
