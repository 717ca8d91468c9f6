"""Workspace variables for nnU-Net, and nnU-Net finding and configuring the project's trainer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lesion_training.configurations import SCHEDULE_KEY
from lesion_training.nnunet_workspace import NnUNetWorkspace


def test_workspace_lays_out_nnunets_folders(tmp_path: Path) -> None:
    workspace = NnUNetWorkspace(tmp_path / "ws")
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_trainers", "export"):
        assert (tmp_path / "ws" / folder).is_dir()
    variables = workspace.nnunet_variables()
    assert variables["nnUNet_raw"] == str(workspace.raw)
    assert variables["nnUNet_preprocessed"] == str(workspace.preprocessed)
    assert variables["nnUNet_results"] == str(workspace.results)
    assert variables["nnUNet_extTrainer"].split(os.pathsep)[0] == str(workspace.trainer_shims)
    NnUNetWorkspace(tmp_path / "ws")  # reopening an existing workspace is fine


def test_cpu_training_keeps_augmentation_in_process_unless_told_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = NnUNetWorkspace(tmp_path)
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    assert workspace.environment(training_device="cpu")["nnUNet_n_proc_DA"] == "0"
    assert "nnUNet_n_proc_DA" not in workspace.environment(training_device="cuda")
    monkeypatch.setenv("nnUNet_n_proc_DA", "3")
    assert workspace.environment(training_device="cpu")["nnUNet_n_proc_DA"] == "3"
    # nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which refuses 0.
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    with workspace.activate():
        assert os.environ["nnUNet_n_proc_DA"] == "1"
    assert os.environ["nnUNet_n_proc_DA"] == "0"


def test_activate_sets_and_restores_the_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", "/elsewhere")
    monkeypatch.delenv("nnUNet_results", raising=False)
    workspace = NnUNetWorkspace(tmp_path)
    with workspace.activate():
        from nnunetv2.paths import nnUNet_raw, nnUNet_results

        # nnU-Net reads its folders lazily: calls inside the block see the workspace.
        assert str(nnUNet_raw) == str(workspace.raw)
        assert str(nnUNet_results) == str(workspace.results)
    assert os.environ["nnUNet_raw"] == "/elsewhere"
    assert "nnUNet_results" not in os.environ


def test_nnunet_finds_the_trainer_in_process_and_in_a_subprocess(tmp_path: Path) -> None:
    workspace = NnUNetWorkspace(tmp_path)
    with workspace.activate():
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        from lesion_training.trainers import nnUNetTrainerFemur

        assert recursive_find_trainer_class_by_name("nnUNetTrainerFemur") is nnUNetTrainerFemur

    # What nnUNetv2_train does in a shell with the workspace's environment, from another folder.
    probe = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
             "print(f('nnUNetTrainerFemur').__module__)")
    result = subprocess.run([sys.executable, "-c", probe], env=workspace.environment(training_device="cpu"),
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "lesion_training.trainers"


def _trainer(tmp_path: Path, fullres: dict, labels: dict[str, int]):  # noqa: ANN202 (nnU-Net's trainer type)
    """nnUNetTrainerFemur on CPU for a toy plans whose 3d_fullres configuration holds ``fullres``."""
    import torch

    workspace = NnUNetWorkspace(tmp_path)
    plans = {
        "dataset_name": "Dataset999_Toy", "plans_name": "nnUNetPlans_femur_test", "label_manager": "LabelManager",
        "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_femur_test_3d_fullres",
                                          "architecture": {}, **fullres}},
        "continue_training": False,
    }
    with workspace.activate():
        from lesion_training.trainers import nnUNetTrainerFemur

        return nnUNetTrainerFemur(plans, "3d_fullres", 0, {"labels": labels}, torch.device("cpu"))


def test_trainer_takes_its_schedule_from_the_plans(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, {SCHEDULE_KEY: {"num_epochs": 3, "num_iterations_per_epoch": 7,
                                                 "num_val_iterations_per_epoch": 2}},
                       {"background": 0, "lesion": 1})
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 7, 2)
    assert trainer.save_every == 1
    assert trainer.initial_lr == 1e-2  # everything else stays nnU-Net's


@pytest.mark.parametrize("dice_smoothing, expected", [(True, -1.0), (False, -0.5)])
def test_without_dice_smoothing_a_class_absent_from_the_batch_earns_nothing(
    tmp_path: Path, dice_smoothing: bool, expected: float
) -> None:
    # nnU-Net's default soft Dice, (2I + s) / (G + P + s) with s = 1e-5, scores an absent class (I = G = 0)
    # near 1 once its predicted mass P is tiny: suppressing lesions everywhere pays. Without smoothing
    # (the plans' "dice_smoothing": false) it scores 0, so only the classes present count.
    import torch

    trainer = _trainer(tmp_path, {"batch_dice": True, SCHEDULE_KEY: {"dice_smoothing": dice_smoothing}},
                       {"background": 0, "lesion": 1, "cyst": 2})
    trainer.enable_deep_supervision = False
    dice = trainer._build_loss().dc
    target = torch.zeros((2, 1, 8, 8, 8))
    target[:, :, 2:5, 2:5, 2:5] = 1  # lesion in both cases of the batch, no cyst anywhere
    logits = torch.full((2, 3, 8, 8, 8), -50.0)  # every class but the true one suppressed hard
    logits.scatter_(1, target.long(), 50.0)
    per_class_mean = float(dice(logits, target))
    # Lesion Dice 1; cyst (absent) ~1 with smoothing, 0 without: the loss is minus their mean.
    assert per_class_mean == pytest.approx(expected, abs=1e-3)


def test_a_time_budget_cuts_the_epochs_to_what_fits_and_stretches_the_learning_rate_decay(tmp_path: Path) -> None:
    import torch
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    trainer = _trainer(tmp_path, {SCHEDULE_KEY: {"num_epochs": 1000, "time_budget_s": 100.0}},
                       {"background": 0, "lesion": 1})
    assert trainer.time_budget_s == 100.0
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    trainer.lr_scheduler = PolyLRScheduler(optimizer, 0.01, trainer.num_epochs)

    # Four epochs of 10 s used 40 s: 60 s left hold 6 more epochs at that pace.
    trainer._epoch_durations = [10.0] * 4
    trainer.fit_epochs_to_budget(4, 40.0)
    assert trainer.num_epochs == 10
    assert trainer.lr_scheduler.max_steps == 10
    trainer.lr_scheduler.step(9)  # the last epoch trains at nearly zero learning rate, as in a full schedule
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.1 ** 0.9)

    # Faster epochs raise the count again (slow first epochs must not fix it), up to the schedule's.
    trainer._epoch_durations = [1.0] * 5
    trainer.fit_epochs_to_budget(5, 50.0)
    assert trainer.num_epochs == 55
    trainer._epoch_durations = [0.001] * 5
    trainer.fit_epochs_to_budget(6, 51.0)
    assert trainer.num_epochs == 1000
    # A budget already spent ends training after this epoch.
    trainer.fit_epochs_to_budget(7, 130.0)
    assert trainer.num_epochs == 7


def test_without_a_time_budget_the_schedule_is_left_alone(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, {SCHEDULE_KEY: {"num_epochs": 30}}, {"background": 0, "lesion": 1})
    assert trainer.time_budget_s is None
    trainer._epoch_durations = [1e6]
    trainer.fit_epochs_to_budget(1, 1e6)
    assert trainer.num_epochs == 30
