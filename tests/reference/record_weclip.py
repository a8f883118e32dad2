"""Record WeCLIP's own training-time pseudo labels as small reference arrays for cdclip's tests.

Reference: WeCLIP (Zhang et al., CVPR 2024), github.com/zbf1991/WeCLIP, folder ``WeCLIP/``, commit
0f47db4. Nothing of WeCLIP is copied here: this script imports WeCLIP's modules from a checkout
given on the command line and only observes them from outside (wrappers around module-level
functions, a forward hook) or patches the process so that they run on a CPU-only machine.

Procedure (``python tests/reference/record_weclip.py --weclip WeCLIP/ --voc VOC2012/ --lists L/
--weights W.pt --out tests/data/reference/weclip_voc.npz``, run in a venv that has WeCLIP's
imports):

1. Process patches, none of which changes a number: ``Tensor.cuda`` / ``Module.cuda`` return
   ``self``; stand-in modules for imports that the code paths used here never call (``mmcv``,
   ``pydensecrf``, ``sklearn``, ``matplotlib``, ``torch.utils.tensorboard``,
   ``numpy.lib.utils.deprecate``, gone in numpy 2).
2. Crops: WeCLIP's ``datasets.voc.VOC12ClsDataset`` with the settings of its
   ``configs/voc_attn_reg.yaml`` and of ``scripts/dist_clip_voc.py`` (``split=train_aug``,
   ``stage=train``, ``aug=True``, rescale 0.5–2.0, flip, 320×320 crop with black padding,
   ImageNet mean/std on the 0–255 scale). Crop ``k`` is item ``k % len(dataset)`` drawn right after
   ``random.seed(SEED + k); np.random.seed(SEED + k)``. The uint8 pixels entering
   ``normalize_img`` are observed and stored; the script checks that
   ``(uint8 − mean) / std`` in float32 rebuilds WeCLIP's input tensor bitwise.
3. Model: ``WeCLIP_model.model_attn_aff_voc.WeCLIP`` (21 classes, embedding 256, in_channels 768,
   the seeded random CLIP of ``cdclip.testing`` as the OpenAI-layout checkpoint, the dataset root
   as ``dataset_root_path``: WeCLIP reads each image's classes from its *ground-truth mask*
   ``SegmentationClassAug/<id>.png`` inside ``forward``, reproduced as is). Two precisions:

   * ``fp32``: ``clip.load(device="cpu")``, i.e. WeCLIP's CPU path, which calls ``model.float()``;
     WeCLIP still rounds the interpolated position embedding to fp16 and runs every attention
     out-projection (image tower, text tower, decoder) as ``F.linear`` on ``.half()`` tensors.
   * ``fp16``: ``clip.load(device="cpu:0")``: the same loader without the ``model.float()`` that
     only ``device == "cpu"`` triggers, so the encoder keeps the dtypes it has on CUDA, where WeCLIP
     trains: fp16 patch conv, MLPs, out-projections, ``proj`` and ``text_projection``, fp16
     residual stream; LayerNorms and the attention in-projection/softmax in fp32 (``myAtt``
     casts q/k/v to float). CPU fp16 kernels, so close to, not bitwise equal to, a GPU run.

   The decoder (``decoder_fts_fuse`` + ``decoder``) gets the seeded weights of
   ``weclip_decoder_map.random_decoder_state`` mapped by ``to_weclip``, and is put in eval mode:
   its only stochastic module is the ``Dropout2d(0.1)`` after the fusion convolution, whose output
   is also ``attn_fts`` (so dropout would change ``seg``, ``attn_pred`` and, after iteration
   15000, the pseudo labels); eval makes the reference deterministic.
4. Each crop is passed alone (batch 1) through ``WeCLIP.forward(img, [name])`` twice: with
   ``iter_num = 0`` (becomes 1: the decoder-affinity refinement is off) and with
   ``iter_num = 15000`` (becomes 15001 > 15000: on). Observed: the classes WeCLIP used (``keys``),
   the GradCAM maps on the patch grid (wrapper around the ``GradCAM`` object), the refined maps on
   the patch grid before min–max/upsampling (``cam_refined_list``, wrapper around
   ``perform_single_voc_cam``), the online pseudo labels (``all_cam_labels``), ``seg``, a few rows
   of ``attn_pred``, the blocks kept by the decoder-affinity rule (derived from the observed
   attention and checked against the affinity WeCLIP hands to ``compute_trans_mat``) and the two
   losses of ``scripts/dist_clip_voc.py`` (``get_seg_loss``, ``get_aff_loss`` with
   ``cams_to_affinity_label`` and the radius-8 mask).
5. The dtypes that ran in the out-projection (``F.linear`` inputs inside ``clip/myAtt.py``) are
   recorded too (``meta_json``).

Stored arrays (``P`` = ``fp32__`` or ``fp16__``; crop ``n`` of ``N``, ``C = 20`` foreground
classes, grid 20×20): ``names (N,)``, ``crops_png (N,)`` object-free: ``crops_png_bytes`` +
``crops_png_offsets`` (lossless PNG of the (320, 320, 3) uint8 crops), ``img_box (N, 4)``
(WeCLIP's own box: its end is in canvas coordinates, see :func:`valid_box`), ``valid_box (N, 4)``
(``[y0, y1, x0, x1]`` of the image inside the crop; outside it is black padding), ``scale (N,)``,
``flip (N,)``, ``classes (N, C)`` (from the GT mask), ``norm_mean``/``norm_std`` (3,),
``P cams (N, C, 20, 20)`` (GradCAM, absent classes 0), ``P refined_off``/``P refined_on``
``(N, C, 20, 20)``, ``P labels_off``/``P labels_on (N, 320, 320) uint8``, ``P seg (N, 21, 20,
20)``, ``P attn_pred_rows (N, R, 400)`` for the rows ``attn_pred_row_ids (R,)``, ``P kept_blocks_on
(N, 6)`` (blocks 7–12, WeCLIP's float32 choice), ``P kept_blocks_on_f64 (N, 6)`` and
``P kept_margin_on_f64 (N,)`` (the same rule summed in float64, and its margin: see
:func:`kept_blocks`), ``P loss_seg_off/on``, ``P loss_aff_off/on (N,)`` (NaN where WeCLIP's
``get_seg_loss`` averages an empty background or foreground part), ``meta_json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.machinery
import importlib.util
import io
import json
import random
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from weclip_decoder_map import DECODER_SEED, random_decoder_state, to_weclip  # noqa: E402

SEED = 0  # crop k is drawn after seeding Python's and numpy's RNGs with SEED + k
NUM_CROPS = 10
ATTN_ROWS = (0, 21, 189, 210, 399)  # rows of attn_pred stored (corners and centre of the 20x20 grid)
WECLIP_COMMIT = "0f47db4"


# ----------------------------------------------------------------------------- process patches
class _Anything(types.ModuleType):
    """A stand-in module: any attribute is another stand-in (never called on the paths used)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Anything(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"stand-in {self.__name__} called")


def _stub(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in sys.modules:
                sys.modules[sub] = _Anything(sub)
                sys.modules[sub].__spec__ = importlib.machinery.ModuleSpec(sub, None)
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], sys.modules[sub])


def patch_process(weclip: Path, cpu: bool = True) -> None:
    """CPU-only (``cpu=True``), numpy-2 process for WeCLIP's modules (module docstring, step 1)."""
    import torchvision  # noqa: F401  (imported before the stand-ins exist: torch._dynamo scans modules)

    if cpu:
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        import numpy.lib.utils  # noqa: F401
    except ImportError:
        module = types.ModuleType("numpy.lib.utils")
        module.deprecate = lambda *a, **k: lambda f: f  # type: ignore[attr-defined]
        sys.modules["numpy.lib.utils"] = module
    for name in (
        "mmcv", "mmcv.cnn", "pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils",
        "sklearn", "sklearn.metrics", "matplotlib", "matplotlib.pyplot", "torch.utils.tensorboard",
    ):  # fmt: skip
        _stub(name)
    sys.path.insert(0, str(weclip))


# ----------------------------------------------------------------------------- crops
def make_crops(weclip: Path, voc: Path, lists: Path, num: int = NUM_CROPS, seed: int = SEED) -> dict:
    """WeCLIP's own training crops (module docstring, step 2)."""
    from omegaconf import OmegaConf

    transforms = importlib.import_module("datasets.transforms")
    voc_mod = importlib.import_module("datasets.voc")
    cfg = OmegaConf.load(weclip / "configs" / "voc_attn_reg.yaml")
    dataset = voc_mod.VOC12ClsDataset(
        root_dir=str(voc), name_list_dir=str(lists), split=cfg.train.split, stage="train", aug=True,
        resize_range=cfg.dataset.resize_range, rescale_range=cfg.dataset.rescale_range,
        crop_size=cfg.dataset.crop_size, img_fliplr=True, ignore_index=cfg.dataset.ignore_index,
        num_classes=cfg.dataset.num_classes,
    )  # fmt: skip
    seen: dict = {}
    originals = {n: getattr(transforms, n) for n in ("_img_rescaling", "random_fliplr", "normalize_img")}

    def rescaling(image, label=None, scale=None):
        seen["scale"] = float(scale)
        return originals["_img_rescaling"](image, label, scale=scale)

    def fliplr(image, label=None):
        out = originals["random_fliplr"](image, label)
        seen["flip"] = out is not image
        return out

    def normalize(img, *args, **kwargs):
        seen["pixels"] = np.array(img, copy=True)
        seen["norm_args"] = (args, kwargs)
        return originals["normalize_img"](img, *args, **kwargs)

    transforms._img_rescaling, transforms.random_fliplr, transforms.normalize_img = (
        rescaling,
        fliplr,
        normalize,
    )
    out: dict = {k: [] for k in ("names", "images", "pixels", "img_box", "valid_box", "scale", "flip")}
    try:
        for k in range(num):
            random.seed(seed + k)
            np.random.seed(seed + k)  # noqa: NPY002  (WeCLIP draws from numpy's global RNG)
            name, image, _cls_label, img_box = dataset[k % len(dataset)]
            pixels = seen["pixels"]
            if not (np.array_equal(pixels, np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
                raise RuntimeError(f"crop {k}: pixels entering normalize_img are not uint8 values")
            out["names"].append(str(name))
            out["images"].append(np.asarray(image, dtype=np.float32))
            out["pixels"].append(pixels.astype(np.uint8))
            out["img_box"].append(np.asarray(img_box, dtype=np.int64))
            out["valid_box"].append(valid_box(np.asarray(img_box), pixels.shape[0]))
            out["scale"].append(seen["scale"])
            out["flip"].append(bool(seen["flip"]))
    finally:
        for n, f in originals.items():
            setattr(transforms, n, f)
    import inspect

    defaults = inspect.signature(transforms.normalize_img).parameters
    out["mean"] = np.asarray(defaults["mean"].default, dtype=np.float64)
    out["std"] = np.asarray(defaults["std"].default, dtype=np.float64)
    return out


def valid_box(img_box: np.ndarray, crop: int) -> np.ndarray:
    """``[y0, y1, x0, x1]`` of the image inside the crop, in crop coordinates.

    WeCLIP's ``img_box`` (from ToCo's ``random_crop``) gives the start in crop coordinates but the
    end in the coordinates of the padded canvas (``min(crop_end, pad + size)``); along a side that
    was not padded the canvas end can exceed the crop. Along a padded side the crop starts at 0,
    so the canvas end is the crop end; either way ``min(end, crop)`` is the end in the crop.
    """
    y0, y1, x0, x1 = (int(v) for v in img_box)
    return np.asarray([y0, min(y1, crop), x0, min(x1, crop)], dtype=np.int64)


def rebuild_input(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 ``(x − mean) / std`` in float32 (our own code).

    Shape:
        - pixels: (H, W, 3) uint8
        - output: (3, H, W) float32
    """
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------- model
def build_weclip(weights: Path, voc: Path, precision: str, decoder_seed: int = DECODER_SEED) -> nn.Module:
    """WeCLIP's model with the random CLIP and the seeded decoder (module docstring, step 3).

    ``precision``: ``"fp32"`` (CPU path), ``"fp16"`` (CUDA dtypes on the CPU) or ``"cuda"`` (a real
    CUDA device, as WeCLIP trains; needs ``patch_process(cpu=False)``).
    """
    mod = importlib.import_module("WeCLIP_model.model_attn_aff_voc")
    device = {"fp32": "cpu", "fp16": "cpu:0", "cuda": "cuda"}[precision]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every parameter name
        model = mod.WeCLIP(
            num_classes=21, clip_model=str(weights), embedding_dim=256, in_channels=[768] * 4,
            dataset_root_path=str(voc), device=device,
        )  # fmt: skip
    missing, unexpected = model.load_state_dict(to_weclip(random_decoder_state(decoder_seed)), strict=False)
    decoder_keys = {k for k in model.state_dict() if k.startswith(("decoder.", "decoder_fts_fuse."))}
    if unexpected or decoder_keys & set(missing):
        raise RuntimeError(
            f"decoder mapping: missing {sorted(decoder_keys & set(missing))}, unexpected {unexpected}"
        )
    model.decoder.eval()
    model.decoder_fts_fuse.eval()
    return model


class Recorder:
    """Wrappers around WeCLIP's module-level functions and GradCAM object (observe only)."""

    def __init__(self, model: nn.Module) -> None:
        self.mod = importlib.import_module("WeCLIP_model.model_attn_aff_voc")
        self.tool = importlib.import_module("clip.clip_tool")
        self.att = importlib.import_module("clip.myAtt")
        self.model = model
        self.reset()
        self.linear_dtypes: set[tuple[str, str, str]] = set()
        self._install()

    def reset(self) -> None:
        self.gradcam: list[np.ndarray] = []
        self.refined: list[list[torch.Tensor]] = []
        self.keys: list[list[int]] = []
        self.trans_input: list[torch.Tensor] = []
        self.attn_blocks: list[torch.Tensor] = []
        self.attn_last: list[torch.Tensor] = []
        self.block_tokens: list[torch.Tensor] = []
        self.par_io: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _install(self) -> None:
        rec = self
        cam = self.model.grad_cam

        class CamProxy:
            def __call__(self, *args, **kwargs):
                grayscale, logits, attn_last = cam(*args, **kwargs)
                rec.gradcam.append(np.array(grayscale, copy=True))
                rec.attn_last.append(attn_last.detach().clone())
                return grayscale, logits, attn_last

            def __getattr__(self, name: str):
                return getattr(cam, name)

        self.model.grad_cam = CamProxy()

        perform = self.mod.perform_single_voc_cam

        def perform_single_voc_cam(*args, **kwargs):
            cam_refined_list, keys, w, h = perform(*args, **kwargs)
            rec.refined.append([c.detach().clone() for c in cam_refined_list])
            rec.keys.append([int(k) for k in keys])
            return cam_refined_list, keys, w, h

        self.mod.perform_single_voc_cam = perform_single_voc_cam

        trans = self.tool.compute_trans_mat

        def compute_trans_mat(attn_weight):
            rec.trans_input.append(attn_weight.detach().clone())
            return trans(attn_weight)

        self.tool.compute_trans_mat = compute_trans_mat

        fts = self.mod.generate_clip_fts

        def generate_clip_fts(*args, **kwargs):
            tokens, attn = fts(*args, **kwargs)
            rec.block_tokens.append(torch.stack([t.detach().clone() for t in tokens]))
            rec.attn_blocks.append(torch.stack([a.detach().clone() for a in attn]))
            return tokens, attn

        self.mod.generate_clip_fts = generate_clip_fts

        def par_hook(module, inputs, output):
            rec.par_io.append(
                (inputs[0].detach().clone(), inputs[1].detach().clone(), output.detach().clone())
            )

        self.model.par.register_forward_hook(par_hook)

        linear = self.att.F.linear
        functional = types.SimpleNamespace(**{n: getattr(F, n) for n in dir(F) if not n.startswith("__")})

        def observed_linear(x, weight, bias=None):
            out = linear(x, weight, bias)
            rec.linear_dtypes.add((str(x.dtype), str(weight.dtype), str(out.dtype)))
            return out

        functional.linear = observed_linear
        self.att.F = functional  # only myAtt's own F.linear calls (the out-projection) are observed


def kept_blocks(
    attn_blocks: torch.Tensor,
    attn_last: torch.Tensor,
    seg_attn: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, float]:
    """Blocks 7–12 kept by WeCLIP's decoder-affinity rule, recomputed here for the record.

    ``sum(seg_attn − A_k) <= mean_k sum(seg_attn − A_k)`` over the head-averaged attention
    ``A_k`` (CLS row and column dropped) of the last 6 blocks, summed in ``dtype`` (WeCLIP: float32,
    checked against the affinity it hands to ``compute_trans_mat``). Also returns the margin
    ``min_k |sum_k − mean|``: the sums are ~1e5 (float32 spacing 0.0078 there) while they differ
    between blocks only by the patches' attention to the CLS token (``sum(seg_attn)`` is common to
    all), so a margin below ~0.01 means float32 rounding decides the choice.

    Shape:
        - attn_blocks: (11, T, T) blocks 1-11; attn_last: (1, T, T); seg_attn: (N, N)
        - output: (6,) bool, float
    """
    attn = torch.cat([attn_blocks, attn_last], dim=0)[:, 1:, 1:][-6:].to(dtype)
    diff = (seg_attn[None].to(dtype) - attn).flatten(1).sum(dim=1)
    return (diff <= diff.mean()).numpy(), float((diff - diff.mean()).abs().min())


def seg_losses(
    seg: torch.Tensor, labels: torch.Tensor, attn_pred: torch.Tensor, script: types.ModuleType
) -> tuple:
    """WeCLIP's two losses for one batch, with its own functions (``scripts/dist_clip_voc.py``)."""
    camutils = importlib.import_module("utils.camutils")
    losses = importlib.import_module("utils.losses")
    segs = F.interpolate(seg, size=labels.shape[1:], mode="bilinear", align_corners=False)
    mask = script.get_mask_by_radius(h=labels.shape[1] // 16, w=labels.shape[2] // 16, radius=8)
    aff_label = camutils.cams_to_affinity_label(labels.clone(), mask=mask, ignore_index=255)
    attn_loss, _, _ = losses.get_aff_loss(attn_pred, aff_label)
    seg_loss = script.get_seg_loss(segs, labels.long(), ignore_index=255)
    return seg_loss, attn_loss


def import_train_script(weclip: Path) -> types.ModuleType:
    """``scripts/dist_clip_voc.py`` as a module (its top level only defines things)."""
    spec = importlib.util.spec_from_file_location(
        "weclip_dist_clip_voc", weclip / "scripts" / "dist_clip_voc.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run_precision(args: argparse.Namespace, crops: dict, precision: str, script: types.ModuleType) -> dict:
    model = build_weclip(args.weights, args.voc, precision)
    rec = Recorder(model)
    n = len(crops["names"])
    c = 20
    out: dict = {
        "cams": np.zeros((n, c, 20, 20), np.float32),
        "refined_off": np.zeros((n, c, 20, 20), np.float32),
        "refined_on": np.zeros((n, c, 20, 20), np.float32),
        "labels_off": np.zeros((n, 320, 320), np.uint8),
        "labels_on": np.zeros((n, 320, 320), np.uint8),
        "seg": np.zeros((n, 21, 20, 20), np.float32),
        "attn_pred_rows": np.zeros((n, len(ATTN_ROWS), 400), np.float32),
        "kept_blocks_on": np.zeros((n, 6), bool),
        "kept_blocks_on_f64": np.zeros((n, 6), bool),
        "kept_margin_on_f64": np.zeros(n, np.float64),
        "loss_seg_off": np.zeros(n, np.float64),
        "loss_seg_on": np.zeros(n, np.float64),
        "loss_aff_off": np.zeros(n, np.float64),
        "loss_aff_on": np.zeros(n, np.float64),
    }
    checks: dict = {"keys": [], "trans_input_rule_max_abs": [], "gradcam_same_in_both_modes": True}
    debug: dict = {}
    for i, name in enumerate(crops["names"]):
        img = torch.from_numpy(crops["images"][i])[None]
        for mode, iter_num in (("off", 0), ("on", 15000)):
            rec.reset()
            model.iter_num = iter_num
            seg, labels, attn_pred = model(img, [name])
            keys = rec.keys[0]
            grad = np.stack([g[0] for g in rec.gradcam])
            if mode == "off":
                out["cams"][i, keys] = grad
                out["seg"][i] = seg[0].detach().float().numpy()
                out["attn_pred_rows"][i] = attn_pred[0, list(ATTN_ROWS)].detach().float().numpy()
                checks["keys"].append(keys)
                first_grad = grad
            elif not np.array_equal(first_grad, grad):
                checks["gradcam_same_in_both_modes"] = False
            out[f"refined_{mode}"][i, keys] = torch.stack(rec.refined[0]).float().numpy()
            out[f"labels_{mode}"][i] = labels[0].numpy().astype(np.uint8)
            seg_loss, aff_loss = seg_losses(seg, labels, attn_pred, script)
            out[f"loss_seg_{mode}"][i] = float(seg_loss.detach())
            out[f"loss_aff_{mode}"][i] = float(aff_loss.detach())
            if mode == "on":
                seg_attn = attn_pred[0].detach()
                kept, _ = kept_blocks(rec.attn_blocks[0][:, 0], rec.attn_last[0], seg_attn)
                out["kept_blocks_on"][i] = kept
                kept64, margin = kept_blocks(
                    rec.attn_blocks[0][:, 0], rec.attn_last[0], seg_attn, torch.float64
                )
                out["kept_blocks_on_f64"][i], out["kept_margin_on_f64"][i] = kept64, margin
                attn = torch.cat([rec.attn_blocks[0][:, 0], rec.attn_last[0]])[:, 1:, 1:][-6:].float()
                mask = torch.from_numpy(kept).float().view(-1, 1, 1)
                expect = (mask * attn).sum(0) / (mask.sum(0) + 1e-5) * seg_attn
                checks["trans_input_rule_max_abs"].append(
                    float((expect - rec.trans_input[0].float()).abs().max())
                )
            if args.debug_out is not None:
                debug[f"{i}_{mode}"] = {
                    "block_tokens": rec.block_tokens[0], "attn_blocks": rec.attn_blocks[0], "attn_last": rec.attn_last[0],
                    "trans_input": rec.trans_input[0], "par_in_image": rec.par_io[0][0], "par_in_masks": rec.par_io[0][1],
                    "par_out": rec.par_io[0][2], "gradcam": grad, "refined": torch.stack(rec.refined[0]), "keys": keys,
                    "labels": labels[0].clone(), "seg": seg.detach().clone(), "attn_pred": attn_pred.detach().clone(),
                }  # fmt: skip
    checks["out_proj_dtypes"] = sorted(rec.linear_dtypes)
    dtypes: dict[str, list[str]] = {}
    for pname, param in model.encoder.named_parameters():
        dtypes.setdefault(str(param.dtype), []).append(pname)
    checks["encoder_param_dtypes"] = {
        k: (v if len(v) < 8 else f"{len(v)} tensors") for k, v in dtypes.items()
    }
    checks["text_features_dtype"] = str(model.fg_text_features.dtype)
    if args.debug_out is not None:
        debug["text_fg"] = model.fg_text_features.detach().clone()
        debug["text_bg"] = model.bg_text_features.detach().clone()
        torch.save(debug, Path(args.debug_out) / f"weclip_debug_{precision}.pt")
    return {"arrays": out, "checks": checks}


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weclip", type=Path, required=True, help="the WeCLIP/ folder of a WeCLIP checkout")
    parser.add_argument(
        "--voc", type=Path, required=True, help="VOC2012 folder: JPEGImages/, SegmentationClassAug/"
    )
    parser.add_argument(
        "--lists", type=Path, required=True, help="folder with train_aug.txt and cls_labels_onehot.npy"
    )
    parser.add_argument(
        "--weights", type=Path, required=True, help="cdclip.testing.save_random_clip(..., seed=0) file"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument(
        "--debug-out", default=None, help="folder for full intermediates (torch.save), not for the repo"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    patch_process(args.weclip)
    crops = make_crops(args.weclip, args.voc, args.lists)
    rebuilt_equal = [
        bool(torch.equal(rebuild_input(p, crops["mean"], crops["std"]), torch.from_numpy(im)))
        for p, im in zip(crops["pixels"], crops["images"], strict=True)
    ]
    if not all(rebuilt_equal):
        raise RuntimeError(f"rebuilding the float input from uint8 pixels is not bitwise: {rebuilt_equal}")
    script = import_train_script(args.weclip)
    pngs = [png_bytes(p) for p in crops["pixels"]]
    arrays: dict[str, np.ndarray] = {
        "names": np.asarray(crops["names"]),
        "crops_png_bytes": np.frombuffer(b"".join(pngs), dtype=np.uint8),
        "crops_png_offsets": np.cumsum([0, *[len(b) for b in pngs]]).astype(np.int64),
        "img_box": np.stack(crops["img_box"]),
        "valid_box": np.stack(crops["valid_box"]),
        "scale": np.asarray(crops["scale"], np.float64),
        "flip": np.asarray(crops["flip"], bool),
        "norm_mean": crops["mean"],
        "norm_std": crops["std"],
        "attn_pred_row_ids": np.asarray(ATTN_ROWS, np.int64),
        "decoder_seed": np.asarray(DECODER_SEED),
        "crop_seed": np.asarray(SEED),
    }
    meta: dict = {
        "weclip_commit": WECLIP_COMMIT,
        "torch": torch.__version__,
        "batch_size": 1,
        "threads": args.threads,
    }
    classes = None
    for precision in args.precisions.split(","):
        result = run_precision(args, crops, precision, script)
        for key, value in result["arrays"].items():
            arrays[f"{precision}__{key}"] = value
        meta[precision] = result["checks"]
        present = np.zeros((len(crops["names"]), 20), bool)
        for i, keys in enumerate(result["checks"]["keys"]):
            present[i, keys] = True
        classes = present if classes is None else classes
        if not np.array_equal(classes, present):
            raise RuntimeError("the classes differ between precisions")
        print(precision, json.dumps(result["checks"]))
    arrays["classes"] = classes
    arrays["meta_json"] = np.asarray(json.dumps(meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
