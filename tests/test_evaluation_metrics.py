"""Voxel metrics of one femur: Dice, NSD, volume error, cyst confusion, mean ± SD, case ids."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evaluation.case_ids import parse_case_id
from evaluation.case_metrics import EvaluationSettings, LabelValues, evaluate_case
from evaluation.cyst_confusion import cyst_confusion
from evaluation.overlap import dice, volume_error, volume_ml
from evaluation.statistics import mean_sd
from evaluation.surface_distance import boundary_voxels, normalised_surface_distance

SHAPE = (8, 8, 8)


def box(z: slice, y: slice, x: slice, shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[z, y, x] = True
    return mask


# A: 4x4x4 cube (64 voxels); B: the same cube one slice further in z. |A∩B| = 3x4x4 = 48.
A = box(slice(2, 6), slice(2, 6), slice(2, 6))
B = box(slice(3, 7), slice(2, 6), slice(2, 6))
EMPTY = np.zeros(SHAPE, dtype=bool)


def test_dice_of_two_shifted_cubes_is_hand_computed_value() -> None:
    # Dice = 2|A∩B| / (|A| + |B|) = 2 * 48 / (64 + 64) = 0.75
    assert dice(A, B) == pytest.approx(0.75)
    assert dice(B, A) == pytest.approx(0.75)
    assert dice(A, A) == 1.0


def test_dice_both_empty_is_nan_true_negative() -> None:
    assert math.isnan(dice(EMPTY, EMPTY))


@pytest.mark.parametrize("prediction, reference", [(A, EMPTY), (EMPTY, A)])
def test_dice_one_empty_is_zero(prediction: np.ndarray, reference: np.ndarray) -> None:
    assert dice(prediction, reference) == 0.0


def test_dice_refuses_label_volume_and_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="boolean mask"):
        dice(A.astype(np.uint8) * 3, B)
    with pytest.raises(ValueError, match="shape"):
        dice(A, np.zeros((8, 8, 9), bool))


def test_mean_sd_leaves_nan_out_and_counts_it() -> None:
    # Non-NaN values 0.75, 0.5, 1.0: mean 0.75; deviations 0, -0.25, 0.25;
    # sample variance (0 + 0.0625 + 0.0625) / (3 - 1) = 0.0625 -> SD 0.25.
    stats = mean_sd([0.75, math.nan, 0.5, 1.0])
    assert stats.mean == pytest.approx(0.75)
    assert stats.sd == pytest.approx(0.25)
    assert (stats.n, stats.n_nan) == (3, 1)


def test_mean_sd_of_only_nan_and_of_one_value() -> None:
    only_nan = mean_sd([math.nan, math.nan])
    assert math.isnan(only_nan.mean) and (only_nan.n, only_nan.n_nan) == (0, 2)
    one = mean_sd([0.4])
    assert one.mean == 0.4 and math.isnan(one.sd)


def test_volume_error_in_ml_with_anisotropic_spacing() -> None:
    spacing = (2.0, 0.5, 0.5)  # 0.5 mm3 per voxel
    # A: 64 voxels = 32 mm3 = 0.032 ml; a 4x4x2 block: 32 voxels = 0.016 ml.
    half = box(slice(2, 4), slice(2, 6), slice(2, 6))
    assert volume_ml(A, spacing) == pytest.approx(0.032)
    error = volume_error(half, A, spacing)
    assert error.error_ml == pytest.approx(-0.016)
    assert error.relative == pytest.approx(-0.5)
    assert math.isnan(volume_error(A, EMPTY, spacing).relative)


def test_nsd_of_identical_masks_is_one() -> None:
    assert normalised_surface_distance(A, A, spacing=(3.0, 0.8, 0.8), tolerance_mm=0.0) == 1.0


def test_nsd_nan_rule_matches_dice() -> None:
    assert math.isnan(normalised_surface_distance(EMPTY, EMPTY, spacing=(1, 1, 1)))
    assert normalised_surface_distance(A, EMPTY, spacing=(1, 1, 1)) == 0.0


def test_nsd_of_one_slice_shift_depends_on_slice_thickness() -> None:
    # P: z 2..4 (3 slices) x 4 x 4 = 48 voxels; its interior (6-neighbour erosion) is z=3, y,x in 3..4:
    # 4 voxels, so 44 boundary voxels. R: P shifted by one slice (z 3..5).
    # Distances of P's boundary voxels to R's boundary with spacing (3, 1, 1) mm:
    #   side walls at z=3 and z=4 (24 voxels) are also R boundary voxels: 0 mm;
    #   top face interior at z=4 (4 voxels) is inside R; R's side wall is 1 in-plane voxel away: 1 mm;
    #   bottom face z=2 (16 voxels): R's nearest boundary is its bottom face one slice up: 3 mm.
    # By symmetry the same for R. Within 2 mm: 28 of 44 each -> NSD = 56 / 88 = 7 / 11.
    p = box(slice(2, 5), slice(2, 6), slice(2, 6))
    r = box(slice(3, 6), slice(2, 6), slice(2, 6))
    assert np.count_nonzero(boundary_voxels(p)) == 44
    assert normalised_surface_distance(p, r, spacing=(3.0, 1.0, 1.0), tolerance_mm=2.0) == pytest.approx(7 / 11)
    # Within 0.5 mm only the 24 coincident voxels of each: 48 / 88 = 6 / 11; within 3 mm all.
    assert normalised_surface_distance(p, r, spacing=(3.0, 1.0, 1.0), tolerance_mm=0.5) == pytest.approx(6 / 11)
    assert normalised_surface_distance(p, r, spacing=(3.0, 1.0, 1.0), tolerance_mm=3.0) == 1.0
    # With 1 mm slices the shift is 1 mm, inside the 2 mm tolerance everywhere.
    assert normalised_surface_distance(p, r, spacing=(1.0, 1.0, 1.0), tolerance_mm=2.0) == 1.0


def test_nsd_mask_touching_the_volume_edge_has_a_boundary_there() -> None:
    full = np.ones((3, 3, 3), dtype=bool)
    # Every voxel but the centre touches the edge of the volume.
    assert np.count_nonzero(boundary_voxels(full)) == 26


def test_cyst_confusion_counts_cysts_called_tumour() -> None:
    # Cyst 1: 2x2x2 = 8 voxels, 4 of them predicted lesion (50 % -> called tumour).
    # Cyst 2: 1x2x2 = 4 voxels, none predicted. Voxel fraction: 4 / 12 = 1/3.
    cyst = box(slice(1, 3), slice(1, 3), slice(1, 3)) | box(slice(5, 6), slice(5, 7), slice(5, 7))
    lesion = box(slice(1, 2), slice(1, 3), slice(1, 3))
    result = cyst_confusion(lesion, cyst)
    assert (result.cysts, result.cysts_called_tumour) == (2, 1)
    assert result.voxel_fraction_called_lesion == pytest.approx(1 / 3)
    assert result.called_tumour is True
    assert cyst_confusion(lesion, cyst, called_fraction=0.6).called_tumour is False


def test_cyst_confusion_measures_how_much_of_the_cysts_is_labelled_cyst() -> None:
    # Of the 12 cyst voxels above, 6 predicted cyst (the lower half of cyst 1, 2 of cyst 2) and one more
    # predicted cyst outside any cyst, which does not count.
    cyst = box(slice(1, 3), slice(1, 3), slice(1, 3)) | box(slice(5, 6), slice(5, 7), slice(5, 7))
    predicted_cyst = box(slice(2, 3), slice(1, 3), slice(1, 3)) | box(slice(5, 6), slice(5, 6), slice(5, 7))
    predicted_cyst[0, 0, 0] = True
    result = cyst_confusion(EMPTY, cyst, predicted_cyst=predicted_cyst)
    assert result.voxel_fraction_called_cyst == pytest.approx(6 / 12)
    assert result.voxel_fraction_called_lesion == 0.0 and result.called_tumour is False
    # Left out altogether: no cyst voxel called tumour, and none found as cyst either.
    assert cyst_confusion(EMPTY, cyst, predicted_cyst=EMPTY).voxel_fraction_called_cyst == 0.0
    # Without predicted cysts to compare (a model without a cyst class) the figure is not applicable.
    assert math.isnan(cyst_confusion(EMPTY, cyst).voxel_fraction_called_cyst)


def test_cyst_confusion_without_cyst_is_not_applicable() -> None:
    result = cyst_confusion(A, EMPTY)
    assert result.cysts == 0 and result.called_tumour is None and math.isnan(result.voxel_fraction_called_lesion)


def test_evaluate_case_uses_configured_label_values() -> None:
    # Reference: lesion (1) = cube B, cyst (2) = a 2x2x1 block apart from the cubes (x = 7);
    # prediction: cube A and the cyst block as lesion (1).
    reference = B.astype(np.uint8)
    reference[0:2, 0:2, 7:8] = 2
    prediction = A.astype(np.uint8)
    prediction[0:2, 0:2, 7:8] = 1  # the whole cyst predicted as lesion
    metrics = evaluate_case(prediction, reference, case_id="FEMUR0007_left", spacing=(1, 1, 1))
    # Dice = 2 * 48 / ((64 + 4) + 64): the cyst block counts in the prediction only.
    assert metrics.dice == pytest.approx(96 / 132)
    assert metrics.cyst.called_tumour is True
    assert metrics.detection.false_positives == 1  # the block on the cyst overlaps no reference lesion
    assert (metrics.case.patient, metrics.case.side) == ("FEMUR0007", "left")
    # Swapped label values: lesion = 2 makes the cube the background and the cyst the lesion.
    swapped = evaluate_case(
        prediction, reference, case_id="c", spacing=(1, 1, 1),
        settings=EvaluationSettings(labels=LabelValues(lesion=2, cyst=None)),
    )
    assert swapped.dice == 0.0 and swapped.cyst.cysts == 0


@pytest.mark.parametrize(
    "case_id, patient, side",
    [
        ("FEMUR0007_left", "FEMUR0007", "left"),
        ("FEMUR0007_right", "FEMUR0007", "right"),
        ("site_a_P12_RIGHT", "site_a_P12", "right"),
        ("FEMUR0007", "FEMUR0007", None),
        ("FEMUR0007_leftover", "FEMUR0007_leftover", None),
    ],
)
def test_parse_case_id(case_id: str, patient: str, side: str | None) -> None:
    parsed = parse_case_id(case_id)
    assert (parsed.patient, parsed.side, parsed.case_id) == (patient, side, case_id)


# ------------------------------------------------------------------------------- properties

small_masks = arrays(dtype=bool, shape=(4, 5, 3))
spacings = st.tuples(*(st.floats(min_value=0.3, max_value=3.0),) * 3)


@settings(max_examples=40, deadline=None)
@given(p=small_masks, r=small_masks, spacing=spacings)
def test_dice_and_nsd_are_symmetric_bounded_and_share_the_nan_rule(
    p: np.ndarray, r: np.ndarray, spacing: tuple[float, float, float]
) -> None:
    d = dice(p, r)
    n = normalised_surface_distance(p, r, spacing=spacing)
    if not p.any() and not r.any():
        assert math.isnan(d) and math.isnan(n)
        return
    assert 0.0 <= d <= 1.0 and 0.0 <= n <= 1.0
    assert d == pytest.approx(dice(r, p))
    assert n == pytest.approx(normalised_surface_distance(r, p, spacing=spacing))
    if p.any():
        assert normalised_surface_distance(p, p, spacing=spacing, tolerance_mm=0.0) == 1.0
