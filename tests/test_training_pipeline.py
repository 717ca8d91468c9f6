"""End to end on CPU: real nnU-Net planning, preprocessing, training, cross-validation, export and inference.

A toy dataset of femur-like crops goes through the command line with the ``small`` configuration cut
down to a tiny network and two epochs of three iterations, on a two-fold split grouped by "patient".
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from operators.lesion_model import LesionModel, to_nnunet_input
from lesion_training.cli import main
from lesion_training.configurations import SCHEDULE_KEY
from lesion_training.raw_dataset import patient_grouped_splits
from lesion_training.toy_dataset import toy_femur_crop, write_toy_dataset
from tests.training_support import smoke_small_configuration

MAX_SMALL_MODEL_BYTES = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("pipeline")
    dataset = write_toy_dataset(root / "data" / "Dataset900_Toy", num_cases=8)
    cases = sorted(p.name[: -len(".nii.gz")] for p in (dataset / "labelsTr").iterdir())
    splits_file = root / "splits_by_patient.json"
    # Two "femurs" per patient, as in the paper's data; two folds keep the test short.
    patients = {f"patient{k}": cases[2 * k: 2 * k + 2] for k in range(len(cases) // 2)}
    splits_file.write_text(json.dumps(patient_grouped_splits(patients, n_folds=2)))

    with smoke_small_configuration():
        status = main(["train", "--dataset", str(dataset), "--config", "small", "--folds", "0", "1",
                       "--device", "cpu", "--workspace", str(root / "ws"), "--splits", str(splits_file),
                       "--output", str(root / "model"), "--model-version", "0.0.1", "--num-processes", "1",
                       "--no-dice-smoothing"])
    return {"status": status, "root": root, "model": root / "model", "splits": splits_file}


@pytest.mark.slow
def test_training_exports_a_small_loadable_model(trained: dict) -> None:
    assert trained["status"] == 0
    model = trained["model"]
    info = json.loads((model / "model.json").read_text())
    assert info["configuration"] == "small"
    assert info["version"] == "0.0.1"
    assert info["folds"] == [0, 1]
    assert "--workspace WORKSPACE" in info["training"]["command"]
    assert "/" not in info["training"]["command"], "model.json must not record local paths"
    assert "--no-dice-smoothing" in info["training"]["command"]
    assert info["validation"]["cross_validation_dice"] is not None  # both folds trained: nnU-Net's CV ran
    assert (model / "postprocessing.pkl").is_file()

    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert size < MAX_SMALL_MODEL_BYTES
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert "optimizer_state" not in checkpoint
    assert checkpoint["trainer_name"] == "nnUNetTrainer"


@pytest.mark.slow
def test_training_used_the_configuration_and_split(trained: dict) -> None:
    results = trained["root"] / "ws" / "nnUNet_results" / "Dataset900_Toy"
    run = results / "nnUNetTrainerFemur__nnUNetPlans_femur_small__3d_fullres"
    plans = json.loads((run / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert plans["use_mask_for_norm"] == [True]
    assert plans["normalization_schemes"] == ["ZScoreNormalization"]
    assert plans["architecture"]["arch_kwargs"]["features_per_stage"][0] == 4
    assert plans[SCHEDULE_KEY]["dice_smoothing"] is False  # --no-dice-smoothing, as the trainer reads it

    log = next((run / "fold_0").glob("training_log_*.txt")).read_text()
    assert "progress: epoch 2/2" in log and "ETA" in log and "pseudo Dice" in log
    assert "Epoch 2" not in log  # the schedule from the plans, not nnU-Net's 1000 epochs

    used = json.loads((trained["root"] / "ws" / "nnUNet_preprocessed" / "Dataset900_Toy" / "splits_final.json")
                      .read_text())
    assert used == json.loads(trained["splits"].read_text())


@pytest.mark.slow
@pytest.mark.parametrize("orientation", ["FPR", "LFP"])
def test_exported_model_predicts_in_the_volumes_own_grid(trained: dict, orientation: str) -> None:
    model = LesionModel.from_folder(trained["model"], device="cpu")
    assert model.model_info.label_names == {0: "background", 1: "lesion"}
    canonical_crop, _ = toy_femur_crop(shape=(44, 30, 30), seed=123)
    crop = canonical_crop.to_patient_orientation(orientation)  # feet-first / sagittal layouts

    prediction = model.predict(crop, return_probabilities=True)
    reference = model.predict(canonical_crop, return_probabilities=True)

    assert prediction.labels.shape == crop.spatial_shape
    assert prediction.probabilities.shape == (2, *crop.spatial_shape)
    mapping = to_nnunet_input(crop)
    assert np.array_equal(mapping.to_canonical(prediction.labels), reference.labels)
    assert np.allclose(mapping.to_canonical(prediction.probabilities), reference.probabilities)
