"""The same results on a CUDA device as on the CPU (run where a GPU exists; CPU CI skips them)."""

from __future__ import annotations

import pytest
import torch

import cdclip
from cdclip.functional import pairwise_js, par

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_pairwise_js_cuda_matches_cpu_and_half_is_float32():
    p = torch.softmax(torch.randn(2, 500, 45, generator=torch.Generator().manual_seed(0)) * 3, -1)
    cpu = pairwise_js(p)
    gpu = pairwise_js(p.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-6, rtol=0)
    half = pairwise_js(p.cuda().half())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.cpu(), pairwise_js(p.half().double()).float(), atol=5e-6, rtol=0)


def test_cda_cuda_matches_cpu():
    from scenes import two_part_scene

    s = two_part_scene()
    for fusion in ("attn", "mean", "replace", "product"):
        module = cdclip.CDAModule(fusion=fusion)
        cpu = module(s.cams, s.probs, s.attn)
        gpu = module(s.cams.cuda(), s.probs.cuda(), s.attn.cuda())
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
    bf16 = cdclip.CDAModule()(s.cams.cuda().bfloat16(), s.probs.cuda().bfloat16(), s.attn.cuda().bfloat16())
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()


def test_par_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 64, 80, generator=gen)
    masks = torch.softmax(torch.randn(2, 4, 64, 80, generator=gen), 1)
    torch.testing.assert_close(par(image.cuda(), masks.cuda()).cpu(), par(image, masks), atol=1e-4, rtol=0)


def test_confusion_matrix_on_cuda_tensors():
    from cdclip.metrics import ConfusionMatrix

    target = torch.randint(0, 5, (2, 33, 40), generator=torch.Generator().manual_seed(2))
    target[:, :3] = 255
    pred = target.clone()
    pred[pred == 255] = 0
    cm = ConfusionMatrix(5)
    cm.update(pred.cuda(), target.cuda())
    assert cm.miou() == pytest.approx(1.0)
