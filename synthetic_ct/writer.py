"""Writing a synthetic study to disk: DICOM series, label map and truth.

Layout of ``out_dir`` (written to a temporary sibling folder, then renamed into place)::

    out_dir/
        DICOM/ST000000/SE000000/IM000000 ...   localizer (series 1)
                       SE000001/IM000000 ...   thin bone-kernel axial series (series 2, primary)
                       SE000002/IM000000 ...   thick soft-tissue axial series (series 3)
        labels.nii.gz                          label map in the primary series' geometry
        truth.json                             everything generated (no patient identity)

Every image is a CT Image Storage instance with the Patient, General Study, Patient Study,
General Series, Frame of Reference, General Equipment, General Image, Image Plane, Image Pixel,
CT Image, VOI LUT and SOP Common modules. File names have no extension, like many PACS exports.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as puid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.valuerep import DSfloat

from operators.volume_io import write_volume

from .config import transfer_syntax_uid
from .identity import derived_uid
from .phantom import GENERATOR_VERSION, SyntheticPhantom
from .transfer_syntax import available_transfer_syntaxes, encode_pixels

logger = logging.getLogger(__name__)

SERIES_ROLES = ("thin", "thick", "localizer")
#: Folder under ``out_dir`` that holds the DICOM files (the application's input folder).
DICOM_FOLDER = "DICOM"
# Implementation Class UID of this generator (a fixed UUID-derived UID).
_IMPLEMENTATION_UID = "2.25.188321026123057305049616532430395169511"
_IMPLEMENTATION_VERSION = "SYNTHCT_" + GENERATOR_VERSION.replace(".", "")

ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class WrittenSeries:
    """One series on disk.

    Attributes
    ----------
    role
        ``"thin"`` (primary), ``"thick"`` or ``"localizer"``.
    uid
        SeriesInstanceUID.
    number
        SeriesNumber.
    description
        SeriesDescription.
    transfer_syntax
        Transfer syntax UID of its files.
    image_type
        ImageType values.
    files
        Paths of its files, in instance-number order.
    """

    role: str
    uid: str
    number: int
    description: str
    transfer_syntax: str
    image_type: tuple[str, ...]
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class WrittenStudy:
    """A study written by :func:`write_study`.

    Attributes
    ----------
    root
        ``out_dir``.
    study_dir
        The folder holding only the DICOM files (give this to the application).
    series
        The series written, localizer first.
    labels_path, truth_path
        ``labels.nii.gz`` and ``truth.json``.
    study_uid
        StudyInstanceUID.
    """

    root: Path
    study_dir: Path
    series: list[WrittenSeries]
    labels_path: Path
    truth_path: Path
    study_uid: str

    def series_by_role(self, role: str) -> WrittenSeries:
        """The series with the given role (``"thin"``, ``"thick"``, ``"localizer"``)."""
        for s in self.series:
            if s.role == role:
                return s
        raise KeyError(f"no {role!r} series in this study")


def write_study(
    phantom: SyntheticPhantom,
    out_dir: Path | str,
    *,
    series: Sequence[str] = SERIES_ROLES,
    transfer_syntax: str | Mapping[str, str] | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> WrittenStudy:
    """Write ``phantom`` as a DICOM study plus ground truth into ``out_dir``.

    Parameters
    ----------
    phantom
        From :func:`~synthetic_ct.phantom.generate_phantom`.
    out_dir
        Folder to create. Written under a temporary name next to it and renamed when complete.
    series
        Which series to write, among ``"thin"`` (primary), ``"thick"`` and ``"localizer"``.
    transfer_syntax
        One transfer syntax (UID or name such as ``"jpeg2000"``) for all series, or a mapping
        role -> transfer syntax; default: the phantom's configured one. See
        :func:`~synthetic_ct.transfer_syntax.available_transfer_syntaxes`.
    overwrite
        Replace an existing ``out_dir``; otherwise an existing one is an error.
    progress
        Called with ``(stage, fraction done)``.

    Returns
    -------
    WrittenStudy
    """
    out_dir = Path(out_dir)
    roles = [r for r in SERIES_ROLES if r in series]
    unknown = set(series) - set(SERIES_ROLES)
    if unknown:
        raise ValueError(f"unknown series {sorted(unknown)}; choose from {list(SERIES_ROLES)}")
    if not roles:
        raise ValueError("no series to write")
    ts_by_role = _transfer_syntaxes(phantom, transfer_syntax, roles)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True to replace it")
    report = progress or (lambda stage, frac: None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    t0 = time.perf_counter()
    try:
        study_dir = tmp / DICOM_FOLDER
        st_dir = study_dir / "ST000000"
        written: list[WrittenSeries] = []
        n_total = sum(_n_images(phantom, r) for r in roles)
        done = [0]

        def tick(stage: str) -> None:
            done[0] += 1
            if done[0] % 16 == 0 or done[0] == n_total:
                report(stage, done[0] / n_total)

        # Series folders in series-number order: localizer, thin, thick.
        for role in sorted(roles, key=lambda r: _SERIES_NUMBER[r]):
            se_dir = st_dir / f"SE{_SERIES_NUMBER[role] - 1:06d}"
            written.append(_write_series(phantom, role, se_dir, ts_by_role[role], tick))
        labels_path = tmp / "labels.nii.gz"
        _write_labels(phantom, labels_path)
        truth = dict(phantom.truth)
        truth["series"] = [
            {
                "role": s.role,
                "series_instance_uid": s.uid,
                "series_number": s.number,
                "description": s.description,
                "image_type": list(s.image_type),
                "transfer_syntax": s.transfer_syntax,
                "transfer_syntax_name": puid.UID(s.transfer_syntax).name,
                "number_of_instances": len(s.files),
                "folder": str(s.files[0].parent.relative_to(tmp)) if s.files else None,
                "primary": s.role == "thin",
            }
            for s in written
        ]
        truth["labels_file"] = "labels.nii.gz"
        truth["labels_geometry_series_uid"] = _series_uid(phantom, "thin")
        truth_path = tmp / "truth.json"
        truth_path.write_text(json.dumps(truth, indent=2, sort_keys=False) + "\n")
        # Move into place.
        if out_dir.exists():
            trash = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(trash)
            tmp.rename(out_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    def moved(p: Path) -> Path:
        return out_dir / p.relative_to(tmp)

    final_series = [
        WrittenSeries(s.role, s.uid, s.number, s.description, s.transfer_syntax, s.image_type, [moved(f) for f in s.files])
        for s in written
    ]
    logger.info(
        "wrote study (%d series, %d files) in %.1f s", len(final_series), sum(len(s.files) for s in final_series), time.perf_counter() - t0
    )
    return WrittenStudy(
        root=out_dir,
        study_dir=out_dir / DICOM_FOLDER,
        series=final_series,
        labels_path=out_dir / "labels.nii.gz",
        truth_path=out_dir / "truth.json",
        study_uid=phantom.uids["study"],
    )


# ---------------------------------------------------------------------- helpers

_SERIES_NUMBER = {"localizer": 1, "thin": 2, "thick": 3}


def _transfer_syntaxes(phantom: SyntheticPhantom, ts: str | Mapping[str, str] | None, roles: Iterable[str]) -> dict[str, str]:
    avail = set(available_transfer_syntaxes().values())
    out = {}
    for role in roles:
        if ts is None:
            choice = phantom.config.transfer_syntax
        elif isinstance(ts, str):
            choice = ts
        else:
            choice = ts.get(role, phantom.config.transfer_syntax)
        uid = transfer_syntax_uid(choice)
        if uid not in avail:
            raise ValueError(f"transfer syntax {puid.UID(uid).name} cannot be encoded here (missing codec)")
        out[role] = uid
    return out


def _n_images(phantom: SyntheticPhantom, role: str) -> int:
    if role == "thin":
        return phantom.grid.shape[0]
    if role == "thick":
        return phantom.thick_grid.shape[0]
    return 1


def _series_uid(phantom: SyntheticPhantom, role: str) -> str:
    return derived_uid(phantom.uids["study"], "series", role)


def _rng(phantom: SyntheticPhantom, what: str) -> np.random.Generator:
    """Deterministic generator for header details (dates, dose...), independent of the image."""
    seq = np.random.SeedSequence([phantom.seed, abs(hash_str(what)) % (2**32)])
    return np.random.default_rng(seq)


def hash_str(s: str) -> int:
    """Stable (process-independent) 32-bit hash of a string."""
    import zlib

    return zlib.crc32(s.encode("utf-8"))


def _description(phantom: SyntheticPhantom, role: str) -> tuple[str, str]:
    """(SeriesDescription, BodyPartExamined)."""
    in_view = phantom.truth.get("femurs_in_view", [])
    body_part = "ABDOMEN" if not in_view else ("LEG" if len(in_view) == 1 else "PELVIS")
    if role == "thin":
        k = phantom.kernels["thin"]
        return f"Bone {phantom.grid.slice_thickness:.2g} {k.name}", body_part
    if role == "thick":
        k = phantom.kernels["thick"]
        return f"Soft Tissue {phantom.thick_grid.slice_thickness:.2g} {k.name}", body_part
    return "Topogram 0.6", body_part


def _study_level(phantom: SyntheticPhantom) -> Dataset:
    """Attributes shared by every image of the study (patient, study, equipment, frame)."""
    ident = phantom.identity
    rng = _rng(phantom, "study")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    # Patient
    ds.PatientName = ident.name
    ds.PatientID = ident.patient_id
    ds.IssuerOfPatientID = "SYNTHETIC HOSPITAL"
    ds.PatientBirthDate = ident.birth_date
    ds.PatientSex = ident.sex
    # General Study
    ds.StudyInstanceUID = phantom.uids["study"]
    ds.StudyDate = ident.study_date
    ds.StudyTime = ident.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(int(rng.integers(1000, 99999)))
    ds.AccessionNumber = ident.accession_number
    ds.StudyDescription = "CT ABDOMEN" if not phantom.truth.get("femurs_in_view") else "CT PELVIS AND BOTH FEMURS"
    # Patient Study
    ds.PatientAge = ident.age
    ds.PatientSize = f"{ident.size:.2f}"
    ds.PatientWeight = f"{ident.weight:.1f}"
    # Frame of Reference
    ds.FrameOfReferenceUID = phantom.uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    # General Equipment
    v = phantom.vendor
    ds.Manufacturer = v.manufacturer
    ds.InstitutionName = "Synthetic Hospital"
    ds.StationName = f"CT{int(rng.integers(1, 9))}"
    ds.ManufacturerModelName = str(rng.choice(v.models))
    ds.DeviceSerialNumber = str(int(rng.integers(10000, 99999)))
    ds.SoftwareVersions = str(rng.choice(v.software))
    return ds


def _write_series(
    phantom: SyntheticPhantom, role: str, se_dir: Path, ts: str, tick: Callable[[str], None]
) -> WrittenSeries:
    se_dir.mkdir(parents=True, exist_ok=True)
    cfg = phantom.config
    base = _study_level(phantom)
    rng = _rng(phantom, f"series-{role}")
    series_uid = _series_uid(phantom, role)
    description, body_part = _description(phantom, role)
    number = _SERIES_NUMBER[role]
    study_dt = _parse_dt(phantom.identity.study_date, phantom.identity.study_time)
    # The localizer is acquired first, then the spiral; reconstructions follow.
    offset = {"localizer": 0.0, "thin": 95.0, "thick": 140.0}[role] + float(rng.uniform(0, 20))
    series_dt = _fmt(study_dt + _seconds(offset))
    acq_dt = _fmt(study_dt + _seconds({"localizer": 0.0, "thin": 60.0, "thick": 60.0}[role]))

    base.Modality = "CT"
    base.SeriesInstanceUID = series_uid
    base.SeriesNumber = number
    base.SeriesDescription = description
    base.SeriesDate = series_dt[0]
    base.SeriesTime = series_dt[1]
    base.ProtocolName = "Pelvis-Femur Bone" if phantom.truth.get("femurs_in_view") else "Abdomen"
    base.BodyPartExamined = body_part
    in_view = phantom.truth.get("femurs_in_view", [])
    # Laterality (type 2C) is required for a paired body part and absent otherwise: a scan of
    # one leg has it, a bilateral scan (body part PELVIS) and an abdominal scan do not.
    if len(in_view) == 1:
        base.Laterality = {"left": "L", "right": "R"}[in_view[0]]
    base.PatientPosition = cfg.patient_position
    base.AcquisitionNumber = 1
    base.AcquisitionDate = acq_dt[0]
    base.AcquisitionTime = acq_dt[1]
    base.ContentDate = series_dt[0]
    # CT acquisition
    kvp = phantom.truth["scanner"]["kvp"]
    base.KVP = f"{kvp:g}"
    base.GantryDetectorTilt = "0"
    base.RotationDirection = "CW"
    base.DistanceSourceToDetector = "1040"
    base.DistanceSourceToPatient = "570"
    base.FocalSpots = "1.2"
    base.FilterType = "BODY"
    base.TableHeight = f"{float(rng.uniform(100, 200)):.1f}"
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.BitsAllocated = 16

    if role == "localizer":
        return _write_localizer(phantom, base, se_dir, ts, rng, tick, number, description, series_uid)

    vol = phantom.ct if role == "thin" else phantom.thick_ct
    grid = phantom.grid if role == "thin" else phantom.thick_grid
    kernel = phantom.kernels[role]
    signed = cfg.storage == "signed"
    intercept = 0 if signed else -1024
    bits = 16 if (signed or cfg.extended_hu) else 12
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.ScanOptions = "HELICAL MODE"
    base.DataCollectionDiameter = "500"
    base.ReconstructionDiameter = f"{grid.pixel_spacing[1] * grid.shape[2]:.1f}"
    base.ConvolutionKernel = kernel.name
    base.RevolutionTime = float(rng.choice([0.28, 0.33, 0.5, 0.8]))
    base.SingleCollimationWidth = 0.6
    base.TotalCollimationWidth = float(rng.choice([19.2, 38.4, 40.0, 80.0]))
    base.SpiralPitchFactor = round(float(rng.uniform(0.6, 1.2)), 2)
    base.XRayTubeCurrent = int(rng.integers(80, 350))
    base.ExposureTime = int(rng.integers(500, 1000))
    base.Exposure = int(base.XRayTubeCurrent * base.ExposureTime / 1000)
    base.CTDIvol = round(float(rng.uniform(3.0, 15.0)), 2)
    phantom_code = Dataset()
    phantom_code.CodeValue = "113691"
    phantom_code.CodingSchemeDesignator = "DCM"
    phantom_code.CodeMeaning = "IEC Body Dosimetry Phantom"
    base.CTDIPhantomTypeCodeSequence = [phantom_code]
    base.Rows, base.Columns = grid.shape[1], grid.shape[2]
    base.PixelSpacing = _ds(grid.pixel_spacing)
    base.ImageOrientationPatient = [f"{v:g}" for v in grid.image_orientation]
    base.SliceThickness = _ds1(grid.slice_thickness)
    base.SpacingBetweenSlices = _ds1(grid.slice_spacing)
    base.BitsStored = bits
    base.HighBit = bits - 1
    base.PixelRepresentation = 1 if signed else 0
    base.RescaleIntercept = str(intercept)
    base.RescaleSlope = "1"
    base.RescaleType = "HU"
    pad = phantom.truth["scanner"].get("circular_fov_padding_hu")
    if pad is not None:
        base.PixelPaddingValue = int(pad - intercept)
    if role == "thin":
        base.WindowCenter = ["500", "40"]
        base.WindowWidth = ["2000", "400"]
        base.WindowCenterWidthExplanation = ["BONE", "SOFT TISSUE"]
    else:
        base.WindowCenter = ["40", "500"]
        base.WindowWidth = ["400", "2000"]
        base.WindowCenterWidthExplanation = ["SOFT TISSUE", "BONE"]

    positions = grid.slice_positions()
    z = positions[:, 2]
    # Instance numbers follow the configured slice order along the table.
    order = np.argsort(z) if cfg.slice_order == "ascending" else np.argsort(-z)
    dtype = np.int16 if signed else np.uint16
    files = []
    arr = vol.array
    for inst, k in enumerate(order, start=1):
        ds = Dataset()
        ds.update(base)
        sop = derived_uid(series_uid, "instance", inst)
        ds.SOPClassUID = puid.CTImageStorage
        ds.SOPInstanceUID = sop
        ds.InstanceCreationDate = series_dt[0]
        ds.InstanceCreationTime = series_dt[1]
        ds.InstanceNumber = inst
        ds.ContentTime = _add_time(series_dt[1], inst * 0.01)
        ds.ImagePositionPatient = _ds(positions[k])
        ds.SliceLocation = _ds1(positions[k][2])
        stored = np.rint(arr[k] - intercept).astype(dtype)
        ds.file_meta = _file_meta(sop)
        encode_pixels(ds, stored, ts)
        path = se_dir / f"IM{inst - 1:06d}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
        tick(f"writing {role} series")
    return WrittenSeries(role, series_uid, number, description, ts, tuple(base.ImageType), files)


def _write_localizer(
    phantom: SyntheticPhantom,
    base: Dataset,
    se_dir: Path,
    ts: str,
    rng: np.random.Generator,
    tick: Callable[[str], None],
    number: int,
    description: str,
    series_uid: str,
) -> WrittenSeries:
    loc = phantom.localizer
    ds = Dataset()
    ds.update(base)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ScanOptions = "SURVIEW" if phantom.vendor.manufacturer == "Philips" else "TOPOGRAM"
    ds.XRayTubeCurrent = int(rng.integers(20, 60))
    ds.ExposureTime = int(rng.integers(2000, 6000))
    ds.Exposure = int(ds.XRayTubeCurrent * ds.ExposureTime / 1000)
    ds.ConvolutionKernel = "T20f" if phantom.vendor.manufacturer == "SIEMENS" else "STANDARD"
    ds.Rows, ds.Columns = loc.array.shape
    ds.PixelSpacing = _ds(loc.pixel_spacing)
    ds.ImageOrientationPatient = [f"{v:g}" for v in loc.image_orientation]
    ds.ImagePositionPatient = _ds(loc.image_position)
    ds.SliceThickness = ""
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.WindowCenter = "1800"
    ds.WindowWidth = "3600"
    sop = derived_uid(series_uid, "instance", 1)
    ds.SOPClassUID = puid.CTImageStorage
    ds.SOPInstanceUID = sop
    ds.InstanceCreationDate = base.SeriesDate
    ds.InstanceCreationTime = base.SeriesTime
    ds.InstanceNumber = 1
    ds.ContentTime = base.SeriesTime
    ds.file_meta = _file_meta(sop)
    encode_pixels(ds, loc.array.astype(np.uint16), ts)
    path = se_dir / "IM000000"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    tick("writing localizer")
    return WrittenSeries("localizer", series_uid, number, description, ts, tuple(ds.ImageType), [path])


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = puid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    return meta


def _write_labels(phantom: SyntheticPhantom, path: Path) -> None:
    """Label map as NIfTI with exactly the primary series' geometry (see :mod:`operators.volume_io`)."""
    write_volume(path, phantom.labels.with_array(phantom.labels.array.astype(np.uint8, copy=False)))


def _parse_dt(date: str, time_: str):
    import datetime as dt

    return dt.datetime.strptime(date + time_.split(".")[0], "%Y%m%d%H%M%S")


def _seconds(s: float):
    import datetime as dt

    return dt.timedelta(seconds=s)


def _add_time(t: str, seconds: float) -> str:
    import datetime as dt

    base = dt.datetime.strptime(t.split(".")[0], "%H%M%S")
    out = base + dt.timedelta(seconds=seconds)
    return out.strftime("%H%M%S") + f".{int((seconds % 1) * 1e6):06d}"


def _fmt(d) -> tuple[str, str]:
    return d.strftime("%Y%m%d"), d.strftime("%H%M%S")


def _ds1(v: float) -> DSfloat:
    """A decimal string holding ``v`` as exactly as 16 characters allow."""
    return DSfloat(float(v), auto_format=True)


def _ds(values) -> list[DSfloat]:
    return [_ds1(v) for v in values]
