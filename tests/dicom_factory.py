"""Writes tiny DICOM series with known geometry and values, for loader edge-case tests.

Every pixel's Hounsfield value is a function of its own LPS position (:func:`hu_at`), so a test can
check a loaded volume's values *and* geometry at once: ``volume.array[i] ~= hu_at(affine @ i)``.
A wrong slice order, a flipped axis or a wrong spacing all break that equality.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLossless,
    MRImageStorage,
    generate_uid,
)

HFS_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Feet-first supine: columns run towards the patient's right, rows towards posterior.
FFS_ORIENTATION = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)

# HU = 7 x + 3 y + 1 z (x, y, z in LPS mm): distinct along every axis, so mix-ups show.
_PATTERN = np.array([7.0, 3.0, 1.0])


def hu_at(points_lps: np.ndarray) -> np.ndarray:
    """Reference HU at LPS points (..., 3) in mm, before rounding to the integers stored."""
    return np.asarray(points_lps, dtype=np.float64) @ _PATTERN


@dataclass(frozen=True)
class WrittenSeries:
    """What :func:`write_ct_series` wrote, in slice-offset order (index k along row x column normal).

    Attributes
    ----------
    paths : tuple of Path
        Files, one per slice k.
    positions : numpy.ndarray
        (n, 3) ImagePositionPatient of each slice, LPS mm.
    hu : numpy.ndarray
        (n, rows, columns) float64 HU each file encodes (integers).
    study_uid, series_uid, frame_of_reference_uid : str
        UIDs written.
    sop_uids : tuple of str
        SOPInstanceUID of each slice.
    """

    paths: tuple[Path, ...]
    positions: np.ndarray
    hu: np.ndarray
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    sop_uids: tuple[str, ...]


def write_ct_series(
    folder: Path,
    *,
    n_slices: int = 12,
    rows: int = 16,
    columns: int = 16,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    slice_spacing: float = 1.5,
    slice_offsets: Sequence[float] | None = None,
    origin: tuple[float, float, float] = (-6.0, -5.0, 20.0),
    orientation: Sequence[float] = HFS_ORIENTATION,
    tilt_deg: float = 0.0,
    patient_position: str = "HFS",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int | None = 1,
    series_description: str = "CT",
    modality: str = "CT",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    kernel: str | None = "B30f",
    pixel_representation: int = 1,
    rescale_intercepts: float | Sequence[float] | None = None,
    rescale_slope: float = 1.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_name: Callable[[int], str] = lambda k: f"slice_{k:03d}.dcm",
    instance_numbers: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> WrittenSeries:
    """Write a small single-frame series into ``folder`` (created if needed).

    Slice k lies at ``origin + slice_offsets[k] * n`` with n = row cosines x column cosines (for the
    default HFS orientation, +z: towards the head); ``slice_offsets`` defaults to
    ``k * slice_spacing``. With ``tilt_deg`` the image plane is tilted about the LPS x axis (a gantry
    tilt) while the positions still advance along z, as a tilted acquisition stores them.
    Stored value = (HU - intercept) / slope, signed (``pixel_representation=1``, intercept 0 by
    default) or unsigned (``0``, intercept -1024 by default). ``rescale_intercepts`` may vary per slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid if study_uid is not None else generate_uid()
    series_uid = series_uid if series_uid is not None else generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    offsets = np.asarray(
        slice_offsets if slice_offsets is not None else np.arange(n_slices) * slice_spacing, dtype=np.float64
    )
    n = len(offsets)
    iop = np.asarray(orientation, dtype=np.float64)
    if tilt_deg:
        t = math.radians(tilt_deg)
        iop = np.array([1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t)])
        normal = np.array([0.0, 0.0, 1.0])  # positions advance along the table, not the plane normal
    else:
        normal = np.cross(iop[:3], iop[3:])
    row_cos, col_cos = iop[:3], iop[3:]
    if rescale_intercepts is None:
        rescale_intercepts = 0.0 if pixel_representation else -1024.0
    intercepts = np.broadcast_to(np.asarray(rescale_intercepts, dtype=np.float64), (n,))
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, n + 1))

    r_index, c_index = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    paths: list[Path] = []
    positions = np.empty((n, 3))
    hu_all = np.empty((n, rows, columns))
    sop_uids: list[str] = []
    for k in range(n):
        position = np.asarray(origin) + offsets[k] * normal
        points = (
            position
            + c_index[..., None] * pixel_spacing[1] * row_cos
            + r_index[..., None] * pixel_spacing[0] * col_cos
        )
        hu = np.rint(hu_at(points))
        stored = np.rint((hu - intercepts[k]) / rescale_slope)
        dtype = np.int16 if pixel_representation else np.uint16
        info = np.iinfo(dtype)
        assert stored.min() >= info.min and stored.max() <= info.max, "pattern out of the storable range"
        sop_uid = generate_uid()
        ds = _ct_dataset(
            sop_uid=sop_uid,
            sop_class=MRImageStorage if modality == "MR" else CTImageStorage,
            modality=modality,
            study_uid=study_uid,
            series_uid=series_uid,
            frame_of_reference_uid=frame_of_reference_uid,
            series_number=series_number,
            series_description=series_description,
            image_type=image_type,
            kernel=kernel,
            instance_number=numbers[k],
            position=position,
            orientation=iop,
            pixel_spacing=pixel_spacing,
            patient_position=patient_position,
            pixel_representation=pixel_representation,
            intercept=float(intercepts[k]) if modality != "MR" else None,
            slope=rescale_slope if modality != "MR" else None,
            slice_thickness=slice_spacing,
            tilt_deg=tilt_deg,
        )
        ds.Rows, ds.Columns = rows, columns
        ds.PixelData = stored.astype(dtype).tobytes()
        if extra:
            for keyword, value in extra.items():
                setattr(ds, keyword, value)
        path = folder / file_name(k)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(ds, path, transfer_syntax)
        paths.append(path)
        positions[k] = position
        hu_all[k] = hu
        sop_uids.append(sop_uid)
    return WrittenSeries(
        paths=tuple(paths),
        positions=positions,
        hu=hu_all,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=frame_of_reference_uid,
        sop_uids=tuple(sop_uids),
    )


def copy_instance(
    source: Path, destination: Path, *, new_sop_uid: bool = False, add_to_pixels: int = 0
) -> Path:
    """Write a copy of an (uncompressed) instance, optionally as another SOP instance or with other pixels."""
    ds = pydicom.dcmread(source)
    if new_sop_uid:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if add_to_pixels:
        ds.PixelData = (ds.pixel_array + add_to_pixels).astype(ds.pixel_array.dtype).tobytes()
    destination.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(destination, enforce_file_format=True)
    return destination


def _ct_dataset(
    *,
    sop_uid: str,
    sop_class: str,
    modality: str,
    study_uid: str,
    series_uid: str,
    frame_of_reference_uid: str,
    series_number: int | None,
    series_description: str,
    image_type: Sequence[str],
    kernel: str | None,
    instance_number: int,
    position: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing: tuple[float, float],
    patient_position: str,
    pixel_representation: int,
    intercept: float | None,
    slope: float | None,
    slice_thickness: float,
    tilt_deg: float,
) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    # Synthetic, non-identifying patient data.
    ds.PatientName = "Synthetic^Loader"
    ds.PatientID = "SYNTH-0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.Manufacturer = "dicom_factory"
    if series_number is not None:
        ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    if kernel is not None:
        ds.ConvolutionKernel = kernel
    ds.InstanceNumber = instance_number
    ds.PatientPosition = patient_position
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.SliceThickness = _ds(slice_thickness)
    if tilt_deg:
        ds.GantryDetectorTilt = _ds(tilt_deg)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = pixel_representation
    if intercept is not None and slope is not None:
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "HU"
    return ds


def _ds(value: float) -> str:
    """A DS string of at most 16 characters that keeps sub-micrometre precision."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    syntax = UID(transfer_syntax)
    if syntax == JPEGLossless:
        # pydicom has no JPEG Lossless encoder; imagecodecs' lossless JPEG (process 14) does it.
        import imagecodecs
        from pydicom.encaps import encapsulate

        if ds.PixelRepresentation != 0:
            raise ValueError("the JPEG Lossless test writer handles unsigned pixel data only")
        frame = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
        ds.PixelData = encapsulate([imagecodecs.ljpeg_encode(frame, bitspersample=ds.BitsStored)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
