"""Prompt vocabulary (CLIP-ES lists) and the cached text classifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracle_backbone import tiny_openclip_backbone

from cdclip.backbones.text import build_text_classifier, clear_text_cache
from cdclip.data.classnames import COCO_CLASSES, VOC_CLASSES
from cdclip.data.prompts import (
    COCO_BACKGROUND_WORDS,
    VOC_BACKGROUND_WORDS,
    background_words,
    format_prompts,
    prompt_names,
)


class CountingEncoder:
    """Deterministic fake text encoder that records how often it is called."""

    def __init__(self, dim: int = 8) -> None:
        self.calls = 0
        self.dim = dim

    def encode_text(self, texts):
        self.calls += 1
        out = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)))
            out.append(torch.randn(self.dim, generator=g) * 3)  # not normalised on purpose
        return torch.stack(out)


def test_clip_es_vocabulary():
    assert len(VOC_BACKGROUND_WORDS) == 25 and len(COCO_BACKGROUND_WORDS) == 23
    assert "keyboard" in VOC_BACKGROUND_WORDS and "keyboard" not in COCO_BACKGROUND_WORDS
    assert background_words("voc") == VOC_BACKGROUND_WORDS and background_words("none") == ()
    voc = prompt_names(VOC_CLASSES)
    assert len(voc) == 20
    assert voc[VOC_CLASSES.index("person")] == "person with clothes,people,human"
    assert voc[VOC_CLASSES.index("tvmonitor")] == "tvmonitor screen"
    assert voc[VOC_CLASSES.index("aeroplane")] == "aeroplane"
    coco = prompt_names(COCO_CLASSES)
    assert len(coco) == 80
    assert coco[COCO_CLASSES.index("couch")] == "sofa" and coco[COCO_CLASSES.index("tv")] == "tvmonitor screen"
    assert coco[COCO_CLASSES.index("tie")] == "necktie" and coco[COCO_CLASSES.index("motorcycle")] == "motorbike"
    assert prompt_names(["platypus"]) == ("platypus",)  # custom names pass through
    assert prompt_names(["tvmonitor"], style="plain") == ("tv monitor",)
    assert prompt_names(["cat"], overrides={"cat": "kitty"}) == ("kitty",)
    assert format_prompts("cat") == ["a clean origami cat."]
    with pytest.raises(ValueError, match="placeholder"):
        format_prompts("cat", ["no placeholder"])
    with pytest.raises(ValueError, match="style"):
        prompt_names(["cat"], style="fancy")


def test_classifier_averages_normalised_template_embeddings_and_caches():
    clear_text_cache()
    enc = CountingEncoder()
    templates = ("a photo of a {}.", "a clean origami {}.")
    clf = build_text_classifier(enc, ["cat", "dog"], ["sky"], templates)
    assert clf.embeddings.shape == (3, 8) and clf.num_classes == 2
    assert clf.foreground.shape == (2, 8) and clf.background.shape == (1, 8)
    torch.testing.assert_close(clf.embeddings.norm(dim=-1), torch.ones(3))
    e = F.normalize(enc.encode_text([t.format("dog") for t in templates]), dim=-1).mean(0)
    torch.testing.assert_close(clf.embeddings[1], F.normalize(e, dim=0))
    calls = enc.calls
    again = build_text_classifier(enc, ["cat", "dog"], ["sky"], templates)
    assert enc.calls == calls and again.embeddings is clf.embeddings  # cached per (model, lists)
    other = build_text_classifier(enc, ["cat"], ["sky"], templates)
    assert enc.calls > calls and other.embeddings.shape == (2, 8)
    with pytest.raises(ValueError, match="class_names"):
        build_text_classifier(enc, [])


def test_classifier_with_open_clip_text_tower():
    backbone = tiny_openclip_backbone(image_size=32, layers=1)
    clf = build_text_classifier(backbone, ["cat", "person"], VOC_BACKGROUND_WORDS[:2])
    assert clf.embeddings.shape == (4, backbone.embed_dim)
    ref = backbone.encode_text(["a clean origami person with clothes,people,human."])[0]
    torch.testing.assert_close(clf.embeddings[1], ref)


# ---------------------------------------------------------------------------- disk cache
def test_text_classifier_disk_cache_is_exact_and_keyed_by_weights(tmp_path, monkeypatch):
    import warnings

    from oracle_backbone import tiny_openclip_backbone

    from cdclip.backbones.text import build_text_classifier, clear_text_cache

    monkeypatch.setenv("CDCLIP_CACHE_DIR", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tiny_openclip_backbone(image_size=64, layers=2, seed=0)
        other = tiny_openclip_backbone(image_size=64, layers=2, seed=1)
    calls = []
    real = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda texts: calls.append(len(texts)) or real(texts))
    first = build_text_classifier(model, ("cat", "dog"), ("sky",)).embeddings
    assert len(calls) == 3 and len(list((tmp_path / "text").glob("*.pt"))) == 1  # one call per phrase
    clear_text_cache()
    second = build_text_classifier(model, ("cat", "dog"), ("sky",)).embeddings
    assert len(calls) == 3 and torch.equal(first, second)  # from disk, bit for bit
    build_text_classifier(other, ("cat", "dog"), ("sky",))  # other weights: another file
    assert len(list((tmp_path / "text").glob("*.pt"))) == 2
    clear_text_cache()
    monkeypatch.setenv("CDCLIP_TEXT_CACHE", "0")
    build_text_classifier(model, ("cat", "dog"), ("sky",))
    assert len(calls) == 6  # computed again, nothing read
