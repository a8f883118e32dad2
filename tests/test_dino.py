"""DINO backbone on timm: shapes, normalisation, resampling, freezing, weights and offline behaviour.

Only small randomly initialised timm ViTs are built; nothing touches the network.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
import warnings

import pytest
import torch

import cdclip
from cdclip.backbones.dino import DinoBackbone, PretrainedWeightsError, resample_features

pytest.importorskip("timm")

TINY = "vit_tiny_patch16_224"


def tiny(**kwargs) -> DinoBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return DinoBackbone(TINY, pretrained=False, depth=2, **kwargs)


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return tiny()


@pytest.mark.parametrize(("height", "width"), [(224, 224), (320, 320), (100, 130), (33, 47)])
def test_shapes_and_unit_norm_for_any_input_size(backbone: DinoBackbone, height: int, width: int) -> None:
    images = torch.rand(2, 3, height, width)
    feats = backbone(images)
    grid = (math.ceil(height / 16), math.ceil(width / 16))
    assert backbone.grid_size(height, width) == grid
    assert feats.shape == (2, grid[0] * grid[1], 192) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2, grid[0] * grid[1]), atol=1e-5)
    fmap = backbone.feature_map(images)
    assert fmap.shape == (2, 192, *grid)
    assert torch.allclose(fmap.flatten(2).transpose(1, 2), feats)


def test_resampling_to_a_cam_grid(backbone: DinoBackbone) -> None:
    images = torch.rand(1, 3, 160, 160)
    native = backbone.feature_map(images)  # 10×10
    on_grid = backbone(images, grid=(20, 20))
    assert on_grid.shape == (1, 400, 192)
    assert torch.allclose(on_grid.norm(dim=-1), torch.ones(1, 400), atol=1e-5)
    assert torch.allclose(on_grid, resample_features(native, (20, 20)).flatten(2).transpose(1, 2), atol=1e-6)
    # the module-level default grid is used when no grid is passed
    assert tiny(grid=(7, 9))(images).shape == (1, 63, 192)


def test_resample_features_known_answers() -> None:
    constant = torch.zeros(1, 4, 5, 5)
    constant[:, 1] = 3.0
    out = resample_features(constant, (8, 3))
    assert out.shape == (1, 4, 8, 3) and torch.allclose(out[:, 1], torch.ones(1, 8, 3)) and out[:, 0].eq(0).all()
    x = torch.randn(2, 36, 5)
    same = resample_features(x, (6, 6))  # same grid: only re-normalised
    assert torch.allclose(same, torch.nn.functional.normalize(x, dim=-1))
    as_map = x.transpose(1, 2).reshape(2, 5, 6, 6)
    assert torch.allclose(resample_features(x, (3, 4)), resample_features(as_map, (3, 4)).flatten(2).transpose(1, 2))
    assert resample_features(torch.randn(1, 12, 5), (2, 2), src_grid=(3, 4)).shape == (1, 4, 5)
    with pytest.raises(ValueError, match="src_grid"):
        resample_features(torch.randn(1, 12, 5), (2, 2))
    with pytest.raises(ValueError, match="grid"):
        resample_features(x, (0, 3))


def test_frozen_by_default_and_trainable_on_request(backbone: DinoBackbone) -> None:
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.model.training  # stays in eval mode
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    assert not backbone(images).requires_grad
    trainable = tiny(frozen=False)
    out = trainable(images)
    out.sum().backward()
    assert trainable.model.blocks[0].attn.qkv.weight.grad is not None and images.grad is not None


def test_registry_prefix_and_random_init_warning() -> None:
    with pytest.warns(UserWarning, match="randomly initialised"):
        model = cdclip.create(f"timm:{TINY}", pretrained=False, depth=1)
    assert isinstance(model, DinoBackbone) and model.model_name == TINY
    assert model.patch_size == (16, 16) and model.embed_dim == 192
    with pytest.warns(UserWarning):
        assert cdclip.create(f"timm:{TINY}", pretrained=None, depth=1).model_name == TINY


def test_dinov2_registers_and_patch8_architectures() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reg = DinoBackbone("vit_small_patch14_reg4_dinov2", pretrained=False, depth=1)
        b8 = DinoBackbone("vit_base_patch8_224", pretrained=False, depth=1)
    assert reg.num_prefix_tokens == 5 and reg.patch_size == (14, 14)
    feats = reg(torch.rand(1, 3, 100, 130))
    assert feats.shape == (1, 8 * 10, 384)  # prefix (CLS + 4 registers) dropped, ceil grid
    assert b8(torch.rand(1, 3, 40, 48)).shape == (1, 5 * 6, 768)
    assert b8(torch.rand(1, 3, 40, 48), grid=(3, 3)).shape == (1, 9, 768)


def test_keys_feature_and_input_handling(backbone: DinoBackbone) -> None:
    keys = tiny(feature="keys")
    images = torch.rand(1, 3, 48, 64)
    out = keys(images)
    assert out.shape == (1, 12, 192) and torch.allclose(out.norm(dim=-1), torch.ones(1, 12), atol=1e-5)
    as_uint8 = (images * 255).round().to(torch.uint8)
    assert torch.allclose(backbone(as_uint8), backbone(as_uint8.float() / 255), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        backbone(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="dtype"):
        backbone(torch.ones(1, 3, 32, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="feature"):
        tiny(feature="values")
    with pytest.raises(ValueError, match="does not know"):
        DinoBackbone("vit_does_not_exist_patch16", pretrained=False)


def test_checkpoint_path_round_trip(tmp_path) -> None:
    source = tiny()
    path = tmp_path / "tiny.pth"
    torch.save(source.model.state_dict(), path)
    loaded = DinoBackbone(TINY, checkpoint_path=path, depth=2)
    images = torch.rand(1, 3, 64, 64)
    assert torch.allclose(loaded(images), source(images), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        DinoBackbone(TINY, checkpoint_path=tmp_path / "missing.pth")


def test_original_dino_training_checkpoint_and_mismatch(tmp_path) -> None:
    """DINO's own checkpoints wrap the weights ({"teacher": {"backbone.*": ...}}); a wrong file says why."""
    source = tiny()
    wrapped = {"teacher": {f"backbone.{k}": v for k, v in source.model.state_dict().items()}, "epoch": 100}
    torch.save(wrapped, tmp_path / "checkpoint.pth")
    loaded = DinoBackbone(TINY, checkpoint_path=tmp_path / "checkpoint.pth", depth=2)
    images = torch.rand(1, 3, 48, 48)
    assert torch.allclose(loaded(images), source(images), atol=1e-6)
    torch.save({"blocks.0.norm1.weight": torch.ones(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        DinoBackbone(TINY, checkpoint_path=tmp_path / "bad.pth", depth=2)


def test_pretrained_weights_come_from_the_hub_cache_offline(tmp_path) -> None:
    """A file in the Hugging Face cache layout is used without any network access."""
    from safetensors.torch import save_file

    source = tiny()
    snapshot = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    loaded = DinoBackbone(TINY, pretrained=True, cache_dir=tmp_path, depth=2)
    images = torch.rand(1, 3, 32, 48)
    assert torch.allclose(loaded(images), source(images), atol=1e-6)


def test_offline_pretrained_request_fails_fast_with_instructions(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as info:
        cdclip.create("timm:vit_base_patch16_224.dino", pretrained=True, cache_dir=tmp_path)
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "checkpoint_path=" in message and "vit_base_patch16_224.dino" in message and "offline" in message
    assert "dino_vitbase16_pretrain.pth" in message  # where the original weights live


def test_unreachable_hub_fails_fast_without_the_offline_flag(tmp_path, monkeypatch) -> None:
    """No HF_HUB_OFFLINE: one short connection attempt, then the same clear error (no retry loop)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match="unreachable"):
        DinoBackbone("vit_small_patch14_dinov2.lvd142m", pretrained=True, cache_dir=tmp_path)
    assert time.monotonic() - start < 5.0


def test_import_cdclip_does_not_import_timm() -> None:
    code = (
        "import sys, cdclip, cdclip.backbones.dino, cdclip.prototypes.superclass, cdclip.losses.boundary; "
        "assert 'timm' not in sys.modules and 'open_clip' not in sys.modules, 'heavy import'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
