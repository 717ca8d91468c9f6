"""Export a trained model as a slim, self-describing folder fit to ship and commit.

nnU-Net's ``checkpoint_final.pth`` holds the optimiser state next to the network weights (about half
its size) and names the trainer class it was trained with. The export keeps, per fold, only what
``nnUNetPredictor`` reads (``network_weights``, ``init_args``, ``trainer_name``,
``inference_allowed_mirroring_axes``) and names ``nnUNetTrainer`` as trainer: the project's trainer
builds the network exactly as nnU-Net's default one does (checked here), so the folder loads in any
nnunetv2 installation — with :class:`operators.lesion_model.LesionModel`, or
``nnUNetv2_predict_from_modelfolder`` — without this package. The folder::

    model.json                 name, version, configuration, training command and date, labels, metrics
    plans.json, dataset.json   as nnU-Net wrote them for this model
    dataset_fingerprint.json
    postprocessing.pkl/.json   nnU-Net's cross-validated post-processing, when it was determined
    fold_k/checkpoint_final.pth
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from operators.errors import TrainingRunError
from operators.lesion_model import CANONICAL_ORIENTATION, MODEL_INFO_FILE
from lesion_training.configurations import NNUNET_CONFIGURATION, SCHEDULE_KEY, TRAINER_NAME, TrainingConfiguration
from lesion_training.nnunet_workspace import NnUNetWorkspace

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
#: The trainer the exported checkpoints name: nnU-Net's default, found by every nnunetv2 installation.
EXPORTED_TRAINER_NAME = "nnUNetTrainer"
#: Checkpoint entries nnUNetPredictor reads; everything else (optimiser, logs) stays behind.
_INFERENCE_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes")
_COPIED_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")


@dataclass(frozen=True)
class ExportedModel:
    """A slim model folder written by :func:`export_model`.

    Attributes
    ----------
    folder : Path
        The model folder (input of ``LesionModel.from_folder``).
    size_bytes : int
        Total size of its files.
    model_json : dict
        Contents of its model.json.
    """

    folder: Path
    size_bytes: int
    model_json: dict[str, Any]


def results_folder(workspace: NnUNetWorkspace, dataset_name: str, configuration: TrainingConfiguration) -> Path:
    """nnU-Net's results folder of a configuration: ``nnUNet_results/<dataset>/<trainer>__<plans>__3d_fullres``."""
    return (workspace.results / dataset_name
            / f"{TRAINER_NAME}__{configuration.plans_identifier}__{NNUNET_CONFIGURATION}")


def export_model(
    workspace: NnUNetWorkspace,
    dataset_name: str,
    configuration: TrainingConfiguration,
    *,
    folds: Sequence[int | str],
    output: str | Path | None = None,
    model_name: str | None = None,
    model_version: str = "0.1.0",
    training_command: str | None = None,
    fine_tuned_from: Mapping[str, Any] | None = None,
    training_device: str | None = None,
    cross_validation_dice: float | None = None,
) -> ExportedModel:
    """Write the slim model folder of trained folds.

    Parameters
    ----------
    workspace : NnUNetWorkspace
        Workspace the model was trained in.
    dataset_name : str
        ``DatasetXXX_Name``.
    configuration : TrainingConfiguration
        Configuration it was trained with.
    folds : sequence of int or "all"
        Folds to include (each needs ``fold_k/checkpoint_final.pth``).
    output : str or Path, optional
        Destination folder, replaced if it exists; default ``<workspace>/export/<dataset>__<configuration>``.
    model_name, model_version : str
        Recorded in model.json (the name defaults to ``femur-lesion-<configuration>``).
    training_command, training_device : str, optional
        How it was trained, recorded in model.json.
    fine_tuned_from : mapping, optional
        The model the training started from (name, version, fold, configuration, schedule, its own training
        record), recorded in model.json's ``training.fine_tuned_from``; None (recorded as null) for a model
        trained from scratch.
    cross_validation_dice : float, optional
        Mean foreground Dice of the complete cross-validation, recorded in model.json beside each
        exported fold's validation Dice.

    Returns
    -------
    ExportedModel

    Raises
    ------
    TrainingRunError
        If the results folder, its plans/dataset files or a fold's final checkpoint is missing.
    """
    import torch

    source = results_folder(workspace, dataset_name, configuration)
    if not source.is_dir():
        raise TrainingRunError(f"no trained model to export: {source} does not exist")
    for name in ("plans.json", "dataset.json"):
        if not (source / name).is_file():
            raise TrainingRunError(f"no trained model to export: {source} has no {name}")
    fold_names = [f"fold_{f}" for f in folds]
    for fold in fold_names:
        if not (source / fold / CHECKPOINT).is_file():
            raise TrainingRunError(f"fold not trained to the end: {source / fold / CHECKPOINT} is missing")
    _check_trainer_builds_default_network()

    destination = Path(output) if output is not None else workspace.export / f"{dataset_name}__{configuration.name}"
    destination = destination.expanduser().resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent, prefix=f".{destination.name}.partial-") as tmp:
        staging = Path(tmp) / destination.name
        staging.mkdir()
        for name in _COPIED_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)
        epochs_trained: dict[str, int | None] = {}
        for fold in fold_names:
            checkpoint = torch.load(source / fold / CHECKPOINT, map_location="cpu", weights_only=False)
            epochs_trained[fold] = checkpoint.get("current_epoch")
            slim = {key: checkpoint.get(key) for key in _INFERENCE_KEYS}
            if slim["trainer_name"] == TRAINER_NAME:
                slim["trainer_name"] = EXPORTED_TRAINER_NAME
            (staging / fold).mkdir()
            torch.save(slim, staging / fold / CHECKPOINT)
        if all(isinstance(f, int) for f in folds):
            _copy_postprocessing(source, [int(f) for f in folds], staging)

        plans = json.loads((source / "plans.json").read_text(encoding="utf-8"))
        dataset_json = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
        info = _model_json(
            plans, dataset_json, configuration, folds,
            name=model_name or f"femur-lesion-{configuration.name}", version=model_version,
            command=training_command, device=training_device, cv_dice=cross_validation_dice,
            validation_dice=_validation_dice(source, fold_names), dataset_name=dataset_name,
            fine_tuned_from=fine_tuned_from,
        )
        # A time budget (schedule "time_budget_s") can end training before the schedule's num_epochs.
        info["training"]["epochs_trained"] = epochs_trained
        (staging / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _replace_folder(staging, destination)

    size = sum(p.stat().st_size for p in destination.rglob("*") if p.is_file())
    logger.info("exported %s (%s, folds %s) to %s: %.1f MB", info["name"], configuration.name, list(folds),
                destination, size / 1e6)
    return ExportedModel(folder=destination, size_bytes=size, model_json=info)


def _check_trainer_builds_default_network() -> None:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from lesion_training.trainers import nnUNetTrainerFemur

    # Renaming the trainer in the checkpoint is only sound while the network is built the same way.
    if nnUNetTrainerFemur.build_network_architecture is not nnUNetTrainer.build_network_architecture:
        raise TrainingRunError(f"{TRAINER_NAME} builds its own network; its checkpoints cannot name nnUNetTrainer")


def _copy_postprocessing(source: Path, folds: list[int], staging: Path) -> None:
    from nnunetv2.utilities.file_path_utilities import folds_tuple_to_string

    crossval = source / f"crossval_results_folds_{folds_tuple_to_string(folds)}"
    for name in ("postprocessing.pkl", "postprocessing.json"):
        if (crossval / name).is_file():
            shutil.copy2(crossval / name, staging / name)


def _model_json(
    plans: dict,
    dataset_json: dict,
    configuration: TrainingConfiguration,
    folds: Sequence[int | str],
    *,
    name: str,
    version: str,
    command: str | None,
    device: str | None,
    cv_dice: float | None,
    validation_dice: dict[str, float | None],
    dataset_name: str,
    fine_tuned_from: Mapping[str, Any] | None,
) -> dict[str, Any]:
    fullres = plans["configurations"][NNUNET_CONFIGURATION]
    backward = plans["transpose_backward"]

    def canonical(values: Sequence[float]) -> list[float]:
        # Plans list sizes in nnU-Net's internal (transposed) order; report them as (z, y, x).
        return [values[axis] for axis in backward]

    return {
        "name": name,
        "version": version,
        "description": configuration.description,
        "task": "lytic lesion segmentation in femur-only CT crops",
        "input": {
            "orientation": CANONICAL_ORIENTATION,
            "axis_order": "(z, y, x)",
            "values": "HU inside the femur, 0 outside",
            "channel_names": dataset_json.get("channel_names"),
        },
        "label_names": {str(v): k for k, v in dataset_json["labels"].items()},
        "configuration": configuration.name,
        "nnunet_configuration": NNUNET_CONFIGURATION,
        "plans": plans["plans_name"],
        "trainer": TRAINER_NAME,
        "checkpoint_trainer_name": EXPORTED_TRAINER_NAME,
        "folds": list(folds),
        "target_spacing_mm_zyx": canonical(fullres["spacing"]),
        "patch_size_zyx": canonical(fullres["patch_size"]),
        "features_per_stage": fullres["architecture"]["arch_kwargs"]["features_per_stage"],
        "batch_size": fullres.get("batch_size"),
        "schedule": fullres.get(SCHEDULE_KEY),
        "training": {
            "dataset": dataset_name,
            "num_training_cases": dataset_json.get("numTraining"),
            "command": command,
            "fine_tuned_from": dict(fine_tuned_from) if fine_tuned_from is not None else None,
            "device": device,
            "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "nnunetv2": _version("nnunetv2"),
            "torch": _version("torch"),
        },
        "validation": {
            "fold_dice": validation_dice,
            "cross_validation_dice": cv_dice,
            "metric": "nnU-Net's mean foreground Dice; cases where prediction and reference are both empty "
                      "are left out",
        },
    }


def _validation_dice(source: Path, fold_names: Sequence[str]) -> dict[str, float | None]:
    # nnU-Net writes fold_k/validation/summary.json after training each fold.
    dice: dict[str, float | None] = {}
    for fold in fold_names:
        summary = source / fold / "validation" / "summary.json"
        if summary.is_file():
            value = json.loads(summary.read_text(encoding="utf-8")).get("foreground_mean", {}).get("Dice")
            # NaN (nothing to find and nothing found in every case) is not valid JSON.
            dice[fold] = None if value is None or value != value else float(value)
    return dice


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _replace_folder(staging: Path, destination: Path) -> None:
    if destination.exists():
        retired = staging.parent / f"{destination.name}.previous"
        os.replace(destination, retired)
    os.replace(staging, destination)
