"""The small nnU-Net femur model of the tests of the pluggable femur segmenter, and how it was made.

No femur model ships with the project (the classical splitter needs no weights), so the tests use one
trained here: eight ``small`` synthetic studies (seeds 1-8), the whole CT in the HPL orientation with the
generator's femur labels (1 left, 2 right; lesions and cysts belong to their femur), planned, preprocessed
and trained by nnU-Net through the training pipeline's steps (fold "all", 5 mm voxels, patch 64^3, a
4-stage 8-32 feature network, 2000 iterations: 32 minutes on two CPU cores), then exported as a user's
model folder would look. Too long to train in every test run, so the exported folder (1 MB) lives in
``tests/data/femur_test_model``; rebuild it with ``python -m tests.femur_model_support``.

What the model learned, measured on small studies it never saw (seeds 11-15): where the femurs are, but
not which is which. nnU-Net's training mirrors every patch along every axis, left-right included, and
keeps the labels: a mirrored left femur is still labelled "left", so the sides cannot be learned (a sided
model must be trained without mirroring along the left-right axis). Its two labels split about evenly
across both femurs (per-side Dice 0.32-0.55), while the two together cover the femurs well. The folder
therefore holds a ``femur_model.json`` mapping both labels to "femur": the splitter takes the bone from the
model and the sides from the geometry, as it would for any one-label femur model (and turns off test-time
mirroring, to keep the tests short).
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from operators.femur_nnunet import SETTINGS_FILE_NAME

#: Studies the model is trained on, and one it never saw.
TRAINING_SEEDS = tuple(range(1, 9))
HELD_OUT_SEED = 11
#: The committed model folder.
FEMUR_TEST_MODEL = Path(__file__).resolve().parent / "data" / "femur_test_model"
_DATASET = "Dataset951_FemurTest"
_SCHEDULE = dict(num_epochs=80, iterations_per_epoch=25, val_iterations_per_epoch=1)


def model_folder_without_weights(folder: Path, *, folds: tuple[str, ...] = ("0", "1"),
                                 labels: dict | None = None) -> Path:
    """A femur model folder as nnU-Net writes it, with empty checkpoints: for what reads settings, not weights."""
    folder.mkdir(parents=True)
    labels = labels or {"background": 0, "left femur": 1, "right femur": 2}
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    (folder / "plans.json").write_text("{}")
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    return folder


def write_femur_dataset(raw: Path, seeds: tuple[int, ...] = TRAINING_SEEDS) -> Path:
    """An nnU-Net raw dataset of whole small studies with left/right femur labels, arrays in HPL order."""
    from operators.volume_io import write_volume
    from synthetic_ct import generate_phantom

    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    for seed in seeds:
        phantom = generate_phantom(seed, "small")
        labels = np.zeros(phantom.ct.spatial_shape, dtype=np.uint8)
        labels[phantom.femur_mask("left")] = 1
        labels[phantom.femur_mask("right")] = 2
        write_volume(raw / "imagesTr" / f"study{seed:03d}_0000.nii.gz", phantom.ct.to_patient_orientation("HPL"))
        write_volume(raw / "labelsTr" / f"study{seed:03d}.nii.gz",
                     hd.Volume(labels, phantom.ct.affine, "PATIENT").to_patient_orientation("HPL"))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "left femur": 1, "right femur": 2},
        "numTraining": len(seeds),
        "file_ending": ".nii.gz",
    }, indent=2))
    return raw


def train_femur_model(destination: Path, work: Path) -> Path:
    """Train the test femur model (fold "all") in ``work`` and export it to ``destination``."""
    from lesion_training.configurations import SMALL
    from lesion_training.export import export_model
    from lesion_training.nnunet_workspace import NnUNetWorkspace
    from lesion_training.train import plan_configuration, run_nnunet_step, train_fold

    workspace = NnUNetWorkspace(work / "workspace")
    write_femur_dataset(workspace.raw / _DATASET)
    configuration = SMALL.replace(
        name="femurtest", description="tests: femur model on whole small studies", patch_size=(64, 64, 64),
        n_stages=4, base_features=8, max_features=32, min_target_spacing=(5.0, 5.0, 5.0), dice_smoothing=False,
        **_SCHEDULE,
    )
    plan_configuration(workspace, _DATASET, configuration, num_processes=1, check_dataset_integrity=False)
    run_nnunet_step(workspace, "preprocess", _DATASET, num_processes=1, arguments=[configuration.plans_identifier])
    train_fold(workspace, _DATASET, configuration, "all", device="cpu", num_processes=1, final_validation=False)
    exported = export_model(workspace, _DATASET, configuration, folds=("all",), output=destination,
                            model_name="femur-test", model_version="0.0.0-test")
    # The export describes lesion models; say what this one is.
    info_file = exported.folder / "model.json"
    info = json.loads(info_file.read_text())
    info["task"] = "femurs of whole lower-body CT studies (a test fixture, not a model to use)"
    info["input"]["values"] = "HU, the whole CT"
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    # Its sides are not to be trusted (module docstring): both labels are femur, the geometry names the sides.
    # Test-time mirroring off: eight times faster, which is what these tests need.
    settings = {"labels": {"1": "femur", "2": "femur"}, "mirroring": False}
    (exported.folder / SETTINGS_FILE_NAME).write_text(json.dumps(settings, indent=2) + "\n")
    return exported.folder


@pytest.fixture(scope="session")
def femur_model() -> Path:
    """Folder of the test femur model (see the module docstring)."""
    return FEMUR_TEST_MODEL


if __name__ == "__main__":
    import logging
    import shutil
    import sys
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    destination = Path(sys.argv[1]) if len(sys.argv) > 1 else FEMUR_TEST_MODEL
    with tempfile.TemporaryDirectory(prefix="femur-test-model-") as work:
        trained = train_femur_model(Path(work) / "model", Path(work))
        if destination.exists():
            shutil.rmtree(destination)
        shutil.copytree(trained, destination)
    print(destination)
