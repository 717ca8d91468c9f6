"""Cross-validation Dice per fold from an nnU-Net results folder.

nnU-Net writes the validation predictions of fold k to
``<results>/<dataset>/<trainer>__<plans>__<configuration>/fold_<k>/validation/<case_id>.nii.gz``.
Each is compared with ``<case_id>`` in the dataset's ``labelsTr`` using the same Dice rule as the
test-set evaluation (both empty -> NaN, a true negative, left out of the mean), so that the CV numbers
are comparable with the paper's (0.53 / 0.64 / 0.61 with 24 / 64 / 80 training femurs).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from evaluation.case_ids import CaseId, parse_case_id
from evaluation.case_metrics import LabelValues
from evaluation.label_io import (
    GeometryTolerance,
    case_id_from_path,
    check_same_geometry,
    list_label_files,
    read_label_volume,
)
from evaluation.overlap import dice
from evaluation.statistics import MeanSD, mean_sd
from operators.errors import CaseMismatchError, InputError

logger = logging.getLogger(__name__)

_FOLD_DIR = re.compile(r"^fold_(\d+)$")
_MAX_NAMED_CASES = 5


@dataclass(frozen=True)
class CaseDice:
    """Dice of one validation femur (NaN: true negative)."""

    case: CaseId
    dice: float


@dataclass(frozen=True)
class FoldResult:
    """Validation Dice of the femurs of one fold.

    Attributes
    ----------
    fold : int
        Fold number k of ``fold_k``.
    cases : tuple of CaseDice
        Sorted by case id.
    """

    fold: int
    cases: tuple[CaseDice, ...]

    @property
    def dice(self) -> MeanSD:
        """Mean ± SD over the fold's non-NaN Dice values; ``n_nan`` counts true negatives."""
        return mean_sd(c.dice for c in self.cases)


@dataclass(frozen=True)
class CrossValidationResult:
    """Validation Dice of all folds.

    Attributes
    ----------
    folds : tuple of FoldResult
        Sorted by fold number.
    """

    folds: tuple[FoldResult, ...]

    @property
    def overall(self) -> MeanSD:
        """Mean ± SD over the non-NaN Dice of all validation femurs of all folds (pooled)."""
        return mean_sd(c.dice for fold in self.folds for c in fold.cases)


def find_fold_folders(results_dir: Path) -> dict[int, Path]:
    """The ``fold_<k>/validation`` folders of an nnU-Net trainer folder, by fold number.

    ``fold_all`` (trained on all cases, validated on its own training data) is not a CV fold and is
    skipped.

    Raises
    ------
    InputError
        If the folder does not exist or holds no ``fold_<k>/validation`` folder.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError(f"cross-validation results folder not found: {results_dir}")
    folds = {}
    for child in sorted(results_dir.iterdir()):
        match = _FOLD_DIR.match(child.name)
        if match and (child / "validation").is_dir():
            folds[int(match.group(1))] = child / "validation"
    if not folds:
        raise InputError(
            f"no fold_<k>/validation folders in {results_dir}; "
            "give the trainer folder, e.g. <dataset>/nnUNetTrainer__nnUNetPlans__3d_fullres"
        )
    return dict(sorted(folds.items()))


def evaluate_cross_validation(
    results_dir: Path,
    labels_dir: Path,
    *,
    labels: LabelValues = LabelValues(),
    geometry: GeometryTolerance = GeometryTolerance(),
) -> CrossValidationResult:
    """Dice of every validation prediction of every fold against the dataset's ``labelsTr``.

    Parameters
    ----------
    results_dir : pathlib.Path
        nnU-Net trainer folder holding ``fold_<k>/validation/<case_id>.nii.gz``.
    labels_dir : pathlib.Path
        The dataset's ``labelsTr`` folder (``<case_id>.nii.gz``).
    labels : LabelValues
        The lesion label value is used; the Dice is that of the lesion class.
    geometry : GeometryTolerance
        Tolerances of the voxel-grid check.

    Raises
    ------
    InputError
        Missing folders, unreadable files.
    CaseMismatchError
        A validation case without a label in `labels_dir`.
    GeometryMismatchError
        A case whose prediction and label are not on the same voxel grid.
    """
    fold_folders = find_fold_folders(results_dir)
    label_files = list_label_files(labels_dir)
    folds = []
    seen: dict[str, int] = {}
    for fold, validation_dir in fold_folders.items():
        if not any(case_id_from_path(p) for p in validation_dir.iterdir()):
            # A fold still training, or whose validation was not run: report the others.
            logger.warning("fold %d has no validation predictions; left out", fold)
            continue
        prediction_files = list_label_files(validation_dir)
        missing = sorted(set(prediction_files) - set(label_files))
        if missing:
            shown = ", ".join(missing[:_MAX_NAMED_CASES])
            raise CaseMismatchError(
                f"fold {fold}: {len(missing)} validation case(s) have no label in {labels_dir}: {shown}"
            )
        for case_id in prediction_files:
            if case_id in seen:
                logger.warning("case %s is validated in folds %d and %d; folds overlap", case_id, seen[case_id], fold)
            seen[case_id] = fold
        folds.append(FoldResult(fold=fold, cases=tuple(_fold_cases(prediction_files, label_files, fold, labels, geometry))))
    if not folds:
        raise InputError(f"no validation predictions in any fold of {results_dir}")
    return CrossValidationResult(folds=tuple(folds))


def _fold_cases(
    prediction_files: dict[str, Path],
    label_files: dict[str, Path],
    fold: int,
    labels: LabelValues,
    geometry: GeometryTolerance,
) -> Iterator[CaseDice]:
    for case_id, path in prediction_files.items():
        prediction = read_label_volume(path)
        reference = read_label_volume(label_files[case_id])
        check_same_geometry(
            prediction, reference, case_id=case_id, test_name=f"fold {fold} prediction",
            reference_name="labelsTr", tolerance=geometry,
        )
        yield CaseDice(
            case=parse_case_id(case_id),
            dice=dice(prediction.array == labels.lesion, reference.array == labels.lesion),
        )
