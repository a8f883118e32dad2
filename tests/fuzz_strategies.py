"""Hypothesis strategies that fuzz every public component (issue 10 D), shared by the test and the benchmark.

Each strategy draws one *case*: random shapes (zeros included), dtypes (float16, bfloat16,
float32, float64 and some integer ones), values (valid data, then sometimes NaN, ±inf, negative,
scaled or huge entries) and valid or invalid constructor arguments, and returns a :class:`Case`
whose ``call`` runs the component. :func:`outcome` classifies what happened. The property: a case
either returns finite output of the expected shape (``"ok"``) or raises ``ValueError`` /
``TypeError``; ``"other"`` (any other exception), ``"nan"`` (non-finite output) and ``"shape"``
(a wrongly shaped output) are bugs.

Used by ``tests/test_fuzz.py`` (small, derandomised profile) and ``benchmarks/fuzz.py`` (large).
"""

from __future__ import annotations

import functools
import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTS = (torch.int64, torch.uint8, torch.bool)
OUTCOMES = ("ok", "ValueError", "TypeError", "other", "nan", "shape")
BUGS = ("other", "nan", "shape")
SPECIALS = (math.nan, math.inf, -math.inf, -1.0, 1e30, -1e30, 3e38, 1e-40, 65504.0)
BAD_NUMBERS = (math.nan, math.inf, -math.inf, 0.0, -1.0, -0.5, 1e30, True, "x", None, 1.5, 2)


@dataclass
class Case:
    """One fuzz case: ``call()`` runs the component; ``shape`` is the expected output shape (None: any)."""

    call: Callable[[], Any]
    shape: tuple[int, ...] | None
    what: str

    def __repr__(self) -> str:
        return f"Case({self.what})"


# ------------------------------------------------------------------------------------------ building blocks
def _seeded(build: Callable[[random.Random], Case]) -> Callable[[], st.SearchStrategy[Case]]:
    """A strategy of cases built from one drawn seed (every choice is an unbiased ``random.Random`` draw).

    Hypothesis favours the ends of every range, which would make "1 time in 10" choices happen
    far more often; a seed keeps the stated probabilities and makes each case reproducible.
    """

    @functools.wraps(build)
    def strategy() -> st.SearchStrategy[Case]:
        return st.integers(0, 2**63 - 1).map(lambda seed: build(_rng(seed)))

    return strategy


def _rng(seed: int) -> random.Random:
    """The case's random source; ``clean`` cases (40 %) draw only valid shapes, dtypes, values and arguments."""
    rng = random.Random(seed)
    rng.clean = rng.random() < 0.4  # type: ignore[attr-defined]
    return rng


def clean(draw: random.Random) -> bool:
    return bool(getattr(draw, "clean", False))


def pick(draw: random.Random, valid: tuple[Any, ...], invalid: tuple[Any, ...] = ()) -> Any:
    """One of ``valid``; 15 % of the unclean cases one of ``invalid``."""
    if invalid and not clean(draw) and draw.random() < 0.15:
        return draw.choice(invalid)
    return draw.choice(valid)


def dim(draw: random.Random, high: int, low: int = 1) -> int:
    """A dimension in ``[low, high]``, or 0 about one time in twelve."""
    return 0 if not clean(draw) and draw.randint(0, 11) == 0 else draw.randint(low, high)


def dtype_of(draw: random.Random, p_int: int = 10) -> torch.dtype:
    """Mostly a floating dtype; an integer or bool one ``p_int`` % of the time."""
    if not clean(draw) and draw.randint(0, 99) < p_int:
        return draw.choice(INTS)
    return draw.choice(FLOATS)


def corrupt(draw: random.Random, x: torch.Tensor, p: int = 35) -> torch.Tensor:
    """With probability ``p`` %: inject a special value, scale, negate or shift the tensor."""
    if x.numel() == 0 or clean(draw) or draw.randint(0, 99) >= p:
        return x
    how = draw.choice(("inject", "inject", "scale", "negate", "shift"))
    x = x.clone()
    if how == "inject":
        flat = x.view(-1)
        flat[draw.randint(0, flat.numel() - 1)] = draw.choice(SPECIALS)
    elif how == "scale":
        x = x * draw.choice((10.0, 1e6, 1e30, 1e-30, 0.0))
    elif how == "negate":
        x = -x
    else:
        x = x + draw.choice((-0.5, 0.5, 2.0))
    return x


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point:
        return x.to(dtype)
    finite = torch.nan_to_num(x, nan=0.0, posinf=255.0, neginf=0.0).clamp(-1e6, 1e6)
    return finite.to(dtype) if dtype != torch.uint8 else finite.clamp(0, 255).to(dtype)


def generator(draw: random.Random) -> torch.Generator:
    return torch.Generator().manual_seed(draw.randint(0, 2**31 - 1))


def tensor(draw: random.Random, shape: tuple[int, ...], base: str = "normal", p_int: int = 10, p_bad: int = 35) -> torch.Tensor:
    """A tensor of ``shape``: ``base`` data (``normal``, ``unit``, ``probs``, ``positive``), maybe corrupted, cast."""
    g = generator(draw)
    if base == "probs":
        x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).softmax(-1) if shape[-1] else torch.zeros(shape)
    elif base == "unit":
        x = torch.rand(shape, generator=g, dtype=torch.float64)
    elif base == "positive":
        x = torch.rand(shape, generator=g, dtype=torch.float64) ** 3
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64)
    return cast(corrupt(draw, x, p_bad), dtype_of(draw, p_int))


def number(draw: random.Random, valid: Any) -> Any:
    """Usually the valid value (or one near it), sometimes an invalid one."""
    if clean(draw) or draw.randint(0, 99) < 88:
        return valid
    return draw.choice(BAD_NUMBERS)


def labels_int(draw: random.Random, shape: tuple[int, ...], high: int, ignore: int = 255) -> torch.Tensor:
    g = generator(draw)
    y = torch.randint(0, max(high, 1), shape, generator=g)
    if y.numel() and draw.random() < 0.5:
        y.view(-1)[0] = pick(draw, (ignore,), (high, -1, high + 5))
    if not clean(draw) and draw.randint(0, 99) < 8:
        return y.to(draw.choice((torch.float32, torch.bool, torch.int32)))
    return y


# ------------------------------------------------------------------------------------------ components
@_seeded
def js_pairwise(draw: random.Random) -> Case:
    from cdclip.kernels.js import pairwise_js

    b, n, m, k = dim(draw, 2), dim(draw, 6), dim(draw, 6), dim(draw, 5)
    p = tensor(draw, (b, n, k), "probs")
    q = tensor(draw, (b, m, k), "probs") if draw.random() < 0.5 else None
    backend = pick(draw, ("auto", "auto", "torch", "native", "compile"), ("fast",))
    backend = "torch" if backend == "compile" else backend  # compiling per case is far too slow for a fuzz run
    block = number(draw, None) if draw.random() < 0.5 else draw.choice((None, 1, 7, 4096))
    shape = (b, n, m if q is not None else n)
    return Case(lambda: pairwise_js(p, q, block_elements=block, backend=backend), shape, f"pairwise_js p{tuple(p.shape)} {p.dtype}")


@_seeded
def js_module(draw: random.Random) -> Case:
    from cdclip.kernels.js import JSDivergence

    b, n, k = dim(draw, 2), dim(draw, 6), dim(draw, 5)
    p = tensor(draw, (b, n, k), "probs")
    block = pick(draw, (None, 1, 16), (0, -4, 2.5, math.nan))
    backend = pick(draw, ("auto", "torch", "native"), ("numba",))
    return Case(lambda: JSDivergence(block, backend)(p), (b, n, n), f"JSDivergence({block}, {backend}) {p.dtype}")


@_seeded
def js_matched(draw: random.Random) -> Case:
    from cdclip.kernels.js import js_divergence

    lead = tuple(dim(draw, 4) for _ in range(draw.randint(0, 2)))
    k = dim(draw, 5)
    p, q = tensor(draw, (*lead, k), "probs"), tensor(draw, (*lead, k), "probs")
    return Case(lambda: js_divergence(p, q), lead, f"js_divergence {tuple(p.shape)} {p.dtype}/{q.dtype}")


@_seeded
def cda_affinity(draw: random.Random) -> Case:
    from cdclip.affinity.cda import CDAAffinity

    b, n, k = dim(draw, 2), dim(draw, 6), dim(draw, 5)
    probs = tensor(draw, (b, n, k), "probs")
    kind = pick(draw, ("exp", "power", "linear"), ("cos",))
    sigma, beta = number(draw, 0.05), number(draw, 8.0)
    return Case(lambda: CDAAffinity(kind, sigma, beta)(probs), (b, n, n), f"CDAAffinity({kind}, {sigma}, {beta})")


@_seeded
def cda_module(draw: random.Random) -> Case:
    from cdclip.affinity.cda import CDAModule

    b, c, h, w, k = dim(draw, 2), dim(draw, 3), dim(draw, 4), dim(draw, 4), dim(draw, 4)
    n = h * w
    cams = tensor(draw, (b, c, h, w), "unit")
    probs = tensor(draw, (b, n, k), "probs") if clean(draw) or draw.randint(0, 9) else None
    attn = tensor(draw, (b, n, n), "positive") if clean(draw) or draw.randint(0, 9) else None
    kwargs = {
        "fusion": pick(draw, ("mean", "replace", "product", "attn"), ("sum",)),
        "gamma": number(draw, 0.5), "box_threshold": number(draw, 0.4),
        "affinity": draw.choice(("exp", "power", "linear")), "sigma": number(draw, 0.05),
        "beta": number(draw, 8.0), "sinkhorn_iters": number(draw, 3), "power": number(draw, 2),
        "box_rule": draw.choice(("inclusive", "clip-es")),
    }  # fmt: skip
    return Case(lambda: CDAModule(**kwargs)(cams, probs, attn), (b, c, h, w), f"CDAModule({kwargs}) cams {cams.dtype}")


@_seeded
def transition(draw: random.Random) -> Case:
    from cdclip.affinity.transition import TransitionMatrix

    b, n = dim(draw, 2), dim(draw, 6)
    a = tensor(draw, (b, n, n), "positive")
    it, power, eps = number(draw, 3), number(draw, 2), number(draw, 1e-12)
    return Case(lambda: TransitionMatrix(it, power, eps)(a), (b, n, n), f"TransitionMatrix({it}, {power}, {eps}) {a.dtype}")


@_seeded
def boxes(draw: random.Random) -> Case:
    from cdclip.affinity.boxes import box_mask

    b, c, h, w = dim(draw, 2), dim(draw, 3), dim(draw, 5), dim(draw, 5)
    cams = tensor(draw, (b, c, h, w), "unit")
    threshold, rule = number(draw, 0.4), pick(draw, ("inclusive", "clip-es"), ("x",))
    return Case(lambda: box_mask(cams, threshold, rule), (b, c, h, w), f"box_mask({threshold}, {rule}) {cams.dtype}")


@_seeded
def class_probs(draw: random.Random) -> Case:
    from cdclip.affinity.cda import class_probs_from_cams, class_probs_from_features

    b, n, d, k = dim(draw, 2), dim(draw, 6), dim(draw, 4), dim(draw, 4)
    if draw.random() < 0.5:
        features, text = tensor(draw, (b, n, d)), tensor(draw, (k, d))
        scale = number(draw, 100.0)
        return Case(lambda: class_probs_from_features(features, text, scale), (b, n, k), "class_probs_from_features")
    c, h, w = dim(draw, 3), dim(draw, 3), dim(draw, 3)
    cams = tensor(draw, (b, c, h, w), "unit")
    temperature, background, alpha = number(draw, 0.1), draw.random() < 0.5, number(draw, 1.0)
    shape = (b, h * w, c + int(background))
    return Case(lambda: class_probs_from_cams(cams, temperature, background, alpha), shape, "class_probs_from_cams")


@_seeded
def superclass_prototypes(draw: random.Random) -> Case:
    from cdclip.prototypes.superclass import SuperClassPrototypes

    b, c, h, w, d = dim(draw, 2), dim(draw, 4), dim(draw, 4), dim(draw, 4), dim(draw, 4)
    big_h, big_w = dim(draw, 9), dim(draw, 9)
    cams = tensor(draw, (b, c, h, w), "unit")
    labels = tensor(draw, (b, c), "unit", p_bad=15)
    if draw.random() < 0.5:
        features = tensor(draw, (b, h * w, d), p_bad=15)
    else:
        features = tensor(draw, (b, d, dim(draw, 5), dim(draw, 5)), p_bad=15)
    pseudo = labels_int(draw, (b, big_h, big_w), c + 1)
    grouping = pick(draw, ("fg", "identity"), ("voc",))
    kwargs = {
        "seed_threshold": number(draw, 0.5), "band_kernel": number(draw, 5),
        "weighting": pick(draw, ("mask", "cam"), ("x",)),
        "feature_resolution": draw.choice(("cam", "native")), "fill_ignored": draw.random() < 0.5,
    }  # fmt: skip

    def call() -> Any:
        module = SuperClassPrototypes(grouping, c if grouping != "voc" else None, **kwargs)
        return module(cams, labels, features, pseudo)

    return Case(call, None, f"SuperClassPrototypes({grouping}, C={c}, {kwargs}) cams {cams.dtype}")


@_seeded
def boundary_loss(draw: random.Random) -> Case:
    from cdclip.losses.boundary import BoundaryEnhancedLoss

    b, k, h, w = dim(draw, 2), dim(draw, 4), dim(draw, 6), dim(draw, 6)
    logits = tensor(draw, (b, k, h, w), p_bad=40)
    labels = labels_int(draw, (b, h, w), k)
    band = None if draw.randint(0, 3) == 0 else torch.rand(b, h, w, generator=generator(draw)) > 0.5
    if band is not None and not clean(draw) and draw.randint(0, 19) == 0:
        band = band.float()
    reduction = pick(draw, ("mean", "sum", "none"), ("avg",))
    balanced, resize = draw.random() < 0.5, draw.randint(0, 9) == 0
    shape = (b, h, w) if reduction == "none" else ()

    def call() -> Any:
        return BoundaryEnhancedLoss(reduction=reduction, balanced=balanced, resize_logits=resize)(logits, labels, band)

    return Case(call, shape, f"BoundaryEnhancedLoss({reduction}, balanced={balanced}) logits {logits.dtype}")


@_seeded
def par(draw: random.Random) -> Case:
    from cdclip.refine.par import PAR

    b, c, ch, h, w = dim(draw, 2), dim(draw, 3), dim(draw, 3), dim(draw, 6), dim(draw, 6)
    image = tensor(draw, (b, ch, h + (0 if clean(draw) else draw.randint(0, 2)), w), "unit", p_int=20)
    masks = tensor(draw, (b, c, h, w), "unit")
    dilations = pick(draw, ((1,), (1, 2), (1, 2, 4)), ((), (0,), (1.5,)))
    kwargs = {"num_iter": number(draw, draw.randint(0, 4)), "w_rgb": number(draw, 0.3), "w_pos": number(draw, 0.01)}
    return Case(lambda: PAR(dilations, **kwargs)(image, masks), (b, c, h, w), f"PAR({dilations}, {kwargs}) {image.dtype}/{masks.dtype}")


@_seeded
def confusion(draw: random.Random) -> Case:
    from cdclip.metrics import ConfusionMatrix

    num_classes = number(draw, draw.randint(1, 6))
    ignore = pick(draw, (255, None, 0, -1), (2.5,))
    shape = tuple(dim(draw, 5) for _ in range(draw.randint(1, 3)))
    high = num_classes if isinstance(num_classes, int) and not isinstance(num_classes, bool) and 0 < num_classes < 64 else 3
    pred, target = labels_int(draw, shape, high), labels_int(draw, shape, high)
    if not clean(draw) and draw.randint(0, 9) == 0:
        pred = tensor(draw, shape)

    def call() -> Any:
        cm = ConfusionMatrix(num_classes, ignore)
        cm.update(pred, target)
        cm.update(pred.flip(0) if pred.dim() else pred, target)
        return cm.matrix

    out_shape = (high, high) if isinstance(num_classes, int) and not isinstance(num_classes, bool) else None
    return Case(call, out_shape, f"ConfusionMatrix({num_classes}, {ignore}) {pred.dtype} {shape}")


@_seeded
def cam_functions(draw: random.Random) -> Case:
    from cdclip.cam.gradcam import gradcam_scores
    from cdclip.cam.patch_text import patch_text_cam
    from cdclip.cam.refine import attention_affinity, decoder_refined_attention

    which = draw.choice(("patch_text", "gradcam_scores", "attention", "decoder"))
    b, c, d, h, w = dim(draw, 2), dim(draw, 3), dim(draw, 4), dim(draw, 3), dim(draw, 3)
    k = c + draw.randint(0, 2)
    labels = tensor(draw, (b, c), "unit", p_bad=10)
    text = tensor(draw, (k, d))
    if which == "patch_text":
        features = tensor(draw, (b, h * w, d))
        grid = (h, w) if clean(draw) or draw.randint(0, 9) else (h + 1, w)
        return Case(lambda: patch_text_cam(features, text, labels, grid), (b, c, h, w), f"patch_text_cam {features.dtype}")
    if which == "gradcam_scores":
        g = tensor(draw, (b, d))
        scale = number(draw, 100.0)
        return Case(lambda: gradcam_scores(g, text, labels, scale), (b, k), f"gradcam_scores K={k} C={c} {g.dtype}")
    n, blocks = h * w, dim(draw, 3)
    attn = tensor(draw, (b, blocks, n, n), "positive")
    last = number(draw, draw.randint(1, 4))
    if which == "attention":
        return Case(lambda: attention_affinity(attn, last), (b, n, n), f"attention_affinity({last}) {attn.dtype}")
    seg = tensor(draw, (b, n, n), "unit")
    eps = number(draw, 1e-5)
    return Case(lambda: decoder_refined_attention(attn, seg, last, eps), (b, n, n), f"decoder_refined_attention({last}, {eps})")


STRATEGIES: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "pairwise_js": js_pairwise,
    "JSDivergence": js_module,
    "js_divergence": js_matched,
    "CDAAffinity": cda_affinity,
    "CDAModule": cda_module,
    "transition_matrix": transition,
    "box_mask": boxes,
    "class_probs": class_probs,
    "SuperClassPrototypes": superclass_prototypes,
    "BoundaryEnhancedLoss": boundary_loss,
    "PAR": par,
    "ConfusionMatrix": confusion,
    "cam_functions": cam_functions,
}


# ------------------------------------------------------------------------------------------ the property
def _tensors(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in _tensors(item)]
    return []


def outcome(case: Case) -> tuple[str, str]:
    """Run ``case``: ``(outcome, detail)`` with ``outcome`` one of :data:`OUTCOMES`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = case.call()
    except ValueError as err:
        return "ValueError", str(err)
    except TypeError as err:
        return "TypeError", str(err)
    except Exception as err:  # anything else is a bug the fuzzing is looking for
        return "other", f"{type(err).__name__}: {err}"
    tensors = _tensors(result)
    if case.shape is not None and (not tensors or tuple(tensors[0].shape) != case.shape):
        got = tuple(tensors[0].shape) if tensors else type(result).__name__
        return "shape", f"expected {case.shape}, got {got}"
    for t in tensors:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            return "nan", f"non-finite output of shape {tuple(t.shape)}"
    return "ok", ""
