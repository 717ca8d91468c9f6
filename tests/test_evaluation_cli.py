"""``python -m evaluation``: files written, annotator tables, exit codes and one-line errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from evaluation.cli import main
from evaluation.label_io import write_label_volume

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, array: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    volume = hd.Volume.from_components(
        array.astype(np.uint8), spacing=spacing, coordinate_system="PATIENT", position=(0.0, 0.0, 0.0),
        direction=np.eye(3),
    )
    write_label_volume(path, volume)


def cube(z0: int) -> np.ndarray:
    array = np.zeros((8, 8, 8), dtype=np.uint8)
    array[z0:z0 + 4, 2:6, 2:6] = 1
    return array


EMPTY = np.zeros((8, 8, 8), dtype=np.uint8)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A prediction and two annotators (A, B) on three femurs.

    FEMUR0001_left: prediction cube(2); A cube(3) (Dice 0.75); B cube(2) (Dice 1).
    FEMUR0001_right: no lesion anywhere (true negative).
    FEMUR0002_left: lesion in A and B, none predicted (Dice 0); A also marks a cyst (label 2).
    """
    with_cyst = cube(2)
    with_cyst[7, 7, 7] = 2
    for name, arrays in {
        "pred": (cube(2), EMPTY, EMPTY),
        "A": (cube(3), EMPTY, with_cyst),
        "B": (cube(2), EMPTY, cube(2)),
    }.items():
        for case_id, array in zip(("FEMUR0001_left", "FEMUR0001_right", "FEMUR0002_left"), arrays):
            write(tmp_path / name / f"{case_id}.nii.gz", array)
    return tmp_path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_tables_for_each_reference_and_annotator_pair(study: Path, capsys) -> None:
    out = study / "out"
    code, stdout, stderr = run_cli(
        capsys, "--pred", str(study / "pred"), "--ref", f"A={study / 'A'}", "--ref", f"B={study / 'B'}",
        "--out", str(out),
    )
    assert code == 0, stderr
    names = {p.name for p in out.iterdir()}
    assert {"evaluation.md", "per_case.csv", "summary.csv", "detection.csv", "lesions.csv",
            "annotators.md", "annotators.csv", "annotators_per_case.csv"} <= names
    assert not any(name.startswith(".") for name in names)  # no temporary files left

    summary = {row["comparison"]: row for row in csv.DictReader((out / "summary.csv").open())}
    # vs A: Dice 0.75 and 0 (mean 0.375), one true negative; vs B: Dice 1 and 0 (mean 0.5).
    assert float(summary["prediction vs A"]["dice_mean"]) == pytest.approx(0.375)
    assert float(summary["prediction vs B"]["dice_mean"]) == pytest.approx(0.5)
    assert summary["prediction vs A"]["true_negatives"] == "1"
    assert summary["prediction vs A"]["femurs_with_cyst"] == "1"

    annotators = {row["comparison"]: row for row in csv.DictReader((out / "annotators.csv").open())}
    # A vs B: FEMUR0001_left 0.75, FEMUR0001_right TN, FEMUR0002_left 1.0 -> mean 0.875.
    assert float(annotators["A vs B"]["dice_mean"]) == pytest.approx(0.875)
    assert "## Per femur: A vs B" in (out / "annotators.md").read_text()

    report = (out / "evaluation.md").read_text()
    assert "NaN (TN)" in report and "TN (NaN)" in report
    assert "## Per femur: prediction vs A" in report and "## Per femur: prediction vs B" in report
    assert "0.375 ± 0.530" in stdout
    assert str(out / "evaluation.md") in stdout


def test_cli_bad_reference_folder_is_one_line_and_non_zero(study: Path, capsys) -> None:
    code, _, stderr = run_cli(
        capsys, "--pred", str(study / "pred"), "--ref", f"A={study / 'missing'}", "--out", str(study / "out")
    )
    assert code != 0
    assert stderr.startswith("error: label folder not found") and stderr.count("\n") == 1
    assert "Traceback" not in stderr


def test_cli_geometry_mismatch_names_the_case(study: Path, capsys) -> None:
    write(study / "A" / "FEMUR0002_left.nii.gz", cube(2), spacing=(2.0, 1.0, 1.0))
    code, _, stderr = run_cli(capsys, "--pred", str(study / "pred"), "--ref", f"A={study / 'A'}", "--out", str(study / "o"))
    assert code != 0
    assert "case FEMUR0002_left" in stderr and "spacing" in stderr and stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ref", "A"], "--ref expects NAME=DIR"),
        ([], "nothing to evaluate"),
        (["--cv-results", "x"], "--cv-results and --cv-labels go together"),
    ],
)
def test_cli_usage_errors(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    pred = ["--pred", str(tmp_path)] if args and args[0] == "--ref" else []
    code, _, stderr = run_cli(capsys, *pred, *args, "--out", str(tmp_path / "out"))
    assert code != 0 and message in stderr


def test_python_dash_m_exit_code(study: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "evaluation", "--pred", str(study / "pred"), "--ref", f"A={study / 'nope'}",
         "--out", str(study / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "Traceback" not in result.stderr
