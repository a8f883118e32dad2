"""SBE in your own training loop: ``SuperClassPrototypes`` and ``BoundaryEnhancedLoss`` around a small net.

    python examples/custom_training_loop.py               # 10 iterations on two VOC images
    python examples/custom_training_loop.py --iters 50

Each iteration, as in CD-CLIP's single-stage training:

1. a frozen ViT gives dense patch features -- a randomly initialised timm ViT-Tiny/16 built by
   ``cdclip.create("timm:vit_tiny_patch16_224", pretrained=False)``, standing in for DINO (and,
   below, for CLIP);
2. CAMs of the image's classes come from those features scored against one fixed embedding per
   class (the shape of CLIP's patch-text CAMs; your CAM method goes here), are refined by
   ``CDAModule`` with the class distributions of the patches, and give pseudo labels;
3. ``SuperClassPrototypes("voc")`` (person / animal / vehicle / indoor) builds DINO prototypes,
   the boundary band between super-classes and band-corrected labels;
4. the trainable net -- a tiny conv net of your own -- learns from the balanced cross-entropy on
   the pseudo labels plus ``BoundaryEnhancedLoss`` on the band (weight 1, cdclip's ``lambda_be``).

With random weights the labels are arbitrary, so falling losses only show that the pieces fit.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import cdclip
from cdclip.data import VOC_CLASSES, VOCSegmentation

VOC_ROOT = Path(__file__).resolve().parent / "data" / "VOC2012"
IMAGES = ("2008_007586", "2009_000637")  # cow + person, motorbike + person: three super-classes
SIZE = 128  # training crop; the ViT's patch grid is 8x8
BACKGROUND_SCORE = 0.5  # a pixel is foreground where a refined CAM exceeds this
LAMBDA_BE = 1.0


class TinySegNet(nn.Module):
    """Your segmentation model: three strided conv blocks and a 1x1 classifier (background first)."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))  # fmt: skip

        self.body = nn.Sequential(block(3, width), block(width, 2 * width), block(2 * width, 2 * width))
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        logits = self.classifier(self.body(images))
        # the losses compare at label resolution
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def load_batch() -> tuple[Tensor, Tensor]:
    """Images (B, 3, SIZE, SIZE) in [0, 1] and their image-level labels (B, 20) from the label file."""
    voc = VOCSegmentation(VOC_ROOT, "train_aug")
    images, labels = [], []
    for name in IMAGES:
        item = voc.load(voc.names.index(name))
        image = item["image"].as_subclass(Tensor)[None].float() / 255.0
        images.append(F.interpolate(image, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False))
        labels.append(item["labels"].as_subclass(Tensor))
    return torch.cat(images).clamp(0, 1), torch.stack(labels)


def flip_some(images: Tensor, generator: torch.Generator) -> Tensor:
    """Random horizontal flips: the online pseudo labels follow the augmented images."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def placeholder_cams(features: Tensor, class_embeddings: Tensor, labels: Tensor) -> Tensor:
    """CAMs of the present classes: ReLU(cos(patch, class)), each map min-max normalised; absent = 0.

    Shape:
        - features: (B, N, D) on a square grid
        - class_embeddings: (C, D)
        - labels: (B, C)
        - output: (B, C, h, w)
    """
    b, n, _ = features.shape
    side = math.isqrt(n)
    scores = F.normalize(features, dim=-1) @ F.normalize(class_embeddings, dim=-1).T  # (B, N, C)
    cams = scores.clamp_min(0).transpose(1, 2).reshape(b, -1, side, side)
    flat = cams.flatten(2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    cams = ((flat - low) / (high - low + 1e-7)).view_as(cams)
    return cams * labels[:, :, None, None]


def pseudo_labels(cams: Tensor, size: tuple[int, int]) -> Tensor:
    """Class ids 0..C at label resolution (0 = background) from refined CAMs of the present classes."""
    up = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    background = torch.full_like(up[:, :1], BACKGROUND_SCORE)
    return torch.cat([background, up], dim=1).argmax(dim=1)


class FrozenTargets:
    """Steps 1-3: the frozen part of the loop, from images to pseudo labels and the SBE output."""

    def __init__(self, num_classes: int) -> None:
        with warnings.catch_warnings():  # the randomly initialised ViT is the point here, not a mistake
            warnings.simplefilter("ignore")
            self.vit = cdclip.create("timm:vit_tiny_patch16_224", pretrained=False)
        # num_classes foreground embeddings and one background word, like a CLIP text classifier
        self.text = torch.randn(num_classes + 1, self.vit.embed_dim, generator=torch.Generator().manual_seed(1))
        self.num_classes = num_classes
        self.cda = cdclip.CDAModule(fusion="replace")
        self.sbe = cdclip.SuperClassPrototypes("voc")

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, cdclip.SBEOutput]:
        features = self.vit(images)  # (B, 64, 192), L2-normalised
        cams = placeholder_cams(features, self.text[: self.num_classes], labels)
        probs = cdclip.class_probs_from_features(features, self.text)  # over classes and background word
        refined = self.cda(cams, probs, present=labels)
        pseudo = pseudo_labels(refined, tuple(images.shape[-2:]))
        return pseudo, self.sbe(refined, labels, features, pseudo)


def train(iters: int, lr: float) -> list[float]:
    torch.manual_seed(0)
    images, labels = load_batch()
    targets = FrozenTargets(len(VOC_CLASSES))
    net = TinySegNet(len(VOC_CLASSES) + 1)
    seg_loss, be_loss = cdclip.BalancedCrossEntropy(), cdclip.BoundaryEnhancedLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    totals = []
    for it in range(1, iters + 1):
        batch = flip_some(images, generator)
        pseudo, sbe = targets(batch, labels)
        logits = net(batch)
        l_seg, l_be = seg_loss(logits, pseudo), be_loss(logits, sbe)
        loss = l_seg + LAMBDA_BE * l_be
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seg, be = float(l_seg.detach()), float(l_be.detach())
        totals.append(seg + LAMBDA_BE * be)
        changed = int((sbe.corrected_labels != pseudo).sum())
        print(f"iter {it:3d}/{iters}  L_seg {seg:.4f}  L_be {be:.4f}  total {totals[-1]:.4f}  "
              f"band {100 * float(sbe.band.float().mean()):.1f}% of pixels, {changed} labels corrected")  # fmt: skip
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args(argv)
    print(f"images {', '.join(IMAGES)} at {SIZE} px; frozen random ViT-Tiny/16 (DINO and CAM stand-in)")
    totals = train(args.iters, args.lr)
    print(f"total loss: {totals[0]:.4f} -> {totals[-1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
