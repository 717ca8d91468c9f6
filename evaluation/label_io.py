"""Reading and writing label volumes (NIfTI, NRRD) and listing the cases of a folder.

A label folder follows nnU-Net's layout: one file per case, named ``<case_id>.nii.gz`` (also
``.nii`` and ``.nrrd``); other files (``dataset.json``, ``summary.json``, ``.npz``, ``.pkl``) are
ignored. Volumes are read with SimpleITK, which reads NIfTI and NRRD into the same LPS patient frame,
and returned as `highdicom.Volume` with axes (z, y, x) and an affine mapping (z, y, x) indices to LPS
millimetres, as everywhere in this code base.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk

from operators.errors import GeometryMismatchError, InputError
from operators.volume_io import volume_from_sitk, write_volume

logger = logging.getLogger(__name__)

# Longest first, so that "case.nii.gz" is not read as case "case.nii" with suffix ".gz".
LABEL_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd")


def case_id_from_path(path: Path) -> str | None:
    """The case id of a label file (its name without a known suffix), or None if not a label file."""
    name = path.name
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def list_label_files(folder: Path) -> dict[str, Path]:
    """Label files of a folder by case id, sorted by case id.

    Parameters
    ----------
    folder : pathlib.Path
        A folder holding ``<case_id>.nii.gz`` / ``.nii`` / ``.nrrd`` files (not searched recursively;
        hidden files are skipped).

    Raises
    ------
    InputError
        If the folder does not exist, holds no label file, or holds two files of the same case.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"label folder not found: {folder}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        case_id = case_id_from_path(path)
        if case_id is None:
            continue
        if case_id in files:
            raise InputError(f"case {case_id} has two label files in {folder}: {files[case_id].name} and {path.name}")
        files[case_id] = path
    if not files:
        raise InputError(f"no label files (*.nii.gz, *.nii, *.nrrd) in {folder}")
    return dict(sorted(files.items()))


def read_label_volume(path: Path) -> hd.Volume:
    """Read a label volume.

    Parameters
    ----------
    path : pathlib.Path
        A ``.nii.gz``, ``.nii`` or ``.nrrd`` file with one integer label per voxel.

    Returns
    -------
    highdicom.Volume
        Array axes (z, y, x), dtype uint8 (uint16 when labels exceed 255); affine from (z, y, x)
        indices to LPS mm; spacing (sz, sy, sx) in mm as ``volume.spacing``.

    Raises
    ------
    InputError
        If the file cannot be read, is not 3-D, has several components per voxel, or holds values that
        are not non-negative integers.
    """
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        # SimpleITK puts a multi-line ITK trace in the message; the first line says enough.
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise InputError(f"cannot read label file {path}: {first}") from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"label file {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "expected a single label map"
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise InputError(f"label file {path} is {image.GetDimension()}-D; expected a 3-D label volume")

    volume = volume_from_sitk(image)  # array (z, y, x), affine to LPS mm
    return volume.with_array(_as_label_array(volume.array, path))


def _as_label_array(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer labels as uint8 (uint16 if needed); refuse fractional or negative values."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"label file {path} holds non-integer values; expected a label map")
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise InputError(f"label file {path} has pixel type {array.dtype}; expected integer labels")
    if array.size == 0:
        raise InputError(f"label file {path} is empty")
    low, high = array.min(), array.max()
    if low < 0:
        raise InputError(f"label file {path} holds negative values; expected labels >= 0")
    if high > np.iinfo(np.uint16).max:
        raise InputError(f"label file {path} holds label {high}; expected labels <= 65535")
    dtype = np.uint8 if high <= np.iinfo(np.uint8).max else np.uint16
    return array.astype(dtype, copy=False)


def write_label_volume(path: Path, volume: hd.Volume) -> None:
    """Write a label volume atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    path : pathlib.Path
        Destination; the suffix (``.nii.gz``, ``.nii``, ``.nrrd``) selects the format.
    volume : highdicom.Volume
        Label volume, array axes (z, y, x), affine from (z, y, x) indices to LPS mm.
    """
    path = Path(path)
    suffix = next((s for s in LABEL_SUFFIXES if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise ValueError(f"unsupported label file suffix: {path.name} (use one of {', '.join(LABEL_SUFFIXES)})")
    array = np.asarray(volume.array)
    if array.ndim != 3:
        raise ValueError(f"label volume must be 3-D (z, y, x), got shape {array.shape}")
    write_volume(path, volume)


@dataclass(frozen=True, kw_only=True)
class GeometryTolerance:
    """How far two voxel grids may differ and still count as the same.

    The defaults absorb the float32 rounding of NIfTI headers and format conversions while catching
    any real difference (a sub-voxel shift, a resampling, a flipped axis).

    Attributes
    ----------
    spacing_mm : float
        Absolute tolerance on each voxel spacing, in mm.
    origin_mm : float
        Absolute tolerance on each coordinate of the position of voxel (0, 0, 0), in mm.
    direction : float
        Absolute tolerance on each direction cosine.
    """

    spacing_mm: float = 1e-3
    origin_mm: float = 1e-2
    direction: float = 1e-3


def check_same_geometry(
    test: hd.Volume,
    reference: hd.Volume,
    *,
    case_id: str,
    test_name: str = "prediction",
    reference_name: str = "reference",
    tolerance: GeometryTolerance = GeometryTolerance(),
) -> None:
    """Refuse two label volumes of a case that are not on the same voxel grid.

    Parameters
    ----------
    test, reference : highdicom.Volume
        The two volumes, axes (z, y, x).
    case_id : str
        Named in the error message.
    test_name, reference_name : str
        Names of the two label sets, for the message.
    tolerance : GeometryTolerance
        Tolerances on spacing, origin and direction.

    Raises
    ------
    GeometryMismatchError
        One line naming the case and what differs.
    """
    what = f"case {case_id}: {test_name} and {reference_name}"
    if test.spatial_shape != reference.spatial_shape:
        raise GeometryMismatchError(f"{what} differ in shape (z, y, x): {test.spatial_shape} vs {reference.spatial_shape}")
    spacing_t, spacing_r = np.asarray(test.spacing), np.asarray(reference.spacing)
    if not np.allclose(spacing_t, spacing_r, rtol=0, atol=tolerance.spacing_mm):
        raise GeometryMismatchError(
            f"{what} differ in spacing (sz, sy, sx): {_fmt(spacing_t)} vs {_fmt(spacing_r)} mm"
        )
    if not np.allclose(test.direction, reference.direction, rtol=0, atol=tolerance.direction):
        raise GeometryMismatchError(f"{what} differ in orientation (direction cosines)")
    position_t, position_r = np.asarray(test.position), np.asarray(reference.position)
    if not np.allclose(position_t, position_r, rtol=0, atol=tolerance.origin_mm):
        raise GeometryMismatchError(f"{what} differ in origin: {_fmt(position_t)} vs {_fmt(position_r)} mm (LPS)")


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
