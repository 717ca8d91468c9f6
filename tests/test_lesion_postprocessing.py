"""Small lesion components are dropped by volume, and the threshold is chosen on held-out femurs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lesion_training.postprocessing_selection import (
    FemurPrediction,
    choose,
    record_in_model_json,
    score_candidates,
)
from operators.lesion_postprocessing import min_lesion_volume_ml, remove_small_components

SPACING = (2.0, 1.0, 1.0)  # mm along (z, y, x): one voxel is 2 mm^3 = 0.002 ml


def _labels() -> np.ndarray:
    labels = np.zeros((20, 30, 30), dtype=np.uint8)
    labels[2:12, 2:12, 2:12] = 1  # 1000 voxels = 2 ml
    labels[15, 20, 20] = 1  # 1 voxel = 0.002 ml
    labels[16, 21, 21] = 1  # touches the one above at a corner: the same 0.004 ml component
    labels[15:17, 2:5, 25:28] = 2  # a cyst of 18 voxels, another label
    return labels


def test_components_under_the_volume_are_removed_and_other_labels_kept() -> None:
    labels = _labels()
    out = remove_small_components(labels, 1, 0.005, SPACING)
    assert out[15, 20, 20] == 0 and out[16, 21, 21] == 0
    assert (out[2:12, 2:12, 2:12] == 1).all()
    assert np.array_equal(out == 2, labels == 2)
    assert labels[15, 20, 20] == 1, "the input was modified"


def test_the_volume_counts_in_millilitres_with_the_voxel_size() -> None:
    labels = _labels()
    # The corner-joined pair is 2 voxels: 0.004 ml at 2 mm^3, 0.001 ml at 0.5 mm^3 per voxel.
    assert remove_small_components(labels, 1, 0.003, SPACING)[15, 20, 20] == 1
    assert remove_small_components(labels, 1, 0.003, (0.5, 1.0, 1.0))[15, 20, 20] == 0
    assert remove_small_components(labels, 1, 0.0, SPACING) is labels


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        remove_small_components(_labels(), 1, -0.1, SPACING)
    with pytest.raises(ValueError, match="does not match"):
        remove_small_components(_labels(), 1, 0.1, (1.0, 1.0))


@pytest.mark.parametrize("meta,expected", [({}, 0.0), ({"postprocessing": {}}, 0.0),
                                            ({"postprocessing": {"min_lesion_volume_ml": 0.25}}, 0.25)])
def test_model_json_threshold(meta, expected) -> None:
    assert min_lesion_volume_ml(meta) == expected


def _femur(case: str, lesion: bool, speck_voxels: int) -> FemurPrediction:
    reference = np.zeros((20, 30, 30), dtype=bool)
    labels = np.zeros(reference.shape, dtype=np.uint8)
    if lesion:
        reference[2:12, 2:12, 2:12] = True  # 2 ml, segmented whole
        labels[reference] = 1
    labels[15, 20, 20:20 + speck_voxels] = 1  # a false positive of speck_voxels * 0.002 ml
    return FemurPrediction(case=case, labels=labels, reference=reference, spacing_mm=SPACING)


def test_the_smallest_threshold_that_clears_healthy_femurs_is_chosen() -> None:
    # Specks of 0.04 ml in a lesion-free femur and 0.02 ml beside a real lesion.
    femurs = [_femur("healthy", False, 20), _femur("diseased", True, 10)]
    scores = score_candidates(femurs, [0.0, 0.01, 0.05, 0.1, 0.5])
    by_threshold = {s.min_lesion_volume_ml: s for s in scores}
    assert by_threshold[0.0].lesion_free_predicted_empty == (0, 1)
    assert by_threshold[0.0].score < by_threshold[0.05].score
    assert by_threshold[0.05].score == pytest.approx(1.0)
    assert by_threshold[0.05].lesion_free_predicted_empty == (1, 1)
    assert by_threshold[0.05].mean_lesion_dice == pytest.approx(1.0)
    # 0.05, 0.1 and 0.5 ml all score 1 (the 2 ml lesion survives): the smallest wins.
    assert choose(scores).min_lesion_volume_ml == 0.05


def test_choice_is_recorded_in_model_json(tmp_path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"name": "m", "version": "1"}))
    scores = score_candidates([_femur("healthy", False, 20)], [0.0, 0.05])
    record_in_model_json(tmp_path, choose(scores), scores, chosen_on="test femurs")
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["name"] == "m"
    assert min_lesion_volume_ml(meta) == 0.05
    assert [c["min_lesion_volume_ml"] for c in meta["postprocessing"]["candidates"]] == [0.0, 0.05]
