"""Prompt vocabulary for CLIP text classifiers: class-name synonyms, background words, templates.

The defaults follow CLIP-ES (Lin et al., CVPR 2023, ``clip_text.py`` in
https://github.com/linyq2117/CLIP-ES), which WeCLIP and CD-CLIP reuse:

* a few class names are replaced by CLIP-friendlier phrases ("bird avian", "chair seat",
  "person with clothes,people,human", "tvmonitor screen"); the phrase is inserted into the template
  verbatim, commas included, exactly as CLIP-ES does;
* background is represented by a list of stuff words (25 for VOC, 23 for COCO: the COCO list drops
  "keyboard" and "sign", which overlap COCO classes) that take part in the softmax as extra classes;
* a single template, ``"a clean origami {}."``.

Base names come from :mod:`cdclip.data.classnames`; the mappings below are keyed by those names so
that the order always follows the dataset's label order. ``style="plain"`` gives readable names
(``"dining table"``, ``"tv monitor"``) for users who want to ablate the CLIP-ES phrasing. Custom
class lists are first class: :func:`prompt_names` returns unknown names unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

from cdclip.choices import check_choice
from cdclip.data.classnames import COCO_CLASSES, VOC_CLASSES

__all__ = [
    "COCO_BACKGROUND_WORDS",
    "COCO_PROMPT_NAMES",
    "DEFAULT_TEMPLATES",
    "PLAIN_NAMES",
    "VOC_BACKGROUND_WORDS",
    "VOC_PROMPT_NAMES",
    "background_words",
    "format_prompts",
    "prompt_names",
]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a clean origami {}.",)

# CLIP-ES BACKGROUND_CATEGORY (VOC, 25 words) and BACKGROUND_CATEGORY_COCO (23 words).
VOC_BACKGROUND_WORDS: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea",
    "railway", "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road",
    "rock", "street", "valley", "bridge", "sign",
)  # fmt: skip
COCO_BACKGROUND_WORDS: tuple[str, ...] = tuple(w for w in VOC_BACKGROUND_WORDS if w not in ("keyboard", "sign"))

# CLIP-ES new_class_names (VOC): only the entries that differ from the dataset name are listed.
_VOC_CLIP_ES: dict[str, str] = {
    "bird": "bird avian",
    "chair": "chair seat",
    "person": "person with clothes,people,human",
    "tvmonitor": "tvmonitor screen",
}
VOC_PROMPT_NAMES: dict[str, str] = {c: _VOC_CLIP_ES.get(c, c) for c in VOC_CLASSES}

# CLIP-ES new_class_names_coco, in COCO category order (CLIP-ES writes the VOC spellings for the
# classes VOC shares, e.g. "motorbike" for "motorcycle"). "sknowboard" is CLIP-ES's own spelling,
# kept so that the default reproduces their classifier.
_COCO_CLIP_ES: tuple[str, ...] = (
    "person with clothes,people,human", "bicycle", "car", "motorbike", "aeroplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench",
    "bird avian", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe",
    "backpack,bag", "umbrella,parasol", "handbag,purse", "necktie", "suitcase", "frisbee", "skis",
    "sknowboard", "sports ball", "kite", "baseball bat", "glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "dessertspoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair seat", "sofa", "pottedplant", "bed", "diningtable", "toilet", "tvmonitor screen",
    "laptop", "mouse", "remote control", "keyboard", "cell phone", "microwave", "oven", "toaster",
    "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hairdrier,blowdrier",
    "toothbrush",
)  # fmt: skip
COCO_PROMPT_NAMES: dict[str, str] = dict(zip(COCO_CLASSES, _COCO_CLIP_ES, strict=True))

# readable names for the dataset spellings that are not English words
PLAIN_NAMES: dict[str, str] = {
    "aeroplane": "aeroplane",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
    "motorbike": "motorbike",
}

PromptStyle = Literal["clip_es", "plain", "raw"]
_STYLES: tuple[str, ...] = get_args(PromptStyle)


def prompt_names(
    names: Sequence[str], style: PromptStyle = "clip_es", overrides: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The phrase put into the templates for each class name.

    Args:
        names: class names (dataset spellings or any custom list).
        style: ``"clip_es"`` (CLIP-ES synonyms, default), ``"plain"`` (readable spellings) or
            ``"raw"`` (names unchanged).
        overrides: per-name replacements applied last.
    """
    check_choice(style, "style", _STYLES)
    if isinstance(names, str):
        raise TypeError("names: expected a sequence of class names, got a single str")
    out = []
    for name in names:
        phrase = name
        if style == "clip_es":
            # VOC spelling first: the 20 VOC names keep their VOC phrase inside COCO lists too
            phrase = VOC_PROMPT_NAMES.get(name, COCO_PROMPT_NAMES.get(name, name))
        elif style == "plain":
            phrase = PLAIN_NAMES.get(name, name)
        if overrides and name in overrides:
            phrase = overrides[name]
        out.append(phrase)
    return tuple(out)


def background_words(dataset: str) -> tuple[str, ...]:
    """CLIP-ES background words for ``"voc"`` (25) or ``"coco"`` (23); ``"none"`` gives ()."""
    key = dataset.lower()
    if key in ("voc", "voc2012", "pascal"):
        return VOC_BACKGROUND_WORDS
    if key in ("coco", "coco2014", "coco2017", "mscoco"):
        return COCO_BACKGROUND_WORDS
    if key == "none":
        return ()
    raise ValueError(f"dataset: expected 'voc', 'coco' or 'none', got {dataset!r}")


def format_prompts(phrase: str, templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """``[template.format(phrase) for template in templates]`` with a check on the templates."""
    if isinstance(templates, str):
        templates = (templates,)
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"templates: every template needs a '{{}}' placeholder, got {t!r}")
    return [t.format(phrase) for t in templates]
