"""The fast header reader (operators.dicom_header) against pydicom: the same datasets, element by element.

For files of the synthetic generator, of the test factory, of the bad-input corpus, of the real JPEG 2000
series and for crafted encodings (implicit VR, sequences of defined and undefined length, nested,
private, empty), :func:`operators.dicom_header.read_header` must either give what
``pydicom.dcmread(stop_before_pixels=True)`` gives (same elements in the same unconverted state, same
values, same file meta, encoding attributes and pixel data offset) or decline, and the scan must then
index every file exactly as reading it with pydicom alone does (same instance values, or the same
skip reason).
"""

from __future__ import annotations

import copy
import logging
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from operators import dicom_header, dicom_scan
from operators.dicom_header import (
    plain_decimal_strings,
    plain_integer_string,
    plain_uid,
    plain_unsigned_short,
    read_header,
)
from operators.dicom_scan import InstanceInfo, SkippedFile
from tests.dicom_factory import write_ct_series

REAL_SERIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_ct_chest_j2k"


# --------------------------------------------------------------------------------------------------
# Comparison with pydicom


def _element_state(element: Any) -> tuple[Any, ...]:
    """An element as stored in a dataset: a raw element's fields, or a converted element's."""
    if isinstance(element, RawDataElement):
        return ("raw", *element)
    assert isinstance(element, DataElement)
    return ("converted", element.tag, element.VR, repr(element.value), element.is_undefined_length,
            element.file_tell)


def _state(ds: Dataset) -> list[tuple[Any, ...]]:
    """Every element of a dataset in its stored order and state (nothing converted by looking)."""
    return [(key, *_element_state(element)) for key, element in ds._dict.items()]


def _values(ds: Dataset) -> list[tuple[Any, ...]]:
    """Tags, VRs and values of every element, sequences' items included (converts the values).

    An element pydicom cannot convert (an unknown VR) is represented by its error.
    """
    values: list[tuple[Any, ...]] = []
    for tag in list(ds.keys()):
        try:
            element = ds[tag]
        except Exception as exc:  # noqa: BLE001
            values.append((tag, repr(exc)))
            continue
        values.append((element.tag, element.VR, repr(element.value)))
        if element.VR == "SQ":
            values += [("item", *_values(item)) for item in element.value]
    return values


def _attributes(ds: Any) -> tuple[Any, ...]:
    """What else a dataset read from a file carries: preamble, file, encodings."""
    meta = ds.file_meta
    return (
        type(ds), ds.preamble, ds.filename, ds.timestamp, ds.fileobj_type, ds.buffer,
        ds.original_encoding, ds.original_character_set, ds._parent_encoding,
        ds.is_undefined_length_sequence_item,
        getattr(ds, "_is_implicit_VR", None), getattr(ds, "_is_little_endian", None),
        type(meta), meta.original_encoding, meta.original_character_set,
    )


def assert_read_as_pydicom_reads(path: Path) -> bool:
    """Check the fast reader on one file; True when it read the file, False when it declined.

    Where it reads the file, everything must be what ``dcmread(stop_before_pixels=True)`` gives: the
    elements in their unconverted state, the encoding attributes, the warnings, the values and the
    position where the header ends.
    """
    with open(path, "rb") as fh, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = read_header(fh)
        if fast is None:
            return False
        # Snapshot before anything converts a value.
        fast_state = (_state(fast.dataset), _state(fast.dataset.file_meta), _attributes(fast.dataset))
    fast_warnings = [str(w.message) for w in caught]
    with open(path, "rb") as fh, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference = pydicom.dcmread(fh, stop_before_pixels=True)
        offset = fh.tell()
        reference_state = (_state(reference), _state(reference.file_meta), _attributes(reference))
    reference_warnings = [str(w.message) for w in caught]
    assert fast_state == reference_state, path
    assert fast.pixel_data_offset == offset, path
    # The same warnings while reading (e.g. about an unusual character set).
    assert fast_warnings == reference_warnings, path
    assert _values(fast.dataset) == _values(reference), path
    assert _values(fast.dataset.file_meta) == _values(reference.file_meta), path
    return True


def _instance_fields(result: InstanceInfo | SkippedFile) -> Any:
    if isinstance(result, SkippedFile):
        return result
    return (
        result.path, result.relative_path, result.sop_instance_uid, result.sop_class_uid,
        result.instance_number, result.image_position, result.image_orientation, result.pixel_spacing,
        result.rows, result.columns, result.number_of_frames, result.transfer_syntax_uid,
        result.pixel_data_offset, _values(result.header), _values(result.header.file_meta),
    )


def _fields_from_pydicoms_values(result: InstanceInfo) -> tuple[Any, ...]:
    """An instance's values as the scan derived them through pydicom's conversion alone."""
    get, as_int, as_floats = dicom_header.header_value, dicom_scan._as_int, dicom_scan._as_floats
    ds = copy.deepcopy(result.header)
    meta = ds.file_meta
    return (
        str(get(ds, "SOPInstanceUID") or "") or str(get(meta, "MediaStorageSOPInstanceUID") or ""),
        str(get(ds, "SOPClassUID") or "") or str(get(meta, "MediaStorageSOPClassUID") or ""),
        as_int(get(ds, "InstanceNumber")),
        as_floats(get(ds, "ImagePositionPatient"), 3),
        as_floats(get(ds, "ImageOrientationPatient"), 6),
        as_floats(get(ds, "PixelSpacing"), 2),
        as_int(get(ds, "Rows")),
        as_int(get(ds, "Columns")),
        as_int(get(ds, "NumberOfFrames")) or 1,
        str(get(meta, "TransferSyntaxUID") or ""),
    )


def assert_scanned_as_with_pydicom(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan's view of a file equals the one it had with pydicom reading and converting everything."""
    relative = Path(path.name)
    fast = dicom_scan._read_instance(path, relative)
    with monkeypatch.context() as patch:
        patch.setattr(dicom_scan, "read_header", lambda fh: None)
        reference = dicom_scan._read_instance(path, relative)
    if isinstance(fast, InstanceInfo):
        # The values taken from the elements' bytes are pydicom's.
        assert (fast.sop_instance_uid, fast.sop_class_uid, fast.instance_number, fast.image_position,
                fast.image_orientation, fast.pixel_spacing, fast.rows, fast.columns, fast.number_of_frames,
                fast.transfer_syntax_uid) == _fields_from_pydicoms_values(fast), path
    assert _instance_fields(fast) == _instance_fields(reference), path


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------------------------------
# Files of the project's writers and real files


def test_synthetic_study_in_every_plain_syntax(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthetic_ct import generate_phantom, write_study

    phantom = generate_phantom(21, "small", lesions=1)
    read_fast: dict[str, int] = {}
    for name, syntaxes in {
        "a": {"thin": "implicit", "thick": "explicit", "localizer": "deflated"},
        "b": {"thin": "jpeg2000", "thick": "rle", "localizer": "explicit"},
    }.items():
        study = write_study(phantom, tmp_path / name, transfer_syntax=syntaxes)
        for series in study.series:
            # Every fifth file: all series' headers differ in position and UIDs only.
            files = list(series.files)[::5]
            fast = [assert_read_as_pydicom_reads(f) for f in files]
            read_fast[syntaxes[series.role]] = read_fast.get(syntaxes[series.role], 0) + sum(fast)
            for f in files[:3]:
                assert_scanned_as_with_pydicom(f, monkeypatch)
    # Deflated datasets are pydicom's to inflate; every other syntax is read by the fast reader.
    assert read_fast.pop("deflated") == 0
    assert all(read_fast.values()), read_fast


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_factory_series(tmp_path: Path, syntax: str, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_ct_series(tmp_path, n_slices=3, transfer_syntax=syntax, pixel_representation=0)
    for path in written.paths:
        assert assert_read_as_pydicom_reads(path)
        assert_scanned_as_with_pydicom(path, monkeypatch)


@pytest.mark.skipif(not REAL_SERIES.is_dir(), reason=f"real test series not present at {REAL_SERIES}")
def test_real_jpeg2000_series(monkeypatch: pytest.MonkeyPatch) -> None:
    # A scanner's files: private groups, sequences, empty UIDs, JPEG 2000 pixel data.
    for path in _files(REAL_SERIES):
        assert assert_read_as_pydicom_reads(path)
        assert_scanned_as_with_pydicom(path, monkeypatch)


def test_bad_input_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthetic_ct.bad_input import BAD_INPUT_CASES, write_case

    declined: set[str] = set()
    for case in BAD_INPUT_CASES:
        folder = tmp_path / case.name
        write_case(case.name, folder)
        # The first files of large cases are like the rest.
        for path in _files(folder)[:20]:
            if not assert_read_as_pydicom_reads(path):
                declined.add(case.name)
            assert_scanned_as_with_pydicom(path, monkeypatch)
    # Broken headers are left to pydicom, which says what is wrong with them.
    assert {"truncated_header", "zero_byte_file", "declared_implicit_explicit_data",
            "huge_element_length", "only_non_dicom_files"} <= declined
    assert "valid_reference" not in declined


# --------------------------------------------------------------------------------------------------
# Sequences


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _add_sequences(ds: Dataset, *, undefined: bool) -> None:
    """Sequences of every shape: items with nested sequences, an empty one, a private one."""
    references = Sequence()
    for k in range(2):
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = generate_uid()
        item.PurposeOfReferenceCodeSequence = Sequence([_code_item("121311", f"Localizer {k}")])
        references.append(item)
    ds.ReferencedImageSequence = references
    ds.SourceImageSequence = Sequence()  # no items
    ds.ProcedureCodeSequence = Sequence([_code_item("P5-0001", "CT pelvis ÄÖÜ")])
    block = ds.private_block(0x0029, "FEMUR TEST", create=True)
    block.add_new(0x10, "SQ", Sequence([_code_item("1", "private item")]))
    block.add_new(0x11, "LO", "odd")  # an odd length, padded by the writer
    if undefined:
        for element in ds.iterall():
            if element.VR == "SQ":
                element.is_undefined_length = True
                for item in element.value:
                    item.is_undefined_length_sequence_item = True


@pytest.mark.parametrize("undefined", [False, True], ids=["defined-length", "undefined-length"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_sequences(tmp_path: Path, syntax: str, undefined: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_ct_series(tmp_path, n_slices=1, transfer_syntax=syntax)
    path = written.paths[0]
    ds = pydicom.dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 100"  # the items' text is read with it
    _add_sequences(ds, undefined=undefined)
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True,
               enforce_file_format=True)
    if undefined:
        assert b"\xff\xff\xff\xff" in path.read_bytes()[:4096]

    assert assert_read_as_pydicom_reads(path)
    assert_scanned_as_with_pydicom(path, monkeypatch)
    with open(path, "rb") as fh:
        header = read_header(fh)
    assert header is not None
    nested = header.dataset.ReferencedImageSequence[1].PurposeOfReferenceCodeSequence[0]
    assert nested.CodeMeaning == "Localizer 1"
    assert header.dataset.ProcedureCodeSequence[0].CodeMeaning == "CT pelvis ÄÖÜ"


def test_a_large_header_is_read_past_the_first_chunk(tmp_path: Path) -> None:
    # A header longer than the first read (a long private sequence) is read on in larger chunks.
    written = write_ct_series(tmp_path, n_slices=1)
    path = written.paths[0]
    ds = pydicom.dcmread(path)
    ds.ReferencedImageSequence = Sequence(
        [Dataset() for _ in range(2000)]
    )
    for item in ds.ReferencedImageSequence:
        item.ReferencedSOPClassUID = CTImageStorage
        item.ReferencedSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size > 4 * dicom_header.FIRST_READ_BYTES
    assert assert_read_as_pydicom_reads(path)


# --------------------------------------------------------------------------------------------------
# Crafted files: what is read, and what is left to pydicom


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV"):
        return struct.pack("<HH2sHL", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def _meta(syntax: bytes | None = ExplicitVRLittleEndian.encode() + b"\0", *, group_length: int | None = None,
          ) -> bytes:
    elements = _explicit(0x00020001, b"OB", b"\x00\x01")
    elements += _explicit(0x00020002, b"UI", CTImageStorage.encode())
    elements += _explicit(0x00020003, b"UI", b"1.2.3.4")
    if syntax is not None:
        elements += _explicit(0x00020010, b"UI", syntax)
    length = len(elements) if group_length is None else group_length
    return _explicit(0x00020000, b"UL", struct.pack("<L", length)) + elements


def _ct_elements() -> bytes:
    return (
        _explicit(0x00080016, b"UI", CTImageStorage.encode())
        + _explicit(0x00080018, b"UI", b"1.2.3.4")
        + _explicit(0x00080060, b"CS", b"CT")
        + _explicit(0x0020000E, b"UI", b"1.2.3.5\0")
        + _explicit(0x00200032, b"DS", b"1\\2\\3 ")
        + _explicit(0x00280010, b"US", b"\x02\x00")
        + _explicit(0x00280011, b"US", b"\x02\x00")
    )


def _pixels() -> bytes:
    return _explicit(0x7FE00010, b"OW", bytes(8))


def _file(tmp_path: Path, name: str, body: bytes, *, meta: bytes | None = None, preamble: bool = True) -> Path:
    path = tmp_path / name
    head = (b"\0" * 128 + b"DICM") if preamble else b""
    path.write_bytes(head + (_meta() if meta is None else meta) + body)
    return path


def _crafted(tmp_path: Path) -> Iterator[tuple[str, Path, bool]]:
    """(case, file, whether the fast reader reads it)."""
    base = _ct_elements()
    yield "plain", _file(tmp_path, "plain", base + _pixels()), True
    yield "no pixel data", _file(tmp_path, "no_pixels", base), True
    yield "odd length value", _file(tmp_path, "odd", base + _explicit(0x00081030, b"LO", b"abc") + _pixels()), True
    yield "empty values", _file(tmp_path, "empty", base + _explicit(0x00081030, b"LO", b"")
                                + _explicit(0x00181050, b"DS", b"") + _explicit(0x00280034, b"IS", b"")
                                + _pixels()), True
    yield "repeated tag", _file(tmp_path, "repeated", base + _explicit(0x00080060, b"CS", b"MR") + _pixels()), True
    yield "wrong group length", _file(tmp_path, "group_length", base + _pixels(),
                                      meta=_meta(group_length=7)), True
    yield "unknown character set", _file(tmp_path, "charset", _explicit(0x00080005, b"CS", b"ISO_IR 999")
                                         + base + _pixels()), True
    yield "undefined-length OB", _file(tmp_path, "undefined_ob", base + struct.pack(
        "<HH2sHL", 0x0009, 0x1001, b"OB", 0, 0xFFFFFFFF) + b"abcd" + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        + _pixels()), True
    yield "undefined-length UN sequence", _file(tmp_path, "undefined_un", base + struct.pack(
        "<HH2sHL", 0x0009, 0x1002, b"UN", 0, 0xFFFFFFFF) + _implicit(0xFFFEE000, _implicit(0x00080100, b"12"))
        + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0) + _pixels()), True
    implicit_meta = _meta(ImplicitVRLittleEndian.encode() + b"\0")
    implicit_body = (_implicit(0x00080016, CTImageStorage.encode()) + _implicit(0x0020000E, b"1.2.3.5\0")
                     + _implicit(0x00200013, b"7 ") + _implicit(0x00280010, b"\x02\x00"))
    yield "implicit", _file(tmp_path, "implicit", implicit_body + _implicit(0x7FE00010, bytes(8)),
                            meta=implicit_meta), True
    yield "implicit private undefined-length sequence", _file(
        tmp_path, "implicit_private_sq",
        implicit_body + _implicit(0x00090010, b"FEMUR TEST")
        + _implicit(0x00091010, b"", 0xFFFFFFFF) + _implicit(0xFFFEE000, b"", 0xFFFFFFFF)
        + _implicit(0x00080100, b"12") + _implicit(0xFFFEE00D, b"") + _implicit(0xFFFEE0DD, b"")
        + _implicit(0x7FE00010, bytes(8)), meta=implicit_meta), True

    # Headers longer than the first read, made of many small elements, so that the read goes on in
    # the middle of an element's header or value; with and without pixel data after them.
    private = _explicit(0x00090010, b"LO", b"FEMUR TEST") + b"".join(
        _explicit(0x00091000 + k, b"LO", b"v" * (k % 7 + 1)) for k in range(0x10, 0xFF))
    # Repeated tags (the last value counts, as in pydicom), odd lengths, 2 KiB a block.
    repeated = b"".join(_explicit(0x00110010 + k, b"LO", b"w" * (k % 13 + 2)) for k in range(0x30))
    long_header = base + private + repeated * 40
    assert len(long_header) > 2 * dicom_header.FIRST_READ_BYTES
    yield "long header", _file(tmp_path, "long", long_header + _pixels()), True
    yield "long header, no pixel data", _file(tmp_path, "long_no_pixels", long_header), True
    for shift in range(13):
        # The first read ends at each byte of a 12-byte element header, and right before it.
        filler = dicom_header.FIRST_READ_BYTES - 132 - len(_meta()) - len(base) - 8 - shift
        yield f"first read ends {shift} bytes into an element", _file(
            tmp_path, f"boundary_{shift}", base + _explicit(0x00091001, b"UT", b"u" * (filler - 4)) + _pixels()
            + b"\0" * 100, ), True

    # Left to pydicom.
    yield "declared length beyond a large file", _file(
        tmp_path, "huge_length", long_header + struct.pack("<HH2sHL", 0x0019, 0x1001, b"UT", 0, 0xFFFFFFF0)
        + b"\0" * 1000), False
    yield "no preamble", _file(tmp_path, "no_preamble", base + _pixels(), preamble=False), False
    yield "no transfer syntax", _file(tmp_path, "no_syntax", base + _pixels(), meta=_meta(None)), False
    yield "no file meta", _file(tmp_path, "no_meta", base + _pixels(), meta=b""), False
    yield "big endian", _file(tmp_path, "big_endian", base + _pixels(),
                              meta=_meta(ExplicitVRBigEndian.encode() + b"\0")), False
    yield "implicit data, explicit syntax", _file(tmp_path, "implicit_data", implicit_body, meta=_meta()), False
    yield "explicit data, implicit syntax", _file(tmp_path, "explicit_data", base, meta=implicit_meta), False
    yield "unknown VR", _file(tmp_path, "unknown_vr", base + _explicit(0x00081030, b"XX", b"ab") + _pixels()), False
    yield "lower-case VR", _file(tmp_path, "lower_vr", base + _explicit(0x00081030, b"lo", b"ab") + _pixels()), False
    yield "command group", _file(tmp_path, "command", _explicit(0x00000002, b"UI", b"1.2\0") + base), False
    yield "stray item", _file(tmp_path, "item", base + _implicit(0xFFFEE000, b"") + _pixels()), False
    yield "stray bytes at the end", _file(tmp_path, "stray", base + b"\0\0\0"), False
    yield "value beyond the end", _file(tmp_path, "beyond", base + _explicit(0x00081030, b"LO", b"abcd")[:-2]), False
    yield "cut in an element's header", _file(tmp_path, "cut_header", base + _pixels()[:10]), False
    yield "cut in the file meta", _file(tmp_path, "cut_meta", b"", meta=_meta()[:50]), False
    never_ending = struct.pack("<HH2sHL", 0x0009, 0x1002, b"SQ", 0, 0xFFFFFFFF) + _implicit(0xFFFEE000, b"ab")
    yield "sequence without end", _file(tmp_path, "sq_no_end", base + never_ending), False


def test_crafted_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for case, path, readable in _crafted(tmp_path):
        assert assert_read_as_pydicom_reads(path) == readable, case
        assert_scanned_as_with_pydicom(path, monkeypatch)


def test_the_file_meta_group_length_is_logged_as_pydicom_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _file(tmp_path, "group_length", _ct_elements() + _pixels(), meta=_meta(group_length=7))
    with caplog.at_level(logging.INFO, logger="pydicom"):
        with open(path, "rb") as fh:
            assert read_header(fh) is not None
        fast = [r.getMessage() for r in caplog.records]
        caplog.clear()
        pydicom.dcmread(path, stop_before_pixels=True)
        reference = [r.getMessage() for r in caplog.records]
    assert fast == reference and any("Group Length" in m for m in fast)


def test_pydicoms_debugging_mode_is_left_to_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In debugging mode pydicom logs every element it reads: the fast reader stands aside.
    path = _file(tmp_path, "plain", _ct_elements() + _pixels())
    monkeypatch.setattr(pydicom.config, "debugging", True)
    with open(path, "rb") as fh:
        assert read_header(fh) is None


# --------------------------------------------------------------------------------------------------
# Values from unconverted elements


def _dataset(tag: int, vr: str, value: bytes, *, implicit: bool) -> Dataset:
    key = BaseTag(tag)
    return Dataset({key: RawDataElement(key, None if implicit else vr, len(value), value, 0, implicit, True)})


_UID_VALUES = [b"1.2.840.10008.5.1.4.1.1.2", b"1.2.3\0", b"1.2.3 ", b"", b"\0", b"1.2\\3.4", b"1.02.3",
               b"1.2.a", b"1." + b"1" * 70, b" 1.2", b"1.2.3\n", "1.2.\u00e9".encode("latin-1")]
_US_VALUES = [b"\x00\x02", b"\xff\xff", b"", b"\x01\x00\x02\x00", b"\x01"]
_IS_VALUES = [b"1", b"-7 ", b"+12", b"007", b"", b" ", b"1\\2", b"1.0", b"abc", b" 3", b"99999999999",
              b"2147483648", b"-2147483648", b"1e3", b"\xd9\xa1"]
_DS_VALUES = [b"1", b"-1.5", b"+.5", b"1.", b"1e-3", b"1E+04", b"0.968\\0.927734375", b"-259.9361328125 ",
              b"1\\2\\3", b"", b" ", b"1\\\\2", b" 1.5", b"1.5 \\2", b"nan", b"inf", b"1e999",
              b"12345678901234567", b"1_0", b"0x10", b"1.5\0", b"1,5"]


def _pydicom_value(ds: Dataset, tag: int) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value: Any = ds[tag].value
        except Exception as exc:  # noqa: BLE001 - a value pydicom cannot convert
            value = exc
    return value, [str(w.message) for w in caught]


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_plain_values_equal_pydicoms(implicit: bool) -> None:
    answered = 0
    cases: list[tuple[int, str, list[bytes], Any]] = [
        (0x00080018, "UI", _UID_VALUES, plain_uid),
        (0x00280010, "US", _US_VALUES, plain_unsigned_short),
        (0x00200013, "IS", _IS_VALUES, plain_integer_string),
        (0x00200032, "DS", _DS_VALUES, plain_decimal_strings),
    ]
    for tag, vr, values, plain in cases:
        for raw in values:
            fast = plain(_dataset(tag, vr, raw, implicit=implicit), tag)
            if fast is None:
                continue
            answered += 1
            value, caught = _pydicom_value(_dataset(tag, vr, raw, implicit=implicit), tag)
            # Where the plain reading answers, pydicom reads the same value without a warning.
            assert caught == [], (raw, caught)
            if vr == "UI":
                assert fast == str(value), raw
            elif vr == "DS":
                expected = [value] if not isinstance(value, (list, pydicom.multival.MultiValue)) else value
                assert fast == tuple(float(v) for v in expected), raw
            else:
                assert fast == int(value) and not isinstance(value, (list, pydicom.multival.MultiValue)), raw
    assert answered >= 20


def test_plain_values_decline_other_vrs_and_converted_elements() -> None:
    tag = 0x00280010
    assert plain_unsigned_short(_dataset(tag, "SS", b"\x02\x00", implicit=False), tag) is None
    assert plain_unsigned_short(_dataset(tag, "UN", b"\x02\x00", implicit=False), tag) is None
    ds = _dataset(tag, "US", b"\x02\x00", implicit=False)
    assert plain_unsigned_short(ds, tag) == 2
    assert ds[tag].value == 2  # converted now: the plain reading leaves it to pydicom
    assert plain_unsigned_short(ds, tag) is None
    assert plain_uid(Dataset(), 0x00080018) is None
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert plain_uid(meta, 0x00020010) is None


def test_the_vr_tables_are_pydicoms() -> None:
    # Element boundaries depend on which VRs have a 4-byte length: the reader's tables must be the ones
    # pydicom's generator uses (checked again whenever pydicom is upgraded).
    from pydicom.filereader import ENCODED_VR
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

    assert set(dicom_header._VR_NAMES) == {vr for vr in ENCODED_VR if len(vr) == 2}
    assert {vr.decode() for vr in dicom_header._LONG_VRS} == {str(vr) for vr in EXPLICIT_VR_LENGTH_32}
    assert dicom_header._DIRECT_RAW
