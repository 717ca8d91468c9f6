"""A corpus of broken and hostile DICOM inputs, each with the behaviour the application must show.

    python -m synthetic_ct.bad_input --out corpus/                      # every case
    python -m synthetic_ct.bad_input --out corpus/ --case gantry_tilt   # some cases
    python -m synthetic_ct.bad_input --list                             # names and expected outcomes

Each case is written into ``<out>/<case>/input/``, the folder to give the application
(``python -m app -i <out>/<case>/input -o ...``), with ``<out>/<case>/case.json`` beside it: what is
wrong with the input, the correct behaviour in words, and the expected outcome, either

* ``"ok"``: the loader builds a volume of ``shape`` (slices, rows, columns) from the series; or
* ``"error"``: the run stops with exit status 2 and one line on standard error, ``error: <message>``,
  where the message contains every string of ``words`` (the problem and, where one file is at fault,
  that file's name), and ``error`` names the class of :mod:`operators.errors` the loader raises.

Whatever the outcome, the input folder is left as it was and nothing half-written is left in the output
folder. A site can run the application on every case as part of its acceptance testing; the product's
own tests (``tests/test_bad_input.py``) run every case through the loader and some through the
application.

The cases start from one small valid CT series (12 axial slices of 32 x 32 pixels, 2 mm apart, signed
16-bit, uncompressed) with synthetic patient identifiers (:data:`CORPUS_PATIENT`) that are unique strings,
so that a test can search logs and messages for them. Everything is deterministic: UIDs are derived
from the case name. Some cases need POSIX features (symbolic links, a FIFO, file modes, file names that
are not UTF-8); they are meant for Linux.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

__all__ = [
    "BAD_INPUT_CASES",
    "CORPUS_PATIENT",
    "BadInputCase",
    "Expectation",
    "main",
    "patch_transfer_syntax",
    "write_case",
    "write_corpus",
    "write_series",
]

#: Patient identifiers of every corpus file: unique strings that must never appear in a log or message.
CORPUS_PATIENT: Mapping[str, str] = {
    "PatientName": "Qorpuszname^Vexlidor",
    "PatientID": "QPID-58Z1K7W",
    "PatientBirthDate": "19070523",
    "OtherPatientIDs": "QOPID-3H6T0",
    "AccessionNumber": "QACC4R8M2",
}

SECONDARY_CAPTURE_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
_HFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_BASE_SLICES = 12
_BASE_MATRIX = 32


@dataclass(frozen=True)
class Expectation:
    """What the loader and the application must do with a case.

    Attributes
    ----------
    outcome : {"ok", "error"}
        A volume, or a one-line error with exit status 2.
    error : str
        For ``"error"``: name of the :mod:`operators.errors` class the loader raises.
    words : tuple of str
        For ``"error"``: strings the one-line message contains (the problem, and the file at fault).
    shape : tuple of 3 int or None
        For ``"ok"``: shape (slices, rows, columns) of the loaded volume.
    """

    outcome: Literal["ok", "error"]
    error: str = ""
    words: tuple[str, ...] = ()
    shape: tuple[int, int, int] | None = None


def _ok(shape: tuple[int, int, int] = (_BASE_SLICES, _BASE_MATRIX, _BASE_MATRIX)) -> Expectation:
    return Expectation("ok", shape=shape)


def _error(error: str, *words: str) -> Expectation:
    return Expectation("error", error=error, words=tuple(words))


@dataclass(frozen=True)
class BadInputCase:
    """One corpus case.

    Attributes
    ----------
    name : str
        Folder name of the case.
    problem : str
        What is wrong with the input.
    behaviour : str
        The correct behaviour, in words.
    expected : Expectation
        The outcome a test checks.
    build : callable
        Writes the case's input files into the folder it is given (which exists and is empty).
    size : {"small", "large"}
        ``"large"`` cases write many files or many megabytes (seconds, not milliseconds).
    """

    name: str
    problem: str
    behaviour: str
    expected: Expectation
    build: Callable[[Path], None] = field(repr=False)
    size: Literal["small", "large"] = "small"

    def describe(self) -> dict[str, Any]:
        """What ``case.json`` holds."""
        expected = {k: v for k, v in asdict(self.expected).items() if v not in ("", (), None)}
        return {"name": self.name, "problem": self.problem, "behaviour": self.behaviour, "expected": expected}


# --------------------------------------------------------------------------------------------------
# The valid series every case starts from


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["femur-lesion bad-input corpus", *(str(p) for p in parts)])


def _slice_name(k: int) -> str:
    return f"slice_{k:03d}.dcm"


def write_series(
    folder: Path,
    *,
    key: str = "ct",
    n_slices: int = _BASE_SLICES,
    rows: int = _BASE_MATRIX,
    columns: int = _BASE_MATRIX,
    pixel_spacing: tuple[float, float] = (0.8, 0.8),
    slice_spacing: float = 2.0,
    offsets: Sequence[float] | None = None,
    orientation: Sequence[float] = _HFS,
    tilt_deg: float = 0.0,
    modality: str = "CT",
    sop_class: str = CTImageStorage,
    series_number: int = 2,
    description: str = "Femur axial 2 mm",
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    patient: Mapping[str, str] = CORPUS_PATIENT,
    study_uid: str | None = None,
    file_name: Callable[[int], str | bytes] = _slice_name,
    transfer_syntax: str = ExplicitVRLittleEndian,
    per_slice: Callable[[Dataset, int], None] | None = None,
) -> list[Path]:
    """Write a small valid single-frame CT series into ``folder``; returns the paths in slice order.

    Slice k lies at ``(-12.8, -12.8, offsets[k])`` mm (LPS), ``offsets`` being ``k * slice_spacing``
    unless given; with ``tilt_deg`` the image plane is tilted about the LPS x axis while the positions
    advance along z, as a tilted gantry stores them. Stored values are signed 16-bit, HU = stored - 1000
    (a ramp across the image plus 10 HU per slice). ``per_slice(ds, k)`` may change each dataset before
    it is saved. ``file_name(k)`` may return bytes (a file name that is not UTF-8).
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or _uid("study", key)
    series_uid = _uid("series", key)
    frame_uid = _uid("frame", key)
    offsets_mm = list(offsets) if offsets is not None else [k * slice_spacing for k in range(n_slices)]
    iop = list(orientation)
    if tilt_deg:
        t = np.radians(tilt_deg)
        iop = [1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(-np.sin(t))]
    ramp = (np.add.outer(np.arange(rows), np.arange(columns)) * 4 % 1500).astype(np.int16)
    paths: list[Path] = []
    for k, offset in enumerate(offsets_mm):
        sop_uid = _uid("sop", key, k)
        ds = _image_dataset(sop_class=sop_class, sop_uid=sop_uid, transfer_syntax=transfer_syntax)
        _patient_and_study(ds, patient, study_uid)
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.FrameOfReferenceUID = frame_uid
        ds.ImageType = list(image_type)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-12.8, -12.8, float(offset)]
        ds.ImageOrientationPatient = [round(v, 6) for v in iop]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = slice_spacing
        if tilt_deg:
            ds.GantryDetectorTilt = tilt_deg
        ds.ConvolutionKernel = "B60f"
        ds.KVP = 120
        _monochrome(ds, rows, columns)
        ds.RescaleIntercept = -1000
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.PixelData = (ramp + np.int16(200 + 10 * k)).tobytes()
        if per_slice is not None:
            per_slice(ds, k)
        name = file_name(k)
        path = Path(os.fsdecode(name)) if isinstance(name, bytes) else Path(name)
        _save(ds, folder / path, transfer_syntax)
        paths.append(folder / path)
    return paths


def _image_dataset(*, sop_class: str, sop_uid: str, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _patient_and_study(ds: Dataset, patient: Mapping[str, str], study_uid: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, value in patient.items():
        setattr(ds, keyword, value)
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "femur-lesion bad-input corpus"


def _monochrome(ds: Dataset, rows: int, columns: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    syntax = UID(transfer_syntax)
    if syntax == RLELossless:
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


def _base(folder: Path, **kwargs: Any) -> list[Path]:
    return write_series(folder, **kwargs)


# --------------------------------------------------------------------------------------------------
# Case builders


def _truncated_pixel_data(folder: Path) -> None:
    paths = _base(folder)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 1000])


def _truncated_header(folder: Path) -> None:
    paths = _base(folder)
    paths[5].write_bytes(paths[5].read_bytes()[:300])


def _zero_byte_file(folder: Path) -> None:
    _base(folder)
    (folder / "IM_EMPTY").write_bytes(b"")


def _missing_pixel_data(folder: Path) -> None:
    def drop(ds: Dataset, k: int) -> None:
        if k == 3:
            del ds.PixelData

    _base(folder, per_slice=drop)


def _declared_jpeg_native_data(folder: Path) -> None:
    paths = _base(folder)
    _rewrite_meta(paths[4], transfer_syntax=JPEGBaseline8Bit)


def _declared_implicit_explicit_data(folder: Path) -> None:
    paths = _base(folder)
    _rewrite_meta(paths[4], transfer_syntax=ImplicitVRLittleEndian)


def _rewrite_meta(path: Path, *, transfer_syntax: str) -> None:
    """Change the TransferSyntaxUID in the file meta of ``path`` without re-encoding the dataset."""
    path.write_bytes(patch_transfer_syntax(path.read_bytes(), transfer_syntax))


def patch_transfer_syntax(data: bytes, transfer_syntax: str) -> bytes:
    """A file's bytes with another TransferSyntaxUID in its file meta, the dataset left as it is.

    ``data`` must be a file written with a preamble and Explicit VR Little Endian (as :func:`write_series`
    writes them); raises ValueError otherwise.
    """
    out = bytearray(data)
    old = ExplicitVRLittleEndian.encode("ascii") + b"\x00"  # 19 characters, padded to 20
    new = transfer_syntax.encode("ascii")
    new += b"\x00" * (len(new) % 2)
    start = out.index(b"\x02\x00\x10\x00UI\x14\x00" + old) + 8  # (0002,0010) UI, length 20
    # The element's value length (2 bytes before the value, explicit VR little endian file meta).
    out[start - 2:start] = len(new).to_bytes(2, "little")
    out[start:start + len(old)] = new
    # The file meta group length (0002,0000) counts the bytes of the group after it.
    group_length_at = 128 + 4 + 8
    if out[128:132] != b"DICM" or out[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise ValueError("not a file with a preamble and a file meta group length")
    length = int.from_bytes(out[group_length_at:group_length_at + 4], "little")
    out[group_length_at:group_length_at + 4] = (length + len(new) - len(old)).to_bytes(4, "little")
    return bytes(out)


def _missing_position(folder: Path) -> None:
    def drop(ds: Dataset, k: int) -> None:
        if k == 6:
            del ds.ImagePositionPatient

    _base(folder, per_slice=drop)


def _missing_orientation(folder: Path) -> None:
    def drop(ds: Dataset, k: int) -> None:
        del ds.ImageOrientationPatient

    _base(folder, per_slice=drop)


def _contradictory_orientation(folder: Path) -> None:
    def rotate(ds: Dataset, k: int) -> None:
        if k == 6:
            a = np.radians(3.0)
            ds.ImageOrientationPatient = [round(float(v), 6) for v in
                                          (np.cos(a), np.sin(a), 0.0, -np.sin(a), np.cos(a), 0.0)]

    _base(folder, per_slice=rotate)


def _non_orthogonal_orientation(folder: Path) -> None:
    _base(folder, orientation=(1.0, 0.0, 0.0, 0.5, 0.866025, 0.0))


def _invalid_position_values(folder: Path) -> None:
    def garble(ds: Dataset, k: int) -> None:
        if k == 2:
            ds["ImagePositionPatient"].value = ["-12.8", "nan", "4"]

    _base(folder, per_slice=garble)


def _missing_pixel_spacing(folder: Path) -> None:
    def drop(ds: Dataset, k: int) -> None:
        del ds.PixelSpacing

    _base(folder, per_slice=drop)


def _same_uid_two_positions(folder: Path) -> None:
    paths = _base(folder)
    # A copy of slice 8 (same SOPInstanceUID) moved to another position.
    _rewrite(paths[8], folder / "slice_008_moved.dcm", ImagePositionPatient=[-12.8, -12.8, 23.0])


def _rewrite(source: Path, target: Path, **changes: Any) -> None:
    import pydicom

    ds = pydicom.dcmread(source)
    for keyword, value in changes.items():
        if keyword.startswith("MediaStorage"):
            setattr(ds.file_meta, keyword, value)
        else:
            setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)


def _one_slice(folder: Path) -> None:
    _base(folder, n_slices=1)


def _two_slices(folder: Path) -> None:
    _base(folder, n_slices=2)


def _duplicate_file(folder: Path) -> None:
    paths = _base(folder)
    shutil.copyfile(paths[4], folder / "copy_of_slice_004.dcm")


def _duplicate_new_uid_same_pixels(folder: Path) -> None:
    paths = _base(folder)
    uid = _uid("sop", "ct", "resent-4")
    _rewrite(paths[4], folder / "resent_slice_004.dcm", SOPInstanceUID=uid, MediaStorageSOPInstanceUID=uid)


def _duplicate_conflicting(folder: Path) -> None:
    import pydicom

    paths = _base(folder)
    ds = pydicom.dcmread(paths[4])
    uid = _uid("sop", "ct", "other-4")
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.PixelData = (ds.pixel_array + 50).astype(np.int16).tobytes()
    ds.save_as(folder / "slice_004_other.dcm", enforce_file_format=True)


def _missing_slice(folder: Path) -> None:
    paths = _base(folder)
    paths[6].unlink()


def _uneven_spacing(folder: Path) -> None:
    offsets = [k * 2.0 for k in range(_BASE_SLICES)]
    offsets = [o + (0.6 if k >= 7 else 0.0) for k, o in enumerate(offsets)]
    _base(folder, offsets=offsets)


def _gantry_tilt(folder: Path) -> None:
    _base(folder, tilt_deg=5.0)


def _mixed_sizes(folder: Path) -> None:
    def resize(ds: Dataset, k: int) -> None:
        if k == 7:
            ds.Columns = 40
            ds.PixelData = np.zeros((_BASE_MATRIX, 40), np.int16).tobytes()

    _base(folder, per_slice=resize)


def _enhanced_ct(folder: Path, *, frames: int = _BASE_SLICES, rows: int = _BASE_MATRIX,
                 pixel_bytes: int | None = None, name: str = "enhanced_ct.dcm") -> None:
    uid = _uid("sop", "enhanced", frames, rows)
    ds = _image_dataset(sop_class=EnhancedCTImageStorage, sop_uid=uid)
    _patient_and_study(ds, CORPUS_PATIENT, _uid("study", "ct"))
    ds.Modality = "CT"
    ds.SeriesInstanceUID = _uid("series", "enhanced", frames, rows)
    ds.SeriesNumber = 5
    ds.SeriesDescription = "Enhanced CT"
    ds.FrameOfReferenceUID = _uid("frame", "ct")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    _monochrome(ds, rows, rows)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.8]
    measures.SliceThickness = 2.0
    shared.PixelMeasuresSequence = DicomSequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = list(_HFS)
    shared.PlaneOrientationSequence = DicomSequence([plane])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in range(min(frames, _BASE_SLICES)):
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-12.8, -12.8, 2.0 * k]
        item.PlanePositionSequence = DicomSequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    n_bytes = pixel_bytes if pixel_bytes is not None else frames * rows * rows * 2
    ds.PixelData = bytes(n_bytes)
    _save(ds, folder / name, ExplicitVRLittleEndian)


def _mr_only(folder: Path) -> None:
    def mr(ds: Dataset, k: int) -> None:
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "KVP", "ConvolutionKernel"):
            delattr(ds, keyword)

    _base(folder, modality="MR", sop_class=MRImageStorage, description="T1 axial", per_slice=mr)


def _rgb(folder: Path, *, key: str = "rgb", slice_spacing: float = 2.0, n_slices: int = _BASE_SLICES) -> None:
    def colour(ds: Dataset, k: int) -> None:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType"):
            delattr(ds, keyword)
        ds.PixelData = np.full((ds.Rows, ds.Columns, 3), 40 + k, np.uint8).tobytes()

    _base(folder / key, key=key, slice_spacing=slice_spacing, n_slices=n_slices, series_number=7,
          description="Colour screen capture", per_slice=colour)


def _rgb_only(folder: Path) -> None:
    _rgb(folder)


def _rgb_beside_ct(folder: Path) -> None:
    # The colour series is thinner: a loader that ranked it first would pick a non-CT image.
    _rgb(folder, slice_spacing=1.0, n_slices=20)
    _base(folder / "ct")


def _dicomdir(folder: Path, *, keep_images: bool) -> None:
    from pydicom.fileset import FileSet

    staging = folder.parent / (folder.name + ".images")
    paths = _base(staging)
    fileset = FileSet()
    fileset.ID = "CORPUS"
    for path in paths:
        fileset.add(path)
    fileset.write(folder)
    shutil.rmtree(staging)
    if not keep_images:
        for entry in folder.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)


def _dicomdir_only(folder: Path) -> None:
    _dicomdir(folder, keep_images=False)


def _dicomdir_beside_images(folder: Path) -> None:
    _dicomdir(folder, keep_images=True)


def _empty_folder(folder: Path) -> None:
    pass


def _only_non_dicom(folder: Path) -> None:
    (folder / "notes.txt").write_text("these are not images\n")
    (folder / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (folder / "random.bin").write_bytes(np.random.default_rng(3).bytes(500))


def _unreadable_extra_file(folder: Path) -> None:
    paths = _base(folder / "ct")
    locked = folder / "other" / "locked.dcm"
    locked.parent.mkdir()
    shutil.copyfile(paths[0], locked)
    os.chmod(locked, 0)
    os.chmod(locked.parent, 0o500)


def _dangling_link_slice(folder: Path) -> None:
    paths = _base(folder)
    paths[5].unlink()
    paths[5].symlink_to(folder / "elsewhere" / "gone.dcm")


def _fifo_beside_series(folder: Path) -> None:
    _base(folder)
    os.mkfifo(folder / "pipe.dcm")


def _symlink_loop(folder: Path) -> None:
    _base(folder / "a" / "b", file_name=lambda k: f"IM{k:04d}")
    (folder / "a" / "b" / "up").symlink_to("../..", target_is_directory=True)
    (folder / "a" / "self").symlink_to(".", target_is_directory=True)
    (folder / "x").symlink_to("y")
    (folder / "y").symlink_to("x")


def _non_ascii(folder: Path) -> None:
    patient = dict(CORPUS_PATIENT, PatientName="Qörpüsznäme^Véxlïdør=闵^志=")

    _base(folder / "Hüfte – 股骨 ünd Bêcken", patient=patient, description="Becken/Hüfte – 股骨 axial",
          file_name=lambda k: f"Schnitt_ü_{k:03d}_股骨.dcm")


def _undecodable_names(folder: Path) -> None:
    _base(folder, file_name=lambda k: b"slice_\xff\xfe_%03d.dcm" % k)


def _undecodable_name_broken_file(folder: Path) -> None:
    paths = _base(folder, file_name=lambda k: b"IM\xe9\xff_%03d.dcm" % k)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 1000])


def _memory_bomb_rows_columns(folder: Path) -> None:
    def bomb(ds: Dataset, k: int) -> None:
        ds.Rows = ds.Columns = 65535
        ds.PixelData = bytes(16)

    _base(folder, per_slice=bomb)


def _memory_bomb_small_file(folder: Path) -> None:
    def bomb(ds: Dataset, k: int) -> None:
        ds.Rows = ds.Columns = 4000
        ds.PixelData = bytes(16)

    _base(folder, per_slice=bomb)


def _memory_bomb_multiframe(folder: Path) -> None:
    _enhanced_ct(folder, frames=100000, rows=65535, pixel_bytes=16, name="bomb.dcm")


def _huge_element_length(folder: Path) -> None:
    _base(folder / "ct")
    # A file whose header declares a 4 GB value for an element the file does not hold.
    head = bytearray(b"\0" * 128 + b"DICM")
    meta_value = ExplicitVRLittleEndian.encode() + b"\0"
    meta = b"\x02\x00\x10\x00UI" + len(meta_value).to_bytes(2, "little") + meta_value
    head += b"\x02\x00\x00\x00UL\x04\x00" + len(meta).to_bytes(4, "little") + meta
    head += b"\x08\x00\x16\x00UI\x02\x001\x00"  # SOPClassUID "1"
    head += b"\x08\x00\x30\x10UT\x00\x00" + (0xFFFFFFF0).to_bytes(4, "little") + b"hostile"
    (folder / "hostile.dcm").write_bytes(bytes(head))


def _bits_allocated_mismatch(folder: Path) -> None:
    def widen(ds: Dataset, k: int) -> None:
        if k == 9:
            ds.BitsAllocated = 32
            ds.BitsStored = 32
            ds.HighBit = 31

    _base(folder, per_slice=widen)


def _zero_rows(folder: Path) -> None:
    def zero(ds: Dataset, k: int) -> None:
        ds.Rows = 0

    _base(folder, per_slice=zero)


def _corrupt_compressed_frame(folder: Path) -> None:
    paths = _base(folder, transfer_syntax=RLELossless)
    data = paths[4].read_bytes()
    # Cut the last fragment and the sequence delimiter: the RLE segments end early.
    paths[4].write_bytes(data[: len(data) - 300])


def _localizer_only(folder: Path) -> None:
    _base(folder, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), description="Topogram")


def _hostile_tag_values(folder: Path) -> None:
    def hostile(ds: Dataset, k: int) -> None:
        ds.SeriesDescription = "../../../etc/passwd"
        ds.StudyDescription = "/tmp/x\\..\\..\\boot.ini"
        ds.ProtocolName = "a" * 64
        ds.BodyPartExamined = "../.."

    _base(folder, per_slice=hostile)


def _large_matrix(folder: Path) -> None:
    _base(folder, key="large", rows=512, columns=512, n_slices=40, pixel_spacing=(0.7, 0.7))


def _thousands_of_files(folder: Path) -> None:
    _clone_series(folder, n_slices=3000, slice_spacing=0.5, rows=8, columns=8,
                  file_name=lambda k: f"{k // 500:02d}/IM{k:05d}")


def clone_placeholders() -> tuple[str, str, str]:
    """Placeholders of :func:`_clone_series` (UID, InstanceNumber, z position), all of fixed width."""
    return "2.25.1" + "9" * 38, "999999", "99999.9"


def _clone_series(folder: Path, *, n_slices: int, slice_spacing: float, rows: int, columns: int,
                  file_name: Callable[[int], str]) -> None:
    """Write a long series fast: one file written by pydicom, the others patched from its bytes.

    The template holds fixed-width placeholders for SOPInstanceUID (file meta and dataset),
    InstanceNumber and the z of ImagePositionPatient; each copy replaces them with values of the same
    width, so that no element length changes. Every copy has the template's pixels.
    """
    uid_placeholder, number_placeholder, z_placeholder = clone_placeholders()

    def placeholders(ds: Dataset, k: int) -> None:
        ds.SOPInstanceUID = uid_placeholder
        ds.file_meta.MediaStorageSOPInstanceUID = uid_placeholder
        ds["InstanceNumber"].value = number_placeholder
        ds["ImagePositionPatient"].value = ["-12.8", "-12.8", z_placeholder]

    staging = folder.parent / (folder.name + ".template")
    (template,) = write_series(staging, key="clone", n_slices=1, rows=rows, columns=columns,
                               slice_spacing=slice_spacing, per_slice=placeholders)
    data = template.read_bytes()
    shutil.rmtree(staging)
    for marker in (uid_placeholder, number_placeholder, z_placeholder):
        if marker.encode() not in data:
            raise RuntimeError(f"placeholder {marker} not found in the template")
    for k in range(n_slices):
        uid = f"2.25.1{k:038d}"
        z = f"{k * slice_spacing:07.1f}"
        copy = (data.replace(uid_placeholder.encode(), uid.encode())
                .replace(number_placeholder.encode(), f"{k + 1:06d}".encode())
                .replace(z_placeholder.encode(), z.encode()))
        path = folder / file_name(k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(copy)


def _valid_reference(folder: Path) -> None:
    _base(folder)


# --------------------------------------------------------------------------------------------------
# The cases

_SERIES = "series 2"

BAD_INPUT_CASES: tuple[BadInputCase, ...] = (
    BadInputCase(
        "valid_reference", "nothing: the series every other case starts from",
        "loads: 12 slices of 32 x 32", _ok(), _valid_reference),
    BadInputCase(
        "truncated_pixel_data", "one slice file is cut off inside its pixel data",
        "refused, naming the file: its pixel data is truncated",
        _error("PixelDataError", "slice_005.dcm"), _truncated_pixel_data),
    BadInputCase(
        "truncated_header", "one slice file is cut off inside its header (300 bytes left)",
        "refused: the series misses that slice, and the message names the unreadable file",
        _error("SeriesGeometryError", "missing", "slice_005.dcm"), _truncated_header),
    BadInputCase(
        "zero_byte_file", "an empty file beside a complete series",
        "the empty file is skipped (not DICOM); the series loads", _ok(), _zero_byte_file),
    BadInputCase(
        "missing_pixel_data", "one slice has no PixelData element",
        "refused, naming the file", _error("PixelDataError", "slice_003.dcm", "no pixel data"),
        _missing_pixel_data),
    BadInputCase(
        "declared_jpeg_native_data",
        "one file declares JPEG Baseline in its file meta but holds uncompressed pixel data",
        "refused, naming the file: its pixel data cannot be decoded as declared",
        _error("PixelDataError", "slice_004.dcm"), _declared_jpeg_native_data),
    BadInputCase(
        "declared_implicit_explicit_data",
        "one file declares Implicit VR Little Endian but its dataset is encoded Explicit VR",
        "loads: the encoding is recognised from the data (pydicom checks the first element)",
        _ok(), _declared_implicit_explicit_data),
    BadInputCase(
        "missing_image_position", "one slice lacks ImagePositionPatient",
        "refused (no usable series), naming the file and the attribute",
        _error("NoSuitableSeriesError", "slice_006.dcm", "ImagePositionPatient"), _missing_position),
    BadInputCase(
        "missing_image_orientation", "no slice has ImageOrientationPatient",
        "refused (no usable series), naming a file and the attribute",
        _error("NoSuitableSeriesError", "ImageOrientationPatient", "slice_000.dcm"), _missing_orientation),
    BadInputCase(
        "contradictory_orientation", "one slice is rotated by 3 degrees against the others",
        "refused, naming the odd file", _error("SeriesGeometryError", "orientation", "slice_006.dcm"),
        _contradictory_orientation),
    BadInputCase(
        "non_orthogonal_orientation", "ImageOrientationPatient holds two vectors 60 degrees apart",
        "refused: not two orthogonal unit vectors",
        _error("SeriesGeometryError", "not two orthogonal unit vectors"), _non_orthogonal_orientation),
    BadInputCase(
        "invalid_position_value", "one slice's ImagePositionPatient holds 'nan'",
        "refused (no usable series), naming the file and the attribute",
        _error("NoSuitableSeriesError", "slice_002.dcm", "ImagePositionPatient"), _invalid_position_values),
    BadInputCase(
        "missing_pixel_spacing", "no slice has PixelSpacing",
        "refused, naming a file and the attribute",
        _error("SeriesGeometryError", "PixelSpacing", "slice_000.dcm"), _missing_pixel_spacing),
    BadInputCase(
        "same_uid_at_two_positions", "two files with one SOPInstanceUID at different positions",
        "refused: the UID is named with its files", _error("SeriesGeometryError", "SOPInstanceUID"),
        _same_uid_two_positions),
    BadInputCase(
        "one_slice", "a series of one slice", "refused: not a volume (fewer than 10 slice positions)",
        _error("NoSuitableSeriesError", "1 distinct slice position", "10 required"), _one_slice),
    BadInputCase(
        "two_slices", "a series of two slices", "refused: not a volume (fewer than 10 slice positions)",
        _error("NoSuitableSeriesError", "2 distinct slice positions", "10 required"), _two_slices),
    BadInputCase(
        "duplicate_file", "one slice file copied under another name (same SOPInstanceUID)",
        "the copy is dropped with a warning; the series loads", _ok(), _duplicate_file),
    BadInputCase(
        "duplicate_resent_same_pixels", "one slice sent again as a new instance (new UID, same pixels)",
        "the duplicate is dropped after its pixels are compared; the series loads", _ok(),
        _duplicate_new_uid_same_pixels),
    BadInputCase(
        "duplicate_position_conflicting", "two different images at the same slice position",
        "refused, naming both files", _error("SeriesGeometryError", "conflicting duplicate", "slice_004"),
        _duplicate_conflicting),
    BadInputCase(
        "missing_slice", "one slice in the middle of the series is missing",
        "refused, naming the gap and the file before it (no silent interpolation)",
        _error("SeriesGeometryError", "missing about 1 slice", "slice_005.dcm"), _missing_slice),
    BadInputCase(
        "uneven_spacing", "one step between slices is 2.6 mm instead of 2 mm",
        "refused: uneven slice spacing", _error("SeriesGeometryError", "uneven slice spacing"),
        _uneven_spacing),
    BadInputCase(
        "gantry_tilt", "a 5 degree gantry tilt (planes tilted, positions along the table)",
        "refused: gantry tilt (resample to an orthogonal grid first)",
        _error("SeriesGeometryError", "gantry tilt"), _gantry_tilt),
    BadInputCase(
        "mixed_image_sizes", "one slice is 32 x 40 pixels, the others 32 x 32",
        "refused, naming the odd file", _error("SeriesGeometryError", "mixed image size", "slice_007.dcm"),
        _mixed_sizes),
    BadInputCase(
        "enhanced_multiframe_ct", "one Enhanced CT multi-frame file (12 frames)",
        "refused: multi-frame images are not supported (export classic CT images)",
        _error("NoSuitableSeriesError", "multi-frame"), _enhanced_ct),
    BadInputCase(
        "mr_only", "an MR series, no CT", "refused: no CT series (the MR series is listed)",
        _error("NoSuitableSeriesError", "MR", "no series meets"), _mr_only),
    BadInputCase(
        "rgb_only", "a series of RGB colour images with CT headers", "refused: not a greyscale image",
        _error("NoSuitableSeriesError", "RGB"), _rgb_only),
    BadInputCase(
        "rgb_beside_ct", "a thinner RGB colour series beside a CT series",
        "the colour series is rejected from its headers; the CT series loads", _ok(), _rgb_beside_ct),
    BadInputCase(
        "dicomdir_only", "a DICOMDIR whose images are missing",
        "refused: no DICOM image, only a DICOMDIR", _error("InputError", "DICOMDIR"), _dicomdir_only),
    BadInputCase(
        "dicomdir_beside_images", "a DICOMDIR with its images (media layout)",
        "the DICOMDIR is skipped, the images are found by the walk; the series loads", _ok(),
        _dicomdir_beside_images),
    BadInputCase(
        "empty_folder", "an empty input folder", "refused: the folder holds no files",
        _error("InputError", "holds no files"), _empty_folder),
    BadInputCase(
        "only_non_dicom_files", "text, JPEG and random bytes, no DICOM",
        "refused: no DICOM file found", _error("InputError", "no DICOM file"), _only_non_dicom),
    BadInputCase(
        "unreadable_extra_file", "a file without read permission in a folder without write permission",
        "skipped as unreadable (readable when run as root: then a duplicate, dropped); the series loads",
        _ok(), _unreadable_extra_file),
    BadInputCase(
        "dangling_link_slice", "one slice is a symbolic link to a missing file",
        "refused: the series misses that slice, and the message names the unreadable file",
        _error("SeriesGeometryError", "missing", "slice_005.dcm"), _dangling_link_slice),
    BadInputCase(
        "fifo_beside_series", "a named pipe (FIFO) beside the series",
        "the pipe is skipped without being opened (no hang); the series loads", _ok(), _fifo_beside_series),
    BadInputCase(
        "symlink_loop", "folder links to a parent and to itself, and two file links pointing at each other",
        "the walk visits each folder once and ends; the series loads", _ok(), _symlink_loop),
    BadInputCase(
        "non_ascii_names_and_values", "non-ASCII folder and file names, patient name and series description",
        "loads", _ok(), _non_ascii),
    BadInputCase(
        "undecodable_file_names", "file names that are not valid UTF-8",
        "loads; names are shown with replacement characters", _ok(), _undecodable_names),
    BadInputCase(
        "undecodable_name_broken_file", "a truncated slice whose file name is not valid UTF-8",
        "refused in one line naming the file (replacement characters for the bad bytes)",
        _error("PixelDataError", "_005.dcm"), _undecodable_name_broken_file),
    BadInputCase(
        "memory_bomb_rows_columns", "tiny files declaring 65535 x 65535 pixels per image",
        "refused from the headers before any memory is allocated, naming the file",
        _error("PixelDataError", "65535 x 65535", "slice_000.dcm"), _memory_bomb_rows_columns),
    BadInputCase(
        "memory_bomb_small_file", "files declaring 4000 x 4000 pixels (32 MB) but holding 16 bytes of pixels",
        "refused from the file size before any memory is allocated, naming the file",
        _error("PixelDataError", "slice_000.dcm", "4000 x 4000"), _memory_bomb_small_file),
    BadInputCase(
        "memory_bomb_multiframe", "one tiny Enhanced CT file declaring 100000 frames of 65535 x 65535",
        "refused from the headers (multi-frame), nothing allocated",
        _error("NoSuitableSeriesError", "multi-frame"), _memory_bomb_multiframe),
    BadInputCase(
        "huge_element_length", "beside the series, a file whose header declares a 4 GB element",
        "the hostile file is skipped as unreadable; the series loads", _ok(), _huge_element_length),
    BadInputCase(
        "bits_allocated_mismatch", "one slice declares 32 bits allocated but holds 16-bit pixels",
        "refused, naming the file: its pixel data is shorter than declared",
        _error("PixelDataError", "slice_009.dcm"), _bits_allocated_mismatch),
    BadInputCase(
        "zero_rows", "every slice declares Rows 0", "refused, naming a file and the attribute",
        _error("SeriesGeometryError", "Rows", "slice_000.dcm"), _zero_rows),
    BadInputCase(
        "corrupt_compressed_frame", "an RLE-compressed series with one file cut inside its frame",
        "refused, naming the file: its frame cannot be decoded",
        _error("PixelDataError", "slice_004.dcm"), _corrupt_compressed_frame),
    BadInputCase(
        "localizer_only", "only a localizer (ImageType LOCALIZER)", "refused: no axial CT series",
        _error("NoSuitableSeriesError", "LOCALIZER"), _localizer_only),
    BadInputCase(
        "hostile_tag_values", "SeriesDescription '../../../etc/passwd' and other path-like tag values",
        "loads; output names never come from tag values", _ok(), _hostile_tag_values),
    BadInputCase(
        "large_matrix", "a valid series of 40 slices of 512 x 512 (20 MB)", "loads",
        _ok((40, 512, 512)), _large_matrix, size="large"),
    BadInputCase(
        "thousands_of_files", "a valid series of 3000 files (8 x 8 pixels) in 6 folders",
        "loads; the scan reads each header once", _ok((3000, 8, 8)), _thousands_of_files, size="large"),
)

_BY_NAME = {case.name: case for case in BAD_INPUT_CASES}
assert len(_BY_NAME) == len(BAD_INPUT_CASES), "case names must be unique"


def write_case(case: BadInputCase | str, folder: Path) -> Path:
    """Write one case's input files into ``folder`` (created; it must not exist or be empty).

    Returns ``folder``. Use it as the application's input folder.
    """
    case = _BY_NAME[case] if isinstance(case, str) else case
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty")
    case.build(folder)
    return folder


def write_corpus(out: Path, names: Sequence[str] | None = None) -> list[Path]:
    """Write cases into ``out/<case>/input/`` with ``out/<case>/case.json``; returns the case folders."""
    cases = [_BY_NAME[n] for n in names] if names else list(BAD_INPUT_CASES)
    written = []
    for case in cases:
        case_dir = Path(out) / case.name
        write_case(case, case_dir / "input")
        (case_dir / "case.json").write_text(json.dumps(case.describe(), indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")
        written.append(case_dir)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m synthetic_ct.bad_input``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m synthetic_ct.bad_input",
        description="Write the corpus of broken and hostile DICOM inputs, with the expected outcome of each.")
    parser.add_argument("--out", type=Path, help="folder to write the cases into (must not exist)")
    parser.add_argument("--case", action="append", default=[], metavar="NAME", choices=sorted(_BY_NAME),
                        help="write only this case (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and their expected outcomes")
    args = parser.parse_args(argv)
    if args.list:
        for case in BAD_INPUT_CASES:
            e = case.expected
            outcome = "ok" if e.outcome == "ok" else f"{e.error}"
            print(f"{case.name:32s} {outcome:22s} {case.problem}")
        return 0
    if args.out is None:
        parser.error("--out is required (or --list)")
    if args.out.exists():
        print(f"error: {args.out} exists; choose a new folder", file=sys.stderr)
        return 2
    # The cases set invalid values on purpose; pydicom's warnings about them are expected here.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folders = write_corpus(args.out, args.case)
    print(f"{len(folders)} cases written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
