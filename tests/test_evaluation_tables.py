"""Markdown and CSV tables: true negatives shown as such, mean ± SD over non-NaN Dice."""

from __future__ import annotations

import csv
import io

import numpy as np

from evaluation.case_metrics import EvaluationSettings, evaluate_case
from evaluation.comparison import Comparison, summarise
from evaluation.tables import (
    per_case_csv,
    per_case_markdown,
    summary_csv,
    summary_markdown,
)

SETTINGS = EvaluationSettings()


def cube(z0: int) -> np.ndarray:
    array = np.zeros((8, 8, 8), dtype=np.uint8)
    array[z0:z0 + 4, 2:6, 2:6] = 1
    return array


def comparison() -> Comparison:
    """Three femurs: Dice 0.75 (cubes shifted by one slice), a true negative, and a missed lesion (0)."""
    empty = np.zeros((8, 8, 8), dtype=np.uint8)
    cases = (
        evaluate_case(cube(2), cube(3), case_id="FEMUR0001_left", spacing=(1, 1, 1)),
        evaluate_case(empty, empty, case_id="FEMUR0001_right", spacing=(1, 1, 1)),
        evaluate_case(empty, cube(2), case_id="FEMUR0002", spacing=(1, 1, 1)),
    )
    return Comparison(test_name="prediction", reference_name="A", cases=cases)


def rows_of(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_summary_mean_sd_excludes_true_negative() -> None:
    # Non-NaN Dice 0.75 and 0: mean 0.375; sample SD sqrt(2 * 0.375^2 / 1) = 0.5303.
    s = summarise(comparison().cases)
    assert s.femurs == 3 and s.dice.n == 2 and s.dice.n_nan == 1
    assert abs(s.dice.mean - 0.375) < 1e-12
    assert abs(s.dice.sd - 0.375 * 2 ** 0.5) < 1e-12
    header, _, row = rows_of(summary_markdown([comparison()], settings=SETTINGS))
    values = dict(zip(header, row))
    assert values["Dice (mean ± SD)"] == "0.375 ± 0.530"
    assert values["TN (NaN)"] == "1"
    assert values["n (Dice)"] == "2"
    assert values["Femurs"] == "3"
    assert values["Lesions detected"] == "1/2"


def test_per_case_markdown_shows_nan_as_true_negative() -> None:
    header, _, first, second, third = rows_of(per_case_markdown(comparison(), settings=SETTINGS))
    assert header[:4] == ["Case", "Patient", "Side", "Dice"]
    assert first[:4] == ["FEMUR0001_left", "FEMUR0001", "left", "0.750"]
    assert second[3] == "NaN (TN)" and second[4] == "NaN (TN)"  # Dice and NSD
    assert third[:4] == ["FEMUR0002", "FEMUR0002", "-", "0.000"]


def test_csv_writes_nan_as_empty_cell_with_true_negative_flag() -> None:
    rows = list(csv.DictReader(io.StringIO(per_case_csv([comparison()]))))
    assert [r["dice"] for r in rows] == ["0.75", "", "0"]
    assert [r["true_negative"] for r in rows] == ["false", "true", "false"]
    assert rows[1]["side"] == "right" and rows[2]["side"] == ""
    assert rows[2]["volume_error_ml"] == "-0.064"
    summary = list(csv.DictReader(io.StringIO(summary_csv([comparison()], settings=SETTINGS))))
    assert summary[0]["dice_mean"] == "0.375" and summary[0]["true_negatives"] == "1"
