"""The scanner's voxel grid of an axial CT series and its DICOM geometry.

The grid is defined the way a scanner defines it: from the patient position (which fixes
ImageOrientationPatient), the reconstruction field of view (in-plane centre and pixel spacing)
and the table positions of the slices. The anatomy is then sampled at the LPS position of each
voxel centre computed from that geometry, so patient left and right are right by construction
whatever the orientation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .frames import Block

logger = logging.getLogger(__name__)

PatientPosition = Literal["HFS", "FFS"]

#: ImageOrientationPatient (row direction cosines, column direction cosines) that scanners write
#: for supine axial acquisitions. Head first: columns run to the patient's left. Feet first the
#: image is reconstructed as seen from the feet, so columns run to the patient's right.
IMAGE_ORIENTATION: dict[str, tuple[float, float, float, float, float, float]] = {
    "HFS": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "FFS": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
}


@dataclass(frozen=True)
class ScannerGrid:
    """Geometry of one axial series.

    Attributes
    ----------
    shape
        ``(slices, rows, columns)``.
    image_orientation
        ImageOrientationPatient: row direction cosines then column direction cosines (LPS).
    first_position
        LPS position (mm) of the centre of the first voxel of slice 0, i.e. the
        ImagePositionPatient of the slice with array index 0.
    pixel_spacing
        ``(row spacing, column spacing)`` in mm, as DICOM PixelSpacing.
    slice_spacing
        Distance between slice centres in mm; slice ``k`` lies at
        ``first_position + k * slice_spacing * normal``.
    slice_thickness
        Nominal reconstructed slice thickness in mm (may exceed the spacing: overlapping slices).
    patient_position
        ``"HFS"`` or ``"FFS"``.
    """

    shape: tuple[int, int, int]
    image_orientation: tuple[float, float, float, float, float, float]
    first_position: tuple[float, float, float]
    pixel_spacing: tuple[float, float]
    slice_spacing: float
    slice_thickness: float
    patient_position: str

    @property
    def row_cosine(self) -> np.ndarray:
        """LPS direction of increasing column index."""
        return np.asarray(self.image_orientation[:3], dtype=np.float64)

    @property
    def column_cosine(self) -> np.ndarray:
        """LPS direction of increasing row index."""
        return np.asarray(self.image_orientation[3:], dtype=np.float64)

    @property
    def normal(self) -> np.ndarray:
        """LPS direction of increasing slice index: column cosine x row cosine.

        With this choice the (slice, row, column) axes form a right-handed frame, which is the
        order :func:`highdicom.get_volume_from_series` stacks slices in, so a series read back
        has exactly this grid's affine (head first the first slice is the most superior).
        """
        return np.cross(self.column_cosine, self.row_cosine)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping a voxel index ``(slice, row, column, 1)`` to LPS mm."""
        aff = np.eye(4)
        aff[:3, 0] = self.normal * self.slice_spacing
        aff[:3, 1] = self.column_cosine * self.pixel_spacing[0]
        aff[:3, 2] = self.row_cosine * self.pixel_spacing[1]
        aff[:3, 3] = self.first_position
        return aff

    def slice_positions(self) -> np.ndarray:
        """(slices, 3) ImagePositionPatient of every slice in array order, mm."""
        k = np.arange(self.shape[0], dtype=np.float64)[:, None]
        return np.asarray(self.first_position) + k * self.slice_spacing * self.normal

    def axis_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS coordinates (mm, float64) of the voxel centres along each array axis.

        Returns
        -------
        zs, ys, xs
            ``zs[k]`` is the LPS z of slice ``k``, ``ys[r]`` the LPS y of row ``r`` and
            ``xs[c]`` the LPS x of column ``c``. Computed from the affine; valid because the
            grid is aligned with the LPS axes (checked).
        """
        aff = self.affine
        lin = aff[:3, :3]
        # Each array axis must move along exactly one LPS axis for coordinates to separate.
        expected = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]])  # LPS axis of (z, y, x) index axes
        if not np.allclose(np.abs(lin) > 1e-9, expected.T):
            raise ValueError("scanner grid is not aligned with the LPS axes")
        nz, ny, nx = self.shape
        zs = aff[2, 3] + aff[2, 0] * np.arange(nz)
        ys = aff[1, 3] + aff[1, 1] * np.arange(ny)
        xs = aff[0, 3] + aff[0, 2] * np.arange(nx)
        return zs, ys, xs

    def block(self, index: tuple[slice, slice, slice]) -> Block:
        """The :class:`~synthetic_ct.frames.Block` of voxels selected by ``index``."""
        zs, ys, xs = self.axis_coordinates()
        return Block(
            index=index,
            x=xs[index[2]].astype(np.float32)[None, None, :],
            y=ys[index[1]].astype(np.float32)[None, :, None],
            z=zs[index[0]].astype(np.float32)[:, None, None],
        )

    def index_box(
        self, lo: np.ndarray, hi: np.ndarray, *, within: tuple[slice, slice, slice] | None = None
    ) -> tuple[slice, slice, slice] | None:
        """Index box of the voxels whose centres lie in the LPS box ``[lo, hi]`` (mm).

        Parameters
        ----------
        lo, hi
            LPS corners (x, y, z) in mm.
        within
            Optional index box to intersect with (e.g. the current chunk of slices).

        Returns
        -------
        The ``(z, y, x)`` slices, or ``None`` when no voxel centre lies in the box.
        """
        zs, ys, xs = self.axis_coordinates()
        out = []
        for coords, axis_lps in ((zs, 2), (ys, 1), (xs, 0)):
            inside = np.nonzero((coords >= lo[axis_lps]) & (coords <= hi[axis_lps]))[0]
            if inside.size == 0:
                return None
            out.append(slice(int(inside[0]), int(inside[-1]) + 1))
        if within is not None:
            for i, w in enumerate(within):
                start = max(out[i].start, w.start)
                stop = min(out[i].stop, w.stop)
                if stop <= start:
                    return None
                out[i] = slice(start, stop)
        return tuple(out)  # type: ignore[return-value]


def make_grid(
    *,
    patient_position: PatientPosition,
    matrix: tuple[int, int],
    pixel_spacing: float,
    fov_centre_xy: tuple[float, float],
    z_range: tuple[float, float],
    slice_spacing: float,
    slice_thickness: float,
) -> ScannerGrid:
    """Grid of an axial series covering the table positions ``z_range``.

    Parameters
    ----------
    patient_position
        ``"HFS"`` or ``"FFS"``; fixes ImageOrientationPatient (see :data:`IMAGE_ORIENTATION`).
    matrix
        ``(rows, columns)``.
    pixel_spacing
        Square in-plane pixel size, mm.
    fov_centre_xy
        LPS ``(x, y)`` of the reconstruction centre, mm.
    z_range
        ``(z_min, z_max)`` LPS z (mm) to cover; the slices span it from one end.
    slice_spacing, slice_thickness
        mm.
    """
    if patient_position not in IMAGE_ORIENTATION:
        raise ValueError(f"patient_position must be 'HFS' or 'FFS', got {patient_position!r}")
    rows, cols = matrix
    if rows < 8 or cols < 8:
        raise ValueError(f"matrix {matrix} is too small")
    if not (0 < pixel_spacing and 0 < slice_spacing and 0 < slice_thickness):
        raise ValueError("spacings and thickness must be positive")
    iop = IMAGE_ORIENTATION[patient_position]
    row_cos = np.asarray(iop[:3])
    col_cos = np.asarray(iop[3:])
    normal = np.cross(col_cos, row_cos)
    z_lo, z_hi = sorted(z_range)
    n_slices = int(np.floor((z_hi - z_lo) / slice_spacing)) + 1
    # Slice 0 is the first along the normal: the most superior head first, the most inferior
    # feet first.
    z_first = z_lo if normal[2] > 0 else z_lo + (n_slices - 1) * slice_spacing
    # Table positions are quantised the way consoles display them (0.1 mm).
    z_first = round(z_first, 1)
    centre = np.array([fov_centre_xy[0], fov_centre_xy[1], 0.0])
    first = (
        centre
        - row_cos * pixel_spacing * (cols - 1) / 2.0
        - col_cos * pixel_spacing * (rows - 1) / 2.0
    )
    first[2] = z_first
    return ScannerGrid(
        shape=(n_slices, rows, cols),
        image_orientation=iop,
        first_position=(float(first[0]), float(first[1]), float(first[2])),
        pixel_spacing=(float(pixel_spacing), float(pixel_spacing)),
        slice_spacing=float(slice_spacing),
        slice_thickness=float(slice_thickness),
        patient_position=patient_position,
    )
