"""Learning curve: how validation Dice grows with the number of training femurs.

The paper trained on 24, 64 and 80 femurs and reported cross-validation Dice 0.53 / 0.64 / 0.61. This
module does the same on any dataset: the patients are shuffled once, a fixed group of them is held out
for validation, and models are trained on growing, nested subsets of the others (all femurs of a
patient always together). Each subset is one entry of nnU-Net's ``splits_final.json`` (fold k trains on
the k-th subset and validates on the common held-out femurs), so nnU-Net's own training and end-of-
training validation run unchanged, and the validation predictions are scored with the paper's Dice
rule (:mod:`evaluation.cross_validation`: a femur empty in both is NaN, left out of the mean).

Use a workspace of its own: the learning curve's folds replace the dataset's ``splits_final.json`` there.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from evaluation.case_ids import parse_case_id
from evaluation.statistics import MeanSD
from evaluation.tables import format_mean_sd
from lesion_training.configurations import TrainingConfiguration, get_configuration
from lesion_training.nnunet_workspace import NnUNetWorkspace
from operators.atomic_files import write_text_atomic
from operators.errors import TrainingDataError

logger = logging.getLogger(__name__)

#: Validation femurs held out when not said otherwise: a fifth of the patients, as one CV fold would.
DEFAULT_VALIDATION_FRACTION = 0.2


@dataclass(frozen=True)
class LearningCurvePoint:
    """One model of the curve.

    Attributes
    ----------
    fold : int
        nnU-Net fold number (index in ``splits_final.json``).
    training_femurs : int
        Femur cases it was trained on.
    training_patients : int
        Patients those femurs come from.
    dice_mean, dice_sd : float
        Lesion Dice over the validation femurs, NaN excluded (NaN when none is left; SD NaN below two).
    n_scored : int
        Validation femurs in the mean.
    n_true_negative : int
        Validation femurs empty in both prediction and reference (NaN, left out).
    """

    fold: int
    training_femurs: int
    training_patients: int
    dice_mean: float
    dice_sd: float
    n_scored: int
    n_true_negative: int


def learning_curve_splits(
    case_ids: Sequence[str],
    sizes: Sequence[int],
    *,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 12345,
) -> list[dict[str, list[str]]]:
    """nnU-Net folds of a learning curve: nested training subsets, one common validation set.

    Parameters
    ----------
    case_ids : sequence of str
        Every training case of the dataset, named ``<patient>_<side>`` (the dataset builder's names); a
        name without a side is its own patient.
    sizes : sequence of int
        Training femurs of each model, strictly increasing. A subset takes whole patients in a fixed
        shuffled order until it holds at least that many femurs, so each subset contains the smaller ones.
    validation_fraction : float
        Share of the patients (at least one) held out for validation, in (0, 1).
    seed : int
        Seed of the shuffle of the patients.

    Returns
    -------
    list of dict
        ``[{"train": [...], "val": [...]}, ...]``, one per size, for
        :func:`lesion_training.raw_dataset.write_splits`.

    Raises
    ------
    TrainingDataError
        When the sizes are not increasing positive numbers, or the patients left after the validation
        group hold fewer femurs than the largest size.
    """
    if not sizes or any(s < 1 for s in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise TrainingDataError(f"learning-curve sizes must be increasing positive numbers of femurs, got {list(sizes)}")
    if not 0 < validation_fraction < 1:
        raise TrainingDataError(f"validation fraction must lie between 0 and 1, got {validation_fraction}")
    by_patient = cases_by_patient(sorted(set(case_ids)))
    patients = sorted(by_patient)
    if len(patients) < 2:
        raise TrainingDataError(f"a learning curve needs at least 2 patients, the dataset has {len(patients)}")
    random.Random(seed).shuffle(patients)
    n_validation = min(len(patients) - 1, max(1, round(validation_fraction * len(patients))))
    validation = sorted(c for p in patients[:n_validation] for c in by_patient[p])
    pool = patients[n_validation:]
    available = sum(len(by_patient[p]) for p in pool)
    if sizes[-1] > available:
        raise TrainingDataError(
            f"the largest learning-curve size is {sizes[-1]} femurs, but only {available} femurs of "
            f"{len(pool)} patients are left after holding out {len(validation)} for validation"
        )
    splits = []
    for size in sizes:
        train: list[str] = []
        for patient in pool:
            if len(train) >= size:
                break
            train.extend(by_patient[patient])
        splits.append({"train": sorted(train), "val": validation})
    return splits


def run_learning_curve(
    dataset: str | Path,
    *,
    workspace: str | Path,
    sizes: Sequence[int],
    configuration: str | TrainingConfiguration = "small",
    device: str = "auto",
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    seed: int = 12345,
    num_processes: int | None = None,
    out: str | Path | None = None,
) -> list[LearningCurvePoint]:
    """Train one model per size through nnU-Net and score each on the common validation femurs.

    Parameters
    ----------
    dataset : str or Path
        Raw nnU-Net dataset folder ``DatasetXXX_Name`` (or its id/name in the workspace).
    workspace : str or Path
        nnU-Net folders of this curve (its own: the dataset's ``splits_final.json`` there is replaced).
    sizes, validation_fraction, seed
        See :func:`learning_curve_splits`.
    configuration, device, num_processes
        As for :func:`lesion_training.train.train`.
    out : str or Path, optional
        Folder for ``learning_curve.md`` and ``learning_curve.csv`` (default: ``<workspace>/learning_curve``).

    Returns
    -------
    list of LearningCurvePoint
        One per size, in order.
    """
    from evaluation.cross_validation import evaluate_cross_validation
    from lesion_training.export import results_folder
    from lesion_training.raw_dataset import write_splits
    from lesion_training.train import (
        _default_processes,
        _file_ending,
        plan_and_preprocess,
        resolve_dataset,
        resolve_training_device,
        train_fold,
    )

    config = get_configuration(configuration) if isinstance(configuration, str) else configuration
    ws = NnUNetWorkspace(workspace)
    dataset_name = resolve_dataset(ws, dataset)
    labels_dir = ws.raw / dataset_name / "labelsTr"
    ending = _file_ending(ws, dataset_name)
    torch_device = resolve_training_device(device)
    processes = num_processes or _default_processes()
    case_ids = [p.name[: -len(ending)] for p in sorted(labels_dir.glob(f"*{ending}"))]
    splits = learning_curve_splits(case_ids, sizes, validation_fraction=validation_fraction, seed=seed)
    logger.info("learning curve of %s: %s training femurs, %d validation femurs", dataset_name,
                ", ".join(str(len(s["train"])) for s in splits), len(splits[0]["val"]))

    plan_and_preprocess(ws, dataset_name, config, num_processes=processes)
    write_splits(ws.preprocessed / dataset_name, splits, case_ids=case_ids)
    for fold, split in enumerate(splits):
        logger.info("learning curve: model %d of %d on %d femurs", fold + 1, len(splits), len(split["train"]))
        train_fold(ws, dataset_name, config, fold, device=torch_device, num_processes=processes)

    result = evaluate_cross_validation(results_folder(ws, dataset_name, config), labels_dir)
    by_fold = {f.fold: f for f in result.folds}
    points = []
    for fold, split in enumerate(splits):
        scored = by_fold.get(fold)
        if scored is None:
            raise TrainingDataError(f"learning-curve model {fold} left no validation predictions")
        summary = scored.dice
        points.append(LearningCurvePoint(
            fold=fold, training_femurs=len(split["train"]),
            training_patients=len({parse_case_id(c).patient for c in split["train"]}),
            dice_mean=summary.mean, dice_sd=summary.sd, n_scored=summary.n, n_true_negative=summary.n_nan,
        ))
    folder = Path(out) if out is not None else ws.root / "learning_curve"
    write_learning_curve(points, folder, dataset_name=dataset_name, n_validation=len(splits[0]["val"]),
                         configuration=config.name)
    return points


def write_learning_curve(points: Sequence[LearningCurvePoint], folder: str | Path, *, dataset_name: str,
                         n_validation: int, configuration: str) -> tuple[Path, Path]:
    """Write ``learning_curve.md`` and ``learning_curve.csv`` into ``folder``; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Learning curve: {dataset_name}", "",
        f"Configuration `{configuration}`; every model is validated on the same {n_validation} held-out femurs "
        "(patients never used in training). Lesion Dice per femur, mean ± SD over femurs; a femur empty in "
        "both prediction and reference is a true negative (NaN), left out and counted.", "",
        "| training femurs | patients | lesion Dice, mean ± SD | femurs scored | true negatives (NaN) |",
        "|---:|---:|---|---:|---:|",
    ]
    for p in points:
        dice = MeanSD(mean=p.dice_mean, sd=p.dice_sd, n=p.n_scored, n_nan=p.n_true_negative)
        lines.append(f"| {p.training_femurs} | {p.training_patients} | {format_mean_sd(dice)} | "
                     f"{p.n_scored} | {p.n_true_negative} |")
    lines += ["", "The paper (real CT, 5-fold cross-validation): 0.53 / 0.64 / 0.61 with 24 / 64 / 80 femurs.", ""]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["fold", "training_femurs", "training_patients", "dice_mean", "dice_sd", "n_scored",
                     "n_true_negative"])
    for p in points:
        writer.writerow([p.fold, p.training_femurs, p.training_patients, _csv_number(p.dice_mean),
                         _csv_number(p.dice_sd), p.n_scored, p.n_true_negative])
    md_path, csv_path = folder / "learning_curve.md", folder / "learning_curve.csv"
    write_text_atomic(md_path, "\n".join(lines))
    write_text_atomic(csv_path, buffer.getvalue())
    return md_path, csv_path


def _csv_number(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value:.4f}"


def cases_by_patient(case_ids: Sequence[str]) -> Mapping[str, list[str]]:
    """Case ids grouped by the patient part of ``<patient>_<side>``."""
    grouped: dict[str, list[str]] = {}
    for case_id in sorted(case_ids):
        grouped.setdefault(parse_case_id(case_id).patient, []).append(case_id)
    return grouped
