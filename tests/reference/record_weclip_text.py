"""Record WeCLIP's own text classifier (foreground classes, then background words) on the seeded CLIP.

WeCLIP (github.com/zbf1991/WeCLIP, commit 0f47db4). Nothing of WeCLIP is copied: this imports its
modules from the checkout and calls its ``zeroshot_classifier`` with the template it uses
(``'a clean origami {}.'``) on ``new_class_names`` and ``BACKGROUND_CATEGORY``, on the CPU float32
path (``clip.load(device="cpu")``), with the process patches of ``record_weclip.py``. Run::

    /work/baselines/venv-weclip/bin/python tests/reference/record_weclip_text.py \\
        --weclip /work/baselines/WeCLIP-src/WeCLIP --weights /work/baselines/rand_vitb16_seed0.pt \\
        --out tests/data/reference/weclip_voc_text.npz

Stored: ``text`` (45, 512) float32 (20 foreground rows, then 25 background words), ``commit``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import record_weclip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weclip", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record_weclip.patch_process(args.weclip)
    clip = importlib.import_module("clip")
    texts = importlib.import_module("clip.clip_text")
    model_module = importlib.import_module("WeCLIP_model.model_attn_aff_voc")
    model, _ = clip.load(str(args.weights), device="cpu")
    fg = model_module.zeroshot_classifier(texts.new_class_names, ["a clean origami {}."], model)
    bg = model_module.zeroshot_classifier(texts.BACKGROUND_CATEGORY, ["a clean origami {}."], model)
    text = torch.cat([fg, bg]).float().numpy()
    np.savez_compressed(args.out, text=text, commit=np.array("0f47db4"))
    print(f"wrote {args.out}: text {text.shape}")


if __name__ == "__main__":
    main()
