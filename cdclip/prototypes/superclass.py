"""Super-class prototype CAMs, boundary band and corrected labels (SBE, docs/method.md, SBE steps 3–7).

CDA completes objects but can leak activation across the edge between two touching target classes
(a person's CAM spilling onto the dog beside them). DINO features separate such *super-classes*
well, so SBE builds one DINO prototype per super-class from confident seeds, asks every pixel which
prototype it resembles most, and takes the pixels where that super-class map changes as the
*boundary band*. Inside the band the pseudo labels are corrected where their super-class disagrees
with DINO's; :class:`~cdclip.losses.boundary.BoundaryEnhancedLoss` then supervises the band.

Steps (every threshold and size is an argument):

3. super-class CAM ``M_s = max_{c present, g(c)=s} M_c``; background ``1 − max_{c present} M_c``;
4. prototype ``p_s`` = average of the DINO features over the seeds of ``s`` — pixels whose pseudo
   label belongs to ``s`` and where ``M_s > seed_threshold`` — (``weighting="mask"``) or the same
   average weighted by ``M_s`` (``weighting="cam"``); then L2-normalised. Seeds are found at label
   resolution and pooled onto the feature grid (each patch weighs its share of seed pixels);
5. prototype CAM ``Q_s(i) = ReLU(cos(f_i, p_s))`` divided by its spatial maximum; super-class map
   ``S* = argmax_s Q_s`` after bilinear upsampling to label resolution;
6. band ``B`` = labelled pixels where ``dilate(S*) ≠ erode(S*)`` in a ``k × k`` window (``k = 5``);
7. on ``B``: keep the pseudo label ``Y`` if ``g(Y) = S*``; otherwise background if ``S*`` is the
   background; otherwise the present class of ``S*`` with the highest (upsampled) CAM; otherwise
   ignore. Outside ``B`` the corrected labels equal ``Y``.

Fallbacks (documented behaviour, never NaN): a super-class that is absent from the image labels, or
present but without a single confident seed, gets a zero prototype, ``valid = False``, an all-zero
prototype CAM, and is excluded from the argmax. Pixels where no valid prototype has a positive
response (for example an image where nothing is valid) get ``S* = ignore_index``; they are never in
the band and keep their pseudo label. Pseudo-label pixels equal to ``ignore_index`` stay ignored
unless ``fill_ignored=True``.

Input contract (raised, never silently NaN): CAMs finite and in ``[0, 1]`` (tolerance 1e-4, twice
the epsilon for float16/bfloat16), finite features and image labels, no empty dimension
(B, C, h, w, N, D, H, W ≥ 1); every violation is a ``ValueError`` naming the argument. Computed in
float32 or higher under any autocast.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdclip._checks import (
    check_choice,
    check_finite,
    check_floating,
    check_integer_labels,
    check_nonempty,
    check_rank,
    check_tensor,
    check_unit_interval,
    compute_dtype,
    full_precision,
)
from cdclip.choices import FEATURE_RESOLUTIONS, PROTOTYPE_WEIGHTINGS, FeatureResolution, PrototypeWeighting
from cdclip.data.superclasses import GroupingSpec, SuperClassGrouping, superclass_grouping
from cdclip.feature_maps import resample_features, token_grid, tokens_to_map
from cdclip.registry import register

__all__ = ["SBEOutput", "SuperClassPrototypes", "boundary_band", "superclass_prototypes"]

WEIGHTINGS = PROTOTYPE_WEIGHTINGS  # the name before cdclip.choices


class SBEOutput(NamedTuple):
    """Everything SBE computes for a batch.

    Shape:
        - superclass_cams: (B, S, h, w) — ``M_s`` on the CAM grid (background row = 1 − max CAM)
        - prototypes: (B, S, D) — L2-normalised, zero where not ``valid``
        - valid: (B, S) — bool, the super-class had confident seeds and is present
        - prototype_cams: (B, S, h, w) — ``Q_s`` in [0, 1] (``(h', w')`` with ``feature_resolution="native"``)
        - superclass_map: (B, H, W) — int64 ``S*`` at label resolution, ``ignore_index`` where unassigned
        - band: (B, H, W) — bool boundary band
        - corrected_labels: (B, H, W) — int64 pseudo labels corrected on the band
    """

    superclass_cams: Tensor
    prototypes: Tensor
    valid: Tensor
    prototype_cams: Tensor
    superclass_map: Tensor
    band: Tensor
    corrected_labels: Tensor


# ---------------------------------------------------------------------- band
def boundary_band(label_map: Tensor, kernel_size: int = 5, ignore_index: int = 255) -> Tensor:
    """Pixels whose ``k × k`` neighbourhood holds more than one label: ``dilate(Y) ≠ erode(Y)``.

    Grey dilation and erosion of the label values (exact for integer labels), each as two 1-D
    sliding maxima on integer tensors (a square window is separable); ``ignore_index`` pixels take
    part in neither and are never in the band, and the image border does not create a boundary.
    ``kernel_size=1`` gives an empty band.

    Args:
        label_map: integer labels.
        kernel_size: odd window size ``k``.
        ignore_index: label value treated as "no label".

    Shape:
        - label_map: (B, H, W)
        - output: (B, H, W) bool
    """
    check_rank(label_map, "label_map", "B H W")
    check_integer_labels(label_map, "label_map", "an integer label map")
    k = _check_kernel(kernel_size)
    labelled = label_map != ignore_index
    if k == 1:
        return torch.zeros_like(labelled)
    values = label_map.to(torch.int32)
    lowest = -torch.iinfo(torch.int32).max  # loses every max; its negation does not overflow
    # ignore pixels must lose both maxima: the dilation of Y and the dilation of -Y (= -erosion)
    low = values.masked_fill(~labelled, lowest)
    high = (-values).masked_fill(~labelled, lowest)
    dilated = _sliding_max(_sliding_max(low, k, 2, lowest), k, 1, lowest)
    eroded = -_sliding_max(_sliding_max(high, k, 2, lowest), k, 1, lowest)
    return labelled & (dilated != eroded)


def _sliding_max(x: Tensor, k: int, dim: int, fill: int) -> Tensor:
    """Centred running maximum of odd width ``k`` along ``dim`` of a (B, H, W) tensor, padded with ``fill``."""
    n, half = x.shape[dim], k // 2
    padded = F.pad(x, (half, half) if dim == 2 else (0, 0, half, half), value=fill)
    out = padded.narrow(dim, 0, n)
    for offset in range(1, k):
        out = torch.maximum(out, padded.narrow(dim, offset, n))
    return out


def _check_kernel(kernel_size: object) -> int:
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"band_kernel: expected an odd positive int, got {kernel_size!r}")
    return kernel_size


# ---------------------------------------------------------------------- validation helpers
def _resolve_grouping(grouping: GroupingSpec, num_classes: int) -> SuperClassGrouping:
    if isinstance(grouping, str) and grouping.lower() in ("identity", "fg", "foreground"):
        resolved = superclass_grouping(grouping, num_classes)
    else:
        resolved = superclass_grouping(grouping)
    if resolved.num_classes != num_classes:
        raise ValueError(
            f"grouping: it covers {resolved.num_classes} classes but cams have C = {num_classes} "
            "(label/CAM/grouping class counts differ)"
        )
    return resolved


def _feature_map(features: Tensor, batch: int, cam_grid: tuple[int, int], feature_grid: Sequence[int] | None) -> Tensor:
    check_tensor(features, "features")
    check_floating(features, "features")
    if features.dim() == 3:
        n = features.shape[1]
        given = (int(feature_grid[0]), int(feature_grid[1])) if feature_grid is not None else None
        grid = token_grid(n, given, "feature_grid", fallback=cam_grid)
        if grid is None:
            raise ValueError(
                f"features: N = {n} matches neither the CAM grid {cam_grid[0]}x{cam_grid[1]} nor a square "
                "grid; pass feature_grid=(h', w') or features as (B, D, h', w')"
            )
        fmap = tokens_to_map(features, grid)
    elif features.dim() == 4:
        fmap = features
    else:
        raise ValueError(f"features: expected shape (B, N, D) or (B, D, h', w'), got {tuple(features.shape)}")
    if fmap.shape[0] != batch:
        raise ValueError(f"features: expected batch size B = {batch} (from cams), got {fmap.shape[0]}")
    check_nonempty(fmap, "features", "B D h' w'")
    check_finite(fmap, "features")
    return fmap


def _present(labels: Tensor, cams: Tensor) -> Tensor:
    check_tensor(labels, "labels")
    b, c = cams.shape[:2]
    if labels.dim() != 2 or labels.shape != (b, c):
        hint = " (label/CAM class counts differ)" if labels.dim() == 2 and labels.shape[0] == b else ""
        raise ValueError(
            f"labels: expected image labels of shape (B, C) = ({b}, {c}) matching cams, got {tuple(labels.shape)}{hint}"
        )
    if labels.dtype == torch.bool:
        return labels
    if labels.is_complex():
        raise TypeError(f"labels: expected real 0/1 image labels, got dtype {labels.dtype}")
    if labels.is_floating_point():
        check_finite(labels, "labels")
    return labels > 0.5


def _check_scalars(seed_threshold: object, weighting: object, feature_resolution: object) -> None:
    real = isinstance(seed_threshold, numbers.Real) and not isinstance(seed_threshold, bool)
    if not (real and 0.0 <= seed_threshold < 1.0):  # type: ignore[operator]  # NaN fails the comparison
        raise ValueError(f"seed_threshold: expected a value in [0, 1), got {seed_threshold!r}")
    check_choice(weighting, "weighting", PROTOTYPE_WEIGHTINGS)
    check_choice(feature_resolution, "feature_resolution", FEATURE_RESOLUTIONS)


# ---------------------------------------------------------------------- main function
@full_precision
def superclass_prototypes(
    cams: Tensor,
    labels: Tensor,
    features: Tensor,
    pseudo_labels: Tensor,
    grouping: GroupingSpec = "voc",
    *,
    seed_threshold: float = 0.5,
    band_kernel: int = 5,
    weighting: PrototypeWeighting = "mask",
    ignore_index: int = 255,
    feature_grid: Sequence[int] | None = None,
    feature_resolution: FeatureResolution = "cam",
    fill_ignored: bool = False,
) -> SBEOutput:
    """Super-class CAMs, DINO prototypes, prototype CAMs, boundary band and corrected labels.

    Args:
        cams: refined CAMs of the ``C`` foreground classes, values in ``[0, 1]``.
        labels: image-level labels (0/1, float or bool); only present classes count.
        features: DINO patch features, ``(B, N, D)`` row-major or ``(B, D, h', w')``; normalised
            here, and resampled to the CAM grid when it differs (``feature_resolution="cam"``).
        pseudo_labels: class ids ``0..C`` (0 = background), ``ignore_index`` = ignore.
        grouping: a :class:`SuperClassGrouping` or anything :func:`superclass_grouping` accepts
            (``"voc"``, ``"coco"``, ``"identity"``, ``"fg"``, a mapping).
        seed_threshold: seeds need ``M_s > seed_threshold``.
        band_kernel: odd window size of the band at label resolution.
        weighting: ``"mask"`` (plain average over seeds) or ``"cam"`` (weighted by ``M_s``).
        ignore_index: ignore value of the label maps (also used for unassigned ``S*``).
        feature_grid: ``(h', w')`` of ``(B, N, D)`` features when ``N`` is neither ``h·w`` nor square.
        feature_resolution: ``"cam"`` resamples features to the CAM grid first (outputs on
            ``(h, w)``); ``"native"`` keeps the feature grid (finer DINO grids give finer maps).
        fill_ignored: also relabel ignored pseudo-label pixels inside the band.

    Returns:
        :class:`SBEOutput`. Computed in float32 (float64 for float64 CAMs); nothing is NaN.

    Shape:
        - cams: (B, C, h, w)
        - labels: (B, C)
        - features: (B, N, D) or (B, D, h', w')
        - pseudo_labels: (B, H, W)
        - output.superclass_cams: (B, S, h, w)
        - output.prototypes: (B, S, D)
        - output.valid: (B, S)
        - output.prototype_cams: (B, S, h, w)
        - output.superclass_map, output.band, output.corrected_labels: (B, H, W)
    """
    present, y, k, groups, fmap = _check_inputs(
        cams, labels, features, pseudo_labels, grouping, seed_threshold, band_kernel, weighting, ignore_index,
        feature_grid, feature_resolution,
    )  # fmt: skip
    dtype = compute_dtype(cams)
    cams_p = cams.to(dtype) * present[:, :, None, None].to(dtype)  # absent classes contribute nothing
    sc_cams, sc_present = _superclass_cams(cams_p, present, groups)
    feats, grid = _unit_features(fmap.to(dtype), (cams.shape[2], cams.shape[3]), feature_resolution)
    y_super = groups.map_labels(y, ignore_index)
    proto, valid = _prototypes(sc_cams, sc_present, y_super, feats, grid, seed_threshold, weighting)
    prototype_cams, s_map = _superclass_map(proto, feats, valid, grid, (y.shape[-2], y.shape[-1]), ignore_index)
    band = boundary_band(s_map, k, ignore_index)  # step 6
    corrected = _corrected_labels(y, y_super, s_map, band, present, cams_p, groups, ignore_index, fill_ignored)
    return SBEOutput(sc_cams, proto, valid, prototype_cams, s_map, band, corrected)


def _check_inputs(
    cams: Tensor, labels: Tensor, features: Tensor, pseudo_labels: Tensor, grouping: GroupingSpec,
    seed_threshold: object, band_kernel: object, weighting: object, ignore_index: int,
    feature_grid: Sequence[int] | None, feature_resolution: object,
) -> tuple[Tensor, Tensor, int, SuperClassGrouping, Tensor]:  # fmt: skip
    """Every check of :func:`superclass_prototypes`, in order; returns what they produce.

    Returns:
        ``(present (B, C) bool, pseudo labels (B, H, W) int64, band kernel, grouping, features (B, D, h', w'))``.
    """
    check_rank(cams, "cams", "B C h w")
    check_floating(cams, "cams")
    check_nonempty(cams, "cams", "B C h w")
    check_unit_interval(cams, "cams")
    b, c, h, w = cams.shape
    present = _present(labels, cams)
    check_rank(pseudo_labels, "pseudo_labels", "B H W")
    check_nonempty(pseudo_labels, "pseudo_labels", "B H W")
    check_integer_labels(pseudo_labels, "pseudo_labels")
    if pseudo_labels.shape[0] != b:
        raise ValueError(f"pseudo_labels: expected batch size B = {b} (from cams), got {pseudo_labels.shape[0]}")
    _check_scalars(seed_threshold, weighting, feature_resolution)
    k = _check_kernel(band_kernel)
    y = pseudo_labels.long()
    out_of_range = (y != ignore_index) & ((y < 0) | (y > c))
    if bool(out_of_range.any()):
        bad = torch.unique(y[out_of_range])[:8].tolist()
        raise ValueError(f"pseudo_labels: expected class ids in 0..{c} or {ignore_index}, got {bad}")
    groups = _resolve_grouping(grouping, c)
    return present, y, k, groups, _feature_map(features, b, (h, w), feature_grid)


def _superclass_cams(cams_p: Tensor, present: Tensor, groups: SuperClassGrouping) -> tuple[Tensor, Tensor]:
    """Step 3: ``M_s = max_{c in s} M_c`` and the background ``1 − max_c M_c``; which super-classes are present.

    Shape:
        - cams_p: (B, C, h, w), zero at absent classes
        - output: (B, S, h, w) super-class CAMs, (B, S) bool
    """
    member = groups.membership(cams_p.device)  # (S, C)
    s_index = torch.arange(groups.num_superclasses, device=cams_p.device)
    is_bg = (s_index == groups.background)[None, :, None, None]
    sc_cams = torch.where(member[None, :, :, None, None], cams_p[:, None], cams_p.new_zeros(())).amax(2)
    sc_cams = torch.where(is_bg, (1.0 - cams_p.amax(1, keepdim=True)).clamp(0.0, 1.0), sc_cams)
    sc_present = (member[None] & present[:, None, :]).any(-1) | (s_index == groups.background)[None, :]
    return sc_cams, sc_present


def _unit_features(fmap: Tensor, cam_grid: tuple[int, int], feature_resolution: str) -> tuple[Tensor, tuple[int, int]]:
    """DINO features on the working grid (the CAM grid, or their own), unit length, and that grid.

    Shape:
        - fmap: (B, D, h', w')
        - output: (B, D, N) with N = h·w of the working grid
    """
    if feature_resolution == "cam":
        fmap = resample_features(fmap, cam_grid)
    else:
        fmap = F.normalize(fmap, dim=1, eps=1e-12)
    return fmap.flatten(2), (fmap.shape[-2], fmap.shape[-1])


def _prototypes(
    sc_cams: Tensor, sc_present: Tensor, y_super: Tensor, feats: Tensor, grid: tuple[int, int],
    seed_threshold: float, weighting: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Step 4: seeds at label resolution, pooled onto the feature grid; unit prototypes and validity.

    Shape:
        - sc_cams: (B, S, h, w)
        - y_super: (B, H, W) super-class of every pseudo label
        - feats: (B, D, N)
        - output: (B, S, D) prototypes (zero where not valid), (B, S) bool
    """
    dtype = feats.dtype
    s_index = torch.arange(sc_cams.shape[1], device=sc_cams.device)
    sc_up = F.interpolate(sc_cams, size=y_super.shape[-2:], mode="bilinear", align_corners=False)
    seeds = (y_super[:, None] == s_index[None, :, None, None]) & (sc_up > seed_threshold)
    seed_weight = seeds.to(dtype) if weighting == "mask" else seeds.to(dtype) * sc_up
    patch_weight = F.adaptive_avg_pool2d(seed_weight, grid).flatten(2)  # (B, S, N)
    proto = torch.bmm(patch_weight, feats.transpose(1, 2))  # (B, S, D), a positive multiple of the mean
    valid = sc_present & (patch_weight.sum(-1) > 0) & (proto.norm(dim=-1) > 0)
    return F.normalize(proto, dim=-1, eps=1e-12) * valid[..., None].to(dtype), valid


def _superclass_map(
    proto: Tensor, feats: Tensor, valid: Tensor, grid: tuple[int, int], size: tuple[int, int], ignore_index: int
) -> tuple[Tensor, Tensor]:
    """Step 5: prototype CAMs, max-normalised, and ``S*`` at label resolution over the valid super-classes.

    Shape:
        - proto: (B, S, D)
        - feats: (B, D, N)
        - output: (B, S, h', w') prototype CAMs, (B, H, W) int64 ``S*`` (``ignore_index`` unassigned)
    """
    q = torch.bmm(proto, feats).clamp_min(0.0)  # (B, S, N)
    q = q / q.amax(-1, keepdim=True).clamp_min(torch.finfo(feats.dtype).tiny)
    q_map = q.view(proto.shape[0], proto.shape[1], *grid)
    q_up = F.interpolate(q_map, size=size, mode="bilinear", align_corners=False)
    q_up = q_up.masked_fill(~valid[:, :, None, None], -1.0)
    best, s_map = q_up.max(1)
    return q_map, torch.where(best > 0, s_map, torch.full_like(s_map, ignore_index))


def _corrected_labels(
    y: Tensor, y_super: Tensor, s_map: Tensor, band: Tensor, present: Tensor, cams_p: Tensor,
    groups: SuperClassGrouping, ignore_index: int, fill_ignored: bool,
) -> Tensor:  # fmt: skip
    """Step 7: on the band, a pseudo label whose super-class is not ``S*`` becomes the background
    (``S*`` background), else the present class of ``S*`` with the highest upsampled CAM, else ignored.

    Shape:
        - y, y_super, s_map, band: (B, H, W)
        - cams_p: (B, C, h, w), zero at absent classes
        - output: (B, H, W) int64
    """
    b, big_h, big_w = y.shape
    bg = groups.background
    fix = band & (s_map != ignore_index) & (y_super != s_map)
    if not fill_ignored:
        fix &= y != ignore_index
    replacement = torch.full_like(y, ignore_index)
    replacement = torch.where(s_map == bg, torch.zeros_like(y), replacement)
    # best present class of S*: only present classes are upsampled (padded to the batch maximum)
    n_present = max(int(present.sum(1).max()), 1) if b else 1
    order = torch.argsort(present.to(torch.int8), dim=1, descending=True, stable=True)[:, :n_present]  # (B, P)
    order_valid = torch.gather(present, 1, order)
    order_cams = torch.gather(cams_p, 1, order[:, :, None, None].expand(-1, -1, *cams_p.shape[-2:]))
    order_up = F.interpolate(order_cams, size=(big_h, big_w), mode="bilinear", align_corners=False)
    class_to_super = groups.class_to_super.to(cams_p.device)
    in_super = (class_to_super[order][:, :, None, None] == s_map[:, None]) & order_valid[:, :, None, None]
    _, best_slot = order_up.masked_fill(~in_super, -math.inf).max(1)
    best_class = torch.gather(order, 1, best_slot.flatten(1)).view(b, big_h, big_w) + 1
    has_class = in_super.any(1)
    replacement = torch.where((s_map != bg) & has_class, best_class, replacement)
    return torch.where(fix, replacement, y)


@register("superclass_prototypes", kind="prototypes")
class SuperClassPrototypes(nn.Module):
    """SBE: DINO super-class prototype CAMs, boundary band and band-corrected pseudo labels.

    Stores the grouping and hyper-parameters; ``forward`` calls :func:`superclass_prototypes`.

    Args:
        grouping: ``"voc"`` (person/animal/vehicle/indoor), ``"coco"`` (12 supercategories),
            ``"identity"``, ``"fg"``, a mapping, or a :class:`SuperClassGrouping`.
        class_names: class names (or count) for ``"identity"``/``"fg"``/mappings; optional otherwise.
        seed_threshold: seeds need super-class CAM ``> seed_threshold`` (0.5).
        band_kernel: odd band window at label resolution (5).
        weighting: ``"mask"`` or ``"cam"`` prototype averaging.
        ignore_index: ignore label (255).
        feature_resolution: ``"cam"`` (resample DINO features to the CAM grid) or ``"native"``.
        fill_ignored: relabel ignored pseudo-label pixels inside the band too.

    Shape:
        - cams: (B, C, h, w)
        - labels: (B, C)
        - features: (B, N, D) or (B, D, h', w')
        - pseudo_labels: (B, H, W)
        - output: :class:`SBEOutput` (maps (B, S, h, w), band and labels (B, H, W))

    Examples:
        >>> import torch
        >>> cams = torch.zeros(1, 20, 4, 4)
        >>> cams[0, 14, :2] = 1.0                                 # a person (VOC class 15) in the top half
        >>> labels = torch.zeros(1, 20)
        >>> labels[0, 14] = 1.0
        >>> pseudo = torch.zeros(1, 16, 16, dtype=torch.long)
        >>> pseudo[0, :8] = 15
        >>> out = SuperClassPrototypes("voc")(cams, labels, torch.randn(1, 16, 8), pseudo)  # (B, N, D) features
        >>> out.prototype_cams.shape, out.band.shape, out.corrected_labels.dtype
        (torch.Size([1, 5, 4, 4]), torch.Size([1, 16, 16]), torch.int64)
    """

    def __init__(
        self,
        grouping: GroupingSpec = "voc",
        class_names: Sequence[str] | int | None = None,
        seed_threshold: float = 0.5,
        band_kernel: int = 5,
        weighting: PrototypeWeighting = "mask",
        ignore_index: int = 255,
        feature_resolution: FeatureResolution = "cam",
        fill_ignored: bool = False,
    ) -> None:
        super().__init__()
        _check_scalars(seed_threshold, weighting, feature_resolution)
        self.band_kernel = _check_kernel(band_kernel)
        lazy = isinstance(grouping, str) and grouping.lower() in ("identity", "fg", "foreground") and class_names is None
        # identity/fg without class names are resolved per call from C
        self.grouping: GroupingSpec = grouping if lazy else superclass_grouping(grouping, class_names)
        self.seed_threshold = float(seed_threshold)
        self.weighting = weighting
        self.ignore_index = int(ignore_index)
        self.feature_resolution = feature_resolution
        self.fill_ignored = bool(fill_ignored)

    def forward(
        self,
        cams: Tensor,
        labels: Tensor,
        features: Tensor,
        pseudo_labels: Tensor,
        feature_grid: Sequence[int] | None = None,
    ) -> SBEOutput:
        return superclass_prototypes(
            cams,
            labels,
            features,
            pseudo_labels,
            self.grouping,
            seed_threshold=self.seed_threshold,
            band_kernel=self.band_kernel,
            weighting=self.weighting,
            ignore_index=self.ignore_index,
            feature_grid=feature_grid,
            feature_resolution=self.feature_resolution,
            fill_ignored=self.fill_ignored,
        )

    def extra_repr(self) -> str:
        names = self.grouping.names if isinstance(self.grouping, SuperClassGrouping) else self.grouping
        return (
            f"superclasses={names}, seed_threshold={self.seed_threshold}, band_kernel={self.band_kernel}, "
            f"weighting={self.weighting!r}, feature_resolution={self.feature_resolution!r}"
        )
