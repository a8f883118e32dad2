"""WeCLIP decoder: shapes on several grids, registry, validation, and gradients only into the decoder."""

from __future__ import annotations

import warnings

import pytest
import torch
from oracle_backbone import tiny_openclip_backbone

from cdclip.data.classnames import VOC_CLASSES
from cdclip.pipeline.config import LossConfig, ModelConfig
from cdclip.pipeline.decoder import DecoderOutput, WeCLIPDecoder
from cdclip.pipeline.model import CDCLIP

TINY = {"decoder_dim": 32, "decoder_layers": 2, "decoder_heads": 4, "par_iters": 3}


@pytest.fixture(scope="module")
def tiny_clip():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_openclip_backbone(image_size=64, layers=3)


@pytest.mark.parametrize("grid", [(1, 1), (4, 4), (3, 5), (20, 20)])
def test_decoder_shapes_on_several_grids(grid):
    h, w = grid
    dec = WeCLIPDecoder(num_classes=21, in_dim=64, num_blocks=3, dim=32, layers=2, heads=4)
    tokens = [torch.randn(2, h * w, 64) for _ in range(3)]
    out = dec(tokens, grid)
    assert isinstance(out, DecoderOutput)
    assert out.logits.shape == (2, 21, h, w)
    assert out.features.shape == (2, 32, h, w)
    assert torch.isfinite(out.logits).all()


def test_decoder_default_sizes_follow_weclip():
    dec = WeCLIPDecoder(num_classes=21)
    assert len(dec.heads_list) == 11 and len(dec.layers) == 3
    assert dec.heads_list[0].fc1.in_features == 768 and dec.heads_list[0].fc1.out_features == 256
    assert dec.fuse.in_channels == 11 * 256 and dec.fuse.out_channels == 256
    assert dec.layers[0].attn.num_heads == 8 and dec.layers[0].attn.embed_dim == 256
    assert dec.classifier.out_channels == 21 and dec.classifier.kernel_size == (1, 1)


def test_decoder_is_registered():
    from cdclip.registry import create

    dec = create("weclip_decoder", num_classes=5, in_dim=16, num_blocks=2, dim=8, layers=1, heads=2)
    assert isinstance(dec, WeCLIPDecoder) and dec.classifier.out_channels == 5


def test_decoder_patches_interact_through_the_transformer():
    # a change at one patch reaches the logits of every other patch (global mixing), not only its own
    torch.manual_seed(0)
    dec = WeCLIPDecoder(num_classes=3, in_dim=8, num_blocks=1, dim=8, layers=1, heads=2, dropout=0.0).eval()
    tokens = torch.randn(1, 9, 8)
    base = dec([tokens], (3, 3)).logits
    changed = tokens.clone()
    changed[0, 0] += 5.0
    diff = (dec([changed], (3, 3)).logits - base).abs().flatten(2)[0].sum(0)
    assert (diff > 1e-6).all()


def test_decoder_validates_inputs():
    dec = WeCLIPDecoder(num_classes=3, in_dim=8, num_blocks=2, dim=8, layers=1, heads=2)
    with pytest.raises(ValueError, match="expected 2 blocks"):
        dec([torch.randn(1, 4, 8)], (2, 2))
    with pytest.raises(ValueError, match="width W = 8"):
        dec([torch.randn(1, 4, 7)] * 2, (2, 2))
    with pytest.raises(ValueError, match="N = 3\\*3"):
        dec([torch.randn(1, 4, 8)] * 2, (3, 3))
    with pytest.raises(TypeError, match="sequence"):
        dec(torch.randn(2, 1, 4, 8), (2, 2))
    with pytest.raises(ValueError, match="heads"):
        WeCLIPDecoder(num_classes=3, dim=10, heads=3)


def _model(backbone, lambda_be: float = 0.0) -> CDCLIP:
    torch.manual_seed(0)
    return CDCLIP(
        backbone, VOC_CLASSES, ("ground", "sky"), ModelConfig(**TINY), LossConfig(lambda_be=lambda_be)
    )


def test_gradients_flow_only_into_the_decoder(tiny_clip):
    model = _model(tiny_clip)
    assert model.num_blocks == 2  # all blocks but the last
    assert not any(p.requires_grad for p in model.backbone.parameters())
    labels = torch.zeros(2, 20)
    labels[0, 14] = labels[1, [2, 11]] = 1
    batch = {"image": torch.randn(2, 3, 64, 64), "labels": labels}
    out = model.training_step(batch)
    out["loss"].backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.trainable_parameters() == list(model.decoder.parameters())


def test_predict_gives_full_resolution_logits_and_keeps_the_mode(tiny_clip):
    model = _model(tiny_clip).train()
    images = torch.randn(2, 3, 50, 70)  # not multiples of 16: resized up for CLIP, logits back to 50x70
    logits = model.predict(images)
    assert logits.shape == (2, 21, 50, 70) and logits.dtype == torch.float32
    assert model.decoder.training  # restored
    assert torch.equal(logits, model.predict(images))  # dropout off inside predict
