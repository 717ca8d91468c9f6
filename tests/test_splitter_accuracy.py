"""The splitter accuracy report: exact scores on hand-made masks, and the command on a generated study."""

from __future__ import annotations

import csv
import math

import highdicom as hd
import numpy as np
import pytest

from evaluation.splitter_accuracy import femur_accuracy, main
from operators.femur_splitter import SplitterConfig, split_femurs

SHAPE = (10, 12, 20)


class FixedSegmenter:
    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels

    def segment(self, ct: hd.Volume) -> np.ndarray:
        return self.labels


def _ct() -> hd.Volume:
    return hd.Volume.from_attributes(
        array=np.full(SHAPE, 300.0, dtype=np.float32), image_position=(-50.0, -60.0, -300.0),
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0), spacing_between_slices=2.0,
        coordinate_system="PATIENT",
    )


def _truth() -> dict[str, np.ndarray]:
    left = np.zeros(SHAPE, bool)
    left[1:9, 2:10, 12:18] = True
    right = np.zeros(SHAPE, bool)
    right[1:9, 2:10, 2:8] = True
    return {"left": left, "right": right}


def _split(labels: np.ndarray):
    return split_femurs(_ct(), config=SplitterConfig(min_femur_volume_ml=0.0, margin_mm=0.0),
                        segmenter=FixedSegmenter(labels))


def _score(labels: np.ndarray, truth_labels: np.ndarray | None = None):
    truth_labels = np.zeros(SHAPE, np.uint8) if truth_labels is None else truth_labels
    rows = femur_accuracy(_split(labels), _truth(), truth_labels, voxel_ml=0.002, seed=7, position="HFS",
                          split_s=1.0)
    return {r.side: r for r in rows}


def test_a_femur_one_slice_short_and_a_lesion_half_outside_are_scored_exactly():
    truth = _truth()
    labels = np.zeros(SHAPE, np.uint8)
    labels[truth["left"]] = 1
    labels[truth["right"]] = 2
    labels[8] = 0  # the splitter misses the last slice of both femurs: 7 of 8 slices found
    reference = np.zeros(SHAPE, np.uint8)
    reference[7:9, 4:6, 14:16] = 3  # a left lesion of 8 voxels, 4 of them in the missed slice
    reference[2, 4, 4] = 4  # a right cyst voxel, found

    rows = _score(labels, reference)

    per_femur = 8 * 8 * 6
    assert rows["left"].dice == pytest.approx(2 * 7 / (7 + 8))
    assert rows["left"].truth_ml == pytest.approx(per_femur * 0.002)
    assert rows["left"].predicted_ml == pytest.approx(per_femur * 7 / 8 * 0.002)
    assert rows["left"].side_correct is True and rows["right"].side_correct is True
    assert rows["left"].lesion_inside == pytest.approx(0.5)
    assert math.isnan(rows["left"].cyst_inside)
    assert rows["right"].cyst_inside == 1.0 and math.isnan(rows["right"].lesion_inside)


def test_swapped_sides_score_zero_and_are_flagged():
    truth = _truth()
    labels = np.zeros(SHAPE, np.uint8)
    labels[truth["left"]] = 2  # the patient's left femur reported as the right one
    labels[truth["right"]] = 1

    rows = _score(labels)

    assert rows["left"].dice == 0.0 and rows["right"].dice == 0.0
    assert rows["left"].side_correct is False and rows["right"].side_correct is False


def test_a_missed_femur_scores_zero_and_a_femur_in_neither_is_nan():
    truth = _truth()
    labels = np.zeros(SHAPE, np.uint8)
    labels[truth["left"]] = 1
    rows = _score(labels)
    assert rows["left"].dice == 1.0
    assert rows["right"].dice == 0.0 and rows["right"].side_correct is None and rows["right"].in_view

    only_left = {"left": truth["left"], "right": np.zeros(SHAPE, bool)}
    rows = {r.side: r for r in femur_accuracy(_split(labels), only_left, np.zeros(SHAPE, np.uint8),
                                               voxel_ml=0.002, seed=7, position="HFS", split_s=1.0)}
    assert math.isnan(rows["right"].dice) and not rows["right"].in_view


def test_the_command_reports_a_generated_study_and_fails_under_an_impossible_target(tmp_path, capsys):
    out = tmp_path / "report"
    status = main(["--seeds", "5", "--positions", "FFS", "--preset", "small", "--out", str(out),
                   "--fail-under", "0.9999", "--pictures"])
    assert status == 1
    with open(out / "splitter_accuracy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["seed"], r["position"], r["side"]) for r in rows] == [("5", "FFS", "left"), ("5", "FFS", "right")]
    for row in rows:
        # The small preset (3 mm voxels) is coarse: the femurs are found on the right side, not exactly.
        assert 0.8 < float(row["dice"]) < 0.9999
        assert row["side_correct"] == "true"
    text = (out / "splitter_accuracy.md").read_text()
    assert "femurs with Dice >= 0.97" in text and "| 5 | FFS | left |" in text
    assert (out / "5_FFS.png").stat().st_size > 10_000
    assert "2 femurs: median Dice" in capsys.readouterr().out


def test_bad_seed_ranges_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--seeds", "9-3", "--out", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --seeds: bad seed range '9-3'")


def test_cohort_scanner_draws_are_the_training_cohorts_and_are_named_in_the_report():
    from evaluation.splitter_accuracy import FemurAccuracy, report_markdown, study_overrides
    from lesion_training.synthetic_cohort import cohort_overrides

    assert study_overrides(1012, "preset") == {}
    drawn = study_overrides(1012, "cohort")
    assert drawn == cohort_overrides(1012)
    assert 1.2 <= drawn["pixel_spacing"] <= 1.9 and 1.5 <= drawn["slice_spacing"] <= 3.0
    with pytest.raises(ValueError, match="scanner must be one of"):
        study_overrides(1, "fancy")
    row = FemurAccuracy(seed=1012, position="HFS", side="left", dice=0.95, truth_ml=500.0, predicted_ml=490.0,
                        side_correct=True, lesion_inside=math.nan, cyst_inside=math.nan, split_s=1.0)
    assert "`--scanner cohort`" in report_markdown([row], target=0.97, preset="standard", scanner="cohort")
    assert "--scanner" not in report_markdown([row], target=0.97, preset="standard")


@pytest.mark.parametrize("slice_step_mm", [2.0, -2.0])  # slices going down the body, or up it
def test_a_study_cut_to_the_top_of_its_femurs_keeps_those_slices_and_the_pelvis_above(slice_step_mm):
    from evaluation.splitter_accuracy import top_of_the_femurs

    # Slice k lies at LPS z = -300 + k * step; the femurs fill slices 1-8 of the (z, y, x) array.
    ct = hd.Volume.from_attributes(
        array=np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), image_position=(-50.0, -60.0, -300.0),
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), pixel_spacing=(1.0, 1.0),
        spacing_between_slices=slice_step_mm, coordinate_system="PATIENT", frame_of_reference_uid="1.2.3",
    )
    going_up = ct.affine[2, 0] > 0  # LPS z of slice k: -300 + 2k going up the body, -300 - 2k going down
    assert abs(ct.affine[2, 0]) == 2.0 and going_up == (slice_step_mm < 0)
    labels = np.zeros(SHAPE, np.uint8)
    labels[_truth()["left"]] = 1
    cut, truth, cut_labels = top_of_the_femurs(ct, _truth(), labels, length_mm=5.0)
    # The highest femur slice is slice 8 (going up) or slice 1 (going down): with it, the two slices within
    # 5 mm below it, and everything above.
    kept = slice(6, 10) if going_up else slice(0, 4)
    np.testing.assert_array_equal(cut.array, ct.array[kept])
    np.testing.assert_array_equal(truth["left"], _truth()["left"][kept])
    np.testing.assert_array_equal(cut_labels, labels[kept])
    # The cut volume's slice 0 sits where the kept slice did, in patient coordinates.
    np.testing.assert_allclose(cut.affine[:3, 3], ct.affine[:3, 3] + ct.affine[:3, 0] * kept.start)
    np.testing.assert_allclose(cut.affine[:3, :3], ct.affine[:3, :3])
    assert cut.frame_of_reference_uid == "1.2.3"
    with pytest.raises(ValueError, match="length_mm must be positive"):
        top_of_the_femurs(ct, _truth(), labels, length_mm=0.0)
    with pytest.raises(ValueError, match="no femur"):
        top_of_the_femurs(ct, {"left": np.zeros(SHAPE, bool)}, labels, length_mm=5.0)


def test_the_command_cuts_studies_to_the_top_of_their_femurs_and_says_so(tmp_path):
    out = tmp_path / "report"
    # 8 cm of femur below the top of the heads hold no shaft: both femurs come from their heads, each on
    # its own side (the small preset's 2.5 mm voxels let them take in part of the ischium).
    assert main(["--seeds", "2", "--positions", "FFS", "--preset", "small", "--out", str(out),
                 "--femur-top-mm", "80"]) == 0
    with open(out / "splitter_accuracy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["side"] for r in rows] == ["left", "right"]
    assert all(float(r["dice"]) > 0.75 and r["side_correct"] == "true" for r in rows), rows
    assert all(80.0 < float(r["truth_ml"]) for r in rows)  # the heads and necks are in view
    assert "cut to 80 mm of femur" in (out / "splitter_accuracy.md").read_text()
