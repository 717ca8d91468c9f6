"""All metrics of one femur: Dice, NSD, volume error, lesion-wise detection and cyst confusion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evaluation.case_ids import CaseId, parse_case_id
from evaluation.cyst_confusion import DEFAULT_CALLED_FRACTION, CystConfusion, cyst_confusion
from evaluation.detection import DEFAULT_SIZE_BINS_MM, DetectionResult, DetectionRule, detect_lesions, size_bins
from evaluation.label_io import GeometryTolerance
from evaluation.overlap import VolumeError, dice, volume_error
from evaluation.surface_distance import DEFAULT_TOLERANCE_MM, normalised_surface_distance


@dataclass(frozen=True, kw_only=True)
class LabelValues:
    """Label values of the lesion datasets (docs/CONVENTIONS.md, "nnU-Net lesion dataset labels").

    Attributes
    ----------
    lesion : int
        Value of the lytic-lesion class (default 1).
    cyst : int or None
        Value of the cyst class (default 2); None when the datasets have no cyst class.
    """

    lesion: int = 1
    cyst: int | None = 2

    def __post_init__(self) -> None:
        if self.lesion < 1:
            raise ValueError(f"lesion label must be >= 1, got {self.lesion}")
        if self.cyst is not None and (self.cyst < 1 or self.cyst == self.lesion):
            raise ValueError(f"cyst label must be >= 1 and differ from the lesion label, got {self.cyst}")

    @property
    def known(self) -> frozenset[int]:
        """Background and the configured classes."""
        return frozenset({0, self.lesion} | ({self.cyst} if self.cyst is not None else set()))


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    """Everything that changes the numbers of an evaluation; reported in the output header.

    Attributes
    ----------
    labels : LabelValues
        Lesion and cyst label values.
    nsd_tolerance_mm : float
        Tolerance of the normalised surface distance, in mm.
    detection : DetectionRule
        Lesion-wise detection rule and minimum predicted component size.
    size_bins_mm : tuple of float
        Edges of the equivalent-sphere-diameter bins of the sensitivity table, in mm.
    cyst_called_fraction : float
        Fraction of a cyst's voxels predicted lesion for the cyst to count as called tumour.
    geometry : GeometryTolerance
        Tolerances of the voxel-grid check between the two label volumes of a case.
    """

    labels: LabelValues = field(default_factory=LabelValues)
    nsd_tolerance_mm: float = DEFAULT_TOLERANCE_MM
    detection: DetectionRule = field(default_factory=DetectionRule)
    size_bins_mm: tuple[float, ...] = DEFAULT_SIZE_BINS_MM
    cyst_called_fraction: float = DEFAULT_CALLED_FRACTION
    geometry: GeometryTolerance = field(default_factory=GeometryTolerance)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.nsd_tolerance_mm) and self.nsd_tolerance_mm >= 0):
            raise ValueError(f"NSD tolerance must be >= 0 mm, got {self.nsd_tolerance_mm}")
        size_bins(self.size_bins_mm)  # validates the edges
        if not (0.0 < self.cyst_called_fraction <= 1.0):
            raise ValueError(f"cyst called fraction must be in (0, 1], got {self.cyst_called_fraction}")


@dataclass(frozen=True)
class CaseMetrics:
    """Metrics of one femur for the lesion class, test labels against reference labels.

    Attributes
    ----------
    case : CaseId
        Case id, patient and side.
    dice : float
        Dice; NaN for a true negative (both empty).
    nsd : float
        Normalised surface distance at the configured tolerance; NaN for a true negative.
    volume : VolumeError
        Test and reference lesion volumes (ml) and their difference.
    detection : DetectionResult
        Lesion-wise detection and false positives.
    cyst : CystConfusion
        Reference cysts called lesion by the test labels (``cysts == 0`` when there is none or the
        datasets have no cyst label).
    """

    case: CaseId
    dice: float
    nsd: float
    volume: VolumeError
    detection: DetectionResult
    cyst: CystConfusion

    @property
    def true_negative(self) -> bool:
        """Neither the test nor the reference labels hold a lesion."""
        return math.isnan(self.dice)


def evaluate_case(
    test_labels: np.ndarray,
    reference_labels: np.ndarray,
    *,
    case_id: str,
    spacing: Sequence[float],
    settings: EvaluationSettings = EvaluationSettings(),
) -> CaseMetrics:
    """Evaluate the lesion class of one femur.

    Parameters
    ----------
    test_labels, reference_labels : numpy.ndarray
        Integer label volumes of the same shape, axes (z, y, x); the test labels are a prediction or
        another annotator's labels.
    case_id : str
        Case id, e.g. ``FEMUR0007_left``.
    spacing : sequence of float
        Voxel spacing (sz, sy, sx) in mm.
    settings : EvaluationSettings
        Label values, NSD tolerance, detection rule.

    Returns
    -------
    CaseMetrics
    """
    test_labels = np.asarray(test_labels)
    reference_labels = np.asarray(reference_labels)
    if test_labels.shape != reference_labels.shape:
        raise ValueError(f"case {case_id}: label volumes differ in shape {test_labels.shape} vs {reference_labels.shape}")
    lesion = settings.labels.lesion
    test_lesion = test_labels == lesion
    reference_lesion = reference_labels == lesion
    if settings.labels.cyst is None:
        reference_cyst = np.zeros_like(reference_lesion)
        test_cyst = None
    else:
        reference_cyst = reference_labels == settings.labels.cyst
        test_cyst = test_labels == settings.labels.cyst
    return CaseMetrics(
        case=parse_case_id(case_id),
        dice=dice(test_lesion, reference_lesion),
        nsd=normalised_surface_distance(
            test_lesion, reference_lesion, spacing=spacing, tolerance_mm=settings.nsd_tolerance_mm
        ),
        volume=volume_error(test_lesion, reference_lesion, spacing),
        detection=detect_lesions(test_lesion, reference_lesion, spacing=spacing, rule=settings.detection),
        cyst=cyst_confusion(test_lesion, reference_cyst, predicted_cyst=test_cyst,
                            called_fraction=settings.cyst_called_fraction),
    )
