"""Low-level writers of an nnU-Net raw dataset of femur-only crops.

A dataset builder turns each femur of a study into one case with :func:`write_nnunet_case`, then
describes the dataset with :func:`write_dataset_json`, and may fix the cross-validation folds with
:func:`write_splits` (see :func:`patient_grouped_splits`: the two femurs of a patient must not end up on
both sides of a split).

Cases are written in the canonical HPL orientation by the same :func:`operators.lesion_model.to_nnunet_input`
the predictor uses, so training and inference see femurs the same way. Files are NIfTI written with
SimpleITK, laid out so that nnU-Net's ``SimpleITKIO`` reads back exactly the (z, y, x) array and
spacing [sz, sy, sx] that the predictor hands nnU-Net, and the world geometry (LPS, mm) is that of the
canonical crop.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np

from operators.atomic_files import write_text_atomic
from operators.errors import TrainingDataError
from operators.lesion_model import NnUNetInput, to_nnunet_input
from operators.volume_io import write_volume

logger = logging.getLogger(__name__)

#: Channel name of the single input channel. Anything but "CT" makes nnU-Net choose z-score
#: normalisation (per case); the plans then restrict it to the femur's voxels.
CHANNEL_NAME = "femur_CT_zscore"
FILE_ENDING = ".nii.gz"
#: nnU-Net lesion dataset labels (docs/CONVENTIONS.md).
LESION_LABELS: dict[str, int] = {"background": 0, "lesion": 1}
LESION_AND_CYST_LABELS: dict[str, int] = {"background": 0, "lesion": 1, "cyst": 2}

_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_DATASET_FOLDER = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_-]+$")


def write_nnunet_case(
    raw_dir: str | Path,
    case_id: str,
    femur_only: hd.Volume,
    lesion_labels: np.ndarray | None,
) -> tuple[Path, Path | None]:
    """Write one femur crop (and its lesion labels) as an nnU-Net training case.

    Parameters
    ----------
    raw_dir : str or Path
        The dataset folder ``nnUNet_raw/DatasetXXX_Name``; ``imagesTr/`` and ``labelsTr/`` are created.
    case_id : str
        Case identifier: letters, digits, ``_`` and ``-``. Must not carry patient identifiers.
    femur_only : highdicom.Volume
        Femur-only crop, (z, y, x), HU inside the femur and 0 outside, any orientation.
    lesion_labels : np.ndarray or None
        Integer label map on the crop's grid (same (z, y, x) shape as ``femur_only``) with nnU-Net
        lesion values (0 background, 1 lesion, 2 cyst); None writes the image only (e.g. a test case).

    Returns
    -------
    tuple of Path
        The image file ``imagesTr/<case>_0000.nii.gz`` and the label file ``labelsTr/<case>.nii.gz``
        (None without labels).

    Raises
    ------
    TrainingDataError
        For an invalid case id or labels that do not fit the crop.
    """
    raw_dir = Path(raw_dir)
    if not isinstance(case_id, str) or not _CASE_ID.match(case_id):
        raise TrainingDataError(f"invalid case id {case_id!r}: use letters, digits, '_' and '-'")
    nnunet_input = to_nnunet_input(femur_only)
    labels = None
    if lesion_labels is not None:
        labels = _check_labels(np.asarray(lesion_labels), nnunet_input, femur_only, case_id)

    image_path = raw_dir / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"
    _write_nifti(nnunet_input.array[0], nnunet_input, image_path)
    label_path = None
    if labels is not None:
        label_path = raw_dir / "labelsTr" / f"{case_id}{FILE_ENDING}"
        _write_nifti(nnunet_input.to_canonical(labels), nnunet_input, label_path)
    logger.debug("wrote case %s, canonical shape %s, spacing %s mm", case_id, nnunet_input.canonical_shape,
                 nnunet_input.spacing)
    return image_path, label_path


def write_dataset_json(
    raw_dir: str | Path,
    *,
    with_cyst: bool = False,
    num_training_cases: int | None = None,
    channel_name: str = CHANNEL_NAME,
    description: str = "Femur-only CT crops (HU inside the femur, 0 outside) in HPL orientation; lytic lesions",
    reference: str = "Rachmil et al. 2024, Automatic Segmentation of Femoral Tumors by nnU-Net",
    license: str = "see the dataset's provenance",
    **extra: object,
) -> Path:
    """Write ``dataset.json`` for a femur lesion dataset (with nnU-Net's ``generate_dataset_json``).

    Parameters
    ----------
    raw_dir : str or Path
        The dataset folder ``nnUNet_raw/DatasetXXX_Name``.
    with_cyst : bool
        Labels background/lesion/cyst (0/1/2) instead of background/lesion (0/1).
    num_training_cases : int, optional
        Number of training cases; default: the label files in ``labelsTr/``.
    channel_name : str
        Name of the single channel; "CT" is refused (nnU-Net would normalise with dataset-wide CT
        statistics instead of per-femur z-scores).
    description, reference, license : str
        Free text stored in dataset.json.
    **extra
        Further keys stored in dataset.json (e.g. ``converted_by``).

    Returns
    -------
    Path
        The dataset.json written.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    raw_dir = Path(raw_dir)
    if not _DATASET_FOLDER.match(raw_dir.name):
        raise TrainingDataError(f"nnU-Net dataset folder must be named DatasetXXX_Name, got {raw_dir.name!r}")
    if channel_name.strip().casefold() == "ct":
        raise TrainingDataError("channel name 'CT' selects nnU-Net's global CT normalisation; use e.g. "
                                f"{CHANNEL_NAME!r} for per-femur z-scores")
    if num_training_cases is None:
        num_training_cases = len(list((raw_dir / "labelsTr").glob(f"*{FILE_ENDING}")))
    if num_training_cases < 1:
        raise TrainingDataError(f"dataset {raw_dir.name} has no training cases in labelsTr/")
    raw_dir.mkdir(parents=True, exist_ok=True)
    generate_dataset_json(
        str(raw_dir),
        channel_names={0: channel_name},
        labels=dict(LESION_AND_CYST_LABELS if with_cyst else LESION_LABELS),
        num_training_cases=int(num_training_cases),
        file_ending=FILE_ENDING,
        dataset_name=raw_dir.name,
        description=description,
        reference=reference,
        license=license,
        orientation="HPL",
        **extra,
    )
    return raw_dir / "dataset.json"


def write_splits(
    dataset_dir: str | Path,
    splits: Sequence[Mapping[str, Sequence[str]]] | str | Path,
    *,
    case_ids: Sequence[str] | None = None,
) -> Path:
    """Write nnU-Net's ``splits_final.json``, so that training uses these folds instead of random ones.

    Parameters
    ----------
    dataset_dir : str or Path
        ``nnUNet_raw/DatasetXXX_Name`` (nnU-Net's planner copies the file to the preprocessed folder,
        and refuses to plan if one there disagrees) or ``nnUNet_preprocessed/DatasetXXX_Name`` (used
        by training directly).
    splits : sequence of mappings, or a path to a splits_final.json
        One ``{"train": [case ids], "val": [case ids]}`` per fold.
    case_ids : sequence of str, optional
        All cases of the dataset; every id in the splits must be one of them.

    Returns
    -------
    Path
        The splits_final.json written.

    Raises
    ------
    TrainingDataError
        For a malformed split, a case in both train and val of a fold, or an unknown case.
    """
    if isinstance(splits, (str, Path)):
        source = Path(splits)
        try:
            splits = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise TrainingDataError(f"cannot read splits file {source}: {error}") from error
    checked = _check_splits(splits, case_ids)
    target = Path(dataset_dir) / "splits_final.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(target, json.dumps(checked, indent=2) + "\n")
    return target


def patient_grouped_splits(
    cases_by_patient: Mapping[str, Sequence[str]],
    *,
    n_folds: int = 5,
    seed: int = 12345,
) -> list[dict[str, list[str]]]:
    """Cross-validation folds that keep all femurs of a patient on the same side.

    nnU-Net's own split shuffles cases independently; with two femurs per scan that lets one femur
    train and the other validate, which inflates cross-validation scores. Patients are shuffled with
    ``seed`` and dealt out over the folds in turn, largest first, so folds stay balanced in femurs.

    Parameters
    ----------
    cases_by_patient : mapping of str to sequence of str
        Pseudonymous patient key -> that patient's case ids.
    n_folds : int
        Number of folds (at least 2, at most the number of patients).
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list of dict
        ``[{"train": [...], "val": [...]}, ...]``, one per fold, ready for :func:`write_splits`.
    """
    patients = sorted(cases_by_patient)
    if n_folds < 2 or n_folds > len(patients):
        raise TrainingDataError(f"cannot make {n_folds} folds from {len(patients)} patients")
    random.Random(seed).shuffle(patients)
    patients.sort(key=lambda p: -len(cases_by_patient[p]))  # stable: shuffled order within equal sizes
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for patient in patients:
        smallest = min(range(n_folds), key=lambda k: len(folds[k]))
        folds[smallest].extend(cases_by_patient[patient])
    all_cases = [c for p in sorted(cases_by_patient) for c in cases_by_patient[p]]
    splits = []
    for fold in folds:
        val = set(fold)
        splits.append({"train": sorted(c for c in all_cases if c not in val), "val": sorted(val)})
    return splits


def _check_labels(labels: np.ndarray, nnunet_input: NnUNetInput, femur_only: hd.Volume, case_id: str) -> np.ndarray:
    if labels.shape != tuple(nnunet_input.original_shape):
        raise TrainingDataError(
            f"case {case_id}: lesion labels of shape {labels.shape} do not match the crop {nnunet_input.original_shape}"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise TrainingDataError(f"case {case_id}: lesion labels must be integers, got {labels.dtype}")
    values = set(np.unique(labels).tolist())
    allowed = set(LESION_AND_CYST_LABELS.values())
    if not values <= allowed:
        raise TrainingDataError(
            f"case {case_id}: lesion label values {sorted(values - allowed)} are not in {sorted(allowed)}"
        )
    outside = int(np.count_nonzero((labels > 0) & (np.asarray(femur_only.array) == 0)))
    if outside:
        # nnU-Net sees nothing there (0 = outside the femur): such voxels cannot be learnt.
        logger.warning("case %s: %d labelled voxels lie outside the femur (image value 0)", case_id, outside)
    return labels.astype(np.uint8, copy=False)


def _write_nifti(array_zyx: np.ndarray, nnunet_input: NnUNetInput, path: Path) -> None:
    # The array keeps its (z, y, x) order on disk, which is what nnU-Net's SimpleITK reader returns;
    # the temporary name is hidden (leading dot), so nnU-Net never takes a half-written file for a case.
    write_volume(path, hd.Volume(array_zyx, nnunet_input.affine, "PATIENT"))


def _check_splits(
    splits: object, case_ids: Sequence[str] | None
) -> list[dict[str, list[str]]]:
    if not isinstance(splits, Sequence) or isinstance(splits, (str, bytes)) or not splits:
        raise TrainingDataError("splits must be a non-empty list of {'train': [...], 'val': [...]}")
    known = set(case_ids) if case_ids is not None else None
    checked = []
    for k, fold in enumerate(splits):
        if not isinstance(fold, Mapping) or set(fold) != {"train", "val"}:
            raise TrainingDataError(f"split {k} must have exactly the keys 'train' and 'val'")
        train, val = list(fold["train"]), list(fold["val"])
        if not train or not val or not all(isinstance(c, str) for c in train + val):
            raise TrainingDataError(f"split {k}: 'train' and 'val' must be non-empty lists of case ids")
        both = sorted(set(train) & set(val))
        if both:
            raise TrainingDataError(f"split {k}: cases in both train and val: {', '.join(both[:5])}")
        if known is not None:
            unknown = sorted(set(train + val) - known)
            if unknown:
                raise TrainingDataError(f"split {k}: unknown cases {', '.join(unknown[:5])}")
        checked.append({"train": train, "val": val})
    return checked


def _atomic_write_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)
