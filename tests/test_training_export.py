"""Slim export: inference-only checkpoints that any nnunetv2 loads, model.json, size, atomic replacement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from operators.errors import TrainingRunError
from operators.lesion_model import LesionModel
from lesion_training.export import export_model, results_folder
from lesion_training.nnunet_workspace import NnUNetWorkspace
from lesion_training.toy_dataset import UNTRAINED, toy_femur_crop, write_untrained_model

DATASET = "Dataset999_Toy"


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_model(tmp_path_factory.mktemp("untrained") / "model")


@pytest.fixture
def trained_workspace(untrained_model: Path, tmp_path: Path) -> NnUNetWorkspace:
    """A workspace whose results folder looks like nnU-Net left it after training fold 0."""
    workspace = NnUNetWorkspace(tmp_path / "ws")
    target = results_folder(workspace, DATASET, UNTRAINED)
    target.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(untrained_model / name, target / name)
    slim = torch.load(untrained_model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    full = dict(slim)
    full.update(
        trainer_name="nnUNetTrainerFemur",
        # What nnU-Net keeps for resuming: about as large as the weights themselves.
        optimizer_state={"state": {k: {"momentum_buffer": v.clone()} for k, v in slim["network_weights"].items()}},
        grad_scaler_state=None, logging={"train_losses": [0.5]}, _best_ema=0.1, current_epoch=2,
    )
    (target / "fold_0" / "validation").mkdir(parents=True)
    torch.save(full, target / "fold_0" / "checkpoint_final.pth")
    (target / "fold_0" / "validation" / "summary.json").write_text(json.dumps({"foreground_mean": {"Dice": 0.42}}))
    return workspace


def test_export_keeps_only_what_inference_needs(trained_workspace: NnUNetWorkspace, tmp_path: Path) -> None:
    exported = export_model(trained_workspace, DATASET, UNTRAINED, folds=[0], output=tmp_path / "model",
                            model_version="1.0.0", training_command="python -m lesion_training train ...")
    checkpoint = torch.load(exported.folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert set(checkpoint) == {"network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}
    assert checkpoint["trainer_name"] == "nnUNetTrainer"

    source = results_folder(trained_workspace, DATASET, UNTRAINED) / "fold_0" / "checkpoint_final.pth"
    assert exported.size_bytes < source.stat().st_size
    assert exported.size_bytes == sum(p.stat().st_size for p in exported.folder.rglob("*") if p.is_file())
    assert sorted(p.name for p in exported.folder.iterdir()) == ["dataset.json", "fold_0", "model.json", "plans.json"]

    info = json.loads((exported.folder / "model.json").read_text())
    assert info["version"] == "1.0.0"
    assert info["name"] == "femur-lesion-untrained"
    assert info["trainer"] == "nnUNetTrainerFemur"
    assert info["label_names"] == {"0": "background", "1": "lesion"}
    assert info["input"]["orientation"] == "HPL"
    assert info["training"]["command"] == "python -m lesion_training train ..."
    assert info["validation"]["fold_dice"] == {"fold_0": 0.42}
    assert info["training"]["epochs_trained"] == {"fold_0": 2}  # what ran, whatever the schedule planned
    assert info == exported.model_json


def test_exported_model_predicts_like_the_trained_one(
    trained_workspace: NnUNetWorkspace, untrained_model: Path, tmp_path: Path
) -> None:
    exported = export_model(trained_workspace, DATASET, UNTRAINED, folds=[0], output=tmp_path / "model")
    crop, _ = toy_femur_crop(shape=(40, 30, 28), seed=11)
    crop = crop.to_patient_orientation("FAR")
    loaded = LesionModel.from_folder(exported.folder, device="cpu", use_mirroring=False)
    reference = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False)
    assert loaded.model_info.trainer == "nnUNetTrainerFemur"
    assert np.array_equal(loaded.predict(crop).labels, reference.predict(crop).labels)


def test_export_replaces_an_earlier_export_whole(trained_workspace: NnUNetWorkspace, tmp_path: Path) -> None:
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "stale.txt").write_text("from an earlier export")
    export_model(trained_workspace, DATASET, UNTRAINED, folds=[0], output=destination)
    assert not (destination / "stale.txt").exists()
    assert (destination / "model.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_names_what_is_missing(trained_workspace: NnUNetWorkspace, tmp_path: Path) -> None:
    with pytest.raises(TrainingRunError, match="fold_1/checkpoint_final.pth is missing"):
        export_model(trained_workspace, DATASET, UNTRAINED, folds=[0, 1], output=tmp_path / "model")
    with pytest.raises(TrainingRunError, match="does not exist"):
        export_model(trained_workspace, "Dataset998_Other", UNTRAINED, folds=[0], output=tmp_path / "model")
    assert not (tmp_path / "model").exists()
