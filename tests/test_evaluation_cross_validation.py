"""Cross-validation Dice per fold from a tiny fake nnU-Net results folder."""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from evaluation.cli import main
from evaluation.cross_validation import evaluate_cross_validation
from evaluation.label_io import write_label_volume
from operators.errors import CaseMismatchError, InputError


def write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    volume = hd.Volume.from_components(
        array.astype(np.uint8), spacing=(1.0, 1.0, 1.0), coordinate_system="PATIENT",
        position=(0.0, 0.0, 0.0), direction=np.eye(3),
    )
    write_label_volume(path, volume)


def block(z0: int, size: int) -> np.ndarray:
    array = np.zeros((8, 8, 8), dtype=np.uint8)
    array[z0:z0 + size, 2:2 + size, 2:2 + size] = 1
    return array


@pytest.fixture
def nnunet(tmp_path: Path) -> tuple[Path, Path]:
    """fold_0: P1_left Dice 0.75, P1_right true negative; fold_1: P2_left Dice 0.5; fold_all ignored."""
    results = tmp_path / "Dataset501_Femur" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    labels = tmp_path / "labelsTr"
    empty = np.zeros((8, 8, 8), dtype=np.uint8)
    # 4x4x4 cubes one slice apart: 2 * 48 / 128 = 0.75.
    write(labels / "P1_left.nii.gz", block(3, 4))
    write(results / "fold_0" / "validation" / "P1_left.nii.gz", block(2, 4))
    write(labels / "P1_right.nii.gz", empty)
    write(results / "fold_0" / "validation" / "P1_right.nii.gz", empty)
    # 2x2x2 blocks one slice apart: 2 * 4 / 16 = 0.5.
    write(labels / "P2_left.nii.gz", block(3, 2))
    write(results / "fold_1" / "validation" / "P2_left.nii.gz", block(2, 2))
    (results / "fold_1" / "validation" / "summary.json").write_text("{}")
    write(results / "fold_all" / "validation" / "P1_left.nii.gz", empty)
    return results, labels


def test_dice_per_fold_and_pooled(nnunet: tuple[Path, Path]) -> None:
    result = evaluate_cross_validation(*nnunet)
    assert [fold.fold for fold in result.folds] == [0, 1]
    fold0, fold1 = (fold.dice for fold in result.folds)
    assert (fold0.mean, fold0.n, fold0.n_nan) == (pytest.approx(0.75), 1, 1)
    assert (fold1.mean, fold1.n, fold1.n_nan) == (pytest.approx(0.5), 1, 0)
    # Pooled: 0.75 and 0.5 -> mean 0.625, sample SD sqrt(2 * 0.125^2 / 1) = 0.1768; one TN.
    overall = result.overall
    assert overall.mean == pytest.approx(0.625)
    assert overall.sd == pytest.approx(0.125 * 2 ** 0.5)
    assert overall.n_nan == 1


def test_cli_writes_cross_validation_table(nnunet: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    results, labels = nnunet
    out = tmp_path / "out"
    assert main(["--cv-results", str(results), "--cv-labels", str(labels), "--out", str(out)]) == 0
    rows = {row["fold"]: row for row in csv.DictReader((out / "cross_validation.csv").open())}
    assert set(rows) == {"0", "1", "all"}
    assert rows["0"]["dice_sd"] == ""  # one non-NaN value: no SD
    assert rows["all"]["femurs"] == "3" and rows["all"]["true_negatives"] == "1"
    markdown = (out / "cross_validation.md").read_text()
    assert "| all | 3 | 0.625 ± 0.177 | 2 | 1 |" in markdown
    per_case = list(csv.DictReader((out / "cross_validation_per_case.csv").open()))
    assert [(r["fold"], r["case_id"], r["dice"]) for r in per_case] == [
        ("0", "P1_left", "0.75"), ("0", "P1_right", ""), ("1", "P2_left", "0.5"),
    ]
    assert not (out / "evaluation.md").exists()
    assert "0.625 ± 0.177" in capsys.readouterr().out


def test_validation_case_without_label_is_an_error(nnunet: tuple[Path, Path]) -> None:
    results, labels = nnunet
    (labels / "P2_left.nii.gz").unlink()
    with pytest.raises(CaseMismatchError, match="fold 1: 1 validation case.*P2_left"):
        evaluate_cross_validation(results, labels)


def test_folder_without_folds_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no fold_<k>/validation folders"):
        evaluate_cross_validation(tmp_path, tmp_path)
