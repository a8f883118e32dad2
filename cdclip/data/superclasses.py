"""Super-class groupings of the target classes (SBE, docs/method.md, SBE step 1).

SBE looks for boundaries between *super-classes* (person / animal / vehicle / indoor on VOC, the 12
official supercategories on COCO) rather than between individual classes: DINO separates a person
from a dog reliably, a cat from a dog much less so. A grouping is a small frozen dataclass:

* ``names`` — super-class names; index ``background`` (always 0 here) is the background;
* ``class_names`` — the ``C`` foreground class names, in label order (mask value ``k`` is class
  ``k - 1``);
* ``class_to_super`` — ``(C,)`` int64 tensor, the super-class index of every foreground class.

Build one with :func:`superclass_grouping`::

    superclass_grouping("voc")                         # person / animal / vehicle / indoor
    superclass_grouping("coco", annotation_file=path)  # supercategories read from the JSON
    superclass_grouping("identity", VOC_CLASSES)       # every class alone
    superclass_grouping("fg", 20)                      # all foreground as one super-class
    superclass_grouping({"animal": ["cat", "dog"], "other": ["car"]}, ["car", "cat", "dog"])

User mappings are validated: every class must be mapped exactly once, and the error names the
missing, duplicated and unknown classes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor

from cdclip.data.classnames import COCO_CLASSES, VOC_CLASSES

__all__ = [
    "BUILTIN_GROUPINGS",
    "COCO_SUPERCATEGORIES",
    "VOC_SUPERCLASSES",
    "SuperClassGrouping",
    "coco_supercategories",
    "superclass_grouping",
]

BACKGROUND = "background"

# PASCAL VOC: the four groups used by SBE (docs/method.md, SBE), in this order after background.
VOC_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "person": ("person",),
    "animal": ("bird", "cat", "cow", "dog", "horse", "sheep"),
    "vehicle": ("aeroplane", "bicycle", "boat", "bus", "car", "motorbike", "train"),
    "indoor": ("bottle", "chair", "diningtable", "pottedplant", "sofa", "tvmonitor"),
}

# MS COCO: the official ``supercategory`` field of instances_*.json, in category-id order of first
# appearance. Used when no annotation file is given (tests check it against a real file).
COCO_SUPERCATEGORIES: dict[str, tuple[str, ...]] = {
    "person": ("person",),
    "vehicle": ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"),
    "outdoor": ("traffic light", "fire hydrant", "stop sign", "parking meter", "bench"),
    "animal": ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"),
    "accessory": ("backpack", "umbrella", "handbag", "tie", "suitcase"),
    "sports": (
        "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
        "skateboard", "surfboard", "tennis racket",
    ),
    "kitchen": ("bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl"),
    "food": ("banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake"),
    "furniture": ("chair", "couch", "potted plant", "bed", "dining table", "toilet"),
    "electronic": ("tv", "laptop", "mouse", "remote", "keyboard", "cell phone"),
    "appliance": ("microwave", "oven", "toaster", "sink", "refrigerator"),
    "indoor": ("book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"),
}  # fmt: skip

BUILTIN_GROUPINGS: tuple[str, ...] = ("voc", "coco", "identity", "fg")

# class -> super-class name, or super-class name -> its classes
GroupingSpec = Union[str, "SuperClassGrouping", Mapping[str, str], Mapping[str, Sequence[str]]]


def _normalise(name: str) -> str:
    """Spelling-insensitive key: ``"Dining table"``, ``"dining_table"`` and ``"diningtable"`` match."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


@dataclass(frozen=True, eq=False)
class SuperClassGrouping:
    """A partition of the ``C`` foreground classes into super-classes, plus background.

    Args:
        names: super-class names; ``names[background]`` is the background super-class.
        class_names: the foreground class names, in label order.
        class_to_super: super-class index of every foreground class (never ``background``).
        background: index of the background super-class.

    Shape:
        - class_to_super: (C,)
    """

    names: tuple[str, ...]
    class_names: tuple[str, ...]
    class_to_super: Tensor = field(repr=False)
    background: int = 0

    def __post_init__(self) -> None:
        names, class_names = tuple(self.names), tuple(self.class_names)
        index = torch.as_tensor(self.class_to_super).detach().to(device="cpu", dtype=torch.int64).clone()
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "class_names", class_names)
        object.__setattr__(self, "class_to_super", index)
        if len(set(names)) != len(names):
            raise ValueError(f"SuperClassGrouping: names must be unique, got {names}")
        if not 0 <= self.background < len(names):
            raise ValueError(f"SuperClassGrouping: background must index names (0..{len(names) - 1}), got {self.background}")
        if index.shape != (len(class_names),):
            raise ValueError(
                f"SuperClassGrouping: class_to_super must have shape (C,) = ({len(class_names)},), got {tuple(index.shape)}"
            )
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(names)):
            raise ValueError(f"SuperClassGrouping: class_to_super values must lie in 0..{len(names) - 1}")
        if bool((index == self.background).any()):
            bad = [c for c, s in zip(class_names, index.tolist()) if s == self.background]
            raise ValueError(f"SuperClassGrouping: foreground classes {bad} are mapped to the background super-class")

    # ------------------------------------------------------------------ sizes
    @property
    def num_superclasses(self) -> int:
        """``S``: number of super-classes, background included."""
        return len(self.names)

    @property
    def num_classes(self) -> int:
        """``C``: number of foreground classes."""
        return len(self.class_names)

    # ------------------------------------------------------------------ tensors
    def membership(self, device: torch.device | str | None = None) -> Tensor:
        """``(S, C)`` bool: ``membership[s, c]`` is true when class ``c`` belongs to super-class ``s``.

        Shape:
            - output: (S, C)
        """
        index = self.class_to_super.to(device)
        return torch.arange(self.num_superclasses, device=index.device)[:, None] == index[None, :]

    def label_to_super(self, device: torch.device | str | None = None) -> Tensor:
        """Lookup table from label id (0 = background, ``k`` = class ``k - 1``) to super-class id.

        Shape:
            - output: (C + 1,)
        """
        table = torch.cat([torch.tensor([self.background]), self.class_to_super])
        return table.to(device)

    def map_labels(self, labels: Tensor, ignore_index: int = 255) -> Tensor:
        """Super-class id of every pixel of a label map; ``ignore_index`` and unknown ids map to ``ignore_index``.

        Shape:
            - labels: (...)
            - output: (...)
        """
        if labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"labels: expected an integer label map, got dtype {labels.dtype}")
        table = self.label_to_super(device=labels.device)
        known = (labels >= 0) & (labels <= self.num_classes)
        mapped = table[labels.clamp(0, self.num_classes).long()]
        return torch.where(known, mapped, torch.full_like(mapped, ignore_index))

    # ------------------------------------------------------------------ readable views
    def members(self, superclass: int | str) -> tuple[str, ...]:
        """Names of the foreground classes of one super-class (by index or name)."""
        s = self.names.index(superclass) if isinstance(superclass, str) else int(superclass)
        return tuple(c for c, g in zip(self.class_names, self.class_to_super.tolist()) if g == s)

    def to_mapping(self) -> dict[str, str]:
        """``{class name: super-class name}``."""
        return {c: self.names[g] for c, g in zip(self.class_names, self.class_to_super.tolist())}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SuperClassGrouping):
            return NotImplemented
        return (
            self.names == other.names
            and self.class_names == other.class_names
            and self.background == other.background
            and torch.equal(self.class_to_super, other.class_to_super)
        )

    def __hash__(self) -> int:
        return hash((self.names, self.class_names, self.background, tuple(self.class_to_super.tolist())))


# ---------------------------------------------------------------------- builders
def coco_supercategories(annotation_file: str | os.PathLike[str] | None = None) -> dict[str, tuple[str, ...]]:
    """COCO supercategory → class names, from an ``instances_*.json`` file or the built-in table.

    The file's ``categories`` are read in ascending id order; supercategories keep their order of
    first appearance (person, vehicle, outdoor, ... indoor).
    """
    if annotation_file is None:
        return dict(COCO_SUPERCATEGORIES)
    path = os.fspath(annotation_file)
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    categories = data.get("categories") if isinstance(data, dict) else None
    if not categories:
        raise ValueError(f"annotation_file: {path!r} has no 'categories' list")
    groups: dict[str, list[str]] = {}
    for cat in sorted(categories, key=lambda c: c.get("id", 0)):
        if "supercategory" not in cat or "name" not in cat:
            raise ValueError(f"annotation_file: category {cat!r} in {path!r} lacks 'name' or 'supercategory'")
        groups.setdefault(str(cat["supercategory"]), []).append(str(cat["name"]))
    return {k: tuple(v) for k, v in groups.items()}


def _resolve_class_names(class_names: Sequence[str] | int | None, default: tuple[str, ...] | None, what: str) -> tuple[str, ...]:
    if class_names is None:
        if default is None:
            raise ValueError(f"superclass_grouping: grouping {what!r} needs class_names (a list of names or a class count)")
        return default
    if isinstance(class_names, int):
        if class_names < 1:
            raise ValueError(f"class_names: expected a positive class count, got {class_names}")
        if default is not None:
            if class_names != len(default):
                raise ValueError(
                    f"class_names: grouping {what!r} has {len(default)} classes, got a class count of {class_names}"
                )
            return default
        return tuple(f"class{i}" for i in range(class_names))
    if isinstance(class_names, str):
        raise TypeError("class_names: expected a sequence of class names, got a single str")
    names = tuple(str(c) for c in class_names)
    if not names:
        raise ValueError("class_names: expected at least one class name, got none")
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ValueError(f"class_names: duplicated class names {dupes}")
    return names


def _from_groups(
    groups: Mapping[str, Sequence[str]], class_names: tuple[str, ...], what: str, normalise: bool
) -> SuperClassGrouping:
    """Validate a super-class → classes table against ``class_names`` and build the grouping."""
    key = _normalise if normalise else (lambda s: s)
    position = {key(c): i for i, c in enumerate(class_names)}
    if len(position) != len(class_names):
        raise ValueError(f"class_names: names collide after normalising spelling: {class_names}")
    names = [BACKGROUND]
    index = [-1] * len(class_names)
    seen: dict[int, list[str]] = {}
    unknown: list[str] = []
    for superclass, members in groups.items():
        superclass = str(superclass)
        if superclass == BACKGROUND:
            raise ValueError(f"superclass_grouping: {what}: the name {BACKGROUND!r} is reserved for the background super-class")
        if isinstance(members, str):
            members = (members,)
        if superclass not in names:
            names.append(superclass)
        for member in members:
            i = position.get(key(str(member)))
            if i is None:
                unknown.append(str(member))
                continue
            seen.setdefault(i, []).append(superclass)
            index[i] = names.index(superclass)
    missing = [class_names[i] for i in range(len(class_names)) if i not in seen]
    duplicated = {class_names[i]: groups_ for i, groups_ in seen.items() if len(groups_) > 1}
    problems = []
    if missing:
        problems.append(f"classes not mapped: {missing}")
    if duplicated:
        problems.append("classes mapped more than once: " + ", ".join(f"{c!r} -> {g}" for c, g in duplicated.items()))
    if unknown and not normalise:
        problems.append(f"unknown classes (not in class_names): {unknown}")
    if problems:
        raise ValueError(f"superclass_grouping: invalid {what} mapping: " + "; ".join(problems))
    # built-in tables may list classes the caller dropped: keep only super-classes still used
    used = sorted(set(index))
    kept = [BACKGROUND] + [names[s] for s in used]
    remap = {s: k + 1 for k, s in enumerate(used)}
    return SuperClassGrouping(tuple(kept), class_names, torch.tensor([remap[s] for s in index]), background=0)


def superclass_grouping(
    name_or_mapping: GroupingSpec,
    class_names: Sequence[str] | int | None = None,
    *,
    annotation_file: str | os.PathLike[str] | None = None,
) -> SuperClassGrouping:
    """Build a :class:`SuperClassGrouping`.

    Args:
        name_or_mapping: ``"voc"``, ``"coco"``, ``"identity"``, ``"fg"``, an existing grouping, or a
            user mapping — either ``{class: super-class}`` or ``{super-class: [classes]}``.
            Background is always super-class 0 and the name ``"background"`` is reserved.
        class_names: the foreground class names in label order, or a class count. Defaults to
            :data:`VOC_CLASSES` / :data:`COCO_CLASSES` for ``"voc"`` / ``"coco"``; required otherwise.
            Built-in tables match names spelling-insensitively (``"dining table"`` = ``"diningtable"``).
        annotation_file: for ``"coco"``, an ``instances_*.json`` whose ``supercategory`` fields are
            used instead of the built-in table.

    Raises:
        ValueError: a class is missing, mapped twice, or unknown to a built-in table; the message
            names the classes.

    Shape:
        - output.class_to_super: (C,)
    """
    if isinstance(name_or_mapping, SuperClassGrouping):
        if class_names is not None:
            expected = _resolve_class_names(class_names, None, "grouping")
            if expected != name_or_mapping.class_names:
                raise ValueError(
                    f"class_names: the grouping was built for {name_or_mapping.class_names}, got {expected}"
                )
        return name_or_mapping
    if isinstance(name_or_mapping, str):
        kind = name_or_mapping.lower()
        if kind == "voc":
            names = _resolve_class_names(class_names, VOC_CLASSES, kind)
            return _from_groups(VOC_SUPERCLASSES, names, "VOC", normalise=True)
        if kind == "coco":
            names = _resolve_class_names(class_names, COCO_CLASSES, kind)
            return _from_groups(coco_supercategories(annotation_file), names, "COCO", normalise=True)
        if kind == "identity":
            names = _resolve_class_names(class_names, None, kind)
            return SuperClassGrouping((BACKGROUND, *names), names, torch.arange(1, len(names) + 1))
        if kind in ("fg", "foreground"):
            names = _resolve_class_names(class_names, None, kind)
            return SuperClassGrouping((BACKGROUND, "foreground"), names, torch.ones(len(names), dtype=torch.int64))
        raise ValueError(
            f"superclass_grouping: unknown grouping {name_or_mapping!r}; expected one of {BUILTIN_GROUPINGS} or a mapping"
        )
    if not isinstance(name_or_mapping, Mapping):
        raise TypeError(
            "superclass_grouping: expected a grouping name, a SuperClassGrouping or a mapping, "
            f"got {type(name_or_mapping).__name__}"
        )
    if not name_or_mapping:
        raise ValueError("superclass_grouping: the mapping is empty")
    values = list(name_or_mapping.values())
    if all(isinstance(v, str) for v in values):  # {class: super-class}
        names = _resolve_class_names(class_names if class_names is not None else list(name_or_mapping), None, "mapping")
        groups: dict[str, list[str]] = {}
        for cls, sup in name_or_mapping.items():
            groups.setdefault(sup, []).append(cls)
        return _from_groups(groups, names, "user", normalise=False)
    if all(isinstance(v, Sequence) and not isinstance(v, str) for v in values):  # {super-class: [classes]}
        if class_names is None:
            flat = [c for v in values for c in v]
            names = tuple(dict.fromkeys(flat))
        else:
            names = _resolve_class_names(class_names, None, "mapping")
        return _from_groups(name_or_mapping, names, "user", normalise=False)
    raise TypeError(
        "superclass_grouping: a mapping must be {class: super-class name} or {super-class name: [classes]}"
    )
