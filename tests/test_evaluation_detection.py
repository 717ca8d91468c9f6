"""Lesion-wise detection: the detection rule, false positives, minimum size, sensitivity by size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.detection import (
    DetectionRule,
    detect_lesions,
    equivalent_sphere_diameter_mm,
    sensitivity_by_size,
    size_bins,
)

SPACING = (2.0, 2.0, 2.0)  # 8 mm3 per voxel
SHAPE = (24, 24, 24)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """Three reference lesions (large, medium, small) and four predicted components."""
    reference = np.zeros(SHAPE, dtype=bool)
    prediction = np.zeros(SHAPE, dtype=bool)
    # Large lesion: 7x9x9 = 567 voxels = 4536 mm3 -> d = (6 * 4536 / pi)^(1/3) = 20.5 mm (>= 20 mm).
    reference[2:9, 2:11, 2:11] = True
    # Medium lesion: 4x4x5 = 80 voxels = 640 mm3 -> d = 10.7 mm (10-20 mm).
    reference[14:18, 14:18, 14:19] = True
    # Small lesion: 2x2x2 = 8 voxels = 64 mm3 -> d = 5.0 mm (< 10 mm); not predicted.
    reference[14:16, 2:4, 20:22] = True
    # A compact core inside the large lesion: 27 voxels = 4.8 % of it (< 10 %), but 100 % of the
    # predicted component lies in the lesion -> detected by the second clause.
    prediction[4:7, 4:7, 4:7] = True
    # A 4x4x4 block grazing the medium lesion by one corner voxel: 1/80 of the lesion, 1/64 of the
    # component -> neither detected nor a false positive.
    prediction[17:21, 17:21, 18:22] = True
    # False positives: an 8-voxel block (64 mm3) and a single voxel (8 mm3), touching nothing.
    prediction[20:22, 2:4, 2:4] = True
    prediction[22, 22, 2] = True
    return prediction, reference


def test_detection_of_small_and_large_lesions_and_false_positives() -> None:
    prediction, reference = scene()
    result = detect_lesions(prediction, reference, spacing=SPACING)
    assert result.total == 3
    by_size = sorted(result.lesions, key=lambda lesion: lesion.voxels, reverse=True)
    large, medium, small = by_size
    assert (large.voxels, medium.voxels, small.voxels) == (567, 80, 8)
    assert large.detected and large.overlap_voxels == 27 and large.best_prediction_fraction == 1.0
    assert not medium.detected and medium.overlap_voxels == 1
    assert not small.detected and small.overlap_voxels == 0
    assert result.detected == 1
    assert result.false_positives == 2
    assert result.predicted_components == 4
    assert large.diameter_mm == pytest.approx((6 * 4536 / math.pi) ** (1 / 3))


def test_minimum_predicted_component_size_ignores_specks() -> None:
    prediction, reference = scene()
    result = detect_lesions(prediction, reference, spacing=SPACING, rule=DetectionRule(min_prediction_mm3=10.0))
    # The single 8 mm3 voxel is ignored; the 64 mm3 block still counts.
    assert result.false_positives == 1
    assert result.ignored_small_predictions == 1
    assert result.predicted_components == 3


def test_sensitivity_by_size_bins() -> None:
    prediction, reference = scene()
    lesions = detect_lesions(prediction, reference, spacing=SPACING).lesions
    rows = sensitivity_by_size(lesions)
    assert [r.size_bin.label for r in rows] == ["< 10 mm", "10-20 mm", ">= 20 mm"]
    assert [(r.detected, r.total) for r in rows] == [(0, 1), (0, 1), (1, 1)]
    assert rows[2].sensitivity == 1.0
    assert math.isnan(sensitivity_by_size([], edges_mm=(15.0,))[0].sensitivity)


def test_lesion_fraction_clause_at_its_threshold() -> None:
    # Reference lesion: 1x4x5 = 20 voxels. Predicted component: 1x2x5 = 10 voxels of which 2 lie in
    # the lesion (10 % of the lesion, 20 % of the component) -> detected by the 10 % clause.
    reference = np.zeros((3, 10, 10), dtype=bool)
    reference[1, 0:4, 0:5] = True
    prediction = np.zeros_like(reference)
    prediction[1, 3:5, 0:5] = True
    prediction[1, 3, 2:5] = False  # keep 2 voxels inside the lesion (row 3, x 0..1)
    prediction[1, 5, 2:5] = True  # 3 more outside, still one component of 10 voxels
    assert np.count_nonzero(prediction & reference) == 2 and np.count_nonzero(prediction) == 10
    assert detect_lesions(prediction, reference, spacing=(1, 1, 1)).detected == 1
    # One voxel inside (5 % of the lesion, 10 % of the component): not detected, not a false positive.
    prediction[1, 3, 1] = False
    prediction[1, 5, 1] = True
    assert np.count_nonzero(prediction & reference) == 1 and np.count_nonzero(prediction) == 10
    result = detect_lesions(prediction, reference, spacing=(1, 1, 1))
    assert (result.detected, result.false_positives) == (0, 0)
    # A looser rule accepts it.
    loose = DetectionRule(min_lesion_fraction=0.05)
    assert detect_lesions(prediction, reference, spacing=(1, 1, 1), rule=loose).detected == 1


def test_no_lesion_anywhere() -> None:
    empty = np.zeros((4, 4, 4), dtype=bool)
    result = detect_lesions(empty, empty, spacing=(1, 1, 1))
    assert (result.total, result.detected, result.false_positives) == (0, 0, 0)


def test_lesions_touching_by_a_corner_are_one_lesion() -> None:
    # 26-connectivity: two voxels sharing only a corner form one component.
    reference = np.zeros((3, 3, 3), dtype=bool)
    reference[0, 0, 0] = reference[1, 1, 1] = True
    assert detect_lesions(reference, reference, spacing=(1, 1, 1)).total == 1


def test_equivalent_sphere_diameter() -> None:
    # A sphere of diameter 10 mm has volume pi/6 * 1000 mm3.
    assert equivalent_sphere_diameter_mm(math.pi / 6 * 1000) == pytest.approx(10.0)


def test_rule_and_bins_validation() -> None:
    with pytest.raises(ValueError, match="min_lesion_fraction"):
        DetectionRule(min_lesion_fraction=0.0)
    with pytest.raises(ValueError, match="increasing"):
        size_bins((20.0, 10.0))
    assert [b.label for b in size_bins(())] == ["all sizes"]
