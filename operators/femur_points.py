"""Per-femur text file of voxel positions and HU, for finite-element tools (as in Rachmil et al.).

One CSV per femur, one row per femur voxel::

    z,y,x,lps_x_mm,lps_y_mm,lps_z_mm,hu
    212,233,301,-88.125,12.500,-402.000,1243.00

``z, y, x`` are indices of the full input CT grid (slice, row, column); ``lps_*_mm`` is the voxel
centre in LPS patient coordinates (mm: +x patient left, +y posterior, +z head); ``hu`` is the CT value
in Hounsfield units rounded to 0.01 HU (a femur voxel of exactly 0 HU, nudged in the femur-only volume,
reads 0.00). Rows are in index order (z, then y, then x). The file is written under a temporary name
in the destination folder and renamed when complete.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from operators.femur_splitter import FemurCrop

logger = logging.getLogger(__name__)

#: Header of the points file.
POINTS_HEADER = ("z", "y", "x", "lps_x_mm", "lps_y_mm", "lps_z_mm", "hu")

_ROWS_PER_CHUNK = 200_000


def export_femur_points(crop: FemurCrop, path: Path) -> Path:
    """Write one femur's voxels (full-grid index, LPS position, HU) to a CSV file.

    Parameters
    ----------
    crop:
        The femur, from :func:`operators.femur_splitter.split_femurs`.
    path:
        Destination file. Its folder must exist; an existing file is replaced atomically.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder of the points file does not exist: {path.parent}")
    local = np.nonzero(crop.mask)
    offset = np.array([s.start for s in crop.box], dtype=np.int64)
    index = np.stack(local, axis=1).astype(np.int64) + offset  # (n, 3) full-grid (z, y, x)
    affine = np.asarray(crop.femur_only.affine, dtype=np.float64)
    # Positions from crop-local indices with the crop's affine: identical to the full affine applied
    # to full-grid indices, since the crop affine is the full one shifted to the crop origin.
    lps = np.stack(local, axis=1).astype(np.float64) @ affine[:3, :3].T + affine[:3, 3]
    hu = np.asarray(crop.femur_only.array, dtype=np.float64)[local]

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(",".join(POINTS_HEADER) + "\n")
            for start in range(0, index.shape[0], _ROWS_PER_CHUNK):
                stop = start + _ROWS_PER_CHUNK
                block = np.column_stack((index[start:stop], lps[start:stop], hu[start:stop]))
                np.savetxt(handle, block, fmt=("%d", "%d", "%d", "%.3f", "%.3f", "%.3f", "%.2f"), delimiter=",")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("wrote %d %s femur points to %s", index.shape[0], crop.side, path.name)
    return path
