"""Fine-tune a trained lesion model on new cases, through nnU-Net, keeping the model's own plans.

Training from scratch (:func:`lesion_training.train.train`) lets nnU-Net plan the network from the dataset.
Fine-tuning must keep the network the weights belong to, so :func:`fine_tune`:

1. links the raw dataset into the workspace and extracts nnU-Net's fingerprint (its integrity check);
2. installs the base model's ``plans.json`` as the dataset's plans, under its own plans identifier, with
   a short training schedule (read by :class:`lesion_training.trainers.nnUNetTrainerFemur`);
3. preprocesses the dataset with those plans (same target spacing, normalisation and patch);
4. trains fold ``all`` from one of the base model's folds: nnU-Net's own fine-tuning
   (``-pretrained_weights``: every weight but the 1x1 output layer is transferred), and by default the
   output layer too, since the labels are the base model's
   (:attr:`~lesion_training.configurations.FineTuneSchedule.keep_output_layer`);
5. exports the slim model folder (:func:`lesion_training.export.export_model`).

The dataset must have the base model's labels (with or without the cyst class), since the plans and
the output layer are the base model's.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path

from operators.errors import TrainingDataError
from lesion_training.configurations import (
    NNUNET_CONFIGURATION, SCHEDULE_KEY, SMALL, FineTuneSchedule, TrainingConfiguration, schedule_entry,
)
from lesion_training.export import CHECKPOINT, ExportedModel, export_model
from lesion_training.nnunet_workspace import NnUNetWorkspace
from lesion_training.train import resolve_dataset, resolve_training_device, run_nnunet_step, train_fold

logger = logging.getLogger(__name__)

__all__ = ["FineTuneSchedule", "fine_tune", "base_checkpoint"]


def base_checkpoint(model_folder: Path) -> Path:
    """The checkpoint of a model folder that fine-tuning starts from: ``fold_all``, else the lowest fold."""
    folds = sorted(p for p in Path(model_folder).glob(f"fold_*/{CHECKPOINT}"))
    if not folds:
        raise TrainingDataError(f"base model {model_folder} has no fold_*/{CHECKPOINT}")
    for path in folds:
        if path.parent.name == "fold_all":
            return path
    return folds[0]


def fine_tune(
    dataset: str | Path,
    *,
    base_model: str | Path,
    workspace: str | Path | NnUNetWorkspace,
    output: str | Path,
    schedule: FineTuneSchedule = FineTuneSchedule(),
    device: str = "auto",
    model_name: str | None = None,
    model_version: str = "0.1.0",
    num_processes: int = 1,
    command: str | None = None,
) -> ExportedModel:
    """Fine-tune the model in ``base_model`` on the raw dataset ``dataset`` and export it to ``output``.

    Parameters
    ----------
    dataset : str or Path
        Raw nnU-Net dataset folder ``DatasetXXX_Name`` (e.g. from
        :class:`lesion_training.dataset_builder.DatasetBuilder`), with the base model's labels.
    base_model : str or Path
        Slim model folder (``plans.json``, ``dataset.json``, ``fold_*/checkpoint_final.pth``).
    workspace : str, Path or NnUNetWorkspace
        nnU-Net's folders for this run (created if missing).
    output : str or Path
        Destination of the exported model folder (replaced if it exists).
    schedule : FineTuneSchedule
        Epochs and iterations.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    model_name, model_version : str
        Recorded in the new model.json (the name defaults to the base model's).
    num_processes : int
        nnU-Net worker processes for fingerprinting, preprocessing and validation.

    Raises
    ------
    TrainingDataError
        If the base model or the dataset is unusable, or their labels differ.
    TrainingRunError
        If an nnU-Net step fails.
    """
    base = Path(base_model)
    for name in ("plans.json", "dataset.json"):
        if not (base / name).is_file():
            raise TrainingDataError(f"base model {base} has no {name}")
    checkpoint = base_checkpoint(base)
    base_plans = json.loads((base / "plans.json").read_text(encoding="utf-8"))
    base_labels = json.loads((base / "dataset.json").read_text(encoding="utf-8"))["labels"]
    if NNUNET_CONFIGURATION not in base_plans.get("configurations", {}):
        raise TrainingDataError(f"base model {base} has no {NNUNET_CONFIGURATION} configuration in its plans")
    torch_device = resolve_training_device(device)
    ws = workspace if isinstance(workspace, NnUNetWorkspace) else NnUNetWorkspace(workspace)
    started = time.monotonic()

    dataset_name = resolve_dataset(ws, dataset)
    labels = json.loads((ws.raw / dataset_name / "dataset.json").read_text(encoding="utf-8"))["labels"]
    if labels != base_labels:
        raise TrainingDataError(f"dataset {dataset_name} has labels {labels}, the base model {base_labels}")
    configuration = _configuration(base_plans, schedule)
    # nnU-Net's steps in fresh interpreters (see run_nnunet_step): in a server's process their pools
    # either hang or start a dozen copies of the server.
    run_nnunet_step(ws, "fingerprint", dataset_name, num_processes=num_processes, arguments=["check"])
    plans = _plans_for(base_plans, dataset_name, configuration)
    plans_file = ws.preprocessed / dataset_name / f"{configuration.plans_identifier}.json"
    plans_file.write_text(json.dumps(plans, indent=4) + "\n", encoding="utf-8")
    # nnU-Net's planner puts dataset.json beside the plans and preprocessing reads it from there;
    # fine-tuning keeps the base model's plans and skips the planner, so it copies the file itself.
    shutil.copyfile(ws.raw / dataset_name / "dataset.json", ws.preprocessed / dataset_name / "dataset.json")
    run_nnunet_step(ws, "preprocess", dataset_name, num_processes=num_processes,
                    arguments=[configuration.plans_identifier])
    logger.info("fine-tuning %s from %s (%s) on %s: %d epochs x %d iterations", dataset_name, base.name,
                checkpoint.parent.name, torch_device, schedule.num_epochs, schedule.iterations_per_epoch)
    # No end-of-training validation: for fold "all" it would only predict the training cases again.
    train_fold(ws, dataset_name, configuration, "all", device=torch_device, num_processes=num_processes,
               pretrained_weights=checkpoint, pretrained_output_layer=schedule.keep_output_layer,
               final_validation=False)
    base_info = _read_json(base / "model.json")
    exported = export_model(
        ws, dataset_name, configuration, folds=["all"], output=output,
        model_name=model_name or str(base_info.get("name") or "femur-lesion"), model_version=model_version,
        training_command=command or f"fine-tuned from {base_info.get('name', base.name)} "
                                    f"{base_info.get('version', 'unversioned')} ({checkpoint.parent.name})",
        training_device=torch_device,
        fine_tuned_from={"name": base_info.get("name", base.name), "version": base_info.get("version"),
                         "fold": checkpoint.parent.name,
                         "output_layer": "kept" if schedule.keep_output_layer else "re-initialised",
                         "configuration": base_info.get("configuration"),
                         "schedule": base_info.get("schedule"), "training": base_info.get("training")},
    )
    logger.info("fine-tuning done in %.1f min", (time.monotonic() - started) / 60)
    return exported


def _configuration(base_plans: dict, schedule: FineTuneSchedule) -> TrainingConfiguration:
    """A configuration that names the fine-tuning plans; its sizes are the base plans' (for model.json)."""
    fullres = base_plans["configurations"][NNUNET_CONFIGURATION]
    # Plans list sizes in nnU-Net's internal axis order; configurations hold them as (z, y, x).
    backward = base_plans.get("transpose_backward", [0, 1, 2])
    patch = tuple(int(fullres["patch_size"][axis]) for axis in backward)
    features = fullres["architecture"]["arch_kwargs"]["features_per_stage"]
    return SMALL.replace(
        name="finetune",
        description=f"fine-tuning of plans {base_plans.get('plans_name')}: {schedule.num_epochs}x"
                    f"{schedule.iterations_per_epoch} iterations from pretrained weights"
                    f"{'' if schedule.keep_output_layer else ', output layer re-initialised'}",
        patch_size=patch, n_stages=len(features), base_features=int(features[0]), max_features=int(max(features)),
        batch_size=int(fullres["batch_size"]), min_target_spacing=None, num_epochs=schedule.num_epochs,
        iterations_per_epoch=schedule.iterations_per_epoch, val_iterations_per_epoch=schedule.val_iterations_per_epoch,
        dice_smoothing=schedule.dice_smoothing,
    )


def _plans_for(base_plans: dict, dataset_name: str, configuration: TrainingConfiguration) -> dict:
    """The base plans, renamed for this dataset and plans identifier, with the fine-tuning schedule."""
    plans = copy.deepcopy(base_plans)
    plans["dataset_name"] = dataset_name
    plans["plans_name"] = configuration.plans_identifier
    plans["configurations"][NNUNET_CONFIGURATION][SCHEDULE_KEY] = schedule_entry(configuration)
    return plans


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}

