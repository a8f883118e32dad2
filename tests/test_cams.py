"""GradCAM (checked against hooks on open_clip's own forward) and patch–text CAMs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from oracle_backbone import tiny_openclip_backbone

import cdclip
from cdclip.cam.gradcam import CLIPGradCAM, clip_gradcam, gradcam_scores
from cdclip.cam.multiscale import multiscale_cams
from cdclip.cam.patch_text import PatchTextCAM, patch_text_cam


@pytest.fixture(scope="module")
def tiny():
    return tiny_openclip_backbone(image_size=64)


def _reference_gradcam(backbone, images, text, labels, cls, hook_ln1=False):
    """GradCAM from forward hooks on the unmodified open_clip model (independent of block_forward)."""
    visual = backbone.visual
    store = {}
    last = visual.transformer.resblocks[-1]
    if hook_ln1:
        handle = last.ln_1.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    else:
        handle = last.register_forward_pre_hook(lambda m, args: store.__setitem__("a", args[0]))
    out_handle = visual.transformer.register_forward_hook(lambda m, i, o: store.__setitem__("tokens", o))
    visual.requires_grad_(True)
    try:
        visual(images)
    finally:
        handle.remove()
        out_handle.remove()
        visual.requires_grad_(False)
    tokens = visual.ln_post(store["tokens"]) @ visual.proj
    g = tokens[:, 1:].mean(1)
    probs = gradcam_scores(g, text, labels, backbone.logit_scale)
    (grad,) = torch.autograd.grad(probs[:, cls].sum(), store["a"])
    acts, grad = store["a"][:, 1:], grad[:, 1:]
    cam = F.relu((acts * grad.mean(1, keepdim=True)).sum(-1)).detach()
    cam = (cam - cam.amin(1, keepdim=True)) / (cam.amax(1, keepdim=True) - cam.amin(1, keepdim=True))
    return cam.reshape(images.shape[0], 4, 4)


@pytest.mark.parametrize("target", ["input", "ln_1"])
def test_gradcam_matches_hook_reference_on_open_clip(tiny, target):
    images = torch.randn(2, 3, 64, 64)
    text = F.normalize(torch.randn(5, tiny.embed_dim), dim=-1)  # 3 classes + 2 background words
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    out = tiny(images, attn_blocks=0, grad_last_block=True)
    cams = clip_gradcam(out, text, labels, tiny.logit_scale, target=target)
    assert cams.shape == (2, 3, 4, 4)
    for cls in range(3):
        ref = _reference_gradcam(tiny, images, text, labels, cls, hook_ln1=target == "ln_1")
        for b in range(2):
            if labels[b, cls]:
                torch.testing.assert_close(cams[b, cls], ref[b], atol=1e-4, rtol=1e-4)
            else:
                assert bool((cams[b, cls] == 0).all())


def test_gradcam_scores_softmax_over_present_and_background():
    g = torch.randn(1, 4)
    text = torch.randn(5, 4)
    probs = gradcam_scores(g, text, torch.tensor([[1.0, 0.0, 1.0]]), 10.0)
    assert probs[0, 1] == 0 and torch.isclose(probs.sum(), torch.tensor(1.0))
    logits = 10 * F.normalize(g, dim=-1) @ F.normalize(text, dim=-1).T
    keep = logits[:, [0, 2, 3, 4]].softmax(-1)
    torch.testing.assert_close(probs[:, [0, 2, 3, 4]], keep)


def test_gradcam_batched_equals_single_and_grid_follows_input(tiny):
    images = torch.randn(2, 3, 48, 80)
    text = F.normalize(torch.randn(4, tiny.embed_dim), dim=-1)
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    method = CLIPGradCAM()
    batched = method(tiny, images, labels, text).cams
    assert batched.shape == (2, 2, 3, 5)
    for b in range(2):
        single = method(tiny, images[b : b + 1], labels[b : b + 1], text).cams
        torch.testing.assert_close(batched[b : b + 1], single, atol=1e-5, rtol=1e-4)
    present = batched[labels.bool()]
    assert float(present.amax()) == pytest.approx(1.0) and float(present.amin()) >= 0.0
    with pytest.raises(ValueError, match="grad_last_block"):
        clip_gradcam(tiny(images), text, labels)


def test_patch_text_cam_formula_and_gradient():
    feats = torch.randn(2, 6, 8, requires_grad=True)
    text = torch.randn(5, 8)  # the first C=3 rows are used
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    cams = patch_text_cam(feats, text, labels, (2, 3))
    sim = F.relu(F.normalize(feats, dim=-1) @ F.normalize(text[:3], dim=-1).T).transpose(1, 2)
    lo, hi = sim.amin(-1, keepdim=True), sim.amax(-1, keepdim=True)
    ref = ((sim - lo) / (hi - lo)).reshape(2, 3, 2, 3) * labels[:, :, None, None]
    torch.testing.assert_close(cams, ref)
    cams.sum().backward()
    assert feats.grad is not None and bool(feats.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="grid"):
        patch_text_cam(feats, text, labels, (3, 3))
    with pytest.raises(ValueError, match="labels"):
        patch_text_cam(feats, text, labels[:1], (2, 3))


def test_multiscale_and_flip_keep_the_base_grid(tiny):
    images = torch.randn(1, 3, 64, 96)
    text = F.normalize(torch.randn(3, tiny.embed_dim), dim=-1)
    labels = torch.tensor([[1.0, 0.0]])
    single = PatchTextCAM()(tiny, images, labels, text)
    torch.testing.assert_close(single.cams, PatchTextCAM().cams_from_output(tiny(images), text, labels))
    assert single.output.attn.shape[1] == min(8, tiny.depth)  # the base forward keeps attention
    multi = PatchTextCAM(scales=(1.0, 0.5, 1.5), flip=True)(tiny, images, labels, text)
    assert multi.cams.shape == (1, 2, 4, 6)
    assert float(multi.cams[0, 0].amax()) == pytest.approx(1.0) and bool((multi.cams[0, 1] == 0).all())
    # flipping the input flips single-scale CAMs (patch-text is equivariant up to position embeddings)
    calls = []

    def fn(out):
        calls.append(out.grid)
        return patch_text_cam(out.dense, text, labels, out.grid)

    multiscale_cams(fn, tiny, images, scales=(1.0, 0.5), flip=True)
    assert calls == [(4, 6), (4, 6), (2, 3), (2, 3)]
    gc = CLIPGradCAM(scales=(1.0, 0.75), flip=True)(tiny, images, labels, text)
    assert gc.cams.shape == (1, 2, 4, 6) and gc.output.last_block_input is None


def test_registered_names():
    assert isinstance(cdclip.create("gradcam"), CLIPGradCAM)
    assert isinstance(cdclip.create("patch_text", flip=True), PatchTextCAM)
    assert "gradcam" in cdclip.list_components(kind="cam")


def test_slot_argmax_breaks_ties_like_argmax():
    from cdclip.cam.labels import slot_argmax
    from cdclip.cam.slots import class_slots

    g = torch.Generator().manual_seed(0)
    stack = torch.randint(0, 3, (2, 3, 9, 11), generator=g).float()  # many exact ties
    present = torch.tensor([[True, False, True], [False, True, False]])
    slots = class_slots(present)
    ids = torch.cat([torch.full((2, 1), -1), slots.index], dim=1) + 1
    masked = stack.masked_fill(~torch.cat([torch.ones(2, 1, dtype=torch.bool), slots.valid], 1)[:, :, None, None],
                               float("-inf"))  # fmt: skip
    expected = ids.gather(1, masked.argmax(dim=1).flatten(1)).reshape(2, 9, 11)
    assert torch.equal(slot_argmax(stack, slots), expected)
