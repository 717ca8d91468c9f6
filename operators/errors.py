"""Exceptions raised for problems with the input.

Every message is a single line that names the problem and, where there is one, the file or series
concerned, so that a command-line entry point can print it as is and exit non-zero. Messages never
contain patient identifiers.
"""

from __future__ import annotations


class FemurSegError(Exception):
    """Base class of the errors this package raises for problems a user can act on."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        # Keep messages on one line whatever the caller passed in, and printable: a file name or a tag
        # value may hold control characters (a terminal escape) or, for a file name that is not UTF-8,
        # lone surrogates that no terminal can show.
        super().__init__(printable(" ".join(str(message).split())))


def printable(text: str) -> str:
    """``text`` with every character that is not printable (controls, lone surrogates) replaced by '?'."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


class InputError(FemurSegError):
    """The input folder or its files cannot be used (missing, unreadable, not DICOM)."""


class NoSuitableSeriesError(InputError):
    """The input holds DICOM, but no series passes the selection rules (e.g. not a CT)."""


class SeriesGeometryError(InputError):
    """The selected series cannot be stacked into a volume (tilt, mixed sizes, duplicates, ...)."""


class PixelDataError(InputError):
    """Pixel data of a file is missing, truncated or cannot be decoded."""


class NoFemurInViewError(FemurSegError):
    """The CT does not show a femur. This is an outcome to report, not a failure of the run."""

    exit_code = 0


class GeometryMismatchError(InputError):
    """Two label volumes of the same case are not on the same voxel grid (shape, spacing, direction, origin)."""


class CaseMismatchError(InputError):
    """Case ids do not match between a prediction folder and a reference folder (e.g. missing predictions)."""


class ModelFolderError(FemurSegError):
    """A trained lesion model folder or archive is missing, incomplete or cannot be loaded."""


class TrainingDataError(FemurSegError):
    """An nnU-Net training dataset or split file is missing, malformed or inconsistent."""


class TrainingRunError(FemurSegError):
    """A step of nnU-Net training (planning, preprocessing, a fold's training, export) failed."""
