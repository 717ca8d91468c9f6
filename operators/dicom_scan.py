"""Header-only scan of a folder tree of DICOM files, grouped by study and series.

:func:`scan_dicom_folder` walks a folder (any file names, any nesting, files without extension),
reads every file's header without its pixel data and groups the instances by StudyInstanceUID and
SeriesInstanceUID. Files that cannot be used are not errors: they are collected as
:class:`SkippedFile` with a reason, so that a user can see why a file was ignored.

Nothing here decodes pixels; :mod:`operators.series_volume` does that for the one series that
:mod:`operators.series_selection` chooses.

Geometry stored per instance is in the DICOM patient coordinate system (LPS, millimetres):
``image_position`` is ImagePositionPatient (centre of the first transmitted pixel),
``image_orientation`` is ImageOrientationPatient (row direction cosines, i.e. the direction of
increasing column index, then column direction cosines, i.e. the direction of increasing row index),
and ``pixel_spacing`` is PixelSpacing as (spacing between rows, spacing between columns).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from operators.dicom_header import (
    header_value,
    plain_decimal_strings,
    plain_integer_string,
    plain_or_value,
    plain_uid,
    plain_unsigned_short,
    read_header,
    tag_for,
)
from operators.errors import InputError, printable

logger = logging.getLogger(__name__)

#: Media Storage SOP Class of a DICOMDIR (Media Storage Directory Storage).
MEDIA_STORAGE_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
#: CT Image Storage (classic single-frame CT).
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Enhanced CT Image Storage and Legacy Converted Enhanced CT Image Storage (multi-frame).
ENHANCED_CT_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"})

# Attributes whose values may identify the patient. They are never written to logs or messages.
PATIENT_IDENTIFYING_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "IssuerOfPatientID",
        "AccessionNumber",
        "MedicalRecordLocator",
    }
)

# The DICOM preamble is 128 bytes followed by the magic "DICM".
_PREAMBLE_LENGTH = 128
_MAGIC = b"DICM"
# A file without preamble ("raw" dataset, as some old archives write) starts with the tag of its first
# element, little endian: group 0x0002 (file meta) or 0x0008 (identifying group).
_RAW_DATASET_PREFIXES = (b"\x02\x00", b"\x08\x00")


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan did not use, and why.

    Attributes
    ----------
    path : pathlib.Path
        Path of the file relative to the scanned folder.
    reason : str
        One line saying why the file was skipped (not DICOM, unreadable, DICOMDIR, ...).
    """

    path: Path
    reason: str


@dataclass(frozen=True, eq=False)
class InstanceInfo:
    """What later steps need to know about one DICOM file, read from its header only.

    Attributes
    ----------
    path : pathlib.Path
        Absolute path of the file.
    relative_path : pathlib.Path
        Path relative to the scanned folder; use it in logs and messages.
    sop_instance_uid : str
        SOPInstanceUID; where the dataset's value is empty, the file meta's MediaStorageSOPInstanceUID.
    sop_class_uid : str
        SOPClassUID; where the dataset's value is empty, the file meta's MediaStorageSOPClassUID.
    instance_number : int or None
        InstanceNumber. Informative only: slices are ordered by position, never by this number.
    image_position : tuple of 3 float, or None
        ImagePositionPatient: centre of the first transmitted pixel, LPS, mm.
    image_orientation : tuple of 6 float, or None
        ImageOrientationPatient: row direction cosines then column direction cosines, LPS.
    pixel_spacing : tuple of 2 float, or None
        PixelSpacing in mm: (spacing between rows, spacing between columns).
    rows, columns : int or None
        Rows and Columns of the pixel matrix.
    number_of_frames : int
        NumberOfFrames (1 where absent).
    transfer_syntax_uid : str
        Transfer syntax of the file (from its file meta; empty where the file has none).
    header : pydicom.dataset.Dataset
        The file's header without pixel data. It is what a DICOM SEG writer needs from a source image
        (patient, study, series, frame of reference and image plane attributes).
    pixel_data_offset : int or None
        Offset in the file where the header ends: the start of the PixelData element, or the file's
        size when it has none. Lets the loader check, before allocating anything, that the file holds
        the pixel data its header declares. None where unknown.
    """

    path: Path
    relative_path: Path
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    transfer_syntax_uid: str
    header: Dataset = field(repr=False)
    pixel_data_offset: int | None = None


@dataclass(frozen=True, eq=False)
class SeriesInfo:
    """The instances of one series, as found by the scan.

    Attributes
    ----------
    key : str
        Identifies the series within its study: the SeriesInstanceUID, or, where that is empty, a
        surrogate ``"unidentified-series-<hash>"`` derived from series-level attributes.
    series_instance_uid : str
        SeriesInstanceUID as stored (may be empty).
    study_instance_uid : str
        StudyInstanceUID as stored (may be empty, e.g. in anonymised data).
    instances : tuple of InstanceInfo
        The series' files in scan order (sorted by path). Use :mod:`operators.series_volume` for
        the geometric order.
    """

    key: str
    series_instance_uid: str
    study_instance_uid: str
    instances: tuple[InstanceInfo, ...] = field(repr=False)

    @property
    def header(self) -> Dataset:
        """Header of the series' first instance (lowest InstanceNumber), for series-level attributes."""
        return self._representative.header

    @cached_property
    def _representative(self) -> InstanceInfo:
        return min(
            self.instances,
            key=lambda i: (i.instance_number is None, i.instance_number or 0, str(i.relative_path)),
        )

    @property
    def modality(self) -> str:
        """Modality of the series (e.g. ``"CT"``), upper case; empty where absent."""
        return str(header_value(self.header, "Modality") or "").upper()

    @property
    def series_number(self) -> int | None:
        """SeriesNumber, or None where absent or empty."""
        return _as_int(header_value(self.header, "SeriesNumber"))

    @property
    def series_description(self) -> str:
        """SeriesDescription, empty where absent."""
        return str(header_value(self.header, "SeriesDescription") or "")

    @property
    def image_type(self) -> tuple[str, ...]:
        """ImageType values, upper case (e.g. ``("ORIGINAL", "PRIMARY", "AXIAL")``)."""
        return _as_str_tuple(header_value(self.header, "ImageType"))

    @property
    def convolution_kernel(self) -> tuple[str, ...]:
        """ConvolutionKernel values (reconstruction kernel), as stored."""
        value = header_value(self.header, "ConvolutionKernel")
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            return (value,)
        return tuple(str(v) for v in value)

    @property
    def frame_of_reference_uid(self) -> str:
        """FrameOfReferenceUID of the first instance, empty where absent."""
        return str(header_value(self.header, "FrameOfReferenceUID") or "")

    @property
    def n_instances(self) -> int:
        """Number of files in the series."""
        return len(self.instances)

    @property
    def is_multiframe(self) -> bool:
        """True when any instance is a multi-frame image (e.g. Enhanced CT)."""
        return any(
            i.number_of_frames > 1 or i.sop_class_uid in ENHANCED_CT_SOP_CLASSES for i in self.instances
        )

    @property
    def image_orientation(self) -> tuple[float, float, float, float, float, float] | None:
        """ImageOrientationPatient of the first instance (row cosines, column cosines; LPS)."""
        return self._representative.image_orientation

    @cached_property
    def n_positions(self) -> int:
        """Number of distinct ImagePositionPatient values (to 1 micrometre) among the instances."""
        return len({tuple(round(v, 3) for v in i.image_position) for i in self.instances if i.image_position})

    @cached_property
    def slice_spacing_mm(self) -> float | None:
        """Median distance between consecutive distinct slice positions along the slice normal, in mm.

        Computed from ImagePositionPatient and ImageOrientationPatient of the first instance, never from
        SliceThickness or SpacingBetweenSlices. None where fewer than two distinct positions exist or
        the geometry attributes are missing.
        """
        orientation = self.image_orientation
        positions = [i.image_position for i in self.instances if i.image_position is not None]
        if orientation is None or len(positions) < 2:
            return None
        normal = slice_normal(orientation)
        offsets = np.unique(np.round(np.asarray(positions, dtype=np.float64) @ normal, 3))
        if offsets.size < 2:
            return None
        return float(np.median(np.diff(offsets)))

    def describe(self) -> str:
        """A short label for logs and messages: series number, UID and description (no patient data)."""
        number = self.series_number
        uid = self.series_instance_uid or self.key
        text = f"series {number if number is not None else '?'} ({uid})"
        if self.series_description:
            text += f" '{self.series_description}'"
        # Tag values may hold control characters (a terminal escape, a newline): never pass them on.
        return printable(" ".join(text.split()))


@dataclass(frozen=True, eq=False)
class StudyInfo:
    """The series of one study.

    Attributes
    ----------
    study_instance_uid : str
        StudyInstanceUID; may be empty (anonymised data). All files with an empty value form one study.
    series : dict of str to SeriesInfo
        Series keyed by :attr:`SeriesInfo.key`, in order of first appearance in the scan.
    """

    study_instance_uid: str
    series: dict[str, SeriesInfo] = field(repr=False)


@dataclass(frozen=True, eq=False)
class StudyIndex:
    """Result of :func:`scan_dicom_folder`.

    Attributes
    ----------
    root : pathlib.Path
        The scanned folder (absolute).
    studies : dict of str to StudyInfo
        Studies keyed by StudyInstanceUID (the empty string for files without one).
    skipped : tuple of SkippedFile
        Files that were not used, with the reason.
    n_files : int
        Number of distinct files visited (DICOM or not).
    """

    root: Path
    studies: dict[str, StudyInfo]
    skipped: tuple[SkippedFile, ...]
    n_files: int

    def all_series(self) -> list[SeriesInfo]:
        """All series of all studies, in scan order."""
        return [s for study in self.studies.values() for s in study.series.values()]

    @property
    def n_instances(self) -> int:
        """Number of DICOM instances indexed."""
        return sum(s.n_instances for s in self.all_series())


def slice_normal(image_orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of an image plane, row cosines x column cosines (LPS).

    Parameters
    ----------
    image_orientation : sequence of 6 float
        ImageOrientationPatient: row direction cosines then column direction cosines.

    Returns
    -------
    numpy.ndarray
        Shape (3,), float64, unit length. For an axial head-first-supine image ``[1,0,0,0,1,0]`` it is
        ``[0, 0, 1]`` (towards the head).
    """
    iop = np.asarray(image_orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient {list(image_orientation)} does not define a plane")
    return normal / norm


def scan_dicom_folder(root: Path, *, follow_symlinks: bool = True) -> StudyIndex:
    """Index the DICOM files under a folder by study and series, reading headers only.

    Parameters
    ----------
    root : pathlib.Path
        Folder to walk. Any nesting and any file names (also without extension) are accepted.
    follow_symlinks : bool, optional
        Follow symbolic links to files and folders (default). Each folder and each file is visited
        once, however many links lead to it, so symlink loops end. When False, links are skipped and
        reported as such.

    Returns
    -------
    StudyIndex
        Studies and series found, plus the files skipped and why. Non-DICOM and unreadable files,
        DICOMDIR files (the images they list are found by the walk itself) are skipped, not errors.

    Raises
    ------
    operators.errors.InputError
        If ``root`` is not an existing folder, holds no files, or holds no DICOM file at all.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"input folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"input {root} is not a folder")
    root = root.resolve()

    skipped: list[SkippedFile] = []
    instances: list[InstanceInfo] = []
    n_files = 0
    with _garbage_collection_paused():
        for path in _walk_files(root, follow_symlinks=follow_symlinks, skipped=skipped):
            n_files += 1
            relative = path.relative_to(root)
            result = _read_instance(path, relative)
            if isinstance(result, SkippedFile):
                skipped.append(result)
                logger.debug("skipped %s: %s", result.path, result.reason)
            else:
                instances.append(result)

    if n_files == 0:
        raise InputError(f"input folder {root} holds no files")
    if not instances:
        dicomdirs = [s for s in skipped if s.reason.startswith("DICOMDIR")]
        if dicomdirs and len(dicomdirs) == len(skipped):
            raise InputError(
                f"no DICOM image in {root}: it holds only a DICOMDIR ({dicomdirs[0].path}); the images it "
                "lists are not there (copy the whole medium, not the DICOMDIR alone)"
            )
        reasons = Counter(s.reason.split(":")[0] for s in skipped)
        summary = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common(3))
        raise InputError(f"no DICOM file found among {n_files} files in {root} ({summary})")

    studies = _group(instances)
    index = StudyIndex(root=root, studies=studies, skipped=tuple(skipped), n_files=n_files)
    if skipped:
        logger.info(
            "scan skipped %d of %d files (%s)",
            len(skipped),
            n_files,
            ", ".join(f"{c} {r}" for r, c in Counter(s.reason.split(":")[0] for s in skipped).most_common(3)),
        )
    logger.info(
        "scan found %d instances in %d series of %d studies",
        index.n_instances,
        len(index.all_series()),
        len(studies),
    )
    return index


@contextlib.contextmanager
def _garbage_collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the duration of the block (restored after).

    The scan creates tens of thousands of small objects (a dataset and its elements per file) that all
    stay alive, so the collector finds nothing to free; but their number triggers full collections,
    and in a process that holds torch and nnU-Net (the application) each one walks millions of objects:
    0.03-0.2 s per collection, a third to half of the scan of a 750-file study.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _walk_files(root: Path, *, follow_symlinks: bool, skipped: list[SkippedFile]) -> Iterator[Path]:
    """Yield the regular files under ``root`` once each, in sorted order, without following loops."""
    # Folders and files are identified by (device, inode) so that links, bind mounts and loops lead
    # to each of them once; os.walk(followlinks=True) would recurse around a loop until the path
    # length limit.
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    root_stat = root.stat()
    seen_dirs.add((root_stat.st_dev, root_stat.st_ino))
    stack: list[Path] = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            skipped.append(SkippedFile(folder.relative_to(root), f"unreadable folder: {exc.strerror or exc}"))
            continue
        subfolders: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            relative = path.relative_to(root)
            try:
                is_link = entry.is_symlink()
                if is_link and not follow_symlinks:
                    skipped.append(SkippedFile(relative, "symbolic link: not followed"))
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                # A dangling link or a file removed during the walk.
                skipped.append(SkippedFile(relative, f"unreadable: {exc.strerror or exc}"))
                continue
            identity = (st.st_dev, st.st_ino)
            if stat.S_ISDIR(st.st_mode):
                if identity in seen_dirs:
                    logger.debug("folder %s already visited (symbolic link loop or alias)", relative)
                    continue
                seen_dirs.add(identity)
                subfolders.append(path)
            elif stat.S_ISREG(st.st_mode):
                if identity in seen_files:
                    logger.debug("file %s already visited through another link", relative)
                    continue
                seen_files.add(identity)
                yield path
            else:
                skipped.append(SkippedFile(relative, "not a regular file"))
        # Depth-first, in name order: push in reverse so that the first name is visited first.
        stack.extend(reversed(subfolders))


def _read_instance(path: Path, relative: Path) -> InstanceInfo | SkippedFile:
    """Read one file's header; return what the index keeps, or why the file is skipped."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after pydicom has read the header from it
    except OSError as exc:
        return SkippedFile(relative, f"unreadable: {exc.strerror or exc}")
    with fh:
        try:
            head = fh.read(_PREAMBLE_LENGTH + len(_MAGIC))
        except OSError as exc:
            return SkippedFile(relative, f"unreadable: {exc.strerror or exc}")
        has_preamble = head[_PREAMBLE_LENGTH:] == _MAGIC
        if not has_preamble and not head.startswith(_RAW_DATASET_PREFIXES):
            return SkippedFile(relative, "not DICOM: no DICM marker")
        # The common encodings are read by the fast reader, which gives the dataset pydicom would;
        # every other file (and any surprise) is read by pydicom itself, with its errors and warnings.
        fast = read_header(fh) if has_preamble else None
        if fast is not None:
            ds, pixel_data_offset = fast.dataset, fast.pixel_data_offset
        else:
            try:
                fh.seek(0)
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=not has_preamble)
                pixel_data_offset = _pixel_data_offset(fh)
            except InvalidDicomError as exc:
                return SkippedFile(relative, f"not DICOM: {exc}")
            except (PermissionError, FileNotFoundError, IsADirectoryError) as exc:
                return SkippedFile(relative, f"unreadable: {exc.strerror or exc}")
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types (also OSError) for damaged headers
                return SkippedFile(relative, f"unreadable DICOM header: {type(exc).__name__}: {exc}")

    meta = getattr(ds, "file_meta", None) or Dataset()
    if str(header_value(meta, "TransferSyntaxUID") or "") == _DEFLATED:
        pixel_data_offset = None  # pydicom read a decompressed copy; the file's position says nothing
    media_class = _uid(meta, "MediaStorageSOPClassUID")
    if media_class == MEDIA_STORAGE_DIRECTORY_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return SkippedFile(relative, "DICOMDIR: directory of the media; its images are found by the walk")

    sop_class = _uid(ds, "SOPClassUID") or media_class
    sop_instance = _uid(ds, "SOPInstanceUID") or _uid(meta, "MediaStorageSOPInstanceUID")
    # pydicom stops quietly at the end of a truncated header, and force=True accepts any bytes. Both
    # attributes are type 1 in every composite IOD (their values may be empty in anonymised data, the
    # elements are still there), so without them what was read is not a usable DICOM object.
    if not sop_class or "SeriesInstanceUID" not in ds:
        return SkippedFile(relative, "unreadable DICOM header: no SOPClassUID or SeriesInstanceUID (truncated?)")

    return InstanceInfo(
        path=path,
        relative_path=relative,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        instance_number=_integer_string(ds, "InstanceNumber"),
        image_position=_decimals(ds, "ImagePositionPatient", 3),
        image_orientation=_decimals(ds, "ImageOrientationPatient", 6),
        pixel_spacing=_decimals(ds, "PixelSpacing", 2),
        rows=_unsigned_short(ds, "Rows"),
        columns=_unsigned_short(ds, "Columns"),
        number_of_frames=_integer_string(ds, "NumberOfFrames") or 1,
        transfer_syntax_uid=_uid(meta, "TransferSyntaxUID"),
        header=ds,
        pixel_data_offset=pixel_data_offset,
    )


_DEFLATED = "1.2.840.10008.1.2.1.99"
# Tags at which pydicom's stop_before_pixels stops: (7FE0,0008/0009/0010), little and big endian.
_PIXEL_TAGS = frozenset(
    group_element
    for element in (0x0008, 0x0009, 0x0010)
    for group_element in (
        (0x7FE0).to_bytes(2, "little") + element.to_bytes(2, "little"),
        (0x7FE0).to_bytes(2, "big") + element.to_bytes(2, "big"),
    )
)


def _pixel_data_offset(fh: Any) -> int | None:
    """Where the header read with stop_before_pixels ended: at a pixel data tag or at the end of the file.

    None where the position is not one of those (a deflated dataset is read from a decompressed copy).
    """
    offset = fh.tell()
    tag = fh.read(4)
    if tag == b"" or tag in _PIXEL_TAGS:
        return int(offset)
    return None


def _group(instances: list[InstanceInfo]) -> dict[str, StudyInfo]:
    """Group instances by StudyInstanceUID, then by series key, keeping scan order."""
    by_study: dict[str, dict[str, list[InstanceInfo]]] = defaultdict(lambda: defaultdict(list))
    series_uids: dict[tuple[str, str], str] = {}
    for instance in instances:
        study_uid = _uid(instance.header, "StudyInstanceUID")
        series_uid = _uid(instance.header, "SeriesInstanceUID")
        key = series_uid or _surrogate_series_key(study_uid, instance)
        by_study[study_uid][key].append(instance)
        series_uids[(study_uid, key)] = series_uid

    studies: dict[str, StudyInfo] = {}
    for study_uid, series_map in by_study.items():
        series = {
            key: SeriesInfo(
                key=key,
                series_instance_uid=series_uids[(study_uid, key)],
                study_instance_uid=study_uid,
                instances=tuple(members),
            )
            for key, members in series_map.items()
        }
        for s in series.values():
            if not s.series_instance_uid:
                logger.warning(
                    "%d instances have no SeriesInstanceUID; grouped as %s by series attributes",
                    s.n_instances,
                    s.key,
                )
        studies[study_uid] = StudyInfo(study_instance_uid=study_uid, series=series)
    return studies


def _surrogate_series_key(study_uid: str, instance: InstanceInfo) -> str:
    """Key for an instance without SeriesInstanceUID, from attributes shared by a series' images."""
    ds = instance.header
    orientation = (
        tuple(round(v, 3) for v in instance.image_orientation) if instance.image_orientation else None
    )
    # Not AcquisitionNumber or anything else that may vary from slice to slice within one series.
    parts: list[Any] = [
        study_uid,
        header_value(ds, "FrameOfReferenceUID"),
        header_value(ds, "Modality"),
        header_value(ds, "SeriesNumber"),
        header_value(ds, "SeriesDescription"),
        _as_str_tuple(header_value(ds, "ImageType")),
        str(header_value(ds, "ConvolutionKernel")),
        instance.rows,
        instance.columns,
        orientation,
    ]
    digest = hashlib.sha1(repr(parts).encode("utf-8")).hexdigest()[:12]
    return f"unidentified-series-{digest}"


# The values the scan reads from every file: plain values are taken from the element's bytes
# (operators.dicom_header.plain_or_value); anything else goes through pydicom.


def _uid(ds: Dataset, keyword: str) -> str:
    """A UI attribute as text, empty where absent, empty or unparsable."""
    return str(plain_or_value(plain_uid, ds, keyword) or "")


def _unsigned_short(ds: Dataset, keyword: str) -> int | None:
    """A US attribute's single value, or None where absent, multi-valued or unparsable."""
    return _as_int(plain_or_value(plain_unsigned_short, ds, keyword))


def _integer_string(ds: Dataset, keyword: str) -> int | None:
    """An IS attribute's single value, or None where absent, multi-valued or unparsable."""
    return _as_int(plain_or_value(plain_integer_string, ds, keyword))


def _decimals(ds: Dataset, keyword: str, n: int) -> Any:
    """A DS attribute as ``n`` finite floats, or None where absent or malformed (see _as_floats)."""
    values = plain_decimal_strings(ds, tag_for(keyword))
    if values is None:
        return _as_floats(header_value(ds, keyword), n)
    if len(values) != n or not all(np.isfinite(values)):
        return None
    return values


def _as_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _as_floats(value: Any, n: int) -> Any:
    """Tuple of ``n`` finite floats, or None where the value is absent or malformed."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(values) != n or not all(np.isfinite(values)):
        return None
    return values


def _as_str_tuple(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value.strip().upper(),)
    return tuple(str(v).strip().upper() for v in value)
