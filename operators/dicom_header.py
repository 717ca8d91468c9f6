"""Fast reading of a DICOM file's header, giving the dataset pydicom would give, for common files.

Why: the scan reads the header of every file of a study (hundreds to thousands) to find the series to
segment. ``pydicom.dcmread(stop_before_pixels=True)`` spends most of that time in its general element
generator (one ``read`` call, several ``tell`` calls and a debug check per element). For the files a
CT scanner or PACS writes, a much simpler walk over one buffer gives the same elements.

What: :func:`read_header` handles a file with a preamble, the "DICM" marker, a file meta group in
Explicit VR Little Endian and a dataset in Explicit or Implicit VR Little Endian (so also every
encapsulated syntax such as JPEG 2000, whose dataset is Explicit VR Little Endian). It reads the file
in a few large chunks, walks the elements with ``struct.unpack_from`` up to the pixel data
((7FE0,0008), (7FE0,0009) or (7FE0,0010)) or the end of the file, and builds a
:class:`pydicom.dataset.FileDataset` from :class:`pydicom.dataelem.RawDataElement` entries filled
exactly as pydicom's reader fills them. Values therefore stay unconverted until used, and are
converted by pydicom itself, exactly as for a dataset that ``dcmread`` returned. Elements of
undefined length (sequences above all) are handed to pydicom's own element reader at their position
in the file. Anything else (no preamble, file meta or dataset in another encoding, big endian,
deflated, an unknown VR, a file that ends inside an element, a command group, stray item tags,
pydicom's debugging mode) is not read here: :func:`read_header` returns None and the caller reads the
file with pydicom, so that every unusual file keeps pydicom's behaviour, warnings and errors.

The ``plain_*`` functions give a few values straight from an element's unconverted bytes where the
encoding is unambiguous (one valid UID, one unsigned short, integer and decimal strings of the form
the standard allows), and None in every other case, in which the caller asks pydicom. Where they
answer, the value equals what pydicom's conversion would give, and pydicom would not have warned
about it, at a fraction of its cost; the scan reads about fifteen values per file and the decoder a
few per slice.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import struct
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

import pydicom
from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.config import logger as pydicom_logger
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

logger = logging.getLogger(__name__)

#: Bytes read at first: the header of a CT file (about 2 KiB, more with private sequences) and its
#: pixel data element's header fit, so one read call usually suffices.
FIRST_READ_BYTES = 16384

_PREAMBLE_LENGTH = 128
_MAGIC = b"DICM"
_MAGIC_END = _PREAMBLE_LENGTH + len(_MAGIC)

# VRs as the two bytes an explicit VR element carries -> pydicom's VR string, and those whose length
# is a 4-byte field after 2 reserved bytes. Built from pydicom's own tables so that the element
# boundaries are the ones pydicom finds.
_VR_NAMES: dict[bytes, str] = {
    vr.value.encode(default_encoding): vr.value for vr in VR if len(vr.value) == 2
}
_LONG_VRS = frozenset(name.encode(default_encoding) for name in _VR_NAMES.values()
                      if name in EXPLICIT_VR_LENGTH_32)

_EXPLICIT_HEAD = struct.Struct("<HH2sH").unpack_from
_IMPLICIT_HEAD = struct.Struct("<HHL").unpack_from
_LONG_LENGTH = struct.Struct("<L").unpack_from

# RawDataElement is a named tuple; building it with tuple.__new__ and all nine fields spares the
# generated constructor's call (a third of the time per element). Used only where the fields are the
# ones of pydicom 3, checked here.
_RAW_FIELDS = ("tag", "VR", "length", "value", "value_tell", "is_implicit_VR", "is_little_endian",
               "is_raw", "is_buffered")
_DIRECT_RAW = RawDataElement._fields == _RAW_FIELDS
_new_tuple = tuple.__new__

# One BaseTag object per tag value, shared by all datasets read: pydicom's BaseTag is an int with an
# instance dict, so a new one per element would cost an allocation and work for the garbage collector.
# The cache is bounded (a tag value is at most 32 bits; files with many private tags must not grow it
# without limit).
_TAGS: dict[int, BaseTag] = {}
_MAX_CACHED_TAGS = 1 << 16


def _base_tag(tag: int) -> BaseTag:
    """The shared BaseTag of ``tag``."""
    cached = _TAGS.get(tag)
    if cached is None:
        cached = BaseTag(tag)
        if len(_TAGS) < _MAX_CACHED_TAGS:
            _TAGS[tag] = cached
    return cached


_UNDEFINED_LENGTH = 0xFFFFFFFF
_ITEM_GROUP = 0xFFFE
_SPECIFIC_CHARACTER_SET = 0x00080005
# Where pydicom's stop_before_pixels stops: Float Pixel Data, Double Float Pixel Data, Pixel Data.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_FIRST_PIXEL_TAG = min(_PIXEL_TAGS)

_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# Explicit VR Big Endian and Deflated Explicit VR Little Endian: read by pydicom.
_OTHER_ENCODINGS = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})


@dataclass(frozen=True, eq=False)
class HeaderRead:
    """A header read by :func:`read_header`.

    Attributes
    ----------
    dataset : pydicom.dataset.FileDataset
        The header as ``pydicom.dcmread(fh, stop_before_pixels=True)`` returns it: file meta, preamble,
        encoding attributes and the same (unconverted) elements.
    pixel_data_offset : int
        Offset in the file, in bytes, where the header ends: the start of the pixel data element, or the
        file's size when it has none.
    """

    dataset: FileDataset
    pixel_data_offset: int


class _NotPlain(Exception):
    """The file is not one :func:`read_header` reads; pydicom reads it instead."""


class _Buffer:
    """The first bytes of a file, read in growing chunks; indices are offsets in the file."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        fh.seek(0)
        self.data = fh.read(FIRST_READ_BYTES)
        # The file's size, asked only when the first read does not hold the header.
        self._size: int | None = len(self.data) if len(self.data) < FIRST_READ_BYTES else None

    def file_size(self) -> int:
        """The file's size in bytes."""
        if self._size is None:
            self._size = os.fstat(self._fh.fileno()).st_size
        return self._size

    def extend_to(self, end: int) -> bool:
        """Make ``data`` hold the file's bytes up to ``end``; False (reading nothing) where the file is shorter.

        A damaged or hostile header may declare gigabytes: nothing is read towards a length the file
        does not have (pydicom reads such a file and says what is wrong).
        """
        if end <= len(self.data):
            return True
        if end > self.file_size():
            return False
        while len(self.data) < end:
            # The file position is always the end of ``data``; double the buffer, at least to ``end``.
            want = min(max(end - len(self.data), len(self.data)), self.file_size() - len(self.data))
            chunk = self._fh.read(want)
            if not chunk:
                return False  # the file shrank while being read
            self.data += chunk
        return True

    def extend_towards(self, end: int) -> None:
        """Make ``data`` hold the file's bytes up to ``end``, or up to the file's end where it is shorter."""
        if end > len(self.data):
            self.extend_to(min(end, self.file_size()))


def read_header(fh: BinaryIO) -> HeaderRead | None:
    """Read a DICOM file's header up to its pixel data, as pydicom does, where the file is plain.

    Parameters
    ----------
    fh : binary file object
        The file, opened for reading in binary mode (its position does not matter). The returned
        dataset refers to it as ``dcmread`` would (``filename``, ``timestamp``).

    Returns
    -------
    HeaderRead or None
        The dataset and where its header ends; None where the file is not in the encodings read here
        or has anything unusual (see the module's description). The file's position is then undefined:
        read it again from the start with pydicom.
    """
    if config.debugging:
        return None  # pydicom logs every element in debugging mode
    try:
        return _read(fh)
    except _NotPlain:
        return None
    except (OSError, struct.error, io.UnsupportedOperation, AttributeError):
        # An unreadable or odd file (or a file object without a descriptor): pydicom's reading of it
        # says what is wrong, in its own words.
        return None


def _read(fh: BinaryIO) -> HeaderRead:
    buffer = _Buffer(fh)
    data = buffer.data
    if len(data) < _MAGIC_END or data[_PREAMBLE_LENGTH:_MAGIC_END] != _MAGIC:
        raise _NotPlain
    preamble = data[:_PREAMBLE_LENGTH]

    file_meta, position = _read_file_meta(buffer, _MAGIC_END)
    try:
        # As pydicom's reader, which converts this element to choose the dataset's encoding.
        transfer_syntax = file_meta.get("TransferSyntaxUID")
    except Exception as exc:  # noqa: BLE001 - pydicom's reading raises it, in its own words
        raise _NotPlain from exc
    if not isinstance(transfer_syntax, str) or not transfer_syntax:
        raise _NotPlain  # no file meta syntax: pydicom guesses the encoding
    if transfer_syntax == _IMPLICIT_VR_LITTLE_ENDIAN:
        implicit = True
    elif transfer_syntax == _EXPLICIT_VR_LITTLE_ENDIAN:
        implicit = False
    elif transfer_syntax in _OTHER_ENCODINGS or transfer_syntax in pydicom.uid.PrivateTransferSyntaxes:
        raise _NotPlain
    else:
        implicit = False  # every other (encapsulated) syntax has an Explicit VR Little Endian dataset

    # pydicom first reads a command group (0000,eeee) and checks that the first element's VR field
    # matches the syntax; a file where either matters is read by pydicom.
    if not buffer.extend_to(position + 8):
        raise _NotPlain  # empty or nearly empty dataset
    data = buffer.data
    first_group = data[position] | data[position + 1] << 8
    if first_group in (0x0000, _ITEM_GROUP):
        raise _NotPlain
    looks_implicit = not (0x40 < data[position + 4] < 0x5B and 0x40 < data[position + 5] < 0x5B)
    if looks_implicit != implicit:
        raise _NotPlain

    elements, pixel_data_offset = _read_dataset(buffer, fh, position, implicit)
    dataset = _as_pydicom_dataset(fh, elements, preamble, file_meta, implicit)
    return HeaderRead(dataset=dataset, pixel_data_offset=pixel_data_offset)


def _read_file_meta(buffer: _Buffer, position: int) -> tuple[FileMetaDataset, int]:
    """The group 0002 elements from ``position`` (Explicit VR Little Endian) and where they end."""
    start = position
    elements: dict[BaseTag, RawDataElement] = {}
    while True:
        if not buffer.extend_to(position + 8):
            raise _NotPlain  # the file ends in or right after its file meta
        data = buffer.data
        group, element, vr_bytes, length = _EXPLICIT_HEAD(data, position)
        if group != 0x0002:
            if not elements or group == _ITEM_GROUP:
                raise _NotPlain  # no file meta, or a layout pydicom's reader handles its own way
            break
        vr = _VR_NAMES.get(vr_bytes)
        if vr is None:
            raise _NotPlain  # pydicom may take the file meta for implicit VR
        value_position = position + 8
        if vr_bytes in _LONG_VRS:
            if not buffer.extend_to(position + 12):
                raise _NotPlain
            data = buffer.data
            length = _LONG_LENGTH(data, position + 8)[0]
            value_position = position + 12
        if length == _UNDEFINED_LENGTH:
            raise _NotPlain
        end = value_position + length
        if not buffer.extend_to(end):
            raise _NotPlain
        data = buffer.data
        tag = _base_tag(group << 16 | element)
        value = data[value_position:end] if length else empty_value_for_VR(vr, raw=True)
        elements[tag] = RawDataElement(tag, vr, length, value, value_position, False, True)  # type: ignore[arg-type]
        position = end

    # What pydicom's _read_file_meta_info does with the elements it read.
    file_meta = FileMetaDataset(elements)
    file_meta.set_original_encoding(is_implicit_vr=False, is_little_endian=True,
                                    character_encoding=default_encoding)
    try:
        # pydicom converts the first element to check that the group is not in implicit VR after all.
        file_meta[list(file_meta.elements())[0].tag]
        if "FileMetaInformationGroupLength" in file_meta:
            actual_length = position - (start + 12)
            declared_length = file_meta.FileMetaInformationGroupLength
            if declared_length != actual_length:
                pydicom_logger.info(
                    "_read_file_meta_info: (0002,0000) 'File Meta Information "
                    "Group Length' value doesn't match the actual File Meta "
                    f"Information length ({declared_length} vs {actual_length} bytes)"
                )
    except Exception as exc:  # noqa: BLE001 - pydicom retries or raises: let it
        raise _NotPlain from exc
    return file_meta, position


def _read_dataset(
    buffer: _Buffer, fh: BinaryIO, position: int, implicit: bool
) -> tuple[dict[BaseTag, object], int]:
    """The dataset's elements from ``position`` up to the pixel data, and the offset where they end.

    Mirrors pydicom's ``data_element_generator`` for a little-endian dataset: a defined-length element
    becomes a RawDataElement with the same fields; an element of undefined length is read by that
    generator itself, at its place in the file.
    """
    elements: dict[BaseTag, object] = {}
    long_vrs = _LONG_VRS
    vr_names = _VR_NAMES
    pixel_tags = _PIXEL_TAGS
    tags = _TAGS
    direct = _DIRECT_RAW
    new_tuple = _new_tuple
    encoding: str | list[str] = default_encoding
    data = buffer.data
    size = len(data)
    while True:
        if position + 12 > size:
            # Near the end of the buffer: read on (a header longer than the first read) or stop at
            # the end of the file.
            buffer.extend_towards(position + 12)
            data = buffer.data
            size = len(data)
            if position == size == buffer.file_size():
                return elements, position  # no pixel data: the header ends with the file
            if position + 8 > size:
                raise _NotPlain  # a few stray bytes at the end: pydicom's own way
        if implicit:
            group, element, length = _IMPLICIT_HEAD(data, position)
            vr = None
            value_position = position + 8
        else:
            group, element, vr_bytes, length = _EXPLICIT_HEAD(data, position)
            vr = vr_names.get(vr_bytes)
            if vr is None:
                raise _NotPlain  # pydicom switches to implicit VR or guesses the length field
            if vr_bytes in long_vrs:
                if position + 12 > size:
                    raise _NotPlain  # the file ends inside the element's header
                length = _LONG_LENGTH(data, position + 8)[0]
                value_position = position + 12
            else:
                value_position = position + 8
        tag = group << 16 | element
        if tag >= _FIRST_PIXEL_TAG:  # one comparison for most elements: both cases lie above
            if group == _ITEM_GROUP:
                raise _NotPlain  # an item or delimiter outside a sequence: pydicom stops or misreads
            if tag in pixel_tags:
                return elements, position
        if length == _UNDEFINED_LENGTH:
            element_read, position = _read_undefined_length(buffer, fh, position, implicit, encoding)
            elements[element_read.tag] = element_read
            buffer.extend_towards(position + 12)
            data = buffer.data
            size = len(data)
            continue
        end = value_position + length
        if end > size:
            if not buffer.extend_to(end):
                raise _NotPlain  # the file ends inside the value: pydicom keeps a truncated value
            data = buffer.data
            size = len(data)
        key = tags.get(tag) or _base_tag(tag)
        if length:
            value = data[value_position:end]
        else:
            value = empty_value_for_VR(vr, raw=True)
        if tag == _SPECIFIC_CHARACTER_SET:
            # pydicom's generator decodes the character set at once; it reads sequences with it.
            encoding = convert_encodings(convert_string(value or b"", True))
        if direct:
            elements[key] = new_tuple(
                RawDataElement, (key, vr, length, value, value_position, implicit, True, True, False)
            )
        else:
            elements[key] = RawDataElement(
                key, vr, length, value, value_position, implicit, True  # type: ignore[arg-type]
            )
        position = end


def _read_undefined_length(
    buffer: _Buffer, fh: BinaryIO, position: int, implicit: bool, encoding: str | list[str]
) -> tuple[object, int]:
    """Element of undefined length at ``position``, read by pydicom's generator; and where it ends."""
    try:
        fh.seek(position)
        element = next(data_element_generator(fh, implicit, True, encoding=encoding))
        end = fh.tell()
    except Exception as exc:  # noqa: BLE001 - a damaged sequence: pydicom's full reading says how
        raise _NotPlain from exc
    # The buffer reads on from the end of what it holds.
    fh.seek(len(buffer.data))
    return element, end


def _as_pydicom_dataset(
    fh: BinaryIO,
    elements: dict[BaseTag, object],
    preamble: bytes,
    file_meta: FileMetaDataset,
    implicit: bool,
) -> FileDataset:
    """The FileDataset pydicom's ``read_dataset`` and ``read_partial`` build from these elements."""
    try:
        if _SPECIFIC_CHARACTER_SET in elements:
            # pydicom's read_dataset decodes the character set once more for the intermediate dataset
            # it builds (and drops); done here too for the same warnings about odd values.
            character_set = elements[_SPECIFIC_CHARACTER_SET]
            convert_encodings(convert_raw_data_element(character_set).value)  # type: ignore[arg-type]
        # read_partial's FileDataset shares read_dataset's element dict and gets the character set
        # from it; building it straight from the dict gives the same object.
        result = FileDataset(fh, elements, preamble, file_meta, implicit, True)
        result.set_original_encoding(implicit, True, result._character_set)
    except Exception as exc:  # noqa: BLE001 - e.g. an unreadable character set: pydicom's own error
        raise _NotPlain from exc
    return result


# --------------------------------------------------------------------------------------------------
# Values from unconverted elements

# Values that pydicom's validation accepts without a word (PS3.5 table 6.2-1: a UID of at most 64
# characters, an integer string of at most 12, a decimal string of at most 16, no spaces inside) and
# that Python's str, int() and float() read exactly as pydicom's UID, IS and DSfloat do. Anything
# else is left to pydicom, with its warnings.
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_MAX_UID_LENGTH = 64
_INTEGER_STRING = re.compile(r"[+-]?[0-9]{1,11}")
_DECIMAL_STRING = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_DECIMAL_STRING_LENGTH = 16


# pydicom's default character set, "iso8859", is Python's latin-1 codec; spelled "latin-1", decoding
# takes Python's fast path instead of a codec lookup per call.
_DEFAULT_CODEC = "latin-1"


def _plain_bytes(dataset: Dataset, tag: int, vr: str) -> bytes | None:
    """The unconverted, non-empty little-endian value of ``tag`` where its VR is ``vr``, else None.

    ``vr`` must be the tag's VR in the DICOM dictionary: in implicit VR files pydicom converts with it.
    """
    # What Dataset.get_item(tag, keep_deferred=True) returns, without its conversion of the tag (this
    # runs some twenty times per file).
    element = dataset._dict.get(tag)
    if type(element) is not RawDataElement or not element.is_little_endian:
        return None
    if element.VR is not None and element.VR != vr:
        return None
    value = element.value
    return value if value else None


@functools.cache
def tag_for(keyword: str) -> int:
    """The tag of a DICOM keyword as an int, for the ``plain_*`` functions (looked up once per keyword).

    Raises
    ------
    KeyError
        If pydicom's dictionary has no such keyword.
    """
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"no DICOM keyword {keyword!r}")
    return int(tag)


def header_value(dataset: Dataset, keyword: str) -> Any:
    """``dataset.get(keyword)``, or None where the attribute is absent or its value cannot be parsed.

    For values read from every file, where one malformed value (an invalid DS, say) must not stop the
    scan or the decode: what such a value means is left to the caller's checks.
    """
    try:
        return dataset.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom raises many kinds of error for malformed values
        return None


def plain_or_value(plain: Callable[[Dataset, int], Any], dataset: Dataset, keyword: str) -> Any:
    """``plain(dataset, tag_for(keyword))`` where it answers, else :func:`header_value`.

    ``plain`` is one of the ``plain_*`` readers below: the element's own bytes where they are plain,
    the same value as pydicom's conversion at a fraction of its cost; anything else goes through pydicom.
    """
    value = plain(dataset, tag_for(keyword))
    return value if value is not None else header_value(dataset, keyword)


def plain_uid(dataset: Dataset, tag: int) -> str | None:
    """A UI element's value as ``str(dataset[tag].value)`` gives it, where it is one plain UID.

    Parameters
    ----------
    dataset : pydicom.dataset.Dataset
        A dataset read from a file (by pydicom or :func:`read_header`).
    tag : int
        Tag of a UI element, e.g. ``0x00080018`` (SOPInstanceUID).

    Returns
    -------
    str or None
        The UID without its padding; None where the element is absent, empty, already converted,
        multi-valued, of another VR or not a valid UID (then ask pydicom).
    """
    value = _plain_bytes(dataset, tag, "UI")
    if value is None:
        return None
    # pydicom: decoded with the default character set, trailing NULs and spaces removed.
    text = value.decode(_DEFAULT_CODEC).rstrip("\0 ")
    if text and (len(text) > _MAX_UID_LENGTH or not _UID.fullmatch(text)):
        return None
    return text


def plain_unsigned_short(dataset: Dataset, tag: int) -> int | None:
    """A US element's value where it is exactly one value, else None (then ask pydicom)."""
    value = _plain_bytes(dataset, tag, "US")
    if value is None or len(value) != 2:
        return None
    return value[0] | value[1] << 8


def plain_integer_string(dataset: Dataset, tag: int) -> int | None:
    """An IS element's value as an int where it is one plain integer string, else None."""
    if config.use_IS_numpy:
        return None
    value = _plain_bytes(dataset, tag, "IS")
    if value is None:
        return None
    text = value.decode(_DEFAULT_CODEC).rstrip(" \0")
    if not _INTEGER_STRING.fullmatch(text):
        return None
    number = int(text)
    # Beyond 32 bits pydicom raises in its strict validation mode: let it.
    return number if -(2**31) <= number < 2**31 else None


def plain_decimal_strings(dataset: Dataset, tag: int) -> tuple[float, ...] | None:
    """A DS element's values as floats, where every one is a plain decimal string, else None.

    Returns
    -------
    tuple of float or None
        One float per value (``float(v)`` of each value pydicom gives, in order); None where the
        element is absent, empty, already converted, of another VR, or any value is not a plain
        decimal string of at most 16 characters (then ask pydicom, which also warns about it).
    """
    if config.use_DS_decimal or config.use_DS_numpy:
        return None
    value = _plain_bytes(dataset, tag, "DS")
    if value is None:
        return None
    parts = value.decode(_DEFAULT_CODEC).rstrip(" \0").split("\\")
    match = _DECIMAL_STRING.fullmatch
    for part in parts:
        if len(part) > _MAX_DECIMAL_STRING_LENGTH or not match(part):
            return None
    return tuple(map(float, parts))
