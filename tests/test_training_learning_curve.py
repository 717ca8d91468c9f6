"""Learning curve: nested training subsets by patient, one held-out validation group, nnU-Net per subset."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from lesion_training.cli import main
from lesion_training.learning_curve import learning_curve_splits
from operators.errors import TrainingDataError
from tests.training_support import smoke_small_configuration


def _cases(n_patients: int) -> list[str]:
    return [f"P{k:03d}_{side}" for k in range(n_patients) for side in ("left", "right")]


def test_subsets_are_nested_whole_patients_and_never_validated():
    cases = _cases(20) + ["P900_left"]  # a patient with one femur in view
    splits = learning_curve_splits(cases, [6, 14, 30], validation_fraction=0.2, seed=3)
    assert [len(s["train"]) >= n for s, n in zip(splits, [6, 14, 30])] == [True] * 3
    validation = set(splits[0]["val"])
    assert all(set(s["val"]) == validation for s in splits)
    assert len({c.rsplit("_", 1)[0] for c in validation}) == 4  # a fifth of 21 patients
    for smaller, larger in zip(splits, splits[1:]):
        assert set(smaller["train"]) < set(larger["train"])
    for split in splits:
        assert not set(split["train"]) & validation
        patients = {c.rsplit("_", 1)[0] for c in split["train"]}
        # Whole patients only: both femurs of a two-femur patient, and no more than one patient over the size.
        assert all(f"{p}_left" in split["train"] and f"{p}_right" in split["train"] for p in patients if p != "P900")
    assert splits == learning_curve_splits(list(reversed(cases)), [6, 14, 30], validation_fraction=0.2, seed=3)
    assert splits != learning_curve_splits(cases, [6, 14, 30], validation_fraction=0.2, seed=4)


@pytest.mark.parametrize("sizes,message", [
    ([10, 10], "increasing"), ([0, 4], "increasing"), ([], "increasing"), ([4, 40], "only 32 femurs"),
])
def test_impossible_curves_are_refused_with_the_reason(sizes, message):
    with pytest.raises(TrainingDataError, match=message):
        learning_curve_splits(_cases(20), sizes, validation_fraction=0.2)


@pytest.mark.slow
def test_learning_curve_trains_each_subset_and_scores_the_common_validation_femurs(tmp_path):
    from evaluation.label_io import list_label_files, read_label_volume
    from evaluation.overlap import dice
    from lesion_training.toy_dataset import write_toy_dataset

    dataset = write_toy_dataset(tmp_path / "data" / "Dataset902_ToyCurve", num_cases=8)
    with smoke_small_configuration():
        status = main(["learning-curve", "--dataset", str(dataset), "--sizes", "2", "5", "--device", "cpu",
                       "--workspace", str(tmp_path / "ws"), "--validation-fraction", "0.25",
                       "--num-processes", "1", "--out", str(tmp_path / "curve")])
    assert status == 0
    with (tmp_path / "curve" / "learning_curve.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["training_femurs"]) for r in rows] == [2, 5]
    assert "| 2 | 2 |" in (tmp_path / "curve" / "learning_curve.md").read_text()

    # The figures are the paper's Dice rule recomputed here from nnU-Net's own validation predictions.
    results = next((tmp_path / "ws" / "nnUNet_results" / "Dataset902_ToyCurve").iterdir())
    labels = list_label_files(dataset / "labelsTr")
    for row in rows:
        predictions = list_label_files(results / f"fold_{row['fold']}" / "validation")
        assert len(predictions) == 2  # a quarter of the 8 one-femur "patients"
        values = [dice(read_label_volume(p).array == 1, read_label_volume(labels[c]).array == 1)
                  for c, p in predictions.items()]
        scored = [v for v in values if not math.isnan(v)]
        assert int(row["n_scored"]) == len(scored) and int(row["n_true_negative"]) == len(values) - len(scored)
        if scored:
            assert float(row["dice_mean"]) == pytest.approx(np.mean(scored), abs=1e-4)
        else:
            assert row["dice_mean"] == "NaN"
