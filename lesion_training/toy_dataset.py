"""A toy femur-lesion dataset: checks the training pipeline end to end in minutes, without data.

Each case is a femur-only-like crop: a bone cylinder along the patient's z axis (cortex ~1200 HU,
marrow ~300 HU, noise), 0 outside, and in most cases a darker ellipsoid (~30 HU) in the marrow as the
"lytic lesion". Nothing about real anatomy is learnt from it; a model trained on it only shows that
planning, preprocessing, training, export and inference fit together (``python -m lesion_training toy``).
:func:`write_untrained_model` writes a model folder with random weights for testing what consumes
model folders, without training.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np

from lesion_training.configurations import SMALL, TrainingConfiguration
from lesion_training.raw_dataset import write_dataset_json, write_nnunet_case

logger = logging.getLogger(__name__)

CORTEX_HU = 1200.0
MARROW_HU = 300.0
LESION_HU = 30.0
NOISE_HU = 25.0

#: Plans edits of :func:`write_untrained_model`: ``small`` with a tiny network.
UNTRAINED = SMALL.replace(name="untrained", description="random weights, for tests only",
                          base_features=4, max_features=16)


def toy_femur_crop(
    *,
    shape: tuple[int, int, int] = (48, 32, 32),
    spacing: tuple[float, float, float] = (1.5, 0.8, 0.8),
    lesion: bool = True,
    seed: int = 0,
) -> tuple[hd.Volume, np.ndarray]:
    """One toy femur-only crop in HPL orientation, and its lesion labels.

    Parameters
    ----------
    shape : tuple of int
        (z, y, x) voxels.
    spacing : tuple of float
        (sz, sy, sx) in mm.
    lesion : bool
        Put a lesion in the marrow.
    seed : int
        Seed of the random geometry and noise.

    Returns
    -------
    volume : highdicom.Volume
        float32 HU, 0 outside the cylinder; axes (z, y, x) towards Head, Posterior, Left.
    labels : np.ndarray
        uint8 (z, y, x): 1 inside the lesion, 0 elsewhere.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    cy = ny / 2 + rng.uniform(-1.5, 1.5)
    cx = nx / 2 + rng.uniform(-1.5, 1.5)
    radius = min(ny, nx) * rng.uniform(0.36, 0.42)
    r = np.hypot(y - cy, x - cx)
    femur = r <= radius
    marrow = r <= radius * 0.7

    array = np.zeros(shape, dtype=np.float32)
    array[femur] = CORTEX_HU
    array[marrow] = MARROW_HU
    labels = np.zeros(shape, dtype=np.uint8)
    if lesion:
        centre = (rng.uniform(0.3, 0.7) * nz, cy + rng.uniform(-1, 1), cx + rng.uniform(-1, 1))
        semi_axes = (rng.uniform(4, 8), radius * 0.45, radius * 0.45)
        inside = sum(((g - c) / a) ** 2 for g, c, a in zip((z, y, x), centre, semi_axes)) <= 1.0
        labels[inside & femur] = 1
        array[labels == 1] = LESION_HU
    array[femur] += rng.normal(0.0, NOISE_HU, size=int(femur.sum())).astype(np.float32)
    # Keep femur voxels away from exactly 0, which means "outside the femur" to nnU-Net's mask.
    array[femur & (np.abs(array) < 1.0)] = 1.0

    sz, sy, sx = spacing
    affine = np.array([
        [0.0, 0.0, sx, -20.0],   # LPS x (Left) <- axis 2
        [0.0, sy, 0.0, -15.0],   # LPS y (Posterior) <- axis 1
        [sz, 0.0, 0.0, -400.0],  # LPS z (Head) <- axis 0
        [0.0, 0.0, 0.0, 1.0],
    ])
    return hd.Volume(array, affine, coordinate_system="PATIENT"), labels


def write_toy_dataset(
    raw_dir: str | Path,
    *,
    num_cases: int = 10,
    shape: tuple[int, int, int] = (48, 32, 32),
    spacing: tuple[float, float, float] = (1.5, 0.8, 0.8),
    seed: int = 0,
) -> Path:
    """Write a toy nnU-Net dataset (``DatasetXXX_Name`` folder) of ``num_cases`` crops.

    Every fourth case has no lesion, as many real femurs do. Returns the dataset folder.
    """
    raw_dir = Path(raw_dir)
    for k in range(num_cases):
        volume, labels = toy_femur_crop(shape=shape, spacing=spacing, lesion=k % 4 != 3, seed=seed + k)
        write_nnunet_case(raw_dir, f"toy_{k:03d}", volume, labels)
    write_dataset_json(raw_dir, num_training_cases=num_cases, description="toy femur crops (synthetic)",
                       reference="synthetic", license="CC0-1.0")
    logger.info("wrote %d toy cases to %s", num_cases, raw_dir)
    return raw_dir


def write_untrained_model(
    folder: str | Path,
    *,
    configuration: TrainingConfiguration | None = None,
    seed: int = 0,
) -> Path:
    """Write a model folder with randomly initialised weights, planned by nnU-Net on a toy dataset.

    For testing what consumes model folders (the applications, evaluation) without training: the
    folder has the layout of the slim export and loads with ``LesionModel.from_folder``; its
    predictions are meaningless but deterministic.

    Parameters
    ----------
    folder : str or Path
        Destination model folder (created; must not exist or be empty).
    configuration : TrainingConfiguration, optional
        Plans edits to apply (default: :data:`UNTRAINED`).
    seed : int
        Seed of the weights.

    Returns
    -------
    Path
        The model folder.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from lesion_training.configurations import NNUNET_CONFIGURATION
    from lesion_training.nnunet_workspace import NnUNetWorkspace
    from lesion_training.train import plan_configuration

    configuration = configuration or UNTRAINED
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"model folder {folder} is not empty")
    with tempfile.TemporaryDirectory(prefix="untrained-model-") as tmp:
        workspace = NnUNetWorkspace(tmp)
        dataset_name = "Dataset999_Toy"
        write_toy_dataset(workspace.raw / dataset_name, num_cases=5, seed=seed)
        plans = plan_configuration(workspace, dataset_name, configuration, num_processes=1,
                                   check_dataset_integrity=False)
        dataset_json = json.loads((workspace.raw / dataset_name / "dataset.json").read_text(encoding="utf-8"))

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(NNUNET_CONFIGURATION)
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=4), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=4), encoding="utf-8")
    (folder / "model.json").write_text(json.dumps({
        "name": "femur-lesion-untrained", "version": "0.0.0", "configuration": configuration.name,
        "nnunet_configuration": NNUNET_CONFIGURATION, "trainer": "nnUNetTrainer",
        "description": configuration.description,
    }, indent=2), encoding="utf-8")
    torch.save({
        "network_weights": network.state_dict(),
        "init_args": {"plans": plans, "configuration": NNUNET_CONFIGURATION, "fold": 0, "dataset_json": dataset_json},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }, folder / "fold_0" / "checkpoint_final.pth")
    return folder
