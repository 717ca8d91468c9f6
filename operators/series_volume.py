"""Decoding of one CT series into a ``highdicom.Volume`` in Hounsfield units, with geometry QC.

:func:`check_series_geometry` inspects a scanned series from its headers only (no pixels) and either
raises :class:`~operators.errors.SeriesGeometryError` with a message a user can act on, or returns a
:class:`GeometryReport`. :func:`load_series_volume` then decodes the series' pixel data in a thread
pool, rescales each slice with its own RescaleSlope/RescaleIntercept into float32 HU, and stacks the
slices into a :class:`highdicom.Volume`. :func:`load_study` chains scan, selection and loading.

Volume geometry (see docs/CONVENTIONS.md):

- array axes (z, y, x) = (slice, row, column); dtype float32 (HU);
- ``volume.affine`` maps an index (z, y, x) to LPS patient coordinates in mm; column 0 is the slice
  step, column 1 the row step (PixelSpacing[0] along the column direction cosines), column 2 the column
  step (PixelSpacing[1] along the row direction cosines);
- slices are ordered by their position along the slice normal, measured from ImagePositionPatient and
  ImageOrientationPatient (never SliceThickness or InstanceNumber), in the same order as
  ``highdicom.get_volume_from_series``: the (slice, row, column) axes form a right-handed system,
  so an axial head-first series runs from head to feet;
- the slice step in the affine is the spacing measured between the positions.
"""

from __future__ import annotations

import copy
import logging
import math
import mmap
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from operators.dicom_header import (
    header_value,
    plain_decimal_strings,
    plain_or_value,
    plain_uid,
    plain_unsigned_short,
    tag_for,
)
from operators.dicom_scan import InstanceInfo, SeriesInfo, StudyIndex, scan_dicom_folder
from operators.errors import InputError, PixelDataError, SeriesGeometryError
from operators.series_selection import SelectionRules, select_series

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeometryPolicy:
    """Tolerances of the geometry QC and what it may repair.

    Attributes
    ----------
    allow_missing_slices : bool
        When False (default), a gap larger than ``gap_factor`` times the median slice step is an error.
        When True, the missing planes are filled by linear interpolation between their neighbours.
    allow_uneven_spacing : bool
        When False (default), slice steps that differ from the median step by more than the spacing
        tolerance are an error. When True, the slices are resampled (linearly) onto a regular grid.
    spacing_tolerance_mm : float
        Absolute tolerance on each slice step, in mm. The tolerance used is the larger of this and
        ``spacing_rtol`` times the median step.
    spacing_rtol : float
        Relative tolerance on each slice step (fraction of the median step).
    gap_factor : float
        A step larger than this multiple of the median step means slices are missing.
    max_shear_deg : float
        Largest angle, in degrees, between the line through the slice positions and the slice normal.
        Larger angles mean a gantry tilt or a sheared stack, which a (z, y, x) volume with an
        orthogonal affine cannot represent.
    orientation_tolerance : float
        Largest difference between corresponding ImageOrientationPatient direction cosines of two
        slices, and largest deviation of the cosines from unit length and orthogonality.
    duplicate_tolerance_mm : float
        Slices closer than this along the normal, in mm, occupy the same position.
    max_rows_columns : int
        Largest Rows or Columns accepted (CT images are 512 to 1024 pixels a side). A header declaring
        more is refused before any memory is allocated: it is damaged or hostile (a "memory bomb").
    max_voxels : int
        Largest volume accepted, in voxels (slices x rows x columns); the default, 2**31, is 8 GiB of
        float32. Larger series are refused before any memory is allocated.
    """

    allow_missing_slices: bool = False
    allow_uneven_spacing: bool = False
    spacing_tolerance_mm: float = 0.02
    spacing_rtol: float = 0.01
    gap_factor: float = 1.5
    max_shear_deg: float = 0.1
    orientation_tolerance: float = 1e-3
    duplicate_tolerance_mm: float = 0.01
    max_rows_columns: int = 4096
    max_voxels: int = 2**31

    def __post_init__(self) -> None:
        for name in ("max_rows_columns", "max_voxels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("spacing_tolerance_mm", "spacing_rtol", "max_shear_deg", "orientation_tolerance",
                     "duplicate_tolerance_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite non-negative number, not {value}")
        if not self.gap_factor > 1.0:
            raise ValueError(f"gap_factor must be greater than 1, not {self.gap_factor}")


@dataclass(frozen=True)
class GeometryReport:
    """What the geometry QC measured and did.

    Attributes
    ----------
    n_files : int
        Files of the series examined.
    n_slices : int
        Slices of the volume (after dropping duplicates and filling gaps, if allowed).
    shape : tuple of 3 int
        Volume shape (z, y, x).
    slice_spacing_mm : float
        Slice step used in the affine: the mean distance between the first and last positions along
        the normal, per slice step.
    pixel_spacing_mm : tuple of 2 float
        PixelSpacing (spacing between rows, spacing between columns), mm.
    image_orientation : tuple of 6 float
        ImageOrientationPatient shared by the slices (row cosines, column cosines; LPS).
    slice_direction : tuple of 3 float
        Unit vector (LPS) along which the volume's slice index increases.
    median_step_mm, min_step_mm, max_step_mm : float
        Statistics of the distances between consecutive distinct slice positions, mm.
    shear_deg : float
        Angle between the line through the slice positions and the slice normal, degrees.
    duplicates_dropped : tuple of str
        Files (relative paths) dropped because an identical slice exists at the same position.
    missing_slices : int
        Number of slice planes missing from the series (filled when allowed).
    interpolated_slices : tuple of int
        Volume slice indices whose values were interpolated (gap filling or resampling).
    resampled : bool
        True when the volume's planes are not the source slices one to one (gaps filled or uneven
        spacing resampled). Then ``LoadedSeries.source_datasets`` still lists the source slices in
        slice order, but not one per volume slice.
    spacing_between_slices_tag : float or None
        SpacingBetweenSlices from the header, if present (informative; never used for geometry).
    slice_thickness_tag : float or None
        SliceThickness from the header, if present (informative; never used for geometry).
    warnings : tuple of str
        Problems noted and tolerated, one line each.
    """

    n_files: int
    n_slices: int
    shape: tuple[int, int, int]
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    image_orientation: tuple[float, float, float, float, float, float]
    slice_direction: tuple[float, float, float]
    median_step_mm: float
    min_step_mm: float
    max_step_mm: float
    shear_deg: float
    duplicates_dropped: tuple[str, ...] = ()
    missing_slices: int = 0
    interpolated_slices: tuple[int, ...] = ()
    resampled: bool = False
    spacing_between_slices_tag: float | None = None
    slice_thickness_tag: float | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class LoadedSeries:
    """A decoded series, ready for segmentation and for writing results back as DICOM.

    Attributes
    ----------
    volume : highdicom.Volume
        float32 HU, array (z, y, x) = (slice, row, column), affine index -> LPS mm.
    source_datasets : tuple of pydicom.dataset.Dataset
        Header datasets (no pixel data) of the source slices, in the volume's slice order; one per
        volume slice unless ``geometry.resampled``. Where a file's SOPInstanceUID or SOPClassUID is
        empty, the header carries the value from its file meta (MediaStorageSOPInstanceUID /
        MediaStorageSOPClassUID) so that a SEG can reference it. The files are never modified.
    series : SeriesInfo
        The scanned series.
    geometry : GeometryReport
        Geometry QC results.
    """

    volume: hd.Volume
    source_datasets: tuple[Dataset, ...] = field(repr=False)
    series: SeriesInfo = field(repr=False)
    geometry: GeometryReport


@dataclass(frozen=True, eq=False)
class _Slot:
    """One distinct slice position: the instance kept there and any same-position duplicates."""

    offset_mm: float
    instance: InstanceInfo
    # Duplicates with another SOPInstanceUID: kept only if their pixels equal the kept instance's.
    to_compare: tuple[InstanceInfo, ...] = ()


@dataclass(frozen=True, eq=False)
class _Plan:
    slots: tuple[_Slot, ...]
    grid_offsets: npt.NDArray[np.float64]  # offsets (mm, along slice_direction) of the volume planes
    first_position: npt.NDArray[np.float64]
    row_cosines: npt.NDArray[np.float64]
    column_cosines: npt.NDArray[np.float64]
    slice_direction: npt.NDArray[np.float64]
    report: GeometryReport


def check_series_geometry(series: SeriesInfo, *, policy: GeometryPolicy | None = None) -> GeometryReport:
    """Check from headers alone that a series can be stacked into a volume.

    Parameters
    ----------
    series : SeriesInfo
        A scanned series.
    policy : GeometryPolicy, optional
        Tolerances; defaults to ``GeometryPolicy()``.

    Returns
    -------
    GeometryReport
        The measured geometry. Duplicates with different SOPInstanceUIDs are only resolved when the
        pixels are decoded (:func:`load_series_volume`), so this report may list fewer dropped files.

    Raises
    ------
    operators.errors.SeriesGeometryError
        For missing geometry attributes, mixed sizes, pixel spacings or orientations, conflicting
        duplicate positions, fewer than three slice positions, a gantry tilt or sheared stack, missing
        slices or uneven spacing (the last two unless the policy allows them).
    operators.errors.PixelDataError
        For declared sizes the loader refuses before allocating memory: Rows or Columns above
        ``policy.max_rows_columns``, a volume above ``policy.max_voxels``, or an uncompressed file too
        short to hold the pixel data its header declares. The message names the file.
    """
    return _plan_geometry(series, policy or GeometryPolicy()).report


def load_series_volume(
    series: SeriesInfo,
    *,
    dtype: npt.DTypeLike = np.float32,
    max_workers: int | None = None,
    policy: GeometryPolicy | None = None,
) -> LoadedSeries:
    """Decode one series into a Hounsfield-unit volume.

    Parameters
    ----------
    series : SeriesInfo
        The series to load (usually ``select_series(...).series``).
    dtype : numpy dtype, optional
        Floating type of the output array, float32 by default. float64 is refused (the code base keeps
        CT in float32); float16 is accepted but rounds HU above 2048 to even values.
    max_workers : int, optional
        Threads that read and decode files; default ``min(8, os.cpu_count())``. Decoders that hold the
        GIL (e.g. OpenJPEG) gain little from threads, file reads and rescaling do.
    policy : GeometryPolicy, optional
        Geometry tolerances; defaults to ``GeometryPolicy()``.

    Returns
    -------
    LoadedSeries
        Volume (float32 HU, (z, y, x), affine index -> LPS mm), header datasets in slice order, the
        series and its geometry report.

    Raises
    ------
    operators.errors.SeriesGeometryError
        If the slices cannot form a volume (see :func:`check_series_geometry`) or two different images
        occupy the same position.
    operators.errors.PixelDataError
        If a file's pixel data is missing, truncated, not greyscale, of the wrong size, or in a
        transfer syntax no installed decoder handles; the message names the file.
    """
    out_dtype = np.dtype(dtype)
    if out_dtype.kind != "f" or out_dtype.itemsize > 4:
        raise ValueError(f"dtype must be float32 or float16 (CT is kept in float32), not {out_dtype}")
    if max_workers is not None and max_workers < 1:
        raise ValueError(f"max_workers must be at least 1, not {max_workers}")
    policy = policy or GeometryPolicy()
    plan = _plan_geometry(series, policy)
    _check_decoders(plan)

    rows, columns = plan.slots[0].instance.rows, plan.slots[0].instance.columns
    assert rows is not None and columns is not None  # checked by the plan
    n_src = len(plan.slots)
    stack = _new_volume_array((n_src, rows, columns))
    extra_jobs = [(i, dup) for i, slot in enumerate(plan.slots) for dup in slot.to_compare]
    extras: dict[int, tuple[int, np.ndarray]] = {}
    workers = max_workers or min(8, os.cpu_count() or 1)

    def decode_slots(first: int, stop: int) -> None:
        # In slot order, to the first failure: the failure of the lowest slot is the one reported.
        for i in range(first, stop):
            _decode_into(plan.slots[i].instance, stack[i])

    def decode_extra(j: int) -> None:
        slot_index, instance = extra_jobs[j]
        buffer = np.empty((rows, columns), dtype=np.float32)
        _decode_into(instance, buffer)
        extras[j] = (slot_index, buffer)

    start = time.perf_counter()
    # Runs of consecutive slices, a few per thread: one task per slice costs about as much in hand-over
    # between threads as reading a small slice does; several runs per thread keep the threads evenly busy.
    n_runs = min(n_src, workers * _RUNS_PER_WORKER)
    bounds = [n_src * k // n_runs for k in range(n_runs + 1)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicom-decode") as pool:
        futures = [pool.submit(decode_slots, first, stop) for first, stop in zip(bounds[:-1], bounds[1:])]
        futures += [pool.submit(decode_extra, j) for j in range(len(extra_jobs))]
        try:
            for future in futures:
                # Re-raise the first failure (a PixelDataError naming its file).
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    decode_s = time.perf_counter() - start

    dropped = list(plan.report.duplicates_dropped)
    for j, (slot_index, buffer) in sorted(extras.items()):
        kept = plan.slots[slot_index].instance
        duplicate = extra_jobs[j][1]
        if not np.array_equal(buffer, stack[slot_index]):
            raise SeriesGeometryError(
                f"conflicting duplicate slices in {series.describe()}: {kept.relative_path} and "
                f"{duplicate.relative_path} share position {_format_position(kept)} but differ in pixel values"
            )
        logger.warning(
            "duplicate slice %s dropped: same position and pixels as %s",
            duplicate.relative_path,
            kept.relative_path,
        )
        dropped.append(str(duplicate.relative_path))

    array = stack
    source_offsets = np.array([slot.offset_mm for slot in plan.slots])
    if plan.report.resampled:
        array = _resample_linear(stack, source_offsets, plan.grid_offsets)
    if out_dtype != np.float32:
        array = array.astype(out_dtype)

    affine = _affine(plan)
    try:
        volume = hd.Volume(
            array=array,
            affine=affine,
            coordinate_system="PATIENT",
            frame_of_reference_uid=series.frame_of_reference_uid or None,
        )
    except ValueError as exc:  # e.g. a geometry that passed the checks but is not orthogonal in float64
        raise SeriesGeometryError(f"{series.describe()} cannot form a volume: {exc}") from exc
    report = replace(plan.report, duplicates_dropped=tuple(dropped))
    datasets = tuple(_source_header(slot.instance) for slot in plan.slots)
    logger.info(
        "decoded %s: %d files -> volume %s, spacing (%.3g, %.3g, %.3g) mm, in %.2f s with %d threads",
        series.describe(),
        n_src + len(extra_jobs),
        "x".join(str(n) for n in volume.shape),
        report.slice_spacing_mm,
        *report.pixel_spacing_mm,
        decode_s,
        workers,
    )
    return LoadedSeries(volume=volume, source_datasets=datasets, series=series, geometry=report)


def load_study(
    root: Path,
    *,
    rules: SelectionRules | None = None,
    policy: GeometryPolicy | None = None,
    max_workers: int | None = None,
    fallback: bool = True,
) -> LoadedSeries:
    """Scan a folder, choose the series to segment and load it.

    Parameters
    ----------
    root : pathlib.Path
        Folder holding the study's DICOM files (any layout).
    rules : SelectionRules, optional
        Series selection rules; :data:`operators.series_selection.DEFAULT_RULES` when None.
    policy : GeometryPolicy, optional
        Geometry tolerances; defaults to ``GeometryPolicy()``.
    max_workers : int, optional
        Decoding threads (see :func:`load_series_volume`).
    fallback : bool, optional
        When the best-ranked series fails the header-only check (e.g. a missing slice, or a header
        declaring more pixel data than its file holds), try the next candidate, with a warning. When
        False, or when no candidate passes, the best candidate's error is raised; where the scan could
        not read some files, the message names them (one of them may be the missing slice).

    Returns
    -------
    LoadedSeries
        See :func:`load_series_volume`.

    Raises
    ------
    operators.errors.InputError
        Or a subclass: no DICOM files, no suitable series, bad geometry, bad pixel data.
    """
    t0 = time.perf_counter()
    index = scan_dicom_folder(Path(root))
    t1 = time.perf_counter()
    selection = select_series(index) if rules is None else select_series(index, rules)
    t2 = time.perf_counter()

    policy = policy or GeometryPolicy()
    chosen = selection.series
    first_error: SeriesGeometryError | PixelDataError | None = None
    for candidate in selection.candidates if fallback else selection.candidates[:1]:
        try:
            check_series_geometry(candidate, policy=policy)
        except (SeriesGeometryError, PixelDataError) as exc:
            first_error = first_error or exc
            logger.warning("cannot use %s: %s", candidate.describe(), exc)
            continue
        chosen = candidate
        break
    else:
        assert first_error is not None
        raise _with_unreadable_files(first_error, index) from first_error
    if chosen is not selection.series:
        logger.warning("falling back to %s", chosen.describe())

    loaded = load_series_volume(chosen, max_workers=max_workers, policy=policy)
    t3 = time.perf_counter()
    logger.info(
        "load_study: scan %.2f s (%d files), select %.3f s, decode %.2f s, total %.2f s",
        t1 - t0,
        index.n_files,
        t2 - t1,
        t3 - t2,
        t3 - t0,
    )
    return loaded


def _with_unreadable_files(error: InputError, index: StudyIndex) -> InputError:
    """``error`` with the files the scan could not read named: one of them may be the missing slice."""
    unreadable = [s for s in index.skipped if s.reason.startswith("unreadable")]
    if not unreadable or not isinstance(error, SeriesGeometryError):
        return error
    listing = ", ".join(str(s.path) for s in unreadable[:3])
    more = f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
    return type(error)(
        f"{error}; {len(unreadable)} file{'s' if len(unreadable) != 1 else ''} of the input could not be read "
        f"and may belong to it: {listing}{more} ({unreadable[0].reason})"
    )


# --------------------------------------------------------------------------------------------------
# Geometry planning (headers only)

# Plausible ranges of geometry values (mm): anything outside is a damaged header.
_MIN_MM = 1e-4
_MAX_SPACING_MM = 1e4
_MAX_POSITION_MM = 1e7

#: Transfer syntaxes whose pixel data is stored as is, so that its size follows from the header.
_NATIVE_SYNTAXES = frozenset({"", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
_EXPLICIT_VR_SYNTAXES = frozenset({"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


def _plan_geometry(series: SeriesInfo, policy: GeometryPolicy) -> _Plan:
    name = series.describe()
    instances = list(series.instances)
    if not instances:
        raise SeriesGeometryError(f"{name} has no files")

    for instance in instances:
        missing = [
            keyword
            for keyword, value in (
                ("Rows", instance.rows),
                ("Columns", instance.columns),
                ("ImagePositionPatient", instance.image_position),
                ("ImageOrientationPatient", instance.image_orientation),
                ("PixelSpacing", instance.pixel_spacing),
            )
            if value is None
        ]
        missing += [keyword for keyword, value in (("Rows", instance.rows), ("Columns", instance.columns))
                    if value is not None and value < 1]
        # Values a scanner could have written: spacing from 0.1 micrometre to 10 m, positions within 10 km.
        if instance.pixel_spacing is not None and not all(_MIN_MM <= v <= _MAX_SPACING_MM
                                                          for v in instance.pixel_spacing):
            missing.append("PixelSpacing")
        if instance.image_position is not None and not all(abs(v) <= _MAX_POSITION_MM
                                                           for v in instance.image_position):
            missing.append("ImagePositionPatient")
        if missing:
            raise SeriesGeometryError(
                f"{instance.relative_path} in {name} lacks {', '.join(missing)} (or has an invalid value)"
            )
        _check_declared_size(instance, name, policy)
        if instance.number_of_frames > 1:
            raise SeriesGeometryError(
                f"{instance.relative_path} in {name} is a multi-frame image ({instance.number_of_frames} "
                "frames); only single-frame CT series are supported"
            )

    _require_uniform(name, instances, "image size (Rows x Columns)", lambda i: f"{i.rows}x{i.columns}")
    _require_uniform(
        name, instances, "PixelSpacing", lambda i: "\\".join(f"{v:.4f}" for v in i.pixel_spacing or ())
    )
    reference = instances[0]
    iop0 = np.asarray(reference.image_orientation, dtype=np.float64)
    for instance in instances[1:]:
        difference = np.max(np.abs(np.asarray(instance.image_orientation) - iop0))
        if difference > policy.orientation_tolerance:
            raise SeriesGeometryError(
                f"mixed orientations in {name}: {instance.relative_path} differs from "
                f"{reference.relative_path} by {difference:.4f} in ImageOrientationPatient"
            )
    row_cos, col_cos = iop0[:3], iop0[3:]
    row_norm, col_norm = np.linalg.norm(row_cos), np.linalg.norm(col_cos)
    if (
        abs(row_norm - 1.0) > policy.orientation_tolerance
        or abs(col_norm - 1.0) > policy.orientation_tolerance
        or abs(float(row_cos @ col_cos)) > policy.orientation_tolerance
    ):
        raise SeriesGeometryError(
            f"ImageOrientationPatient {list(iop0)} of {name} is not two orthogonal unit vectors"
        )
    row_cos, col_cos = row_cos / row_norm, col_cos / col_norm
    # Same slice order as highdicom: (slice, row, column) right-handed, i.e. the slice axis along
    # column x row (towards the feet for an axial head-first image).
    direction = np.cross(col_cos, row_cos)
    direction /= np.linalg.norm(direction)

    positions = np.array([i.image_position for i in instances], dtype=np.float64)
    offsets = positions @ direction
    order = sorted(
        range(len(instances)),
        key=lambda k: (offsets[k], instances[k].instance_number or 0, str(instances[k].relative_path)),
    )

    # Group same-position slices.
    slots: list[_Slot] = []
    dropped: list[str] = []
    warnings: list[str] = []
    k = 0
    while k < len(order):
        group = [order[k]]
        while k + len(group) < len(order) and (
            offsets[order[k + len(group)]] - offsets[group[0]] <= policy.duplicate_tolerance_mm
        ):
            group.append(order[k + len(group)])
        k += len(group)
        kept = instances[group[0]]
        to_compare: list[InstanceInfo] = []
        for other_index in group[1:]:
            other = instances[other_index]
            in_plane = np.linalg.norm(positions[other_index] - positions[group[0]])
            # Displaced by more than half a pixel in-plane: a different image, not a copy.
            if in_plane > 0.5 * min(kept.pixel_spacing or (0.0,)):
                raise SeriesGeometryError(
                    f"conflicting duplicate slices in {name}: {kept.relative_path} and "
                    f"{other.relative_path} share the slice plane at {_format_position(kept)} but are "
                    f"{in_plane:.2f} mm apart in-plane"
                )
            if other.sop_instance_uid and other.sop_instance_uid == kept.sop_instance_uid:
                logger.warning(
                    "duplicate file %s dropped: same SOPInstanceUID as %s", other.relative_path, kept.relative_path
                )
                dropped.append(str(other.relative_path))
            else:
                to_compare.append(other)
        slots.append(_Slot(offset_mm=float(offsets[group[0]]), instance=kept, to_compare=tuple(to_compare)))

    uids = Counter(slot.instance.sop_instance_uid for slot in slots if slot.instance.sop_instance_uid)
    repeated = [uid for uid, count in uids.items() if count > 1]
    if repeated:
        files = [str(s.instance.relative_path) for s in slots if s.instance.sop_instance_uid == repeated[0]]
        raise SeriesGeometryError(
            f"{name}: SOPInstanceUID {repeated[0]} occurs at {len(files)} different positions "
            f"({', '.join(files[:3])})"
        )

    if len(slots) < 3:
        raise SeriesGeometryError(
            f"{name} has {len(slots)} distinct slice position{'s' if len(slots) != 1 else ''}: "
            "not a volume (at least 3 are needed)"
        )

    slot_offsets = np.array([s.offset_mm for s in slots])
    slot_positions = np.array([s.instance.image_position for s in slots], dtype=np.float64)
    steps = np.diff(slot_offsets)
    median_step = float(np.median(steps))

    # Gantry tilt / shear: in-plane displacement of the positions relative to the first slice.
    displacement = slot_positions - slot_positions[0]
    along = displacement @ direction
    in_plane = np.linalg.norm(displacement - np.outer(along, direction), axis=1)
    span = float(along[-1])
    shear_deg = math.degrees(math.atan2(float(in_plane[-1]), span))
    allowed = np.maximum(np.tan(np.radians(policy.max_shear_deg)) * np.abs(along), 0.01)
    if np.any(in_plane > allowed):
        worst = int(np.argmax(in_plane - allowed))
        angle = math.degrees(math.atan2(float(in_plane[worst]), float(abs(along[worst]))))
        tilt_tag = _float_or_none(header_value(series.header, "GantryDetectorTilt"))
        hint = f"; GantryDetectorTilt is {tilt_tag:g} deg" if tilt_tag else ""
        raise SeriesGeometryError(
            f"{name} is stacked at {angle:.2f} deg to its slice normal (gantry tilt or sheared stack{hint}); "
            f"the tolerance is {policy.max_shear_deg:g} deg: resample it to an orthogonal grid first"
        )

    tolerance = max(policy.spacing_tolerance_mm, policy.spacing_rtol * median_step)
    gap_steps = steps > policy.gap_factor * median_step
    multiples = np.where(gap_steps, np.rint(steps / median_step), 1.0)
    missing = int(np.sum(multiples - 1))
    if missing:
        first_gap = int(np.argmax(gap_steps))
        message = (
            f"{name} is missing about {missing} slice{'s' if missing != 1 else ''}: gap of "
            f"{steps[first_gap]:.2f} mm after {slots[first_gap].instance.relative_path}, before "
            f"{slots[first_gap + 1].instance.relative_path} (median step {median_step:.3g} mm)"
        )
        if not policy.allow_missing_slices:
            raise SeriesGeometryError(message)
        warnings.append(message + "; filled by linear interpolation")
        logger.warning("%s; filled by linear interpolation", message)
    # Steps (per plane, gaps divided by their multiple) that deviate from the median.
    deviation = np.abs(steps / multiples - median_step)
    uneven = bool(np.any(deviation > tolerance))
    if uneven:
        message = (
            f"{name} has uneven slice spacing: steps {steps.min():.3g} to {steps.max():.3g} mm "
            f"(median {median_step:.3g} mm, tolerance {tolerance:.3g} mm)"
        )
        if not policy.allow_uneven_spacing:
            raise SeriesGeometryError(message)
        warnings.append(message + "; resampled to a regular grid")
        logger.warning("%s; resampled to a regular grid", message)

    n_planes = len(slots) + missing
    rows, columns = reference.rows, reference.columns
    assert rows is not None and columns is not None
    n_voxels = (len(slots) + n_planes) * rows * columns if missing or uneven else n_planes * rows * columns
    if n_voxels > policy.max_voxels:
        raise PixelDataError(
            f"{name} would need {n_voxels} voxels ({n_voxels * 4 / 2**30:.1f} GiB as float32; "
            f"{len(slots)} slices of {rows} x {columns}), more than the limit of {policy.max_voxels}; "
            f"e.g. {reference.relative_path}"
        )
    spacing = span / (n_planes - 1)
    grid = slot_offsets[0] + spacing * np.arange(n_planes)
    resampled = bool(missing) or uneven
    interpolated: tuple[int, ...] = ()
    if resampled:
        nearest = np.min(np.abs(grid[:, None] - slot_offsets[None, :]), axis=1)
        interpolated = tuple(int(i) for i in np.flatnonzero(nearest > policy.duplicate_tolerance_mm))

    header = series.header
    spacing_tag = _float_or_none(header_value(header, "SpacingBetweenSlices"))
    thickness_tag = _float_or_none(header_value(header, "SliceThickness"))
    if spacing_tag is not None and abs(abs(spacing_tag) - spacing) > max(tolerance, 0.01 * spacing):
        message = (
            f"SpacingBetweenSlices {spacing_tag:g} mm in the header of {name} disagrees with the measured "
            f"{spacing:.4g} mm; the measured spacing is used"
        )
        warnings.append(message)
        logger.warning(message)

    assert reference.pixel_spacing is not None
    report = GeometryReport(
        n_files=len(instances),
        n_slices=n_planes,
        shape=(n_planes, rows, columns),
        slice_spacing_mm=float(spacing),
        pixel_spacing_mm=(float(reference.pixel_spacing[0]), float(reference.pixel_spacing[1])),
        image_orientation=tuple(float(v) for v in iop0),  # type: ignore[arg-type]
        slice_direction=tuple(float(v) for v in direction),  # type: ignore[arg-type]
        median_step_mm=median_step,
        min_step_mm=float(steps.min()),
        max_step_mm=float(steps.max()),
        shear_deg=abs(shear_deg),
        duplicates_dropped=tuple(dropped),
        missing_slices=missing,
        interpolated_slices=interpolated,
        resampled=resampled,
        spacing_between_slices_tag=spacing_tag,
        slice_thickness_tag=thickness_tag,
        warnings=tuple(warnings),
    )
    return _Plan(
        slots=tuple(slots),
        grid_offsets=grid,
        first_position=slot_positions[0],
        row_cosines=row_cos,
        column_cosines=col_cos,
        slice_direction=direction,
        report=report,
    )


def _check_declared_size(instance: InstanceInfo, name: str, policy: GeometryPolicy) -> None:
    """Refuse, before anything is allocated, an image whose declared size is absurd or not in its file."""
    rows, columns = instance.rows, instance.columns
    assert rows is not None and columns is not None
    if rows > policy.max_rows_columns or columns > policy.max_rows_columns:
        raise PixelDataError(
            f"{instance.relative_path} in {name} declares images of {rows} x {columns} pixels; at most "
            f"{policy.max_rows_columns} x {policy.max_rows_columns} are accepted (damaged or hostile header)"
        )
    offset = instance.pixel_data_offset
    if offset is None:
        return
    try:
        size = os.stat(instance.path).st_size
    except OSError as exc:
        raise PixelDataError(f"{instance.relative_path}: cannot read file: {exc.strerror or exc}") from exc
    if size <= offset:
        raise PixelDataError(f"{instance.relative_path}: no pixel data")
    if instance.transfer_syntax_uid not in _NATIVE_SYNTAXES:
        return  # compressed: the size of the data says nothing about the image's
    header = instance.header
    bits = _float_or_none(plain_or_value(plain_unsigned_short, header, "BitsAllocated"))
    samples = _float_or_none(plain_or_value(plain_unsigned_short, header, "SamplesPerPixel"))
    if bits is None or bits < 1 or (samples is not None and samples < 1):
        return  # left to the decoder, which names the file
    expected = math.ceil(rows * columns * int(samples or 1) * int(bits) / 8)
    # The PixelData element's own tag, VR and length: 12 bytes in explicit VR, 8 in implicit VR.
    element_header = 12 if instance.transfer_syntax_uid in _EXPLICIT_VR_SYNTAXES else 8
    available = size - offset - element_header
    if available < expected:
        raise PixelDataError(
            f"{instance.relative_path}: pixel data cannot be decoded: the file holds {max(available, 0)} bytes "
            f"of it, the header declares {rows} x {columns} pixels of {int(bits)} bits ({expected} bytes); "
            "truncated or damaged"
        )


# Attributes read for every slice: plain values come from the element's bytes (operators.dicom_header),
# the same values as pydicom's conversion without its cost per slice.


def _unsigned_short(header: Dataset, keyword: str, *default: Any) -> Any:
    """``header.get(keyword, *default)`` of a US attribute (raising as it does), from its bytes where plain."""
    value = plain_unsigned_short(header, tag_for(keyword))
    return value if value is not None else header.get(keyword, *default)


def _decimal(header: Dataset, keyword: str) -> Any:
    """``header.get(keyword)`` of a DS attribute (raising as it does), from its bytes where plain.

    A plain multi-valued element gives a tuple where pydicom gives a MultiValue: neither is a number.
    """
    values = plain_decimal_strings(header, tag_for(keyword))
    if values is None:
        return header.get(keyword)
    return values[0] if len(values) == 1 else values


def _format_position(instance: InstanceInfo) -> str:
    """ImagePositionPatient as '(x, y, z) mm' (LPS)."""
    return "(" + ", ".join(f"{v:.2f}" for v in instance.image_position or ()) + ") mm"


def _require_uniform(name: str, instances: Sequence[InstanceInfo], what: str, key: Any) -> None:
    values = Counter(key(i) for i in instances)
    if len(values) > 1:
        (common, _), *others = values.most_common()
        odd = next(i for i in instances if key(i) != common)
        listing = ", ".join(f"{v} ({n} files)" for v, n in values.most_common(3))
        raise SeriesGeometryError(f"mixed {what} in {name}: {listing}; e.g. {odd.relative_path}")


def _affine(plan: _Plan) -> np.ndarray:
    """4x4 affine from (z, y, x) indices to LPS mm."""
    row_spacing, column_spacing = plan.report.pixel_spacing_mm
    affine = np.eye(4)
    affine[:3, 0] = plan.slice_direction * plan.report.slice_spacing_mm
    # Moving down a row (index y) follows the column direction cosines, by the spacing between rows.
    affine[:3, 1] = plan.column_cosines * row_spacing
    # Moving along a row (index x) follows the row direction cosines, by the spacing between columns.
    affine[:3, 2] = plan.row_cosines * column_spacing
    affine[:3, 3] = plan.first_position
    return affine


def _resample_linear(stack: np.ndarray, offsets: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of (z, y, x) slices at ``offsets`` onto planes at ``grid`` (mm, ascending)."""
    upper = np.clip(np.searchsorted(offsets, grid, side="left"), 1, len(offsets) - 1)
    lower = upper - 1
    span = offsets[upper] - offsets[lower]
    weight = np.clip((grid - offsets[lower]) / span, 0.0, 1.0).astype(np.float32)
    out = np.empty((len(grid),) + stack.shape[1:], dtype=np.float32)
    for k in range(len(grid)):
        w = weight[k]
        # Keep exact source values where a plane coincides with a slice.
        if w <= 1e-6:
            out[k] = stack[lower[k]]
        elif w >= 1 - 1e-6:
            out[k] = stack[upper[k]]
        else:
            np.multiply(stack[lower[k]], np.float32(1.0 - w), out=out[k])
            out[k] += np.float32(w) * stack[upper[k]]
    return out


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------------------------------
# Pixel decoding

# Tasks per decoding thread (runs of consecutive slices).
_RUNS_PER_WORKER = 8


# Arrays at least this large are mapped without the huge page request (see _new_volume_array).
_MIN_MAPPED_BYTES = 64 * 2**20


def _new_volume_array(shape: tuple[int, int, int]) -> np.ndarray:
    """An uninitialised float32 array (slices, rows, columns) for a decoded series.

    numpy asks the kernel for transparent huge pages for large arrays. Where the machine's memory is
    fragmented (a shared machine, a long-running host), the kernel then compacts memory while it maps
    the pages in as the slices are written: decoding the 601-slice standard series took 0.5 to 1.7 s
    instead of 0.3 s, at random. Plain anonymous memory, mapped in 4 KiB pages, costs a steady ~0.1 s
    of CPU time more for that series and never stalls. The array behaves as any other (it keeps its
    mapping alive and frees it with itself); it only does not own its data (``flags.owndata``).
    """
    n_bytes = int(np.prod(shape)) * 4
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if n_bytes < _MIN_MAPPED_BYTES or None in flags:
        return np.empty(shape, dtype=np.float32)
    mapping = mmap.mmap(-1, n_bytes, flags=flags[0] | flags[1])  # type: ignore[operator]
    return np.frombuffer(mapping, dtype=np.float32).reshape(shape)


def _check_decoders(plan: _Plan) -> None:
    """Fail before decoding anything when a transfer syntax has no usable decoder."""
    instances = [s.instance for s in plan.slots] + [d for s in plan.slots for d in s.to_compare]
    for syntax in sorted({i.transfer_syntax_uid for i in instances}):
        example = next(i for i in instances if i.transfer_syntax_uid == syntax)
        if not syntax:
            # No file meta: pydicom reads the dataset as implicit VR little endian.
            continue
        uid = UID(syntax)
        try:
            available = get_decoder(uid).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise PixelDataError(
                f"{example.relative_path}: no installed decoder for transfer syntax {uid.name} ({syntax})"
            )


# (7FE0,0010) PixelData as it starts an element in a little-endian dataset.
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _decode_into(instance: InstanceInfo, out: np.ndarray) -> None:
    """Decode one file's pixels, rescale to HU and write them into ``out`` (rows, columns) float32.

    Any failure is a :class:`PixelDataError` naming the file: a damaged file can make pydicom or a
    decoder raise almost anything (an unknown VR, a malformed value, MemoryError for absurd sizes).
    """
    try:
        _decode_file(instance, out)
    except PixelDataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PixelDataError(
            f"{instance.relative_path}: pixel data cannot be decoded: {type(exc).__name__}: {exc}"
        ) from exc


# Little-endian uncompressed transfer syntaxes the direct read handles: UID -> explicit VR.
_DIRECT_SYNTAXES = {"1.2.840.10008.1.2": False, "1.2.840.10008.1.2.1": True}


def _read_native_slice(instance: InstanceInfo) -> np.ndarray | None:
    """The stored values of an uncompressed 16-bit greyscale slice, read straight from the file.

    The scan's header (``instance.header``) and the position where it ended (``pixel_data_offset``)
    already say where the pixels lie; reading them directly spares a second parse of the header, the
    larger part of decoding a plain CT file. Returns an int16 / uint16 array (rows, columns) with the
    unused high bits masked (unsigned) or the sign extended from BitsStored (signed), as pydicom's
    ``pixel_array`` gives them; or None whenever anything is not the plain case (other syntaxes or bit
    depths, a Modality LUT, several frames, an element length other than the image's, a short file),
    and pydicom then decodes the file and reports what is wrong.
    """
    explicit = _DIRECT_SYNTAXES.get(instance.transfer_syntax_uid)
    offset = instance.pixel_data_offset
    rows, columns = instance.rows, instance.columns
    if explicit is None or offset is None or not rows or not columns or instance.number_of_frames != 1:
        return None
    header = instance.header
    try:
        bits_allocated = int(_unsigned_short(header, "BitsAllocated"))
        bits_stored = int(_unsigned_short(header, "BitsStored"))
        high_bit = int(_unsigned_short(header, "HighBit"))
        signed = int(_unsigned_short(header, "PixelRepresentation"))
        samples = int(_unsigned_short(header, "SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        return None
    if (bits_allocated != 16 or not 1 <= bits_stored <= 16 or high_bit != bits_stored - 1
            or signed not in (0, 1) or samples != 1 or tag_for("ModalityLUTSequence") in header):
        return None
    expected = rows * columns * 2
    element_header = 12 if explicit else 8
    head = bytearray(element_header)
    # Read straight into the array (no intermediate bytes object; unbuffered, so no copy through a
    # buffer either).
    stored = np.empty((rows, columns), dtype="<i2" if signed else "<u2")
    with open(instance.path, "rb", buffering=0) as fh:
        fh.seek(offset)
        if _read_fully(fh, memoryview(head)) != element_header or head[:4] != _PIXEL_DATA_TAG:
            return None
        if explicit and head[4:6] not in (b"OW", b"OB"):
            return None
        if int.from_bytes(head[-4:], "little") != expected:
            return None  # undefined length (encapsulated data under a native syntax) or another size
        if _read_fully(fh, memoryview(stored).cast("B")) != expected:
            return None
    if bits_stored < 16:
        # In place: the array is this function's own.
        if signed:
            shift = 16 - bits_stored
            # Sign extension from the BitsStored-th bit.
            np.left_shift(stored, shift, out=stored)
            np.right_shift(stored, shift, out=stored)
        else:
            np.bitwise_and(stored, np.uint16((1 << bits_stored) - 1), out=stored)
    return stored


def _read_fully(fh: Any, view: memoryview) -> int:
    """Fill ``view`` from an unbuffered file; the number of bytes read (fewer only at the file's end)."""
    filled = 0
    while filled < len(view):
        n = fh.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _rescale_into(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray, path: Path) -> None:
    """``out[...] = stored * slope + intercept`` in float32 (no float64 temporaries of the slice)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if slope == 1.0 and stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2:
            # One pass instead of two, same values: integers of up to 16 bits are exact in float32, so
            # stored * 1 + intercept in float32 rounds once, as this single float32 addition does.
            np.add(stored, np.float32(intercept), out=out, dtype=np.float32, casting="unsafe")
        else:
            np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
            out += np.float32(intercept)
    # Stored values are at most 32 bits: below this bound the float32 result cannot overflow.
    if abs(slope) * 2.0**32 + abs(intercept) > 1e38 and not np.isfinite(out).all():
        raise PixelDataError(
            f"{path}: RescaleSlope {slope:g} and RescaleIntercept {intercept:g} give values beyond float32"
        )


def _rescale_of(header: Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of a header; 1 and 0 where absent or unreadable."""
    slope = _float_or_none(_decimal(header, "RescaleSlope"))
    intercept = _float_or_none(_decimal(header, "RescaleIntercept"))
    return (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)


def _decode_file(instance: InstanceInfo, out: np.ndarray) -> None:
    path = instance.relative_path
    stored = _read_native_slice(instance)
    if stored is not None:
        if stored.shape != out.shape:
            raise PixelDataError(f"{path}: pixel data has shape {stored.shape}, the series {out.shape}")
        _rescale_into(stored, *_rescale_of(instance.header), out, path)
        return
    try:
        ds = pydicom.dcmread(instance.path, force=True)
    except Exception as exc:  # noqa: BLE001
        raise PixelDataError(f"{path}: cannot read file: {type(exc).__name__}: {exc}") from exc
    if "PixelData" not in ds:
        if _PIXEL_DATA_TAG in Path(instance.path).read_bytes():
            # pydicom drops an element cut off by the end of the file without a word.
            raise PixelDataError(f"{path}: pixel data truncated (the file ends inside it)")
        raise PixelDataError(f"{path}: no pixel data")
    if not ds.file_meta.get("TransferSyntaxUID"):
        # A dataset stored without file meta: the encoding pydicom read it with tells the syntax.
        implicit, little_endian = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian
            if implicit
            else pydicom.uid.ExplicitVRLittleEndian if little_endian else pydicom.uid.ExplicitVRBigEndian
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1:
        raise PixelDataError(f"{path}: {samples} samples per pixel; a greyscale CT image has 1")
    try:
        stored = pydicom.pixels.pixel_array(ds)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for damaged data
        raise PixelDataError(f"{path}: pixel data cannot be decoded: {type(exc).__name__}: {exc}") from exc
    if stored.shape != out.shape:
        raise PixelDataError(
            f"{path}: decoded pixel data has shape {stored.shape}, the header says {out.shape}"
        )
    if "ModalityLUTSequence" in ds:
        # Rare in CT; pydicom applies the LUT (its output may be float64, cast per slice).
        with np.errstate(over="ignore", invalid="ignore"):
            out[...] = pydicom.pixels.apply_modality_lut(stored, ds)
        if not np.isfinite(out).all():
            raise PixelDataError(f"{path}: the Modality LUT gives values that are not finite numbers")
        return
    _rescale_into(stored, *_rescale_of(ds), out, path)


def _source_header(instance: InstanceInfo) -> Dataset:
    """Header of a source slice for the SEG writer, with empty SOP UIDs taken from the file meta."""
    header = instance.header
    needs_uid = not str(plain_or_value(plain_uid, header, "SOPInstanceUID") or "") and instance.sop_instance_uid
    needs_class = not str(plain_or_value(plain_uid, header, "SOPClassUID") or "") and instance.sop_class_uid
    if not (needs_uid or needs_class):
        return header
    # A copy, so that the scan's index keeps what the file holds.
    header = copy.deepcopy(header)
    if needs_uid:
        header.SOPInstanceUID = instance.sop_instance_uid
    if needs_class:
        header.SOPClassUID = instance.sop_class_uid
    return header
