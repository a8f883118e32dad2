"""Super-class groupings: built-in tables, the COCO annotation file as oracle, validation of user mappings."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cdclip.data.classnames import COCO_CLASSES, VOC_CLASSES
from cdclip.data.superclasses import (
    COCO_SUPERCATEGORIES,
    SuperClassGrouping,
    coco_supercategories,
    superclass_grouping,
)

VOC_GROUPS = {
    "person": {"person"},
    "animal": {"bird", "cat", "cow", "dog", "horse", "sheep"},
    "vehicle": {"aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"},
    "indoor": {"bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"},
}


def test_voc_grouping_matches_the_design_table() -> None:
    g = superclass_grouping("voc")
    assert g.names == ("background", "person", "animal", "vehicle", "indoor")
    assert g.background == 0 and g.num_superclasses == 5 and g.num_classes == 20
    assert g.class_names == VOC_CLASSES
    assert g.class_to_super.dtype == torch.int64 and g.class_to_super.shape == (20,)
    for name, members in VOC_GROUPS.items():
        assert set(g.members(name)) == members
    # every class exactly once, none in background
    membership = g.membership()
    assert membership.shape == (5, 20)
    assert membership.sum(0).tolist() == [1] * 20 and membership[0].sum() == 0


def test_builtin_coco_table_equals_the_annotation_file(coco_root) -> None:
    """Outside oracle: the real instances JSON's supercategory fields."""
    path = coco_root / "annotations" / "instances_val2017.json"
    with open(path) as handle:
        categories = json.load(handle)["categories"]
    from_file = {c["name"]: c["supercategory"] for c in categories}
    builtin = {c: s for s, members in COCO_SUPERCATEGORIES.items() for c in members}
    assert builtin == from_file
    assert len(COCO_SUPERCATEGORIES) == 12
    assert coco_supercategories(path) == COCO_SUPERCATEGORIES

    g_builtin = superclass_grouping("coco")
    g_file = superclass_grouping("coco", annotation_file=path)
    assert g_builtin == g_file and hash(g_builtin) == hash(g_file)
    assert g_builtin.num_superclasses == 13 and g_builtin.class_names == COCO_CLASSES
    assert g_builtin.to_mapping()["dog"] == "animal" and g_builtin.to_mapping()["tv"] == "electronic"


def test_coco_annotation_file_without_categories_is_an_error(tmp_path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="categories"):
        superclass_grouping("coco", annotation_file=bad)


def test_identity_and_fg_groupings() -> None:
    ident = superclass_grouping("identity", VOC_CLASSES)
    assert ident.names == ("background", *VOC_CLASSES)
    assert ident.class_to_super.tolist() == list(range(1, 21))
    fg = superclass_grouping("fg", 7)
    assert fg.names == ("background", "foreground") and fg.class_to_super.tolist() == [1] * 7
    with pytest.raises(ValueError, match="needs class_names"):
        superclass_grouping("identity")


def test_builtin_tables_match_names_spelling_insensitively() -> None:
    friendly = [c.replace("diningtable", "dining table").replace("pottedplant", "Potted_Plant") for c in VOC_CLASSES]
    g = superclass_grouping("voc", friendly)
    assert g.class_names == tuple(friendly)
    assert torch.equal(g.class_to_super, superclass_grouping("voc").class_to_super)
    # a subset keeps only the used super-classes
    sub = superclass_grouping("voc", ["cat", "dog", "car"])
    assert sub.names == ("background", "animal", "vehicle") and sub.class_to_super.tolist() == [1, 1, 2]


def test_builtin_table_missing_class_is_named() -> None:
    with pytest.raises(ValueError, match="unicorn"):
        superclass_grouping("voc", ["cat", "unicorn"])
    with pytest.raises(ValueError, match="20 classes"):
        superclass_grouping("voc", 21)


def test_user_mappings_both_forms() -> None:
    classes = ["car", "cat", "dog"]
    a = superclass_grouping({"car": "vehicle", "cat": "animal", "dog": "animal"}, classes)
    b = superclass_grouping({"vehicle": ["car"], "animal": ["cat", "dog"]}, classes)
    assert a.to_mapping() == b.to_mapping() == {"car": "vehicle", "cat": "animal", "dog": "animal"}
    assert a.class_to_super.tolist() == [1, 2, 2] and b.class_to_super.tolist() == [1, 2, 2]


def test_user_mapping_errors_name_the_classes() -> None:
    classes = ["car", "cat", "dog", "cow"]
    with pytest.raises(ValueError, match=r"not mapped: \['cow'\]"):
        superclass_grouping({"vehicle": ["car"], "animal": ["cat", "dog"]}, classes)
    with pytest.raises(ValueError, match=r"more than once: 'dog'"):
        superclass_grouping({"vehicle": ["car", "dog"], "animal": ["cat", "dog", "cow"]}, classes)
    with pytest.raises(ValueError, match="unicorn"):
        superclass_grouping({"vehicle": ["car", "unicorn"], "animal": ["cat", "dog", "cow"]}, classes)
    with pytest.raises(ValueError, match="reserved"):
        superclass_grouping({"background": ["car"], "animal": ["cat", "dog", "cow"]}, classes)
    with pytest.raises(ValueError, match="unknown grouping"):
        superclass_grouping("pascal-parts")
    with pytest.raises(TypeError):
        superclass_grouping(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicated class names"):
        superclass_grouping("identity", ["cat", "cat"])


def test_map_labels_handles_background_ignore_and_unknown_ids() -> None:
    g = superclass_grouping("voc")
    person, dog = VOC_CLASSES.index("person") + 1, VOC_CLASSES.index("dog") + 1
    labels = torch.tensor([[0, person, dog, 255, 21, -3]])
    assert g.map_labels(labels).tolist() == [[0, 1, 2, 255, 255, 255]]
    assert g.label_to_super().tolist()[:2] == [0, g.class_to_super[0].item()]
    with pytest.raises(TypeError, match="integer"):
        g.map_labels(labels.float())


def test_grouping_is_frozen_and_validated() -> None:
    g = superclass_grouping("voc")
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.background = 1  # type: ignore[misc]
    assert superclass_grouping(g) is g
    with pytest.raises(ValueError, match="class_names"):
        superclass_grouping(g, ["cat"])
    with pytest.raises(ValueError, match="background super-class"):
        SuperClassGrouping(("background", "a"), ("x", "y"), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"shape \(C,\)"):
        SuperClassGrouping(("background", "a"), ("x", "y"), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"0\.\.1"):
        SuperClassGrouping(("background", "a"), ("x",), torch.tensor([2]))
