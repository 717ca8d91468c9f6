"""Fine-tuning an exported model on new labels, as the annotation server does, through nnU-Net's trainer."""

from __future__ import annotations

from pathlib import Path

import torch

from lesion_training.finetune import FineTuneSchedule, fine_tune
from lesion_training.toy_dataset import write_toy_dataset, write_untrained_model
from operators.lesion_model import LesionModel


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "fold_all" / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)["network_weights"]


def test_fine_tuning_starts_from_the_base_weights_and_skips_the_final_validation(tmp_path: Path) -> None:
    base = write_untrained_model(tmp_path / "base")
    base_weights = torch.load(next(base.glob("fold_*/checkpoint_final.pth")), map_location="cpu",
                              weights_only=False)["network_weights"]
    dataset = write_toy_dataset(tmp_path / "raw" / "Dataset952_ToyFineTune", num_cases=2, shape=(32, 24, 24))
    workspace = tmp_path / "nnunet"
    exported = fine_tune(dataset, base_model=base, workspace=workspace, output=tmp_path / "tuned",
                         schedule=FineTuneSchedule(num_epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1),
                         device="cpu", model_version="0.0.0+tuned")

    tuned = _weights(exported.folder)
    assert tuned.keys() == base_weights.keys()
    changed = [k for k in tuned if not torch.equal(tuned[k], base_weights[k])]
    assert changed, "two training iterations left every weight as it was"
    assert exported.model_json["version"] == "0.0.0+tuned"
    # nnU-Net's end-of-training validation of fold "all" would only predict the training cases again.
    fold = next(workspace.glob("nnUNet_results/*/*/fold_all"))
    assert (fold / "checkpoint_final.pth").is_file()
    assert not (fold / "validation").exists()
    assert LesionModel.from_folder(exported.folder, device="cpu").model_info.version == "0.0.0+tuned"
