"""The ``weclip-voc`` preset makes WeCLIP's online pseudo labels.

``tests/data/reference/weclip_voc.npz`` holds what WeCLIP's own ``model_attn_aff_voc.py`` computed
(commit 0f47db4, on the CPU, float32 path) for ten fixed 320×320 training crops of real VOC images
made by WeCLIP's own dataset code, with the seeded random ViT-B/16 of
:func:`cdclip.testing.random_clip_state_dict` and the seeded decoder of
``tests/reference/weclip_decoder_map.py``; before (iteration ≤ 15k) and after its decoder-affinity
refinement starts. Procedure: ``tests/reference/README.md``. Here the weights are regenerated from
their seeds and cdclip's ``CDCLIP.pseudo_labels`` runs on the same input tensors.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdclip.pipeline.model import CDCLIP
from cdclip.presets import load_preset

HERE = Path(__file__).parent
REFERENCE = HERE / "data" / "reference" / "weclip_voc.npz"
sys.path.insert(0, str(HERE / "reference"))
from weclip_decoder_map import random_decoder_state  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def model(reference) -> CDCLIP:
    from cdclip.data.classnames import VOC_CLASSES
    from cdclip.data.prompts import background_words
    from cdclip.data.transforms import normalization_stats
    from cdclip.testing import random_clip_backbone

    config = load_preset("weclip-voc")
    cfg = config.model
    backbone = random_clip_backbone(
        "ViT-B-16", 0, pos_interp=cfg.clip_pos_interp, pos_fp16=cfg.clip_pos_fp16, fp16_out_proj=cfg.clip_fp16_out_proj
    )
    net = CDCLIP(
        backbone, VOC_CLASSES, background_words(cfg.background), cfg, config.loss,
        pad_label=config.data.pad_label, pixel_stats=normalization_stats(config.data.normalize),
    )  # fmt: skip
    net.decoder.load_state_dict(random_decoder_state())
    return net.eval()  # the reference ran WeCLIP's decoder in eval mode (no dropout)


def _crop(reference: dict[str, np.ndarray], i: int) -> torch.Tensor:
    """WeCLIP's input tensor: the recorded uint8 crop normalised as WeCLIP does (0–255 scale)."""
    offsets, raw = reference["crops_png_offsets"], reference["crops_png_bytes"].tobytes()
    pixels = np.asarray(Image.open(io.BytesIO(raw[offsets[i] : offsets[i + 1]])).convert("RGB"))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()
    mean = torch.tensor(reference["norm_mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(reference["norm_std"], dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std)[None]


def _agreement(reference, model, mode: str, iteration: int) -> list[float]:
    out_agree = []
    for i in range(len(reference["names"])):
        batch = {"image": _crop(reference, i), "labels": torch.from_numpy(reference["classes"][i : i + 1]).float()}
        out = model.pseudo_labels(batch, iteration=iteration)
        out_agree.append(float((out.labels[0].numpy() == reference[f"fp32__labels_{mode}"][i]).mean()))
        if mode == "off" and model.text.shape[0] == 45:
            keys = np.flatnonzero(reference["classes"][i])
            cams = out.cams[0, keys].numpy()
            assert np.abs(cams - reference["fp32__cams"][i, keys]).max() <= 5e-2
    return out_agree


@pytest.mark.parametrize("mode, iteration", [("off", 0), ("on", 15000)])
def test_online_pseudo_labels_equal_weclips_given_its_text_classifier(reference, model, mode, iteration):
    """The CAM head, refinement (before and after the decoder-affinity refinement), PAR and labels."""
    saved = model.text.clone()
    with np.load(REFERENCE.with_name("weclip_voc_text.npz")) as text:
        model.text = torch.from_numpy(text["text"]).float()
    try:
        agree = _agreement(reference, model, mode, iteration)
    finally:
        model.text = saved
    assert min(agree) >= 0.999, dict(zip(reference["names"].tolist(), agree, strict=True))


@pytest.mark.parametrize("mode, iteration", [("off", 0), ("on", 15000)])
def test_online_pseudo_labels_end_to_end_with_cdclips_text(reference, model, mode, iteration):
    """The whole path, cdclip's own text classifier included (one text-tower call per class, as
    WeCLIP encodes: with float16 out-projections a batch of all prompts rounds differently)."""
    agree = _agreement(reference, model, mode, iteration)
    assert min(agree) >= 0.999, dict(zip(reference["names"].tolist(), agree, strict=True))
