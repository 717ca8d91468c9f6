"""Lesion-wise detection: which reference lesions were found, and how many predicted lesions are false.

Lesions are connected components with 26-connectivity (voxels touching by a face, an edge or a corner
belong to the same lesion), in the reference and in the prediction alike.

Detection rule (`DetectionRule`, defaults in brackets). A reference lesion is **detected** when the
predicted lesion voxels overlapping it number at least ``min_overlap_voxels`` [1] and either

* cover at least ``min_lesion_fraction`` [10 %] of the reference lesion's voxels, or
* make up at least ``min_prediction_fraction`` [50 %] of one predicted component's voxels.

Why both: a single touching voxel is too weak a criterion (a large false blob that grazes a lesion
would "detect" it), while a pure fraction-of-lesion rule misses a large lesion of which the model
found a compact core lying almost entirely inside it. The first clause accepts any prediction that
covers a meaningful part of the lesion; the second accepts a prediction that is mostly inside the
lesion, however small the part of the lesion it covers. A prediction that overlaps a lesion a little
and lies mostly outside it satisfies neither.

A predicted component is a **false positive** when it overlaps no reference lesion voxel at all
(one lying on a reference cyst is a false positive; cysts are reported separately). A predicted
component that overlaps a lesion without meeting the rule is neither a detection nor a false positive.
Predicted components smaller than ``min_prediction_mm3`` [0] are ignored by the lesion-wise metrics
only (they neither detect nor count as false positives); Dice, NSD and volume use every voxel.

Lesion size is the diameter of the sphere of equal volume, d = (6 V / pi)^(1/3), in mm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from evaluation._validation import as_mask, as_spacing, check_same_shape, padded_bounding_box

DEFAULT_SIZE_BINS_MM: tuple[float, ...] = (10.0, 20.0)

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
# Fractions compare voxel-count ratios with a threshold; keep 3/30 >= 0.1 true whatever the rounding.
_FRACTION_EPS = 1e-9


@dataclass(frozen=True, kw_only=True)
class DetectionRule:
    """When a reference lesion counts as detected, and which predictions are considered.

    Attributes
    ----------
    min_overlap_voxels : int
        Overlapping voxels a detection needs in any case (>= 1).
    min_lesion_fraction : float
        Fraction of the reference lesion's voxels that predicted lesion voxels must cover, in (0, 1].
    min_prediction_fraction : float
        Alternatively, fraction of one predicted component's voxels lying inside the reference
        lesion, in (0, 1].
    min_prediction_mm3 : float
        Predicted components smaller than this volume (mm^3) are ignored by lesion-wise metrics.
    """

    min_overlap_voxels: int = 1
    min_lesion_fraction: float = 0.10
    min_prediction_fraction: float = 0.50
    min_prediction_mm3: float = 0.0

    def __post_init__(self) -> None:
        if int(self.min_overlap_voxels) != self.min_overlap_voxels or self.min_overlap_voxels < 1:
            raise ValueError(f"min_overlap_voxels must be an integer >= 1, got {self.min_overlap_voxels}")
        for name in ("min_lesion_fraction", "min_prediction_fraction"):
            value = getattr(self, name)
            if not (0.0 < value <= 1.0):
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if not (math.isfinite(self.min_prediction_mm3) and self.min_prediction_mm3 >= 0):
            raise ValueError(f"min_prediction_mm3 must be >= 0, got {self.min_prediction_mm3}")

    def describe(self) -> str:
        """One sentence stating the rule, for report headers."""
        text = (
            f"a reference lesion (26-connected component) is detected when predicted lesion voxels overlap it "
            f"by >= {self.min_overlap_voxels} voxel(s) and cover >= {self.min_lesion_fraction:.0%} of it "
            f"or make up >= {self.min_prediction_fraction:.0%} of one predicted component; "
            f"a predicted component overlapping no reference lesion is a false positive"
        )
        if self.min_prediction_mm3 > 0:
            text += f"; predicted components < {self.min_prediction_mm3:g} mm3 are ignored"
        return text


@dataclass(frozen=True)
class ReferenceLesion:
    """One reference lesion and how the prediction covers it.

    Attributes
    ----------
    voxels : int
        Size of the lesion in voxels.
    volume_mm3 : float
        Volume in mm^3.
    diameter_mm : float
        Equivalent-sphere diameter in mm.
    overlap_voxels : int
        Lesion voxels covered by (retained) predicted lesion voxels.
    overlap_fraction : float
        ``overlap_voxels / voxels``.
    best_prediction_fraction : float
        Largest fraction of a single predicted component's voxels lying inside this lesion (0 if none).
    detected : bool
        Whether the detection rule is met.
    """

    voxels: int
    volume_mm3: float
    diameter_mm: float
    overlap_voxels: int
    overlap_fraction: float
    best_prediction_fraction: float
    detected: bool


@dataclass(frozen=True)
class DetectionResult:
    """Lesion-wise result of one femur.

    Attributes
    ----------
    lesions : tuple of ReferenceLesion
        Reference lesions in label-scan order (z, then y, then x of their first voxel).
    predicted_components : int
        Predicted components considered (after the minimum-size filter).
    false_positives : int
        Considered predicted components overlapping no reference lesion.
    ignored_small_predictions : int
        Predicted components dropped by the minimum-size filter.
    """

    lesions: tuple[ReferenceLesion, ...]
    predicted_components: int
    false_positives: int
    ignored_small_predictions: int

    @property
    def total(self) -> int:
        """Number of reference lesions."""
        return len(self.lesions)

    @property
    def detected(self) -> int:
        """Number of detected reference lesions."""
        return sum(lesion.detected for lesion in self.lesions)


def equivalent_sphere_diameter_mm(volume_mm3: float) -> float:
    """Diameter (mm) of the sphere whose volume is `volume_mm3` (mm^3): (6 V / pi)^(1/3)."""
    if volume_mm3 < 0:
        raise ValueError(f"volume must be >= 0, got {volume_mm3}")
    return (6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0)


def detect_lesions(
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    spacing: Sequence[float],
    rule: DetectionRule = DetectionRule(),
) -> DetectionResult:
    """Match predicted lesions to reference lesions of one femur.

    Parameters
    ----------
    prediction, reference : numpy.ndarray
        Boolean (or 0/1) lesion masks of the same shape, axes (z, y, x).
    spacing : sequence of float
        Voxel spacing (sz, sy, sx) in mm.
    rule : DetectionRule
        Detection criteria and minimum predicted component size (see the module docstring).

    Returns
    -------
    DetectionResult
    """
    p = as_mask(prediction, "prediction")
    r = as_mask(reference, "reference")
    check_same_shape(p, r, "prediction and reference")
    sz, sy, sx = as_spacing(spacing)
    voxel_mm3 = sz * sy * sx

    # Components lie inside the union's bounding box; labelling that block gives the same components.
    box = padded_bounding_box(p | r, margin=(0, 0, 0))
    if box is None:
        return DetectionResult(lesions=(), predicted_components=0, false_positives=0, ignored_small_predictions=0)
    ref_cc, n_ref = ndimage.label(r[box], structure=_CONNECTIVITY_26)
    pred_cc, n_pred = ndimage.label(p[box], structure=_CONNECTIVITY_26)

    ref_sizes = np.bincount(ref_cc.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)
    kept = pred_sizes * voxel_mm3 >= rule.min_prediction_mm3
    kept[0] = False
    ignored = int(n_pred - np.count_nonzero(kept))

    both = (ref_cc > 0) & kept[pred_cc]
    ref_ids = ref_cc[both].astype(np.int64)
    pred_ids = pred_cc[both].astype(np.int64)
    overlap = np.bincount(ref_ids, minlength=n_ref + 1)

    # Largest share of a single predicted component inside each reference lesion.
    best_prediction_fraction = np.zeros(n_ref + 1)
    if ref_ids.size:
        pair_codes, pair_counts = np.unique(ref_ids * (n_pred + 1) + pred_ids, return_counts=True)
        pair_ref, pair_pred = np.divmod(pair_codes, n_pred + 1)
        np.maximum.at(best_prediction_fraction, pair_ref, pair_counts / pred_sizes[pair_pred])

    touched = np.zeros(n_pred + 1, dtype=bool)
    touched[pred_ids] = True
    false_positives = int(np.count_nonzero(kept & ~touched))

    lesions = []
    for label in range(1, n_ref + 1):
        voxels = int(ref_sizes[label])
        covered = int(overlap[label])
        fraction = covered / voxels
        share = float(best_prediction_fraction[label])
        detected = covered >= rule.min_overlap_voxels and (
            fraction >= rule.min_lesion_fraction - _FRACTION_EPS
            or share >= rule.min_prediction_fraction - _FRACTION_EPS
        )
        volume = voxels * voxel_mm3
        lesions.append(
            ReferenceLesion(
                voxels=voxels,
                volume_mm3=volume,
                diameter_mm=equivalent_sphere_diameter_mm(volume),
                overlap_voxels=covered,
                overlap_fraction=fraction,
                best_prediction_fraction=share,
                detected=detected,
            )
        )
    return DetectionResult(
        lesions=tuple(lesions),
        predicted_components=int(np.count_nonzero(kept)),
        false_positives=false_positives,
        ignored_small_predictions=ignored,
    )


@dataclass(frozen=True)
class SizeBin:
    """A range of equivalent-sphere diameters, lower <= d < upper, in mm."""

    lower_mm: float
    upper_mm: float

    @property
    def label(self) -> str:
        """Human-readable range, e.g. ``"< 10 mm"``, ``"10-20 mm"``, ``">= 20 mm"``."""
        if self.lower_mm <= 0 and math.isinf(self.upper_mm):
            return "all sizes"
        if self.lower_mm <= 0:
            return f"< {self.upper_mm:g} mm"
        if math.isinf(self.upper_mm):
            return f">= {self.lower_mm:g} mm"
        return f"{self.lower_mm:g}-{self.upper_mm:g} mm"

    def contains(self, diameter_mm: float) -> bool:
        """Whether `diameter_mm` falls in [lower, upper)."""
        return self.lower_mm <= diameter_mm < self.upper_mm


def size_bins(edges_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM) -> tuple[SizeBin, ...]:
    """Bins of equivalent-sphere diameter cut at `edges_mm` (strictly increasing, > 0, mm).

    ``(10, 20)`` gives ``< 10 mm``, ``10-20 mm`` and ``>= 20 mm``; no edges give one bin of all sizes.
    """
    edges = [float(e) for e in edges_mm]
    if any(not math.isfinite(e) or e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"size bin edges must be positive and strictly increasing (mm), got {tuple(edges_mm)}")
    bounds = [0.0, *edges, math.inf]
    return tuple(SizeBin(lower_mm=lo, upper_mm=hi) for lo, hi in zip(bounds, bounds[1:]))


@dataclass(frozen=True)
class BinSensitivity:
    """Detected and total reference lesions in one size bin.

    Attributes
    ----------
    size_bin : SizeBin
    total, detected : int
    sensitivity : float
        ``detected / total``; NaN when the bin holds no lesion.
    """

    size_bin: SizeBin
    total: int
    detected: int

    @property
    def sensitivity(self) -> float:
        return self.detected / self.total if self.total else math.nan


def sensitivity_by_size(
    lesions: Iterable[ReferenceLesion], *, edges_mm: Sequence[float] = DEFAULT_SIZE_BINS_MM
) -> list[BinSensitivity]:
    """Lesion-wise sensitivity per equivalent-sphere-diameter bin, pooled over the given lesions.

    Parameters
    ----------
    lesions : iterable of ReferenceLesion
        Reference lesions, typically of all femurs of one comparison.
    edges_mm : sequence of float
        Bin edges in mm (see `size_bins`).
    """
    bins = size_bins(edges_mm)
    totals = [0] * len(bins)
    hits = [0] * len(bins)
    for lesion in lesions:
        for i, size_bin in enumerate(bins):
            if size_bin.contains(lesion.diameter_mm):
                totals[i] += 1
                hits[i] += int(lesion.detected)
                break
    return [BinSensitivity(size_bin=b, total=t, detected=d) for b, t, d in zip(bins, totals, hits)]
