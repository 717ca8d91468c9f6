"""Command line: one-line errors and exit codes before any nnU-Net work starts; the toy dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lesion_training.cli import main


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dataset", "not_a_dataset"], "must be a DatasetXXX_Name folder, name or id"),
        (["--dataset", "501"], "dataset id 501"),
        (["--dataset", "501", "--folds", "all", "0"], "cannot be combined"),
        (["--dataset", "501", "--folds", "first"], "fold must be 0-4 or 'all'"),
        (["--dataset", "501", "--splits", "missing.json"], "splits file not found"),
        (["--dataset", "501", "--config", "small_gpu", "--time-budget-min", "0"], "time_budget_minutes must be positive"),
    ],
)
def test_train_reports_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    status = main(["train", "--workspace", str(tmp_path / "ws"), "--device", "cpu", *arguments])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert error.startswith("error: ") and message in error
    assert "\n" not in error


def test_dataset_folder_must_be_named_for_nnunet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "femurs"
    folder.mkdir()
    assert main(["train", "--dataset", str(folder), "--workspace", str(tmp_path / "ws"), "--device", "cpu"]) == 2
    assert "DatasetXXX_Name" in capsys.readouterr().err


def test_toy_command_writes_a_dataset_nnunet_accepts(tmp_path: Path) -> None:
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    folder = tmp_path / "Dataset999_Toy"
    assert main(["toy", "--output", str(folder), "--cases", "5", "--shape", "24", "20", "20"]) == 0
    description = json.loads((folder / "dataset.json").read_text())
    assert description["numTraining"] == 5
    assert len(list((folder / "imagesTr").iterdir())) == 5
    verify_dataset_integrity(str(folder), num_processes=1)
