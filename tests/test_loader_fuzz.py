"""Property test of the loader: damaged and hostile files give a consistent volume or the product's error.

Hypothesis mutates a small valid series (4 slices of 8 x 8, :func:`synthetic_ct.bad_input.write_series`):
it truncates files, flips and overwrites bytes, sets header attributes to hostile values (Rows,
BitsAllocated, PixelRepresentation, ImagePositionPatient, ImageOrientationPatient, rescale, ...),
deletes them, or declares another transfer syntax without re-encoding. Whatever it does, scanning,
selecting and loading the folder must either return a volume whose parts agree (shape, slices,
headers, finite affine) or raise :class:`operators.errors.FemurSegError` with a one-line printable
message; never another exception (IndexError, ValueError, MemoryError, ...) and never hang.

Bounded for CI: a fixed number of examples, derandomized (the same examples on every run), no example
database, and a watchdog that fails an example taking longer than :data:`_HANG_S`.
"""

from __future__ import annotations

import functools
import io
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.errors import FemurSegError
from operators.series_selection import SelectionRules
from operators.series_volume import load_study
from synthetic_ct.bad_input import patch_transfer_syntax, write_series

_N_FILES = 4
_HANG_S = 30
_RULES = SelectionRules(min_slices=3)

_INTS = st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 32, 33, 64, 255, 4096, 4097, 65535])
_NUMBERS = st.sampled_from(["0", "-0", "1", "-1", "0.5", "1e-30", "1e30", "1e308", "nan", "inf", "-inf", "abc",
                            "", "  ", "2.5", "-1000", "32767"])
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "Rows": _INTS,
    "Columns": _INTS,
    "BitsAllocated": _INTS,
    "BitsStored": _INTS,
    "HighBit": _INTS,
    "PixelRepresentation": _INTS,
    "SamplesPerPixel": _INTS,
    "PlanarConfiguration": _INTS,
    "NumberOfFrames": st.sampled_from(["0", "1", "2", "4", "100000", "-3", "x"]),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL",
                                                  "PALETTE COLOR", "", "garbage"]),
    "ImagePositionPatient": st.lists(_NUMBERS, min_size=0, max_size=5),
    "ImageOrientationPatient": st.one_of(
        st.lists(_NUMBERS, min_size=0, max_size=7),
        st.sampled_from([["1", "0", "0", "0", "1", "0"], ["0", "1", "0", "0", "0", "-1"],
                         ["1", "0", "0", "1", "0", "0"], ["0", "0", "0", "0", "0", "0"]])),
    "PixelSpacing": st.lists(_NUMBERS, min_size=0, max_size=3),
    "RescaleSlope": _NUMBERS,
    "RescaleIntercept": _NUMBERS,
    "InstanceNumber": st.sampled_from(["1", "-5", "x", "99999999999999", ""]),
    "SOPInstanceUID": st.sampled_from(["", "1.2.3", "1.2.3.4.5"]),
    "SeriesInstanceUID": st.sampled_from(["", "1.2.3", "2.25.7"]),
    "Modality": st.sampled_from(["CT", "MR", "", "ct", "OT"]),
    "ImageType": st.sampled_from([["ORIGINAL", "PRIMARY", "AXIAL"], ["DERIVED"], [], ["ORIGINAL", "PRIMARY"]]),
    "SpacingBetweenSlices": _NUMBERS,
}
_DELETABLE = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
              "SamplesPerPixel", "PhotometricInterpretation", "ImagePositionPatient", "ImageOrientationPatient",
              "PixelSpacing", "RescaleSlope", "RescaleIntercept", "PixelData", "SOPClassUID",
              "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ImageType"]
_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
             "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5", "1.2.3.4", "x"]

# -1: every file (so that a change can get past the checks that compare files), else one file.
_FILE = st.integers(min_value=-1, max_value=_N_FILES - 1)
_MUTATION = st.one_of(
    st.tuples(st.just("truncate"), _FILE, st.floats(min_value=0.0, max_value=1.0)),
    st.tuples(st.just("flip"), _FILE, st.lists(st.tuples(st.floats(min_value=0.0, max_value=1.0),
                                                         st.integers(min_value=1, max_value=255)),
                                               min_size=1, max_size=8)),
    st.tuples(st.just("set"), _FILE,
              st.sampled_from(sorted(_VALUES)).flatmap(lambda k: st.tuples(st.just(k), _VALUES[k]))),
    st.tuples(st.just("delete"), _FILE, st.sampled_from(_DELETABLE)),
    st.tuples(st.just("syntax"), _FILE, st.sampled_from(_SYNTAXES)),
)


@functools.cache
def _base_files() -> tuple[bytes, ...]:
    """The valid series every example starts from (written once; not a test argument, so that a
    failing example is printed as its mutations only)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-base-") as tmp:
        paths = write_series(Path(tmp), key="fuzz", n_slices=_N_FILES, rows=8, columns=8)
        return tuple(p.read_bytes() for p in paths)


def _apply(data: bytes, mutation: tuple[Any, ...]) -> bytes:
    kind, _, argument = mutation
    if kind == "truncate":
        return data[: int(len(data) * argument)]
    if kind == "flip":
        out = bytearray(data)
        for where, xor in argument:
            if out:
                out[min(int(where * len(out)), len(out) - 1)] ^= xor
        return bytes(out)
    if kind == "syntax":
        try:
            return patch_transfer_syntax(data, argument)
        except ValueError:
            return data
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if kind == "set":
            keyword, value = argument
            if keyword in ds:
                ds[keyword].value = value
            else:
                setattr(ds, keyword, value)
        elif argument in ds:
            delattr(ds, argument)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        return buffer.getvalue()
    except Exception:  # noqa: BLE001 - pydicom cannot write this change: the file stays as it was
        return data


@contextmanager
def _watchdog(seconds: int) -> Iterator[None]:
    """Fail the example when the loader takes longer than ``seconds`` (a hang), on the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the loader did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=4))
def test_damaged_series_give_a_volume_or_the_products_error(mutations: list[tuple[Any, ...]]) -> None:
    files = list(_base_files())
    for mutation in mutations:
        index = mutation[1]
        targets = range(len(files)) if index == -1 else [index]
        for k in targets:
            files[k] = _apply(files[k], mutation)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        folder = Path(tmp)
        for k, data in enumerate(files):
            (folder / f"slice_{k:03d}.dcm").write_bytes(data)
        try:
            with _watchdog(_HANG_S):
                loaded = load_study(folder, rules=_RULES)
        except FemurSegError as error:
            message = str(error)
            assert message and message.isprintable() and "\n" not in message, repr(message)
            return
    volume = loaded.volume
    assert volume.array.ndim == 3 and volume.array.dtype == np.float32
    assert volume.shape == loaded.geometry.shape
    assert np.isfinite(volume.affine).all()
    assert np.isfinite(volume.array).all(), "non-finite HU in the volume"
    if not loaded.geometry.resampled:
        assert len(loaded.source_datasets) == volume.shape[0]
