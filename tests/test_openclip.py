"""OpenCLIPBackbone against open_clip itself (random weights, no downloads)."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from oracle_backbone import tiny_openclip_backbone

import cdclip
from cdclip.backbones.openclip import (
    CLIPOutput,
    OpenCLIPBackbone,
    block_forward,
    create_openclip,
    interpolate_pos_embed,
    parse_openclip_name,
)


@pytest.fixture(scope="module")
def tiny() -> OpenCLIPBackbone:
    return tiny_openclip_backbone(image_size=224)


def test_cls_path_reproduces_open_clip_encode_image_at_224(tiny):
    images = torch.randn(2, 3, 224, 224)
    exact = OpenCLIPBackbone(tiny.model, pos_fp16=False)  # no float16 rounding of the position embedding
    out = exact(images, attn_blocks=0)
    expected = tiny.model.encode_image(images)
    torch.testing.assert_close(out.cls_embedding, expected, atol=1e-5, rtol=1e-5)


def test_fp16_out_proj_matches_a_float16_out_projection_in_both_towers(tiny):
    images = torch.randn(1, 3, 48, 80)
    half = OpenCLIPBackbone(tiny.model, fp16_out_proj=True)
    plain, rounded = tiny(images, attn_blocks=2), half(images, attn_blocks=2)
    torch.testing.assert_close(rounded.attn, plain.attn, atol=1e-4, rtol=0)  # same attention weights
    diff = (rounded.dense - plain.dense).abs().max()
    assert 0 < diff < 5e-2  # only the out-projection's float16 rounding differs
    # by hand: block 0 with the out-projection computed in float16
    block = tiny.visual.transformer.resblocks[0]
    x = torch.randn(1, 7, tiny.width)
    out, _, _ = block_forward(block, x, fp16_out_proj=True)
    h = block.ln_1(x)
    attn_out = block.attn(h, h, h, need_weights=False)[0]
    ctx = F.linear(attn_out - block.attn.out_proj.bias, torch.linalg.pinv(block.attn.out_proj.weight))
    w, b = block.attn.out_proj.weight, block.attn.out_proj.bias
    ref = x + F.linear(ctx.half(), w.half(), b.half()).float()
    ref = ref + block.ls_2(block.mlp(block.ln_2(ref)))
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=0)
    text_plain, text_half = tiny.encode_text(["a cat", "a dog"]), half.encode_text(["a cat", "a dog"])
    assert 0 < (text_plain - text_half).abs().max() < 1e-2


def test_dense_global_and_attention_shapes_for_any_multiple_of_the_patch(tiny):
    images = torch.randn(1, 3, 48, 80)  # 3 x 5 grid, not the 14 x 14 of training
    out = tiny(images, attn_blocks=2, return_block_tokens=True)
    assert isinstance(out, CLIPOutput) and out.grid == (3, 5)
    assert out.dense.shape == (1, 15, tiny.embed_dim) and out.dense.dtype == torch.float32
    torch.testing.assert_close(out.global_embedding, out.dense.mean(dim=1))
    assert out.attn.shape == (1, 2, 15, 15) and out.attn_blocks == (1, 2)
    assert len(out.block_tokens) == tiny.depth and out.block_tokens[-1].shape == (1, 15, tiny.width)
    # CLS column dropped: rows sum to 1 minus the attention paid to CLS
    assert bool((out.attn.sum(-1) <= 1 + 1e-5).all()) and bool((out.attn >= 0).all())
    with pytest.raises(ValueError, match="multiples of the patch size"):
        tiny(torch.randn(1, 3, 50, 80))
    with pytest.raises(ValueError, match="attn_blocks"):
        tiny(images, attn_blocks=-1)


def test_block_forward_matches_the_block_and_recomputed_attention(tiny):
    block = tiny.visual.transformer.resblocks[0]
    x = torch.randn(2, 7, tiny.width)
    y, ln1, weights = block_forward(block, x, need_weights=True)
    torch.testing.assert_close(y, block(x), atol=1e-5, rtol=1e-5)
    # reference attention from the in-projection weights: softmax(q k^T / sqrt(d)), mean over heads
    attn = block.attn
    q, k, _ = F.linear(ln1, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads = attn.num_heads
    d = tiny.width // heads
    q = q.view(2, 7, heads, d).transpose(1, 2)
    k = k.view(2, 7, heads, d).transpose(1, 2)
    ref = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1).mean(1)
    torch.testing.assert_close(weights, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_pos_embed_interpolation_modes_fp16_rounding_and_cache(tiny, mode):
    pe = tiny.visual.positional_embedding
    assert interpolate_pos_embed(pe, (14, 14), (14, 14)) is pe
    grid = pe[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(3, 5), mode=mode, align_corners=False).permute(0, 2, 3, 1).reshape(15, -1)
    exact = OpenCLIPBackbone(tiny.model, pos_interp=mode, pos_fp16=False).pos_embed((3, 5))
    torch.testing.assert_close(exact[1:], ref)
    torch.testing.assert_close(exact[0], pe[0])
    # CLIP-ES / WeCLIP round the interpolated embedding to float16 (also at the training grid)
    backbone = OpenCLIPBackbone(tiny.model, pos_interp=mode, pos_fp16=True)
    new = backbone.pos_embed((3, 5))
    assert torch.equal(new[1:], ref.half().float()) and torch.equal(new[0], pe[0].half().float())
    assert torch.equal(backbone.pos_embed((14, 14)), pe.detach().half().float())
    assert backbone.pos_embed((3, 5)) is new  # cached
    with pytest.raises(ValueError, match="mode: expected one of"):
        interpolate_pos_embed(pe, (14, 14), (3, 5), mode="nearest")


def test_grad_last_block_makes_a_differentiable_leaf(tiny):
    out = tiny(torch.randn(1, 3, 32, 48), attn_blocks=1, grad_last_block=True)
    assert out.last_block_input is not None and out.last_block_input.is_leaf
    (g,) = torch.autograd.grad(out.global_embedding.sum(), out.last_block_input)
    assert g.shape == (1, 1 + 6, tiny.width) and bool(g.abs().sum() > 0)
    plain = tiny(torch.randn(1, 3, 32, 48))
    assert plain.last_block_input is None and not plain.dense.requires_grad


def test_preprocess_and_text(tiny):
    img = torch.full((1, 3, 16, 16), 255, dtype=torch.uint8)
    x = tiny.preprocess(img)
    torch.testing.assert_close(x[0, :, 0, 0], (1 - tiny.mean.flatten()) / tiny.std.flatten())
    emb = tiny.encode_text(["a clean origami cat.", "a clean origami dog."])
    assert emb.shape == (2, tiny.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    ref = F.normalize(tiny.model.encode_text(tiny.tokenize(["a clean origami cat."])), dim=-1)
    torch.testing.assert_close(emb[:1], ref)
    assert tiny.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_names_and_weights_errors(tmp_path):
    assert parse_openclip_name("ViT-B-16@openai") == ("ViT-B-16", "openai")
    assert parse_openclip_name("") == ("ViT-B-16", "openai")
    with pytest.raises(ValueError, match="weights"):
        create_openclip("ViT-B-16")  # no tag, no weights: say how to choose
    with pytest.raises(ValueError, match="unknown open_clip model"):
        create_openclip("ViT-Nope@openai")


def test_offline_without_cache_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        create_openclip("ViT-B-16@openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5.0
    msg = str(info.value)
    assert "--weights" in msg and "weights=" in msg and "offline" in msg


def test_import_cdclip_does_not_import_open_clip():
    code = "import cdclip, cdclip.backbones.openclip, sys; assert 'open_clip' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_registry_builds_random_vit_b16_matching_encode_image():
    with pytest.warns(UserWarning, match="RANDOM"):
        backbone = cdclip.create("openclip:ViT-B-16@openai", weights=None, pos_fp16=False)
    assert isinstance(backbone, OpenCLIPBackbone) and backbone.patch_size == 16 and backbone.depth == 12
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = backbone(images, attn_blocks=8)
        ref = backbone.model.encode_image(images)
    torch.testing.assert_close(out.cls_embedding, ref, atol=1e-4, rtol=1e-4)
    assert out.attn.shape == (1, 8, 196, 196) and out.dense.shape == (1, 196, 512)


def test_fp16_out_proj_text_tower_runs_in_a_float16_model():
    """open_clip's fp16 precision keeps the token embedding float32: the text path casts like open_clip."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = create_openclip("ViT-B-32", weights=None, precision="fp16", fp16_out_proj=True)
    emb = half.encode_text(["a cat", "a dog"])
    assert emb.shape == (2, half.embed_dim) and emb.dtype == torch.float32 and bool(torch.isfinite(emb).all())
