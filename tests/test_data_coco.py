"""COCOSegmentation on the real COCO samples, against an independent pycocotools computation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from cdclip.cli import main as cli_main
from cdclip.data import COCOSegmentation
from cdclip.data._io import DataFileError, MissingFilesError
from cdclip.data.classnames import COCO_CATEGORY_IDS
from cdclip.data.palette import load_label_png, save_label_png

# the oracle's pycocotools calls warn under NumPy 2 (their Cython objects predate ``copy=``)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco_api(coco_root) -> COCO:
    return COCO(str(coco_root / "annotations" / "instances_val2017.json"))


def _oracle_mask(api: COCO, image_id: int) -> np.ndarray:
    """Per pixel: the smallest non-crowd instance covering it (ties: the later one), else 255 under crowd."""
    info = api.loadImgs(image_id)[0]
    anns = api.loadAnns(api.getAnnIds(imgIds=image_id, iscrowd=None))
    index = {cid: i + 1 for i, cid in enumerate(sorted(c["id"] for c in api.loadCats(api.getCatIds())))}
    height, width = info["height"], info["width"]
    best_area = np.full((height, width), np.inf)
    best_order = np.full((height, width), -1)
    out = np.zeros((height, width), dtype=np.int64)
    crowd = np.zeros((height, width), dtype=bool)
    for order, ann in enumerate(anns):
        binary = api.annToMask(ann).astype(bool)
        if ann["iscrowd"]:
            crowd |= binary
            continue
        area = binary.sum()
        better = binary & ((area < best_area) | ((area == best_area) & (order > best_order)))
        out[better] = index[ann["category_id"]]
        best_area[better] = area
        best_order[better] = order
    out[crowd & np.isinf(best_area)] = 255
    return out


def _copy_coco(coco_root: Path, dest: Path, data: dict | None = None) -> Path:
    root = dest / "coco"
    shutil.copytree(coco_root / "val2017", root / "val2017")
    (root / "annotations").mkdir(parents=True)
    if data is None:
        data = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_items_match_files_and_pycocotools(coco_root, coco_api):
    ds = COCOSegmentation(coco_root, "val2017")
    assert len(ds) == len(coco_api.getImgIds()) == 4
    for i in range(len(ds)):
        item = ds[i]
        info = next(im for im in coco_api.dataset["images"] if Path(im["file_name"]).stem == item["name"])
        with Image.open(coco_root / "val2017" / info["file_name"]) as pil:
            expected_image = np.asarray(pil.convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(item["image"].numpy(), expected_image)
        assert item["mask"].dtype == torch.int64
        assert np.array_equal(item["mask"].numpy(), _oracle_mask(coco_api, info["id"]))
        present = {a["category_id"] for a in coco_api.loadAnns(coco_api.getAnnIds(imgIds=info["id"], iscrowd=False))}
        expected = np.array([float(cid in present) for cid in COCO_CATEGORY_IDS], dtype=np.float32)
        assert item["labels"].dtype == torch.float32 and np.array_equal(item["labels"].numpy(), expected)


def test_crowd_region_is_void(coco_root, coco_api):
    ds = COCOSegmentation(coco_root, "val2017")
    item = ds[ds.names.index("000000034417")]  # the sample with a crowd annotation
    assert (item["mask"] == 255).any()


def test_crowd_only_category_is_not_a_label(coco_root, tmp_path):
    data = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    crowd["category_id"] = 90  # toothbrush: no non-crowd toothbrush anywhere
    root = _copy_coco(coco_root, tmp_path, data)
    ds = COCOSegmentation(root, "val2017")
    item = ds[ds.names.index(f"{crowd['image_id']:012d}")]
    assert item["labels"][COCO_CATEGORY_IDS.index(90)] == 0.0
    assert (item["mask"] == 255).any() and not (item["mask"] == 80).any()


def test_small_object_on_large_one_stays_visible(coco_root, tmp_path):
    data = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    image = data["images"][0]
    cup = {"id": 1, "image_id": image["id"], "category_id": 47, "iscrowd": 0, "area": 100.0,
           "bbox": [20, 20, 10, 10], "segmentation": [[20, 20, 30, 20, 30, 30, 20, 30]]}
    table = {"id": 2, "image_id": image["id"], "category_id": 67, "iscrowd": 0, "area": 3600.0,
             "bbox": [0, 0, 60, 60], "segmentation": [[0, 0, 60, 0, 60, 60, 0, 60]]}
    data["annotations"] = [cup, table]  # the table comes later in the file but is larger
    root = _copy_coco(coco_root, tmp_path, data)
    item = COCOSegmentation(root, "val2017")[COCOSegmentation(root, "val2017").names.index(Path(image["file_name"]).stem)]
    mask = item["mask"].numpy()
    assert mask[25, 25] == COCO_CATEGORY_IDS.index(47) + 1  # cup
    assert mask[5, 5] == COCO_CATEGORY_IDS.index(67) + 1  # dining table
    assert mask[100, 100] == 0


def test_coco_masks_command_and_premade_masks(coco_root, coco_api, tmp_path, capsys):
    root = _copy_coco(coco_root, tmp_path)
    assert cli_main(["coco-masks", "--root", str(root), "--split", "val2017", "--quiet"]) == 0
    out_dir = root / "SegmentationClass" / "val2017"
    files = sorted(out_dir.glob("*.png"))
    assert len(files) == 4
    for path in files:
        image_id = int(path.stem)
        assert np.array_equal(load_label_png(path), _oracle_mask(coco_api, image_id))
    assert "wrote 4" in capsys.readouterr().out
    # second run keeps the existing files; --overwrite rewrites them
    save_label_png(files[0], np.zeros((2, 2), dtype=np.int64), palette="coco")
    assert cli_main(["coco-masks", "--root", str(root), "--split", "val2017", "--quiet"]) == 0
    assert "kept 4" in capsys.readouterr().out and load_label_png(files[0]).shape == (2, 2)
    assert cli_main(["coco-masks", "--root", str(root), "--split", "val2017", "--quiet", "--overwrite"]) == 0
    assert load_label_png(files[0]).shape != (2, 2)
    # the dataset now reads the pre-made masks, which equal the rasterised ones
    premade = COCOSegmentation(root, "val2017")
    assert premade.mask_dir == out_dir
    rasterised = COCOSegmentation(coco_root, "val2017")
    for i in range(len(premade)):
        assert torch.equal(premade[i]["mask"], rasterised[i]["mask"])


def test_premade_masks_with_category_ids(coco_root, coco_api, tmp_path):
    root = _copy_coco(coco_root, tmp_path)
    out_dir = root / "SegmentationClass" / "val2017"
    reference = COCOSegmentation(coco_root, "val2017")
    for i, name in enumerate(reference.names):
        index_mask = reference[i]["mask"].numpy()
        raw = np.where((index_mask > 0) & (index_mask < 255), np.array((0, *COCO_CATEGORY_IDS))[index_mask % 255], index_mask)
        save_label_png(out_dir / f"{name}.png", raw)
    with pytest.raises(DataFileError, match="category_id"):
        COCOSegmentation(root, "val2017")[reference.names.index("000000000139")]  # holds ids above 80
    ds = COCOSegmentation(root, "val2017", mask_values="category_id")
    for i in range(len(ds)):
        assert torch.equal(ds[i]["mask"], reference[i]["mask"])


def test_missing_images_reported_at_once_and_skip_bad(coco_root, tmp_path):
    root = _copy_coco(coco_root, tmp_path)
    removed = sorted((root / "val2017").glob("*.jpg"))[:2]
    for path in removed:
        path.unlink()
    with pytest.raises(MissingFilesError) as info:
        COCOSegmentation(root, "val2017")
    assert all(p.name in str(info.value) for p in removed)
    with pytest.warns(RuntimeWarning):
        ds = COCOSegmentation(root, "val2017", skip_bad=True)
    assert len(ds) == 2 and ds.num_skipped == 2


def test_split_file_label_file_and_drop_unlabelled(coco_root, tmp_path):
    split_file = tmp_path / "subset.txt"
    split_file.write_text("000000011813\n139\n")
    ds = COCOSegmentation(coco_root, "val2017", split_file=split_file)
    assert ds.names == ["000000000139", "000000011813"]
    labels = {"000000000139": np.eye(80, dtype=np.float32)[3], "000000011813": np.eye(80, dtype=np.float32)[5]}
    np.save(tmp_path / "labels.npy", labels)
    ds = COCOSegmentation(coco_root, "val2017", split_file=split_file, label_file=tmp_path / "labels.npy")
    assert np.array_equal(ds[0]["labels"].numpy(), labels["000000000139"])
    data = json.loads((coco_root / "annotations" / "instances_val2017.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 11813]
    root = _copy_coco(coco_root, tmp_path / "x", data)
    assert "000000011813" not in COCOSegmentation(root, "val2017", drop_unlabelled=True).names
    assert "000000011813" in COCOSegmentation(root, "val2017").names
