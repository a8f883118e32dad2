"""``python tests/cli_driver.py ARGS``: the real ``cdclip`` command line with tiny random backbones.

Subprocess tests (SIGKILL, SIGTERM) need the CLI in a fresh process, where the tests' registered
backbones do not exist. This script registers ``tinyclip-cli:<any>`` (a 2-block open_clip ViT on
64 px) and ``tinydino-cli:<any>`` (a 2-block timm ViT-Tiny), both seeded from the global RNG as a
random initialisation is, then runs :func:`cdclip.cli.main`.
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_cams_argv(voc_root: object, out: object, *extra: str, split: str = "val") -> list[str]:
    """``cdclip cams`` on the VOC sample with the tiny CLIP (64 px, one PAR iteration)."""
    return ["cams", "--voc", str(voc_root), "--split", split, "--out", str(out), "--backbone", "tinyclip-cli:x",
            "--long-side", "64", "--par-iters", "1", *extra]  # fmt: skip


def tiny_train_argv(voc_root: object, out: object, *extra: str) -> list[str]:
    """``cdclip train`` on the VOC sample with the tiny CLIP and DINO (2 iterations, 64 px crops)."""
    return ["train", "--data-root", str(voc_root), "--out", str(out), "--weights", "none", "--dino-weights", "none",
            "--iters", "2", "--device", "cpu", "--workers", "0", "--batch-size", "2", "--no-progress",
            "--set", "model.clip=tinyclip-cli:x", "--set", "model.dino=tinydino-cli:x", "--set", "data.crop_size=64",
            "--set", "model.decoder_dim=32", "--set", "model.decoder_heads=4", "--set", "model.decoder_layers=1",
            "--set", "model.par_iters=1", "--set", "log_every=1", *extra]  # fmt: skip


def register_tiny_backbones() -> None:
    import torch
    from oracle_backbone import tiny_openclip_backbone

    from cdclip.backbones.dino import DinoBackbone
    from cdclip.registry import registry

    def clip(name: str, **kwargs: object) -> object:
        return tiny_openclip_backbone(image_size=64, layers=2, seed=int(torch.randint(0, 2**31 - 1, ())))

    def dino(name: str, **kwargs: object) -> object:
        return DinoBackbone("vit_tiny_patch16_224", pretrained=False, depth=2)

    registry.register("tinyclip-cli", clip, kind="backbone", prefix=True, override=True)
    registry.register("tinydino-cli", dino, kind="backbone", prefix=True, override=True)


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    register_tiny_backbones()
    from cdclip.cli import main

    sys.exit(main(sys.argv[1:]))
