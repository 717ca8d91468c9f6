"""Build an nnU-Net v2 raw dataset of femur-only crops from CT studies and lesion references.

The paper's way (Rachmil et al. 2024): every femur of a study becomes its own case ``<patient>_<side>``.

1. The CT (a DICOM folder, or a NIfTI/NRRD volume) is split with :func:`operators.femur_splitter.split_femurs`,
   the same splitter the application runs, so training sees exactly the crops inference will see.
2. The reference (a label volume NIfTI/NRRD with configurable lesion/cyst values, or a DICOM-SEG with
   configurable segment labels) is brought onto the CT grid by permutation and flips only; a reference
   on another grid is reported, never resampled.
3. The reference is cut with the crop's box and restricted to the femur mask: lesion voxels outside
   the femur cannot be learnt (the femur-only input is 0 there) and are clipped, with a count in the report.
4. Cysts become label 2, or background (``cysts="background"``).
5. Patients (both femurs together) are split into training and test cases, stratified by lesion
   presence and size, and the training patients into a stratified, patient-grouped 5-fold
   ``splits_final.json``.

Every problem with an input is one entry of ``dataset_report.json`` / ``dataset_report.md`` (geometry
that does not match the image, lesion voxels outside the femur, an empty image, no femur found, an
unreadable file): a study that cannot be used is listed there, never silently dropped.

Arrays are (z, y, x) = (slice, row, column) of the CT's grid, positions LPS in mm, sides the patient's.
The dataset is written in a hidden staging folder beside the destination and renamed when complete.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import highdicom as hd
import numpy as np

from operators.errors import FemurSegError, TrainingDataError
from operators.femur_splitter import FemurCrop, FemurSegmenter, SplitterConfig, split_femurs
from lesion_training.raw_dataset import (
    FILE_ENDING,
    _atomic_write_text,
    write_dataset_json,
    write_nnunet_case,
    write_splits,
)

logger = logging.getLogger(__name__)

CystMode = Literal["separate", "background"]
CYST_MODES: tuple[str, ...] = ("separate", "background")
REPORT_JSON = "dataset_report.json"
REPORT_MD = "dataset_report.md"
#: Columns of a cases CSV.
CSV_COLUMNS = ("patient", "ct", "reference")

_PATIENT_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_DATASET_FOLDER = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_-]+$")
_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Tolerance (in voxels and direction cosines) within which two grids are the same.
_GRID_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ReferenceValues:
    """Which values of a reference mean lesion and cyst.

    Attributes
    ----------
    lesion_values, cyst_values : tuple of int
        Label-volume values of lytic lesions and of cysts (default 1 and 2, nnU-Net's lesion labels;
        the synthetic studies use 3 and 4). Other non-zero values (e.g. femur labels) are ignored.
    lesion_segments, cyst_segments : tuple of str
        DICOM-SEG segments whose SegmentLabel contains one of these words (case-insensitive) are
        lesions or cysts (default "lesion" and "cyst", as :mod:`operators.dicom_seg` writes them).
    """

    lesion_values: tuple[int, ...] = (1,)
    cyst_values: tuple[int, ...] = (2,)
    lesion_segments: tuple[str, ...] = ("lesion",)
    cyst_segments: tuple[str, ...] = ("cyst",)

    def __post_init__(self) -> None:
        if set(self.lesion_values) & set(self.cyst_values):
            raise ValueError("a label value cannot mean both lesion and cyst")
        if any(int(v) <= 0 for v in (*self.lesion_values, *self.cyst_values)):
            raise ValueError("lesion and cyst values must be positive")
        if not self.lesion_values or not self.lesion_segments:
            raise ValueError("at least one lesion value and one lesion segment word are needed")


#: Label values of the synthetic studies (docs/CONVENTIONS.md: 3 lytic lesion, 4 cyst).
SYNTHETIC_REFERENCE = ReferenceValues(lesion_values=(3,), cyst_values=(4,))


@dataclass(frozen=True)
class BuildOptions:
    """How cases are made.

    Attributes
    ----------
    cysts : "separate" or "background"
        Cysts as nnU-Net label 2, or merged into background (0).
    references : ReferenceValues
        Meaning of the reference's values or segments.
    splitter : SplitterConfig or None
        Configuration of :func:`split_femurs` (default: the application's).
    femur_segmenter : FemurSegmenter or None
        The femur segmenter of :func:`split_femurs`: None for the classical, weight-free one, or a learned
        femur model (:func:`operators.femur_nnunet.femur_segmenter_from_settings`), the same one the
        application is given, so that the crops trained on are the crops inferred on.
    """

    cysts: CystMode = "separate"
    references: ReferenceValues = field(default_factory=ReferenceValues)
    splitter: SplitterConfig | None = None
    femur_segmenter: FemurSegmenter | None = None

    def __post_init__(self) -> None:
        if self.cysts not in CYST_MODES:
            raise ValueError(f"cysts must be one of {CYST_MODES}, got {self.cysts!r}")


# ----------------------------------------------------------------------------------------- records


@dataclass
class Issue:
    """A problem with one study or case, as reported in ``dataset_report.json``.

    ``kind`` is one of ``unreadable``, ``geometry_mismatch``, ``reference_reoriented``,
    ``empty_image``, ``no_femur``, ``femur_missing``, ``lesion_outside_femur``, ``unknown_label_values``;
    ``action`` says what the builder did (``excluded``, ``clipped``, ``reoriented``, ``none``).
    """

    patient: str
    kind: str
    message: str
    action: str
    case: str | None = None
    voxels: int | None = None


@dataclass
class CaseRecord:
    """One femur case written to the dataset.

    Volumes are in ml, sizes in mm (largest extent of a lesion's bounding box in patient space).
    """

    case_id: str
    patient: str
    side: str
    crop_shape_zyx: list[int]
    spacing_mm_zyx: list[float]
    lesion_voxels: int
    lesion_ml: float
    lesion_count: int
    lesion_sizes_mm: list[float]
    cyst_voxels: int
    clipped_lesion_voxels: int
    subset: str = "train"


@dataclass
class StudyRecord:
    """What processing one study produced: its cases and its issues."""

    patient: str
    cases: list[CaseRecord] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    seconds: float = 0.0
    source: str = ""


@dataclass(frozen=True)
class BuiltDataset:
    """The dataset :class:`DatasetBuilder` wrote.

    Attributes
    ----------
    folder : Path
        ``.../DatasetXXX_Name``.
    training_cases, test_cases : tuple of str
        Case ids in ``imagesTr``/``labelsTr`` and in ``imagesTs``/``labelsTs``.
    splits : list of dict
        The folds written to ``splits_final.json`` (empty when too few patients for folds).
    issues : tuple of Issue
    report : Path
        ``dataset_report.json``.
    """

    folder: Path
    training_cases: tuple[str, ...]
    test_cases: tuple[str, ...]
    splits: list[dict[str, list[str]]]
    issues: tuple[Issue, ...]
    report: Path


# ----------------------------------------------------------------------------------------- reading


def check_patient_key(patient: str) -> str:
    """Return ``patient`` if it is a valid pseudonymous key (letters, digits, '-'), else raise."""
    if not isinstance(patient, str) or not _PATIENT_KEY.match(patient):
        raise TrainingDataError(f"invalid patient key {patient!r}: use letters, digits and '-' (no names or IDs)")
    return patient


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` names a NIfTI/NRRD/MetaImage volume (by its ending)."""
    name = path.name.lower()
    return any(name.endswith(s) for s in _VOLUME_SUFFIXES)


def read_volume_file(path: str | Path) -> hd.Volume:
    """Read a NIfTI/NRRD/MetaImage volume as a highdicom Volume.

    Returns
    -------
    highdicom.Volume
        Array (z, y, x) = numpy order of SimpleITK (ITK's k, j, i), affine index -> LPS mm (ITK's
        physical space is LPS), the file's own dtype.
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise TrainingDataError(f"cannot read volume {path.name}: {str(error).strip().splitlines()[-1]}") from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise TrainingDataError(f"volume {path.name} is not a single-channel 3D image")
    array = sitk.GetArrayFromImage(image)
    sx, sy, sz = image.GetSpacing()
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)  # columns: ITK i, j, k
    affine = np.eye(4)
    affine[:3, 0] = direction[:, 2] * sz
    affine[:3, 1] = direction[:, 1] * sy
    affine[:3, 2] = direction[:, 0] * sx
    affine[:3, 3] = image.GetOrigin()
    return hd.Volume(array, affine, coordinate_system="PATIENT")


def load_ct(path: str | Path) -> tuple[hd.Volume, Any]:
    """Load a CT: a DICOM folder (with :func:`operators.series_volume.load_study`) or a volume file.

    Returns
    -------
    ct : highdicom.Volume
        float32 HU, (z, y, x), affine index -> LPS mm.
    loaded : LoadedSeries or None
        The loaded DICOM series (its headers are needed to read a DICOM-SEG), None for a volume file.
    """
    path = Path(path)
    if path.is_dir():
        from operators.series_volume import load_study

        loaded = load_study(path)
        return loaded.volume, loaded
    if not path.is_file():
        raise TrainingDataError(f"CT not found: {path}")
    if not is_volume_file(path):
        raise TrainingDataError(f"CT {path.name} is neither a DICOM folder nor a NIfTI/NRRD volume")
    volume = read_volume_file(path)
    return volume.with_array(np.asarray(volume.array, dtype=np.float32)), None


def onto_grid(reference: hd.Volume, ct: hd.Volume) -> tuple[np.ndarray, str | None]:
    """Bring a reference volume onto the CT's grid by permuting and flipping axes only.

    Parameters
    ----------
    reference : highdicom.Volume
        Label volume (z, y, x) with its own affine.
    ct : highdicom.Volume
        The CT whose grid the result must have.

    Returns
    -------
    array : np.ndarray
        The reference's values on the CT grid (CT's shape).
    change : str or None
        None if the grids were already the same, else a description of the permutation/flips.

    Raises
    ------
    TrainingDataError
        If no permutation/flip maps one grid exactly onto the other (other spacing, extent, origin,
        or an oblique difference): that would need resampling, which a reference must not undergo.
    """
    ref_array = np.asarray(reference.array)
    if ref_array.ndim != 3:
        raise TrainingDataError(f"reference must be a 3D label volume, got shape {ref_array.shape}")
    # Index of the reference -> index of the CT.
    mapping = np.linalg.inv(np.asarray(ct.affine, dtype=float)) @ np.asarray(reference.affine, dtype=float)
    rotation = mapping[:3, :3]
    rounded = np.round(rotation)
    is_signed_permutation = (
        np.allclose(rotation, rounded, atol=_GRID_TOLERANCE)
        and np.all(np.abs(rounded).sum(axis=0) == 1)
        and np.all(np.abs(rounded).sum(axis=1) == 1)
    )
    if not is_signed_permutation:
        raise TrainingDataError(
            f"reference grid (shape {ref_array.shape}, spacing {_fmt(reference.spacing)} mm) is not the CT grid "
            f"(shape {ct.spatial_shape}, spacing {_fmt(ct.spacing)} mm) up to axis permutation and flips"
        )
    # ct_axis_of[j]: the CT axis that reference axis j runs along; sign: its direction.
    ct_axis_of = [int(np.argmax(np.abs(rounded[:, j]))) for j in range(3)]
    signs = [int(rounded[ct_axis_of[j], j]) for j in range(3)]
    order = [ct_axis_of.index(i) for i in range(3)]  # reference axis for each CT axis
    moved = np.transpose(ref_array, order)
    for i in range(3):
        if signs[order[i]] < 0:
            moved = np.flip(moved, axis=i)
    # After flips, reference index 0 along each CT axis lands at the smallest CT index it covers.
    offset = mapping[:3, 3]
    starts = []
    for i in range(3):
        j = order[i]
        start = offset[i] if signs[j] > 0 else offset[i] - (ref_array.shape[j] - 1)
        starts.append(start)
    if (not np.allclose(starts, 0.0, atol=_GRID_TOLERANCE * 10)) or moved.shape != tuple(ct.spatial_shape):
        raise TrainingDataError(
            f"reference grid (shape {ref_array.shape}) covers another region than the CT grid (shape "
            f"{ct.spatial_shape}): offset {_fmt(starts)} voxels"
        )
    if order == [0, 1, 2] and all(s > 0 for s in signs):
        return np.ascontiguousarray(moved), None
    change = f"axes permuted {order}, flipped {[i for i in range(3) if signs[order[i]] < 0]}"
    return np.ascontiguousarray(moved), change


def reference_masks_from_labels(
    labels: np.ndarray, values: ReferenceValues
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Lesion and cyst masks (bool, same shape) of a label array; also the values that mean neither."""
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise TrainingDataError("reference label volume holds non-integer values")
        labels = labels.astype(np.int64)
    lesion = np.isin(labels, values.lesion_values)
    cyst = np.isin(labels, values.cyst_values)
    present = set(int(v) for v in np.unique(labels)) - {0}
    unknown = sorted(present - set(values.lesion_values) - set(values.cyst_values))
    return lesion, cyst, unknown


def read_reference(
    path: str | Path, ct: hd.Volume, loaded: Any, values: ReferenceValues
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a reference (label volume or DICOM-SEG) as lesion and cyst masks on the CT grid.

    Returns
    -------
    lesion, cyst : np.ndarray
        bool (z, y, x) on the CT grid.
    notes : list of str
        Remarks for the report (a reorientation, label values that mean neither lesion nor cyst).

    Raises
    ------
    TrainingDataError
        Unreadable reference, or one that does not lie on the CT grid.
    """
    path = Path(path)
    if not path.exists():
        raise TrainingDataError(f"reference not found: {path.name}")
    notes: list[str] = []
    if is_volume_file(path):
        reference = read_volume_file(path)
        array, change = onto_grid(reference, ct)
        if change:
            notes.append(f"reoriented: {change}")
        lesion, cyst, unknown = reference_masks_from_labels(array, values)
        if unknown:
            notes.append(f"values {unknown} mean neither lesion nor cyst and were ignored")
        return lesion, cyst, notes
    return _read_seg_reference(path, ct, values) + (notes,)


def _read_seg_reference(path: Path, ct: hd.Volume, values: ReferenceValues) -> tuple[np.ndarray, np.ndarray]:
    from operators.dicom_seg import read_segment_masks

    try:
        masks = read_segment_masks(path, ct)
    except RuntimeError as error:
        raise TrainingDataError(f"DICOM-SEG {path.name} does not lie on the CT grid: {_first_line(error)}") from error
    except Exception as error:  # noqa: BLE001 - pydicom/highdicom raise many types for a bad file
        raise TrainingDataError(f"cannot read DICOM-SEG {path.name}: {_first_line(error)}") from error
    lesion = np.zeros(ct.spatial_shape, dtype=bool)
    cyst = np.zeros(ct.spatial_shape, dtype=bool)
    for label, mask in masks.items():
        text = label.casefold()
        if any(word.casefold() in text for word in values.lesion_segments):
            lesion |= mask
        elif any(word.casefold() in text for word in values.cyst_segments):
            cyst |= mask
    return lesion, cyst


# ----------------------------------------------------------------------------------------- cases


def process_study(
    raw_dir: str | Path,
    patient: str,
    ct: hd.Volume,
    lesion: np.ndarray,
    cyst: np.ndarray,
    options: BuildOptions,
    *,
    notes: Sequence[str] = (),
) -> StudyRecord:
    """Split one study into femur cases and write them to ``raw_dir/imagesTr`` and ``labelsTr``.

    Parameters
    ----------
    raw_dir : str or Path
        The dataset folder being written.
    patient : str
        Pseudonymous patient key; cases are ``<patient>_<side>``.
    ct : highdicom.Volume
        CT in HU, (z, y, x), affine index -> LPS mm.
    lesion, cyst : np.ndarray
        bool (z, y, x) reference masks on the CT grid.
    options : BuildOptions
    notes : sequence of str
        Remarks from reading the reference, reported as ``reference_reoriented`` or
        ``unknown_label_values`` issues.

    Returns
    -------
    StudyRecord
        Cases written and issues found; an empty image or a CT without femur gives no case and an
        ``excluded`` issue.
    """
    started = time.perf_counter()
    record = StudyRecord(patient=patient)
    for note in notes:
        kind = "reference_reoriented" if note.startswith("reoriented") else "unknown_label_values"
        record.issues.append(Issue(patient, kind, note, "reoriented" if kind == "reference_reoriented" else "none"))
    if lesion.shape != tuple(ct.spatial_shape) or cyst.shape != tuple(ct.spatial_shape):
        record.issues.append(Issue(patient, "geometry_mismatch",
                                   f"reference shape {lesion.shape} is not the CT shape {ct.spatial_shape}",
                                   "excluded"))
        return record
    array = np.asarray(ct.array)
    if array.size == 0 or not np.isfinite(array).all() or float(array.max()) == float(array.min()):
        record.issues.append(Issue(patient, "empty_image", "the CT holds a single value (or non-finite values)",
                                   "excluded"))
        return record

    split = split_femurs(ct, config=options.splitter, segmenter=options.femur_segmenter)
    if not split.femurs:
        record.issues.append(Issue(patient, "no_femur", f"no femur found: {split.no_femur_reason}", "excluded",
                                   voxels=int(lesion.sum())))
        return record
    covered = np.zeros(lesion.shape, dtype=bool)
    for side in ("left", "right"):
        if side not in split.femurs:
            record.issues.append(Issue(patient, "femur_missing", f"no {side} femur found in view", "none"))
            continue
        crop = split.femurs[side]
        record.cases.append(_write_femur_case(raw_dir, patient, crop, lesion, cyst, options, record))
        covered[crop.box] = True
    lost = int(np.count_nonzero(lesion & ~covered))
    if lost > 0:
        record.issues.append(Issue(patient, "lesion_outside_femur",
                                   f"{lost} lesion voxels lie outside every femur's crop and are in no case",
                                   "clipped", voxels=lost))
    record.seconds = time.perf_counter() - started
    return record


def _write_femur_case(
    raw_dir: str | Path,
    patient: str,
    crop: FemurCrop,
    lesion: np.ndarray,
    cyst: np.ndarray,
    options: BuildOptions,
    record: StudyRecord,
) -> CaseRecord:
    case_id = f"{patient}_{crop.side}"
    lesion_box = lesion[crop.box]
    cyst_box = cyst[crop.box]
    lesion_crop = lesion_box & crop.mask
    clipped = int(lesion_box.sum()) - int(lesion_crop.sum())
    labels = np.zeros(crop.mask.shape, dtype=np.uint8)
    if options.cysts == "separate":
        labels[cyst_box & crop.mask] = 2
    labels[lesion_crop] = 1  # a voxel in both is a lesion
    if clipped:
        record.issues.append(Issue(patient, "lesion_outside_femur",
                                   f"{clipped} lesion voxels in the crop lie outside the femur mask",
                                   "clipped", case=case_id, voxels=clipped))
    write_nnunet_case(raw_dir, case_id, crop.femur_only, labels)
    spacing = [float(s) for s in crop.femur_only.spacing]
    sizes = lesion_sizes_mm(lesion_crop, crop.femur_only.affine)
    n = int(lesion_crop.sum())
    case = CaseRecord(
        case_id=case_id, patient=patient, side=crop.side,
        crop_shape_zyx=[int(s) for s in crop.mask.shape], spacing_mm_zyx=[round(s, 4) for s in spacing],
        lesion_voxels=n, lesion_ml=round(n * float(np.prod(spacing)) / 1000.0, 3),
        lesion_count=len(sizes), lesion_sizes_mm=[round(s, 1) for s in sizes],
        cyst_voxels=int((cyst_box & crop.mask).sum()), clipped_lesion_voxels=clipped,
    )
    return case


def lesion_sizes_mm(mask: np.ndarray, affine: np.ndarray) -> list[float]:
    """Largest extent (mm, in patient space) of each 26-connected lesion of ``mask``, largest first."""
    from scipy import ndimage as ndi

    components, n = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = []
    for box in ndi.find_objects(components):
        if box is None:
            continue
        # Voxel edges (not centres) of the bounding box, mapped to patient space.
        corners = np.array([[s.start - 0.5, s.stop - 0.5] for s in box], dtype=float)
        points = np.array(np.meshgrid(*corners, indexing="ij")).reshape(3, -1)
        world = np.asarray(affine)[:3, :3] @ points
        sizes.append(float(np.max(world.max(axis=1) - world.min(axis=1))))
    return sorted(sizes, reverse=True)


# ----------------------------------------------------------------------------------------- splits


def patient_strata(cases: Iterable[CaseRecord]) -> dict[str, str]:
    """Stratum of each patient: ``none`` (no lesion), ``small`` or ``large`` (total lesion volume below or
    at least the median over the patients with lesions)."""
    volume: dict[str, float] = {}
    for case in cases:
        volume[case.patient] = volume.get(case.patient, 0.0) + case.lesion_ml
    positive = sorted(v for v in volume.values() if v > 0)
    median = float(np.median(positive)) if positive else 0.0
    return {p: "none" if v <= 0 else ("small" if v < median else "large") for p, v in volume.items()}


def split_train_test(
    strata: Mapping[str, str], test_fraction: float, *, seed: int = 12345
) -> tuple[list[str], list[str]]:
    """Patients for training and for test, stratified: each stratum gives ~``test_fraction`` of its patients.

    Rounding is carried over from stratum to stratum so that the total is ``round(test_fraction * n)``;
    at least one patient stays for training.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    rng = random.Random(seed)
    train: list[str] = []
    test: list[str] = []
    carry = 0.0
    for stratum in sorted(set(strata.values())):
        members = sorted(p for p, s in strata.items() if s == stratum)
        rng.shuffle(members)
        wanted = test_fraction * len(members) + carry
        k = int(np.floor(wanted + 0.5))
        carry = wanted - k
        test += members[:k]
        train += members[k:]
    if not train and test:
        train.append(test.pop())
    return sorted(train), sorted(test)


def stratified_patient_splits(
    cases_by_patient: Mapping[str, Sequence[str]],
    strata: Mapping[str, str],
    *,
    n_folds: int = 5,
    seed: int = 12345,
) -> list[dict[str, list[str]]]:
    """Cross-validation folds grouped by patient and stratified by lesion presence and size.

    Within each stratum (in a fixed order), patients are shuffled with ``seed`` and each goes to the
    fold that holds the fewest patients of that stratum, then the fewest femurs: every fold gets its
    share of lesion-free, small-lesion and large-lesion patients, and no patient is in two folds.

    Returns
    -------
    list of dict
        ``[{"train": [...], "val": [...]}, ...]`` as :func:`lesion_training.raw_dataset.write_splits` takes.
    """
    patients = sorted(cases_by_patient)
    if n_folds < 2 or n_folds > len(patients):
        raise TrainingDataError(f"cannot make {n_folds} folds from {len(patients)} patients")
    rng = random.Random(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    per_stratum = [dict() for _ in range(n_folds)]  # type: list[dict[str, int]]
    for stratum in sorted(set(strata[p] for p in patients)):
        members = [p for p in patients if strata[p] == stratum]
        rng.shuffle(members)
        for patient in members:
            k = min(range(n_folds), key=lambda f: (per_stratum[f].get(stratum, 0), len(folds[f]), f))
            folds[k].extend(cases_by_patient[patient])
            per_stratum[k][stratum] = per_stratum[k].get(stratum, 0) + 1
    all_cases = sorted(c for p in patients for c in cases_by_patient[p])
    return [{"train": sorted(set(all_cases) - set(f)), "val": sorted(f)} for f in folds]


# ----------------------------------------------------------------------------------------- builder


class DatasetBuilder:
    """Writes a dataset study by study, then splits, describes and reports it.

    Use::

        builder = DatasetBuilder(raw_root / "Dataset501_FemurLesion", options)
        builder.add_study("p001", ct, lesion, cyst)          # or add_files / add_record
        dataset = builder.finish(test_fraction=0.2)

    Cases go to a hidden staging folder ``.DatasetXXX_Name.partial`` beside the destination, renamed
    to the destination by :meth:`finish`; an existing destination is refused.
    """

    def __init__(self, folder: str | Path, options: BuildOptions | None = None) -> None:
        folder = Path(folder)
        if not _DATASET_FOLDER.match(folder.name):
            raise TrainingDataError(f"nnU-Net dataset folder must be named DatasetXXX_Name, got {folder.name!r}")
        if folder.exists():
            raise TrainingDataError(f"dataset folder {folder} already exists; choose another name or remove it")
        self.folder = folder
        self.options = options or BuildOptions()
        # nnU-Net's writers check the folder's name: stage under the same name in a hidden folder.
        self._staging_root = folder.parent / f".{folder.name}.partial"
        if self._staging_root.exists():
            shutil.rmtree(self._staging_root)
        self.staging = self._staging_root / folder.name
        self.staging.mkdir(parents=True)
        self.records: list[StudyRecord] = []
        self.sources: dict[str, str] = {}

    def add_study(self, patient: str, ct: hd.Volume, lesion: np.ndarray, cyst: np.ndarray,
                  *, notes: Sequence[str] = (), source: str = "") -> StudyRecord:
        """Split and write one study from in-memory arrays (see :func:`process_study`)."""
        self._check_new_patient(patient)
        record = process_study(self.staging, patient, ct, lesion, cyst, self.options, notes=notes)
        record.source = source
        return self.add_record(record)

    def add_files(self, patient: str, ct_path: str | Path, reference_path: str | Path) -> StudyRecord:
        """Load a study (DICOM folder or volume) and its reference (label volume or DICOM-SEG) and add it.

        A study that cannot be read, or whose reference does not lie on its grid, is recorded as an
        ``excluded`` issue instead of raising.
        """
        self._check_new_patient(patient)
        source = f"{Path(ct_path).name} + {Path(reference_path).name}"
        try:
            ct, loaded = load_ct(ct_path)
        except FemurSegError as error:
            return self.add_record(StudyRecord(patient, issues=[Issue(patient, "unreadable", str(error), "excluded")],
                                               source=source))
        try:
            lesion, cyst, notes = read_reference(reference_path, ct, loaded, self.options.references)
        except TrainingDataError as error:
            kind = "geometry_mismatch" if "grid" in str(error) else "unreadable"
            return self.add_record(StudyRecord(patient, issues=[Issue(patient, kind, str(error), "excluded")],
                                               source=source))
        return self.add_study(patient, ct, lesion, cyst, notes=notes, source=source)

    def add_record(self, record: StudyRecord) -> StudyRecord:
        """Register a study processed elsewhere (e.g. in a worker process writing into :attr:`staging`)."""
        self._check_new_patient(record.patient)
        self.records.append(record)
        self.sources[record.patient] = record.source
        for issue in record.issues:
            log = logger.warning if issue.action == "excluded" else logger.info
            log("%s: %s (%s)", issue.case or issue.patient, issue.message, issue.action)
        return record

    def finish(
        self,
        *,
        test_fraction: float = 0.2,
        n_folds: int = 5,
        seed: int = 12345,
        description: str | None = None,
        license: str = "see the dataset's provenance",
        extra: Mapping[str, Any] | None = None,
    ) -> BuiltDataset:
        """Split patients, move test cases, write dataset.json, splits_final.json and the report; publish.

        Parameters
        ----------
        test_fraction : float
            Fraction of patients (both femurs together) held out as ``imagesTs``/``labelsTs``, stratified.
        n_folds : int
            Cross-validation folds over the training patients (fewer if there are fewer patients;
            none below 2 patients).
        seed : int
            Seed of the train/test split and of the folds.
        description, license : str
            Stored in dataset.json.
        extra : mapping, optional
            Further keys for dataset.json.
        """
        cases = [c for r in self.records for c in r.cases]
        if not cases:
            self._write_reports(cases, [], 0.0)
            raise TrainingDataError(
                f"no usable case among {len(self.records)} studies; see {self.staging / REPORT_MD}")
        strata = patient_strata(cases)
        train_patients, test_patients = split_train_test(strata, test_fraction, seed=seed)
        for case in cases:
            if case.patient in test_patients:
                case.subset = "test"
                self._move_to_test(case.case_id)
        training = sorted(c.case_id for c in cases if c.subset == "train")
        testing = sorted(c.case_id for c in cases if c.subset == "test")
        cases_by_patient: dict[str, list[str]] = {}
        for case in cases:
            if case.subset == "train":
                cases_by_patient.setdefault(case.patient, []).append(case.case_id)
        folds = min(n_folds, len(cases_by_patient))
        splits: list[dict[str, list[str]]] = []
        if folds >= 2:
            splits = stratified_patient_splits(cases_by_patient, {p: strata[p] for p in cases_by_patient},
                                               n_folds=folds, seed=seed)
            write_splits(self.staging, splits, case_ids=training)
        else:
            logger.warning("only %d training patient(s): no cross-validation folds written", len(cases_by_patient))
        write_dataset_json(
            self.staging, with_cyst=self.options.cysts == "separate", num_training_cases=len(training),
            description=description or ("Femur-only CT crops (HU inside the femur, 0 outside) in HPL orientation, "
                                        "one case per femur; lytic lesions"
                                        + (" and cysts" if self.options.cysts == "separate" else "")),
            license=license, numTest=len(testing), cysts=self.options.cysts,
            **{"converted_by": "lesion_training.dataset_builder", **dict(extra or {})},
        )
        self._write_reports(cases, splits, test_fraction)
        os.replace(self.staging, self.folder)
        self._staging_root.rmdir()
        issues = tuple(i for r in self.records for i in r.issues)
        logger.info("dataset %s: %d training and %d test cases from %d studies, %d issue(s) reported",
                    self.folder.name, len(training), len(testing), len(self.records), len(issues))
        return BuiltDataset(folder=self.folder, training_cases=tuple(training), test_cases=tuple(testing),
                            splits=splits, issues=issues, report=self.folder / REPORT_JSON)

    def abandon(self) -> None:
        """Remove the staging folder (after a failure)."""
        shutil.rmtree(self._staging_root, ignore_errors=True)

    def _check_new_patient(self, patient: str) -> None:
        check_patient_key(patient)
        if any(r.patient == patient for r in self.records):
            raise TrainingDataError(f"patient {patient} given twice; both femurs of a study come from one row")

    def _move_to_test(self, case_id: str) -> None:
        moves = [(self.staging / "imagesTr" / f"{case_id}_0000{FILE_ENDING}",
                  self.staging / "imagesTs" / f"{case_id}_0000{FILE_ENDING}"),
                 (self.staging / "labelsTr" / f"{case_id}{FILE_ENDING}",
                  self.staging / "labelsTs" / f"{case_id}{FILE_ENDING}")]
        for source, target in moves:
            target.parent.mkdir(exist_ok=True)
            os.replace(source, target)

    def _write_reports(self, cases: list[CaseRecord], splits: list[dict[str, list[str]]],
                       test_fraction: float) -> None:
        issues = [i for r in self.records for i in r.issues]
        excluded = sorted({i.patient for i in issues if i.action == "excluded"})
        report = {
            "dataset": self.folder.name,
            "created": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "options": {"cysts": self.options.cysts, "test_fraction": test_fraction,
                        "references": dataclasses.asdict(self.options.references)},
            "summary": {
                "studies": len(self.records),
                "studies_excluded": len(excluded),
                "training_cases": sum(c.subset == "train" for c in cases),
                "test_cases": sum(c.subset == "test" for c in cases),
                "cases_with_lesion": sum(c.lesion_voxels > 0 for c in cases),
                "cases_with_cyst": sum(c.cyst_voxels > 0 for c in cases),
                "folds": len(splits),
                "issues_by_kind": _count(i.kind for i in issues),
            },
            "studies": [{"patient": r.patient, "source": r.source, "seconds": round(r.seconds, 1),
                         "cases": [c.case_id for c in r.cases]} for r in self.records],
            "cases": [dataclasses.asdict(c) for c in cases],
            "issues": [dataclasses.asdict(i) for i in issues],
        }
        _atomic_write_text(self.staging / REPORT_JSON, json.dumps(report, indent=2) + "\n")
        _atomic_write_text(self.staging / REPORT_MD, _report_markdown(report))


def build_from_csv(
    cases_csv: str | Path,
    folder: str | Path,
    *,
    options: BuildOptions | None = None,
    test_fraction: float = 0.2,
    n_folds: int = 5,
    seed: int = 12345,
    progress: Callable[[int, int, str], None] | None = None,
) -> BuiltDataset:
    """Build a dataset from a CSV with columns ``patient,ct,reference`` (paths relative to the CSV).

    ``ct`` is a DICOM folder or a NIfTI/NRRD volume; ``reference`` a label volume or a DICOM-SEG file.
    """
    rows = read_cases_csv(cases_csv)
    builder = DatasetBuilder(folder, options)
    try:
        for k, (patient, ct_path, reference_path) in enumerate(rows, start=1):
            started = time.perf_counter()
            builder.add_files(patient, ct_path, reference_path)
            logger.info("study %d/%d (%s) in %.1f s", k, len(rows), patient, time.perf_counter() - started)
            if progress is not None:
                progress(k, len(rows), patient)
        return builder.finish(test_fraction=test_fraction, n_folds=n_folds, seed=seed)
    except BaseException:
        if builder.staging.exists() and not builder.folder.exists():
            logger.info("the partial dataset stays in %s for inspection", builder.staging)
        raise


def read_cases_csv(path: str | Path) -> list[tuple[str, Path, Path]]:
    """Rows (patient, ct path, reference path) of a cases CSV; relative paths are taken from the CSV's folder."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise TrainingDataError(f"cases file {path.name} lacks column(s) {', '.join(missing)}")
            rows = list(reader)
    except OSError as error:
        raise TrainingDataError(f"cannot read cases file {path}: {error.strerror}") from error
    out = []
    for line, row in enumerate(rows, start=2):
        patient = (row["patient"] or "").strip()
        if not patient:
            raise TrainingDataError(f"cases file {path.name}, line {line}: empty patient")
        check_patient_key(patient)
        ct = Path((row["ct"] or "").strip())
        reference = Path((row["reference"] or "").strip())
        out.append((patient, ct if ct.is_absolute() else path.parent / ct,
                    reference if reference.is_absolute() else path.parent / reference))
    if not out:
        raise TrainingDataError(f"cases file {path.name} lists no study")
    return out


# ----------------------------------------------------------------------------------------- helpers


def _report_markdown(report: Mapping[str, Any]) -> str:
    s = report["summary"]
    lines = [
        f"# Dataset report: {report['dataset']}",
        "",
        f"Created {report['created']}; cysts {report['options']['cysts']}; test fraction "
        f"{report['options']['test_fraction']}.",
        "",
        f"- studies: {s['studies']} ({s['studies_excluded']} excluded, see below)",
        f"- cases: {s['training_cases']} training, {s['test_cases']} test; {s['cases_with_lesion']} with a lesion, "
        f"{s['cases_with_cyst']} with a cyst",
        f"- cross-validation folds: {s['folds']} (grouped by patient, stratified by lesion presence and size)",
        "",
        "## Issues",
        "",
    ]
    if report["issues"]:
        lines += ["| patient | case | kind | action | voxels | message |", "|---|---|---|---|---|---|"]
        for i in report["issues"]:
            lines.append(f"| {i['patient']} | {i['case'] or ''} | {i['kind']} | {i['action']} | "
                         f"{'' if i['voxels'] is None else i['voxels']} | {i['message']} |")
    else:
        lines.append("None.")
    lines += ["", "## Cases", "", "| case | subset | crop (z, y, x) | spacing mm | lesions | lesion ml | "
              "sizes mm | cyst voxels | clipped |", "|---|---|---|---|---|---|---|---|---|"]
    for c in report["cases"]:
        lines.append(f"| {c['case_id']} | {c['subset']} | {'x'.join(map(str, c['crop_shape_zyx']))} | "
                     f"{'/'.join(f'{v:g}' for v in c['spacing_mm_zyx'])} | {c['lesion_count']} | {c['lesion_ml']} | "
                     f"{', '.join(f'{v:g}' for v in c['lesion_sizes_mm'][:4])} | {c['cyst_voxels']} | "
                     f"{c['clipped_lesion_voxels']} |")
    return "\n".join(lines) + "\n"


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items()))


def _fmt(values: Iterable[float]) -> str:
    return "x".join(f"{float(v):.3g}" for v in values)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
