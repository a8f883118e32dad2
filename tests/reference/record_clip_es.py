"""Record CLIP-ES's own outputs on a few VOC images as small reference arrays.

CLIP-ES (Lin et al., CVPR 2023), https://github.com/linyq2117/CLIP-ES, commit 3893f81. Its code is
NOT copied here: this script imports CLIP-ES's modules from a checkout given on the command line
and only observes them (wrapping module-level functions from the outside). Procedure:

1. (optional, ``--voc-src``) build the VOC root CLIP-ES needs: ``generate_cams_voc12.py`` reads
   labels and image size from ``Annotations/<id>.xml``; they are written from
   ``cls_labels_onehot.npy`` (one ``<object><name>`` per present class, in VOC class order) and the
   image's real width/height; JPEGImages, SegmentationClassAug and the label file are symlinked;
   ``ImageSets/Segmentation/<split>.txt`` lists the ids (for ``cdclip cams --split``).
2. ``import generate_cams_voc12`` (CLIP-ES's dir on ``sys.path``) and build everything the way its
   ``__main__`` does, with its own functions: ``clip.load(weights, device="cpu")`` (fp16 round trip,
   then ``float()`` on CPU), ``zeroshot_classifier`` for ``BACKGROUND_CATEGORY`` and
   ``new_class_names`` with the template ``'a clean origami {}.'``, ``GradCAM`` on
   ``model.visual.transformer.resblocks[-1].ln_1`` with its ``reshape_transform``. That transform's
   28x28 default is never used when CLIP-ES runs: ``BaseCAM.forward`` passes the input's real
   ``(h, w)`` (the last two items of ``input_tensor``) to ``ActivationsAndGradients``, which calls
   ``reshape_transform(x, h // 16, w // 16)``; this script uses the same objects, so the same path.
3. call its ``perform(0, [ids], args, model, bg, fg, cam)`` once for all ids. ``perform`` takes
   ``"cuda:%d" % (process_id % torch.cuda.device_count())`` as its device; to run it on a CPU-only
   machine ``torch.cuda.device_count`` is made to return 1 and ``Tensor.to`` / ``Module.to`` map any
   CUDA device to ``"cpu"`` (nothing else is changed).
4. observe, per image and per present class in CLIP-ES's key order: the ``grayscale_cam`` returned
   by the GradCAM object (initial CAM on the patch grid, min-max normalised), the boxes returned by
   ``scoremap2bbox``, the raw ``cam_refined`` handed to ``scale_cam_image`` (patch grid, not
   normalised), the softmax scores of the first GradCAM call, the input size fed to CLIP; then read
   the ``.npy`` that ``perform`` saved (``keys``, ``attn_highres`` float16 at image size).
5. run ``eval_cam.run_eval_cam`` on that folder (``cam_type='attn_highres'``) with
   ``cam_eval_thres`` 2 (eval_cam.py's argparse default: background ``(1 - max_c M_c)^2``) and 1
   (the other value its attn sweep tries, and the exponent ``eval_cam_with_crf.py`` uses), capturing
   the label maps it builds by wrapping its ``scores`` function.

Run with the CLIP-ES venv (it needs cv2, ttach, lxml, pkg_resources), on CPU::

    /work/baselines/venv-clipes/bin/python tests/reference/record_clip_es.py \\
        --clip-es /work/baselines/CLIP-ES --voc /work/baselines/voc_clipes \\
        --voc-src /work/shared/data/VOC2012 --weights /work/baselines/rand_vitb16_seed0.pt --seed 0 \\
        --ids 2008_007586 2009_000637 2010_005582 2011_000003 2011_000025 \\
        --out tests/data/reference/clip_es_voc.npz

npz entries (``<id>/...`` per image): ``keys`` (P,) class ids 0..19, ``image_hw``, ``input_hw``,
``cam`` (P, h, w) float32, ``refined_raw`` (P, h, w) float32, ``probs`` (P + 25,) float32,
``boxes`` (n, 4) int32 ``x0 y0 x1 y1`` as CLIP-ES slices them (``[y0:y1, x0:x1]``) with
``box_counts`` (P,), ``attn_highres`` float16 at image size subsampled to ``[:, ::S, ::S]``
(``attn_highres_stride`` S = 4 by default, so the file stays ~0.2 MB; the full maps are ~2 MB),
``labels_thres2`` / ``labels_thres1``
(H, W) uint8 (0 = background, k + 1 = class k); global: ``ids``, ``seed``, ``commit``,
``weights_sha256``, ``miou_thres2`` / ``miou_thres1`` (eval_cam's mIoU on these images; meaningless
with random weights, recorded as a check), ``perform_seconds`` per image.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

CLIP_ES_COMMIT = "3893f81"
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
EVAL_THRESHOLDS = (2.0, 1.0)  # eval_cam.py default first


def build_voc_root(src: Path, dst: Path, ids: list[str], split: str = "clipes_ref") -> None:
    """VOC root with Annotations/<id>.xml from ``cls_labels_onehot.npy`` (see module docstring, step 1)."""
    from PIL import Image

    (dst / "Annotations").mkdir(parents=True, exist_ok=True)
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for name in ("JPEGImages", "SegmentationClassAug", "cls_labels_onehot.npy"):
        if not (dst / name).exists() and not (dst / name).is_symlink():
            (dst / name).symlink_to((src / name).resolve())
    labels = np.load(src / "cls_labels_onehot.npy", allow_pickle=True).item()
    for i in ids:
        with Image.open(src / "JPEGImages" / f"{i}.jpg") as im:
            width, height = im.size
        objects = "".join(
            f"<object><name>{VOC_CLASSES[c]}</name></object>" for c in np.flatnonzero(labels[i])
        )
        (dst / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objects}</annotation>\n"
        )
    (dst / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


def cpu_shim() -> None:
    """Let CLIP-ES's ``perform`` (which always picks a ``cuda:N`` device) run on the CPU."""
    import torch

    def _cpu(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("cuda"):
            return "cpu"
        if isinstance(value, torch.device) and value.type == "cuda":
            return torch.device("cpu")
        return value

    def _wrap(original: Any) -> Any:
        def to(self: Any, *args: Any, **kwargs: Any) -> Any:
            args = tuple(_cpu(a) for a in args)
            if "device" in kwargs:
                kwargs["device"] = _cpu(kwargs["device"])
            return original(self, *args, **kwargs)

        return to

    torch.cuda.device_count = lambda: 1
    torch.Tensor.to = _wrap(torch.Tensor.to)
    torch.nn.Module.to = _wrap(torch.nn.Module.to)


class _CamProbe:
    """Stands in for CLIP-ES's GradCAM object in ``perform``: calls it and keeps what it returns."""

    def __init__(self, cam: Any, log: list[dict[str, Any]]) -> None:
        self.cam, self.log = cam, log

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        grayscale_cam, logits, attn_last = self.cam(*args, **kwargs)
        self.log.append({"cam": np.array(grayscale_cam[0], dtype=np.float32, copy=True),
                         "probs": logits.detach().float().cpu().numpy().reshape(-1)})  # fmt: skip
        return grayscale_cam, logits, attn_last


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def record(
    clip_es: Path, voc: Path, weights: Path, ids: list[str], seed: int, highres_stride: int = 4
) -> dict[str, np.ndarray]:
    import torch

    sys.path.insert(0, str(clip_es))
    cpu_shim()
    import clip  # CLIP-ES's vendored OpenAI CLIP
    import eval_cam
    import generate_cams_voc12 as gen
    from pytorch_grad_cam import GradCAM

    device = "cpu"
    gen.device = device  # __main__'s global, read by zeroshot_classifier
    model, _ = clip.load(str(weights), device=device)
    bg = gen.zeroshot_classifier(gen.BACKGROUND_CATEGORY, ["a clean origami {}."], model)
    fg = gen.zeroshot_classifier(gen.new_class_names, ["a clean origami {}."], model)
    cam = GradCAM(model=model, target_layers=[model.visual.transformer.resblocks[-1].ln_1],
                  reshape_transform=gen.reshape_transform)  # fmt: skip

    cam_log: list[dict[str, Any]] = []
    refined_log: list[np.ndarray] = []
    box_log: list[tuple[np.ndarray, int]] = []
    input_log: list[tuple[int, int]] = []
    stamps: list[float] = []
    original = {k: getattr(gen, k) for k in ("scale_cam_image", "scoremap2bbox", "img_ms_and_flip", "tqdm")}

    def scale_cam_image(cams: Any, target_size: Any = None) -> Any:
        refined_log.append(np.array(cams[0], dtype=np.float32, copy=True))
        return original["scale_cam_image"](cams, target_size)

    def scoremap2bbox(*args: Any, **kwargs: Any) -> Any:
        boxes, count = original["scoremap2bbox"](*args, **kwargs)
        box_log.append((np.asarray(boxes, dtype=np.int32).reshape(-1, 4), int(count)))
        return boxes, count

    def img_ms_and_flip(*args: Any, **kwargs: Any) -> Any:
        images = original["img_ms_and_flip"](*args, **kwargs)
        input_log.append(tuple(int(s) for s in images[0].shape[-2:]))
        return images

    def tqdm(items: Any) -> Any:
        for item in items:
            stamps.append(time.perf_counter())
            yield item
        stamps.append(time.perf_counter())

    gen.scale_cam_image, gen.scoremap2bbox, gen.img_ms_and_flip, gen.tqdm = (
        scale_cam_image, scoremap2bbox, img_ms_and_flip, tqdm)  # fmt: skip

    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        args = SimpleNamespace(img_root=str(voc / "JPEGImages"), cam_out_dir=tmp)
        torch.manual_seed(0)
        gen.perform(0, [[f"{i}.jpg" for i in ids]], args, model, bg, fg, _CamProbe(cam, cam_log))
        for k, v in original.items():
            setattr(gen, k, v)

        start = 0
        for n, i in enumerate(ids):
            saved = np.load(os.path.join(tmp, f"{i}.npy"), allow_pickle=True).item()
            keys = np.asarray(saved["keys"], dtype=np.int64)
            p = len(keys)
            calls = slice(start, start + p)
            start += p
            boxes = box_log[calls]
            out[f"{i}/keys"] = keys
            out[f"{i}/image_hw"] = np.asarray(saved["attn_highres"].shape[-2:], dtype=np.int64)
            out[f"{i}/input_hw"] = np.asarray(input_log[n], dtype=np.int64)
            out[f"{i}/cam"] = np.stack([c["cam"] for c in cam_log[calls]])
            out[f"{i}/probs"] = cam_log[calls][0]["probs"]
            out[f"{i}/refined_raw"] = np.stack(refined_log[calls])
            out[f"{i}/boxes"] = np.concatenate([b[:c] for b, c in boxes]).astype(np.int32)
            out[f"{i}/box_counts"] = np.asarray([c for _, c in boxes], dtype=np.int32)
            highres = np.asarray(saved["attn_highres"], dtype=np.float16)
            out[f"{i}/attn_highres"] = highres[:, ::highres_stride, ::highres_stride]
        out["perform_seconds"] = np.diff(np.asarray(stamps))

        for thres in EVAL_THRESHOLDS:
            preds: list[np.ndarray] = []
            scores = eval_cam.scores

            def capture(
                label_trues: Any, label_preds: Any, n_class: int, _scores: Any = scores, _preds: Any = preds
            ) -> Any:
                _preds.extend(np.asarray(p, dtype=np.uint8) for p in label_preds)
                return _scores(label_trues, label_preds, n_class)

            eval_cam.scores = capture
            eval_cam.eval_list = list(ids)
            eval_args = SimpleNamespace(cam_out_dir=tmp, cam_type="attn_highres", cam_eval_thres=thres,
                                        gt_root=str(voc / "SegmentationClassAug"))  # fmt: skip
            miou = eval_cam.run_eval_cam(eval_args, print_log=False, is_coco=False)
            eval_cam.scores = scores
            for i, pred in zip(ids, preds, strict=True):
                out[f"{i}/labels_thres{thres:g}"] = pred
            out[f"miou_thres{thres:g}"] = np.float64(miou)

    out["attn_highres_stride"] = np.int64(highres_stride)
    out["ids"] = np.asarray(ids)
    out["seed"] = np.int64(seed)
    out["commit"] = np.asarray(CLIP_ES_COMMIT)
    out["weights_sha256"] = np.asarray(sha256(weights))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-es", type=Path, required=True, help="CLIP-ES checkout (commit 3893f81)")
    parser.add_argument("--voc", type=Path, required=True, help="VOC root with Annotations/<id>.xml")
    parser.add_argument("--voc-src", type=Path, default=None, help="build --voc from this VOC2012 root first")
    parser.add_argument("--weights", type=Path, required=True, help="OpenAI-layout ViT-B/16 state dict")
    parser.add_argument("--seed", type=int, default=0, help="seed the weights were made with (recorded)")
    parser.add_argument("--ids", nargs="+", required=True)
    parser.add_argument(
        "--highres-stride",
        type=int,
        default=4,
        help="keep attn_highres[:, ::S, ::S] only (1: full maps, ~2 MB for 5 images)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.voc_src is not None:
        build_voc_root(args.voc_src, args.voc, args.ids)
    arrays = record(
        args.clip_es.resolve(),
        args.voc.resolve(),
        args.weights.resolve(),
        args.ids,
        args.seed,
        args.highres_stride,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    per_image = arrays["perform_seconds"]
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KiB, {len(args.ids)} images, "
          f"perform {per_image.sum():.1f} s ({np.median(per_image):.2f} s/image median)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
