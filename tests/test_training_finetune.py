"""Fine-tuning an exported model on new cases (``python -m lesion_training fine-tune``, and the annotation
server's retraining), through nnU-Net's trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lesion_training.cli import main
from lesion_training.toy_dataset import write_toy_dataset, write_untrained_model
from operators.lesion_model import LesionModel


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(next(folder.glob("fold_*/checkpoint_final.pth")), map_location="cpu",
                      weights_only=False)["network_weights"]


def test_fine_tune_command_starts_from_the_base_weights_and_records_the_base_model_and_loss(tmp_path: Path) -> None:
    base = write_untrained_model(tmp_path / "base")
    base_weights = _weights(base)
    dataset = write_toy_dataset(tmp_path / "raw" / "Dataset952_ToyFineTune", num_cases=2, shape=(32, 24, 24))
    workspace = tmp_path / "nnunet"
    output = tmp_path / "tuned"
    status = main(["fine-tune", "--dataset", str(dataset), "--base-model", str(base), "--workspace", str(workspace),
                   "--output", str(output), "--epochs", "1", "--iterations-per-epoch", "2", "--device", "cpu",
                   "--model-version", "0.0.0+tuned", "--no-dice-smoothing"])
    assert status == 0

    tuned = _weights(output)
    assert tuned.keys() == base_weights.keys()
    changed = [k for k in tuned if not torch.equal(tuned[k], base_weights[k])]
    assert changed, "two training iterations left every weight as it was"
    # Every weight but nnU-Net's output layers starts from the base model: the network is the base's.
    assert all(tuned[k].shape == base_weights[k].shape for k in tuned)

    info = json.loads((output / "model.json").read_text(encoding="utf-8"))
    assert info["version"] == "0.0.0+tuned"
    assert info["schedule"]["num_epochs"] == 1 and info["schedule"]["num_iterations_per_epoch"] == 2
    # The trainer reads the loss from the plans the model was trained with (the annotation server's
    # fine-tuning keeps nnU-Net's default, smoothed Dice).
    assert info["schedule"]["dice_smoothing"] is False
    plans = json.loads(next(workspace.glob("nnUNet_results/*/*/plans.json")).read_text(encoding="utf-8"))
    assert plans["configurations"]["3d_fullres"]["femur_training_schedule"]["dice_smoothing"] is False
    command = info["training"]["command"]
    assert command.startswith("python -m lesion_training fine-tune --dataset Dataset952_ToyFineTune")
    assert "--no-dice-smoothing" in command
    assert str(tmp_path) not in command, "model.json must not carry local paths"
    origin = info["training"]["fine_tuned_from"]
    base_fold = next(base.glob("fold_*")).name
    assert (origin["name"], origin["version"], origin["fold"]) == ("femur-lesion-untrained", "0.0.0", base_fold)

    # nnU-Net's end-of-training validation of fold "all" would only predict the training cases again.
    fold = next(workspace.glob("nnUNet_results/*/*/fold_all"))
    assert (fold / "checkpoint_final.pth").is_file()
    assert not (fold / "validation").exists()
    assert LesionModel.from_folder(output, device="cpu").model_info.version == "0.0.0+tuned"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--epochs", "0"], "num_epochs must be at least 1, got 0"),
        (["--iterations-per-epoch", "-3"], "iterations_per_epoch must be at least 1, got -3"),
        (["--base-model", "no_such_model"], "has no plans.json"),
    ],
)
def test_fine_tune_reports_bad_input_in_one_line_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    base = write_untrained_model(tmp_path / "base")
    dataset = write_toy_dataset(tmp_path / "raw" / "Dataset953_ToyBadTune", num_cases=2, shape=(16, 12, 12))
    defaults = {"--base-model": str(base)}
    options = dict(zip(arguments[::2], arguments[1::2]))
    if options.get("--base-model") == "no_such_model":
        options["--base-model"] = str(tmp_path / "no_such_model")
    merged = {**defaults, **options}
    status = main(["fine-tune", "--dataset", str(dataset), "--workspace", str(tmp_path / "ws"),
                   "--output", str(tmp_path / "out"), "--device", "cpu",
                   *[part for item in merged.items() for part in item]])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert error.startswith("error: ") and message in error
    assert "\n" not in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "ws").exists()
