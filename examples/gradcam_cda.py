"""CDA on CAMs from pytorch-grad-cam (GradCAM, GradCAM++, ScoreCAM, LayerCAM), ResNet-50 and a timm ViT.

    python examples/gradcam_cda.py                             # summary on stdout
    python examples/gradcam_cda.py --out outputs/gradcam_cda   # + gradcam_cda.png and summary.json
    python examples/gradcam_cda.py --vit vit_small_patch16_224 # another timm ViT
    python examples/gradcam_cda.py --scorecam-resnet           # ScoreCAM on ResNet-50 too (slow on a CPU)

CDA compares, patch by patch, distributions over *all* classes. So each method computes the CAM
of every class of a 20-way VOC head, ``cdclip.class_probs_from_cams`` turns those 20 maps into
per-patch class distributions, and ``cdclip.CDAModule`` refines the maps of the classes the image
contains (its image-level labels from the shipped VOC sample). The ViT also has attention, so it
gets CDA ``mean`` (attention and class distributions) besides ``replace`` (class distributions only).

Both networks are randomly initialised (seeded, nothing is downloaded): the numbers and pictures
show the plumbing, not accuracy. A random ViT attends almost uniformly, so there ``mean`` comes out
close to ``replace``. For real CAMs load trained weights in ``build_resnet50`` / ``build_vit``;
nothing else changes. The default ViT is timm's 6-block, 64-wide ``test_vit``: ScoreCAM runs one
forward pass per channel, which a full-size ViT makes slow on a CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ScoreCAM draws a progress bar per class; they would drown the summary
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import timm
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageDraw
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

import cdclip
from cdclip.data import VOC_CLASSES, VOCSegmentation, heatmap

VOC_ROOT = Path(__file__).resolve().parent / "data" / "VOC2012"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METHODS: dict[str, type] = {"GradCAM": GradCAM, "GradCAM++": GradCAMPlusPlus, "ScoreCAM": ScoreCAM,
                            "LayerCAM": LayerCAM}  # fmt: skip
PANEL = 112  # pixels per picture panel


@dataclass
class Backbone:
    """A classifier with what pytorch-grad-cam and CDA need to know about it."""

    name: str
    model: nn.Module
    target_layers: list[nn.Module]
    reshape_transform: Callable[[Tensor], Tensor] | None
    grid: tuple[int, int]  # the patch grid CDA works on
    attention: Callable[[Tensor], Tensor] | None = None  # image -> (1, N, N) patch attention


# --------------------------------------------------------------------------- models
def _grads_at_target_only(model: nn.Module, target: nn.Module) -> None:
    """Every method needs gradients at the target layer only; freezing the rest stops backward there."""
    model.requires_grad_(False)
    target.requires_grad_(True)


def build_resnet50(num_classes: int, size: int) -> Backbone:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes).eval()
    target = model.layer4[-1]
    _grads_at_target_only(model, target)
    # layer4 is at stride 32 (a 4x4 map at 112 px): CDA works on a finer stride-8 grid of the
    # upsampled CAMs, so that the class distributions have some spatial detail to compare
    return Backbone("resnet50", model, [target], None, (size // 8, size // 8))


def vit_tokens_to_map(tokens: Tensor, grid: tuple[int, int], prefix: int) -> Tensor:
    """ViT tokens ``(B, prefix + h*w, D)`` as a CNN-like map ``(B, D, h, w)``; the CLS token is dropped."""
    patches = tokens[:, prefix:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def build_vit(name: str, num_classes: int, size: int) -> Backbone:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=size).eval()
    patch = model.patch_embed.patch_size
    grid = (size // patch[0], size // patch[1])
    # the class token is classified after the last block, so the patch tokens *leaving* it get no
    # gradient; the input of its attention (norm1) is where the patches still matter
    target = model.blocks[-1].norm1
    _grads_at_target_only(model, target)

    def reshape(tokens: Tensor) -> Tensor:
        return vit_tokens_to_map(tokens, grid, model.num_prefix_tokens)

    return Backbone(name, model, [target], reshape, grid, lambda x: vit_attention(model, x))


@torch.no_grad()
def vit_attention(model: nn.Module, image: Tensor, blocks: int = 8) -> Tensor:
    """Head- and block-averaged patch attention of the last ``blocks`` blocks (CLS row/column dropped).

    timm computes attention with a fused kernel that never exposes the weights, so they are
    recomputed from each block's qkv projection, captured by a forward hook.
    """
    captured: list[Tensor] = []
    handles = [blk.attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
               for blk in model.blocks[-blocks:]]  # fmt: skip
    try:
        model(image)
    finally:
        for handle in handles:
            handle.remove()
    prefix, heads = model.num_prefix_tokens, model.blocks[-1].attn.num_heads
    maps = []
    for qkv in captured:
        b, t, _ = qkv.shape
        q, k, _v = qkv.reshape(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1).mean(dim=1)
        maps.append(attn[:, prefix:, prefix:])
    return torch.stack(maps).mean(dim=0)


# --------------------------------------------------------------------------- CAMs of all classes
class ReuseMaskedForwards(nn.Module):
    """Lets pytorch-grad-cam's ScoreCAM run its masked forward passes once for all classes.

    ScoreCAM scores each activation channel by a forward pass of the image masked by that channel.
    Those passes depend on the image and the channel, not on the class, yet each target repeats
    them; CDA wants every class, which would multiply the cost by C. Outputs of gradient-free calls
    are therefore remembered by the bytes of their input, so C classes cost one sweep.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._seen: dict[bytes, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():  # the recorded forward (activation hooks) always runs
            return self.model(x)
        data = x.detach().cpu().contiguous().numpy().tobytes()
        key = hashlib.blake2b(data, digest_size=16).digest() + str(tuple(x.shape)).encode()
        if key not in self._seen:
            self._seen[key] = self.model(x)
        return self._seen[key]


def all_class_cams(method: str, backbone: Backbone, image: Tensor, num_classes: int, score_batch: int) -> Tensor:
    """pytorch-grad-cam CAMs of every class, each min-max scaled to [0, 1] by the library.

    Gradient methods get a batch of copies of the image, one class per copy: one forward and one
    backward for all classes. ScoreCAM is called class by class (its masked copies of a batch would
    not fit in memory) on the model wrapped in :class:`ReuseMaskedForwards`.

    Shape:
        - image: (1, 3, H, W)
        - output: (C, H, W)
    """
    scorecam = method == "ScoreCAM"
    model = ReuseMaskedForwards(backbone.model) if scorecam else backbone.model
    cam = METHODS[method](model=model, target_layers=backbone.target_layers,
                          reshape_transform=backbone.reshape_transform)  # fmt: skip
    if scorecam:
        cam.batch_size = score_batch  # masked images per forward pass
    chunk = 1 if scorecam else num_classes
    try:  # not `with cam:` -- its __exit__ swallows IndexErrors
        maps = []
        for start in range(0, num_classes, chunk):
            classes = range(start, min(start + chunk, num_classes))
            batch = image.expand(len(classes), -1, -1, -1)
            maps.append(cam(input_tensor=batch, targets=[ClassifierOutputTarget(c) for c in classes]))
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(np.concatenate(maps)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- CDA
def to_grid(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """Area-average ``(C, H, W)`` maps onto the patch grid: ``(1, C, h, w)``, still in [0, 1]."""
    return F.adaptive_avg_pool2d(maps[None].float(), grid).clamp(0.0, 1.0)


def refine(backbone: Backbone, grid_cams: Tensor, present: Sequence[int],
           image: Tensor) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """The class distributions, and CDA ``replace`` (and ``mean`` with the ViT's attention) of the
    present classes' maps.

    Shape:
        - grid_cams: (1, C, h, w) -- all classes
        - output[0]: (1, h*w, C)
        - output[1] values: (1, P, h, w) -- the present classes
    """
    probs = cdclip.class_probs_from_cams(grid_cams)  # distributions over all classes, patch by patch
    maps = grid_cams[:, list(present)]
    out = {"CDA replace": cdclip.CDAModule(fusion="replace")(maps, probs)}
    if backbone.attention is not None:
        attn = backbone.attention(image)
        out["CDA mean"] = cdclip.CDAModule(fusion="mean")(maps, probs, attn)
    return probs, out


def inside_outside(maps: Tensor, masks: Tensor) -> tuple[float, float]:
    """Mean activation on the patches of each class's ground truth and off them (averaged over classes).

    Shape:
        - maps: (1, P, h, w)
        - masks: (P, h, w) bool
    """
    inside = [float(m[k].mean()) if k.any() else float("nan") for m, k in zip(maps[0], masks)]
    outside = [float(m[~k].mean()) if (~k).any() else float("nan") for m, k in zip(maps[0], masks)]
    return float(np.nanmean(inside)), float(np.nanmean(outside))


# --------------------------------------------------------------------------- data and output
def load_sample(name: str, size: int) -> tuple[Tensor, Tensor, list[int], Tensor]:
    """(normalised image (1, 3, S, S), the image for pictures (3, S, S) in [0, 1], present class
    indices, ground-truth mask (S, S))."""
    voc = VOCSegmentation(VOC_ROOT, "train_aug")
    if name not in voc.names:
        raise SystemExit(f"--image: {name!r} is not in the sample; choose one of {', '.join(voc.names)}")
    item = voc.load(voc.names.index(name))
    rgb = F.interpolate(item["image"].as_subclass(Tensor)[None].float() / 255.0, size=(size, size),
                        mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)  # fmt: skip
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    mask = F.interpolate(item["mask"].as_subclass(Tensor)[None, None].float(), size=(size, size), mode="nearest")
    present = [int(c) for c in np.flatnonzero(item["labels"].numpy())]
    return ((rgb - mean) / std)[None], rgb, present, mask[0, 0].long()


def grid_masks(mask: Tensor, present: Sequence[int], grid: tuple[int, int]) -> Tensor:
    """Patches covered at least half by each present class (VOC ids are class index + 1)."""
    onehot = torch.stack([(mask == c + 1).float() for c in present])
    return F.adaptive_avg_pool2d(onehot[None], grid)[0] > 0.5


def _panel(values: np.ndarray | Tensor, caption: str) -> Image.Image:
    picture = values if isinstance(values, np.ndarray) else heatmap(values)
    img = Image.fromarray(picture).resize((PANEL, PANEL), Image.NEAREST)
    ImageDraw.Draw(img).text((3, 2), caption, fill="white")
    return img


def save_picture(rows: list[list[Image.Image]], path: Path) -> None:
    width = max(len(r) for r in rows) * (PANEL + 4)
    canvas = Image.new("RGB", (width, len(rows) * (PANEL + 4)), "white")
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            canvas.paste(panel, (j * (PANEL + 4), i * (PANEL + 4)))
    canvas.save(path)


# --------------------------------------------------------------------------- main
def run_one(backbone: Backbone, method: str, sample: tuple[Tensor, Tensor, list[int], Tensor],
            score_batch: int) -> tuple[dict[str, Any], list[Image.Image]]:  # fmt: skip
    """CAMs of all classes -> class distributions -> CDA; a summary row and the picture panels."""
    image, _rgb, present, mask = sample
    cams = all_class_cams(method, backbone, image, len(VOC_CLASSES), score_batch)
    grid_cams = to_grid(cams, backbone.grid)
    probs, refined = refine(backbone, grid_cams, present, image)
    masks = grid_masks(mask, present, backbone.grid)
    in_out = {"CAM": inside_outside(grid_cams[:, present], masks)}
    in_out.update({name: inside_outside(maps, masks) for name, maps in refined.items()})
    row = {
        "model": backbone.name, "method": method, "cams": list(cams.shape), "grid": list(grid_cams.shape[1:]),
        "probs": list(probs.shape),
        "present": [VOC_CLASSES[c] for c in present], "refined": list(next(iter(refined.values())).shape),
        "range": {name: [float(maps.min()), float(maps.max())] for name, maps in refined.items()},
        "in_out": in_out,
    }  # fmt: skip
    panels = []
    for i, c in enumerate(present):
        panels.append(_panel(cams[c], f"{method} {VOC_CLASSES[c]}"))
        panels += [_panel(maps[0, i], f"{name} {VOC_CLASSES[c]}") for name, maps in refined.items()]
    return row, panels


def _print_row(row: dict[str, Any]) -> None:
    in_out = "  ".join(f"{k} {a:.2f}/{b:.2f}" for k, (a, b) in row["in_out"].items())
    print(f"{row['model']:<9} {row['method']:<9}  cams {tuple(row['cams'])}  probs {tuple(row['probs'])}  "
          f"refined {tuple(row['refined'])}  in/out GT: {in_out}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="2008_007586", help="VOC id of the shipped sample (cow and person)")
    parser.add_argument("--size", type=int, default=112, help="input size in pixels (a multiple of 16)")
    parser.add_argument("--vit", default="test_vit",
                        help="timm ViT with a class token (default: timm's 6-block, 64-wide test ViT, so that "
                             "ScoreCAM's one pass per channel stays quick; e.g. vit_base_patch16_224)")
    parser.add_argument("--score-batch", type=int, default=64, help="ScoreCAM's masked images per forward pass")
    parser.add_argument("--scorecam-resnet", action="store_true",
                        help="also ScoreCAM on ResNet-50: 2048 channels, about 2048 forward passes (slow on a CPU)")
    parser.add_argument("--out", type=Path, default=None, help="folder for gradcam_cda.png and summary.json")
    args = parser.parse_args(argv)
    if args.size % 16:
        parser.error("--size: must be a multiple of 16 (the ViT's patch size)")

    sample = load_sample(args.image, args.size)
    print(f"image {args.image} at {args.size} px, present: {', '.join(VOC_CLASSES[c] for c in sample[2])}")
    print("(random weights: the maps show the plumbing, not accuracy; in/out GT = mean map on / off the objects)")
    rows, pictures = [], [[_panel((sample[1].permute(1, 2, 0).numpy() * 255).astype(np.uint8), args.image)]]
    # ScoreCAM of ResNet-50's layer4 needs 2048 masked forward passes: minutes on a CPU
    for backbone in (build_resnet50(len(VOC_CLASSES), args.size), build_vit(args.vit, len(VOC_CLASSES), args.size)):
        for method in METHODS:
            if method == "ScoreCAM" and backbone.name == "resnet50" and not args.scorecam_resnet:
                print(f"{backbone.name:<9} {method:<9}  skipped (2048 masked forward passes; pass --scorecam-resnet)")
                continue
            row, panels = run_one(backbone, method, sample, args.score_batch)
            _print_row(row)
            rows.append(row)
            pictures.append(panels)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        save_picture(pictures, args.out / "gradcam_cda.png")
        (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
        print(f"picture: {args.out / 'gradcam_cda.png'}, summary: {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
