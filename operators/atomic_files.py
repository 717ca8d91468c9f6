"""Atomic file writes: a reader sees the old file or the complete new one, never half of it.

Every output of the product (DICOM, NIfTI, reports, pictures) is written to a temporary name in the
destination folder and renamed onto its final name once complete. The rename is atomic on POSIX file
systems because both names are in the same folder. Files get ordinary permissions (0644 less the
process umask): ``tempfile.mkstemp`` alone would leave them readable by their owner only.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output_path", "write_bytes_atomic", "write_text_atomic"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output_path(path: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[Path]:
    """Give a temporary path to write to; on success it replaces ``path``, on failure it is removed.

    The temporary name ends with the same suffixes as ``path`` (e.g. ``.nii.gz``, ``.png``), so writers
    that choose the format from the file name behave as for ``path``. Missing parent folders are created.

    Example
    -------
    >>> with atomic_output_path(out / "labels.nii.gz") as tmp:     # doctest: +SKIP
    ...     SimpleITK.WriteImage(image, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes) or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically and return the path."""
    with atomic_output_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to ``path`` atomically and return the path."""
    with atomic_output_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
