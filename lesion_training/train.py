"""The paper's training pipeline, run through nnU-Net's own planning, preprocessing, training and evaluation.

Steps of :func:`train`:

1. take the raw dataset (a ``DatasetXXX_Name`` folder, linked into the workspace, or an id/name already
   there) and check its dataset.json;
2. extract nnU-Net's dataset fingerprint (with its dataset integrity check), let nnU-Net's
   ``ExperimentPlanner`` plan ``3d_fullres`` at the configuration's target spacing, edit the plans into
   the configuration (:mod:`lesion_training.configurations`) and run nnU-Net's preprocessing;
3. optionally install a ``splits_final.json``;
4. train each fold with ``nnunetv2.run.run_training`` in a subprocess (the trainer prints one progress
   line per epoch: losses, pseudo-Dice, time per epoch and time left), then nnU-Net's own validation;
5. once every fold of the split is trained, run nnU-Net's ``find_best_configuration`` (cross-validation
   Dice over the whole dataset and the post-processing decision);
6. export the slim model folder (:mod:`lesion_training.export`).

Fingerprint, planning and preprocessing run in a fresh interpreter (:func:`run_nnunet_step`: their
process pools are safe and cheap only there), and so does each fold, as ``nnUNetv2_train`` would, so
that nnU-Net reads its process-count variables at import and a crashed fold cannot take the
pipeline's state with it. Evaluation runs in this process with the workspace's variables set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from operators.errors import TrainingDataError, TrainingRunError
from lesion_training.configurations import (
    NNUNET_CONFIGURATION,
    TRAINER_NAME,
    TrainingConfiguration,
    apply_configuration,
    get_configuration,
    target_spacing,
)
from lesion_training.export import ExportedModel, export_model, results_folder
from lesion_training.nnunet_workspace import NnUNetWorkspace
from lesion_training.raw_dataset import write_splits

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_DATASET_NAME = re.compile(r"^Dataset(\d{3})_[A-Za-z0-9_-]+$")
#: The paper's cross-validation: five folds.
CROSS_VALIDATION_FOLDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class TrainingRun:
    """What :func:`train` did.

    Attributes
    ----------
    dataset_name : str
        ``DatasetXXX_Name``.
    configuration : TrainingConfiguration
    folds : tuple
        Trained folds (ints, or ``"all"``).
    results_folder : Path
        nnU-Net's results folder with the full checkpoints and validation outputs.
    cross_validation_dice : float or None
        Mean foreground Dice of nnU-Net's cross-validation (after its post-processing), once every fold
        of the split is trained.
    exported : ExportedModel or None
        The slim model folder.
    """

    dataset_name: str
    configuration: TrainingConfiguration
    folds: tuple[int | str, ...]
    results_folder: Path
    cross_validation_dice: float | None
    exported: ExportedModel | None


def train(
    dataset: str | int | Path,
    *,
    workspace: str | Path | NnUNetWorkspace,
    configuration: str | TrainingConfiguration = "small",
    folds: Sequence[int | str] = CROSS_VALIDATION_FOLDS,
    device: str = "auto",
    splits: str | Path | None = None,
    resume: bool = False,
    export: bool = True,
    output: str | Path | None = None,
    model_name: str | None = None,
    model_version: str = "0.1.0",
    num_processes: int | None = None,
    command: str | None = None,
) -> TrainingRun:
    """Plan, preprocess, train, evaluate and export a lesion model.

    Parameters
    ----------
    dataset : str, int or Path
        A raw nnU-Net dataset folder named ``DatasetXXX_Name`` (linked into the workspace), or the id
        or name of one already in the workspace's ``nnUNet_raw``.
    workspace : str, Path or NnUNetWorkspace
        Where nnU-Net's folders live (created if missing).
    configuration : str or TrainingConfiguration
        ``"small"`` (CPU), ``"paper"`` (GPU), or a custom configuration.
    folds : sequence of int, or ("all",)
        Cross-validation folds to train, or ``"all"`` for one model on all cases.
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    splits : str or Path, optional
        A ``splits_final.json`` to use instead of nnU-Net's random 5-fold split (e.g. grouped by patient).
    resume : bool
        Continue folds from their latest checkpoint instead of starting over.
    export : bool
        Write the slim model folder at the end.
    output : str or Path, optional
        Export destination (default under ``<workspace>/export/``).
    model_name, model_version : str
        Recorded in the exported model.json.
    num_processes : int, optional
        Worker processes for fingerprinting, preprocessing and evaluation (default: CPU count, at most 8).
    command : str, optional
        The command line to record in model.json.

    Returns
    -------
    TrainingRun

    Raises
    ------
    TrainingDataError
        For a missing or malformed dataset or split file.
    TrainingRunError
        If an nnU-Net step fails.
    """
    config = get_configuration(configuration) if isinstance(configuration, str) else configuration
    fold_list = normalise_folds(folds)
    torch_device = resolve_training_device(device)
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    processes = num_processes or _default_processes()
    if splits is not None and not Path(splits).is_file():
        raise TrainingDataError(f"splits file not found: {splits}")
    ws = workspace if isinstance(workspace, NnUNetWorkspace) else NnUNetWorkspace(workspace)
    started = time.monotonic()

    dataset_name = resolve_dataset(ws, dataset)
    logger.info("training %s with configuration %s (%s), folds %s, on %s", dataset_name, config.name,
                config.description, list(fold_list), torch_device)
    plan_and_preprocess(ws, dataset_name, config, num_processes=processes)
    if splits is not None:
        ending = _file_ending(ws, dataset_name)
        case_ids = [p.name[: -len(ending)] for p in (ws.raw / dataset_name / "labelsTr").glob(f"*{ending}")]
        written = write_splits(ws.preprocessed / dataset_name, splits, case_ids=case_ids)
        logger.info("using the folds of %s", written)

    for fold in fold_list:
        train_fold(ws, dataset_name, config, fold, device=torch_device, resume=resume, num_processes=processes)

    cv_dice = None
    complete = completed_cross_validation(ws, dataset_name, config)
    if complete is not None and all(isinstance(f, int) for f in fold_list):
        cv_dice = evaluate_cross_validation(ws, dataset_name, config, complete, num_processes=processes)
    elif all(isinstance(f, int) for f in fold_list):
        logger.info("cross-validation incomplete (trained: %s): nnU-Net's find_best_configuration and "
                    "post-processing are left for when every fold is trained", _trained_folds(ws, dataset_name, config))

    exported = None
    if export:
        exported = export_model(
            ws, dataset_name, config, folds=fold_list, output=output, model_name=model_name,
            model_version=model_version, training_command=command, training_device=torch_device,
            cross_validation_dice=cv_dice,
        )
        logger.info("model folder %s: %.1f MB", exported.folder, exported.size_bytes / 1e6)
    logger.info("done in %.1f min", (time.monotonic() - started) / 60)
    return TrainingRun(dataset_name=dataset_name, configuration=config, folds=fold_list,
                       results_folder=results_folder(ws, dataset_name, config),
                       cross_validation_dice=cv_dice, exported=exported)


def normalise_folds(folds: Sequence[int | str] | int | str) -> tuple[int | str, ...]:
    """Folds as nnU-Net names them: distinct non-negative ints in the given order, or ``("all",)``."""
    if isinstance(folds, (int, str)):
        folds = [folds]
    result: list[int | str] = []
    for fold in folds:
        if fold == "all":
            result.append("all")
            continue
        try:
            number = int(fold)
        except (TypeError, ValueError):
            raise ValueError(f"fold must be 0-4 or 'all', got {fold!r}") from None
        if number < 0:
            raise ValueError(f"fold must be 0-4 or 'all', got {fold!r}")
        result.append(number)
    if not result:
        raise ValueError("no fold given")
    if "all" in result and len(result) > 1:
        raise ValueError("fold 'all' cannot be combined with cross-validation folds")
    if len(set(result)) != len(result):
        raise ValueError(f"folds repeat: {list(folds)}")
    return tuple(result)


def resolve_training_device(device: str) -> str:
    """``"cpu"`` or ``"cuda"`` for nnU-Net's ``-device``; ``"auto"`` picks CUDA when available."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return device


def resolve_dataset(workspace: NnUNetWorkspace, dataset: str | int | Path) -> str:
    """Make the raw dataset available in the workspace and return its ``DatasetXXX_Name``.

    A folder is linked (symlink) into ``nnUNet_raw`` unless it already lies there; an id or name must
    already be there. Its dataset.json is checked for what nnU-Net and this project need.
    """
    candidate = Path(str(dataset)).expanduser()
    if candidate.is_dir():
        folder = candidate.resolve()
        if not _DATASET_NAME.match(folder.name):
            raise TrainingDataError(f"nnU-Net dataset folder must be named DatasetXXX_Name, got {folder.name!r}")
        link = workspace.raw / folder.name
        if link.resolve() != folder:
            if link.exists() or link.is_symlink():
                raise TrainingDataError(f"workspace already holds another {folder.name} in {workspace.raw}")
            _check_id_is_free(workspace, folder.name)
            link.symlink_to(folder, target_is_directory=True)
        name = folder.name
    else:
        name = _find_dataset_in(workspace, str(dataset))
    _check_raw_dataset(workspace.raw / name)
    return name


def plan_configuration(
    workspace: NnUNetWorkspace,
    dataset_name: str,
    configuration: TrainingConfiguration,
    *,
    num_processes: int,
    check_dataset_integrity: bool = True,
) -> dict:
    """Fingerprint the dataset, plan it with nnU-Net's ``ExperimentPlanner`` and apply the configuration.

    The planner runs at the configuration's target spacing (:func:`lesion_training.configurations.target_spacing`
    of nnU-Net's own choice), so that nnU-Net derives everything that depends on spacing itself. Runs in a
    fresh interpreter (:func:`run_nnunet_step`).

    Returns
    -------
    dict
        The configuration's plans, also saved as ``nnUNet_preprocessed/<dataset>/<plans identifier>.json``.
    """
    plans_file = workspace.preprocessed / dataset_name / f"{configuration.plans_identifier}.json"
    run_nnunet_step(workspace, "plan", dataset_name, num_processes=num_processes,
                    arguments=["check" if check_dataset_integrity else "no-check",
                               json.dumps(dataclasses.asdict(configuration))])
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    fullres = plans["configurations"][NNUNET_CONFIGURATION]
    logger.info("plans %s: spacing %s mm, patch %s, features %s, batch %d (nnU-Net axis order %s)",
                plans_file.name, fullres["spacing"], fullres["patch_size"],
                fullres["architecture"]["arch_kwargs"]["features_per_stage"], fullres["batch_size"],
                plans["transpose_forward"])
    return plans


def plan_and_preprocess(
    workspace: NnUNetWorkspace,
    dataset_name: str,
    configuration: TrainingConfiguration,
    *,
    num_processes: int,
) -> Path:
    """:func:`plan_configuration`, then nnU-Net's preprocessing of ``3d_fullres`` with those plans.

    Returns
    -------
    Path
        The configuration's plans file ``nnUNet_preprocessed/<dataset>/<plans identifier>.json``.
    """
    t0 = time.monotonic()
    plan_configuration(workspace, dataset_name, configuration, num_processes=num_processes)
    t1 = time.monotonic()
    run_nnunet_step(workspace, "preprocess", dataset_name, num_processes=num_processes,
                    arguments=[configuration.plans_identifier])
    logger.info("planning %.1f s, preprocessing %.1f s", t1 - t0, time.monotonic() - t1)
    return workspace.preprocessed / dataset_name / f"{configuration.plans_identifier}.json"


#: The steps :func:`run_nnunet_step` runs, and what their failure is called.
NNUNET_STEPS = {"fingerprint": "check", "plan": "check", "preprocess": "preprocessing"}
#: The program :func:`run_nnunet_step` runs: :func:`nnunet_step_main` in a fresh interpreter.
_NNUNET_STEP_PROGRAM = "import sys; from lesion_training.train import nnunet_step_main; nnunet_step_main(sys.argv[1:])"
#: Exit status of :func:`nnunet_step_main` when nnU-Net rejected the dataset or failed (message in a file).
_STEP_FAILED = 3


def run_nnunet_step(workspace: NnUNetWorkspace, step: str, dataset_name: str, *, num_processes: int,
                    arguments: Sequence[str] = ()) -> None:
    """Run one of nnU-Net's dataset steps in a fresh interpreter with the workspace's variables.

    ``step`` is ``"fingerprint"`` (fingerprint and integrity check; ``arguments``: ``check`` or ``no-check``),
    ``"plan"`` (the fingerprint, then planning at the configuration's target spacing; ``arguments``: the
    check flag and the :class:`TrainingConfiguration` as JSON) or ``"preprocess"`` (``3d_fullres``;
    ``arguments``: the plans identifier).

    Why a fresh interpreter: nnU-Net's fingerprint, planner and preprocessing open process pools (a
    dozen workers only to list the image files). In a process that runs threads (a server, a test
    session) a forked worker can wait forever on a lock held by a thread it does not have, and a
    spawned worker imports the calling process's main module again (for the annotation server: monai,
    torchvision and torch, for each of the dozen). A fresh interpreter has no threads, so its pools
    fork cheaply and safely, as under ``nnUNetv2_plan_and_preprocess``.

    Raises
    ------
    TrainingDataError
        If nnU-Net's check rejects the dataset (fingerprint or plan).
    TrainingRunError
        If preprocessing fails, or the step fails in any other way (exit code; its output is above).
    """
    if step not in NNUNET_STEPS:
        raise ValueError(f"unknown nnU-Net step {step!r}; choose one of {sorted(NNUNET_STEPS)}")
    with tempfile.TemporaryDirectory(prefix="nnunet-step-") as tmp:
        message_file = Path(tmp) / "error.txt"
        command = [sys.executable, "-c", _NNUNET_STEP_PROGRAM, step, dataset_name, str(num_processes),
                   str(message_file), *arguments]
        sys.stdout.flush()
        completed = subprocess.run(command, env=workspace.environment(worker_processes=num_processes), check=False)
        message = message_file.read_text(encoding="utf-8") if message_file.is_file() else None
    if completed.returncode == 0:
        return
    if completed.returncode == _STEP_FAILED and message is not None:
        if NNUNET_STEPS[step] == "check":
            raise TrainingDataError(f"nnU-Net's check of {dataset_name} failed: {message}")
        raise TrainingRunError(f"nnU-Net preprocessing of {dataset_name} failed: {message}")
    raise TrainingRunError(f"nnU-Net's {step} step for {dataset_name} failed with exit code {completed.returncode} "
                           "(its output is above)")


def nnunet_step_main(argv: Sequence[str]) -> None:
    """``step dataset num_processes message_file arguments...``: the nnU-Net step of :func:`run_nnunet_step`.

    Runs in the process that calls it, with the workspace's nnU-Net variables already in its environment.
    nnU-Net's rejection of the dataset (or a failed preprocessing) is written, one line, to
    ``message_file`` and the process exits with status 3.
    """
    step, dataset_name, processes, message_file, *arguments = argv
    dataset_id = int(dataset_name[len("Dataset"):len("Dataset") + 3])
    num_processes = int(processes)
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset

    expected: tuple[type[BaseException], ...] = (AssertionError, RuntimeError)
    try:
        if step in ("fingerprint", "plan"):
            extract_fingerprint_dataset(dataset_id, num_processes=num_processes,
                                        check_dataset_integrity=arguments[0] == "check", clean=True, verbose=False)
        if step == "plan":
            _plan(dataset_id, dataset_name, _configuration_from_json(arguments[1]))
        elif step == "preprocess":
            expected += (OSError,)
            preprocess_dataset(dataset_id, arguments[0], configurations=(NNUNET_CONFIGURATION,),
                               num_processes=(num_processes,), verbose=False)
    except expected as error:
        Path(message_file).write_text(_first_line(error), encoding="utf-8")
        raise SystemExit(_STEP_FAILED) from error


def _plan(dataset_id: int, dataset_name: str, configuration: TrainingConfiguration) -> None:
    """nnU-Net's planner at the configuration's target spacing; the configuration's plans saved beside nnU-Net's."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.paths import nnUNet_preprocessed

    default_spacing = ExperimentPlanner(dataset_id).determine_fullres_target_spacing()
    planner = ExperimentPlanner(
        dataset_id, plans_name=configuration.plans_identifier,
        overwrite_target_spacing=[float(s) for s in target_spacing(default_spacing, configuration)],
    )
    plans = apply_configuration(planner.plan_experiment(), configuration)
    plans_file = Path(nnUNet_preprocessed) / dataset_name / f"{configuration.plans_identifier}.json"
    plans_file.write_text(json.dumps(plans, indent=4) + "\n", encoding="utf-8")


def _configuration_from_json(text: str) -> TrainingConfiguration:
    """The :class:`TrainingConfiguration` that ``dataclasses.asdict`` wrote as JSON (lists back to tuples)."""
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in json.loads(text).items()}
    return TrainingConfiguration(**fields)


def train_fold(
    workspace: NnUNetWorkspace,
    dataset_name: str,
    configuration: TrainingConfiguration,
    fold: int | str,
    *,
    device: str,
    resume: bool = False,
    num_processes: int | None = None,
    pretrained_weights: Path | None = None,
    pretrained_output_layer: bool = False,
    final_validation: bool = True,
) -> Path:
    """Train one fold with nnU-Net's ``run_training`` in a subprocess; returns the fold's folder.

    Its output (nnU-Net's log and the trainer's progress lines) goes to this process's stdout.
    ``num_processes`` sets nnU-Net's worker processes for the fold's final validation.
    ``pretrained_weights`` (a checkpoint with ``network_weights``, e.g. an exported model's fold) starts
    the network from those weights instead of a random initialisation (nnU-Net's fine-tuning); it cannot
    be combined with ``resume``. nnU-Net leaves the output layer re-initialised; ``pretrained_output_layer``
    takes it from the checkpoint too (:func:`load_output_layer`; only with ``final_validation=False``).
    ``final_validation=False`` trains with :func:`fit_fold` instead, which
    skips nnU-Net's end-of-training validation: for fold ``all`` its cases are the training cases, and
    predicting them (with mirroring) costs minutes on a CPU for a figure that says nothing.
    """
    if pretrained_weights is not None and resume:
        raise ValueError("a fold cannot both resume and start from pretrained weights")
    if pretrained_output_layer and (pretrained_weights is None or final_validation):
        raise ValueError("the output layer is taken from pretrained weights only, and only without final validation")
    if final_validation:
        command = [
            sys.executable, "-m", "nnunetv2.run.run_training", dataset_name, NNUNET_CONFIGURATION, str(fold),
            "-tr", TRAINER_NAME, "-p", configuration.plans_identifier, "-device", device,
        ]
        if resume:
            command.append("--c")
        if pretrained_weights is not None:
            command += ["-pretrained_weights", str(pretrained_weights)]
    else:
        command = [sys.executable, "-c", _FIT_FOLD_PROGRAM, dataset_name, configuration.plans_identifier, str(fold),
                   device, str(pretrained_weights or ""), "continue" if resume else "new",
                   "with-output-layer" if pretrained_output_layer else "without-output-layer"]
    fold_folder = results_folder(workspace, dataset_name, configuration) / f"fold_{fold}"
    logger.info("fold %s: %s", fold, " ".join(command[1:]))
    started = time.monotonic()
    sys.stdout.flush()
    environment = workspace.environment(training_device=device, worker_processes=num_processes)
    completed = subprocess.run(command, env=environment, check=False)
    if completed.returncode != 0:
        raise TrainingRunError(
            f"nnU-Net training of fold {fold} failed with exit code {completed.returncode}; log in {fold_folder}"
        )
    logger.info("fold %s trained in %.1f min", fold, (time.monotonic() - started) / 60)
    return fold_folder


#: The program :func:`train_fold` runs for ``final_validation=False``: :func:`fit_fold` in a fresh interpreter.
_FIT_FOLD_PROGRAM = "import sys; from lesion_training.train import fit_fold_main; fit_fold_main(sys.argv[1:])"


def fit_fold(dataset_name: str, plans_identifier: str, fold: int | str, *, device: str = "cpu",
             resume: bool = False, pretrained_weights: str | Path | None = None,
             pretrained_output_layer: bool = False) -> None:
    """Train one fold with the project's trainer, without nnU-Net's final validation.

    nnU-Net's ``run_training`` minus ``perform_actual_validation``, in the process that calls it (with the
    workspace's nnU-Net variables set): the trainer's threads as ``nnUNetv2_train`` sets them, a checkpoint
    to continue from (``resume``) or pretrained weights to start from (with their output layer too if
    ``pretrained_output_layer``), then the training loop.
    """
    import multiprocessing

    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    torch_device = torch.device(device)
    if torch_device.type == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
    else:  # as nnUNetv2_train: more threads do not help a GPU run
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    fold_value: int | str = fold if fold == "all" else int(fold)
    trainer = get_trainer_from_args(dataset_name, NNUNET_CONFIGURATION, fold_value, TRAINER_NAME, plans_identifier,
                                    device=torch_device)
    maybe_load_checkpoint(trainer, resume, False, str(pretrained_weights) if pretrained_weights else None)
    if pretrained_weights and pretrained_output_layer:
        loaded = load_output_layer(trainer.network, Path(pretrained_weights))
        trainer.print_to_log_file(f"output layer taken from the pretrained weights ({len(loaded)} tensors)")
    trainer.run_training()


def fit_fold_main(argv: Sequence[str]) -> None:
    """``dataset plans fold device pretrained_weights_or_empty continue|new with-output-layer|without-output-layer``:
    :func:`fit_fold` (see train_fold)."""
    dataset_name, plans_identifier, fold, device, pretrained, mode, output_layer = argv
    fit_fold(dataset_name, plans_identifier, fold, device=device, resume=mode == "continue",
             pretrained_weights=pretrained or None, pretrained_output_layer=output_layer == "with-output-layer")


#: Name part of the parameters of nnU-Net's 1x1 output convolutions (one per deep-supervision output),
#: the weights nnU-Net's ``load_pretrained_weights`` skips.
OUTPUT_LAYER_KEY = ".seg_layers."


def load_output_layer(network: torch.nn.Module, checkpoint: Path) -> list[str]:
    """Copy the output convolutions (``decoder.seg_layers``) of an nnU-Net checkpoint into ``network``.

    Completes nnU-Net's ``load_pretrained_weights``, which transfers everything else. ``network`` may be
    wrapped for DDP or by ``torch.compile``, as in nnU-Net's trainer.

    Returns
    -------
    list of str
        The parameter names copied.

    Raises
    ------
    TrainingDataError
        If the checkpoint has no output layer, or one of another shape (other labels, another network).
    """
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    module = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    module = getattr(module, "_orig_mod", module)  # torch.compile's wrapper
    own = module.state_dict()
    # Checkpoints written from a DDP run carry "module." in front of every name.
    layer = {key.removeprefix("module."): value for key, value in saved.items() if OUTPUT_LAYER_KEY in key}
    if not layer:
        raise TrainingDataError(f"checkpoint {checkpoint.name} holds no output layer ({OUTPUT_LAYER_KEY.strip('.')})")
    for key, value in layer.items():
        if key not in own or own[key].shape != value.shape:
            shape = tuple(own[key].shape) if key in own else "absent"
            raise TrainingDataError(
                f"output layer {key} of {checkpoint.name} has shape {tuple(value.shape)}, the network's {shape}"
            )
    module.load_state_dict(layer, strict=False)  # only these; the rest stays as nnU-Net loaded it
    return sorted(layer)


def completed_cross_validation(
    workspace: NnUNetWorkspace, dataset_name: str, configuration: TrainingConfiguration
) -> tuple[int, ...] | None:
    """All folds of the dataset's split when each has a final checkpoint and validation, else None.

    nnU-Net's cross-validation Dice and its post-processing decision are only meaningful over the
    whole dataset, i.e. once every fold of ``splits_final.json`` is trained.
    """
    splits_file = workspace.preprocessed / dataset_name / "splits_final.json"
    if not splits_file.is_file():
        return None
    n_folds = len(json.loads(splits_file.read_text(encoding="utf-8")))
    trained = _trained_folds(workspace, dataset_name, configuration)
    folds = tuple(range(n_folds))
    return folds if set(folds) <= set(trained) else None


def _trained_folds(workspace: NnUNetWorkspace, dataset_name: str, configuration: TrainingConfiguration) -> list[int]:
    folder = results_folder(workspace, dataset_name, configuration)
    return sorted(
        int(d.name[len("fold_"):]) for d in folder.glob("fold_*")
        if d.name[len("fold_"):].isdigit() and (d / "checkpoint_final.pth").is_file()
        and (d / "validation" / "summary.json").is_file()
    )


def evaluate_cross_validation(
    workspace: NnUNetWorkspace,
    dataset_name: str,
    configuration: TrainingConfiguration,
    folds: Sequence[int],
    *,
    num_processes: int,
) -> float | None:
    """Run nnU-Net's ``find_best_configuration`` on a complete cross-validation.

    With one configuration there is nothing to choose between, but it merges the folds' validation
    predictions, computes the cross-validation Dice over the whole dataset and decides nnU-Net's
    post-processing (kept only if it improves that Dice), which the export ships.

    Returns
    -------
    float or None
        Mean foreground Dice after post-processing; None if nnU-Net could not compute it.
    """
    with workspace.activate():
        from nnunetv2.evaluation.find_best_configuration import find_best_configuration

        try:
            result = find_best_configuration(
                dataset_name,
                allowed_trained_models=[{"plans": configuration.plans_identifier,
                                         "configuration": NNUNET_CONFIGURATION, "trainer": TRAINER_NAME}],
                allow_ensembling=False, num_processes=num_processes, overwrite=True,
                folds=tuple(int(f) for f in folds), strict=True,
            )
        except (AssertionError, RuntimeError, FileNotFoundError, ValueError) as error:
            raise TrainingRunError(f"nnU-Net cross-validation evaluation failed: {_first_line(error)}") from error
    best = result["best_model_or_ensemble"]
    dice = best.get("result_on_crossval_post_pp")
    logger.info("cross-validation Dice over folds %s: %.4f before, %.4f after post-processing",
                list(folds), best["result_on_crossval_pre_pp"], dice)
    return None if dice is None else float(dice)


def _find_dataset_in(workspace: NnUNetWorkspace, dataset: str) -> str:
    if _DATASET_NAME.match(dataset):
        if not (workspace.raw / dataset).is_dir():
            raise TrainingDataError(f"dataset {dataset} is not in {workspace.raw}")
        return dataset
    if not dataset.isdigit():
        raise TrainingDataError(f"dataset must be a DatasetXXX_Name folder, name or id, got {dataset!r}")
    matches = sorted(p.name for p in workspace.raw.glob(f"Dataset{int(dataset):03d}_*") if p.is_dir())
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(matches)
        raise TrainingDataError(f"dataset id {int(dataset)} in {workspace.raw}: expected one folder, found {found}")
    return matches[0]


def _check_id_is_free(workspace: NnUNetWorkspace, name: str) -> None:
    prefix = name[: len("DatasetXXX")]
    others = sorted(p.name for p in workspace.raw.glob(f"{prefix}_*") if p.name != name)
    if others:
        raise TrainingDataError(f"workspace already holds dataset id {prefix[-3:]} as {others[0]}")


def _check_raw_dataset(folder: Path) -> None:
    dataset_json = folder / "dataset.json"
    if not dataset_json.is_file():
        raise TrainingDataError(f"dataset {folder.name} has no dataset.json")
    try:
        description = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise TrainingDataError(f"dataset {folder.name}: dataset.json cannot be read: {error}") from error
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in description:
            raise TrainingDataError(f"dataset {folder.name}: dataset.json has no {key!r}")
    channels = description["channel_names"]
    if len(channels) != 1:
        raise TrainingDataError(f"dataset {folder.name}: expected one input channel (femur CT), found {len(channels)}")
    if str(next(iter(channels.values()))).strip().casefold() == "ct":
        # The plans force z-score within the femur anyway; the name matters when re-planning by hand.
        logger.warning("dataset %s names its channel 'CT'; femur crops are normalised per femur regardless",
                       folder.name)
    labels = description["labels"]
    if labels.get("background") != 0 or "lesion" not in labels:
        raise TrainingDataError(f"dataset {folder.name}: labels must include background 0 and lesion, got {labels}")
    if not (folder / "imagesTr").is_dir() or not any((folder / "imagesTr").iterdir()):
        raise TrainingDataError(f"dataset {folder.name} has no images in imagesTr/")


def _file_ending(workspace: NnUNetWorkspace, dataset_name: str) -> str:
    description = json.loads((workspace.raw / dataset_name / "dataset.json").read_text(encoding="utf-8"))
    return str(description["file_ending"])


def _default_processes() -> int:
    import os

    return max(1, min(8, os.cpu_count() or 1))


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
