"""Local coordinate frames of the anatomy and the voxel blocks they are evaluated on.

Anatomy is defined in local frames (a femur's own axes, the pelvis's axes) and placed in the
DICOM patient coordinate system (LPS, mm: +x patient left, +y posterior, +z superior). A
:class:`Frame` maps LPS positions to local coordinates; a :class:`Block` is an axis-aligned
sub-box of the scanner grid together with the LPS coordinates of its voxel centres.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_F32 = np.float32


def rotation(axis: np.ndarray | tuple[float, float, float], angle_deg: float) -> np.ndarray:
    """Proper 3x3 rotation of ``angle_deg`` degrees about ``axis`` (right-hand rule)."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    t = np.deg2rad(angle_deg)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def rotation_between(v0: np.ndarray, v1: np.ndarray) -> np.ndarray:
    """Smallest rotation that turns direction ``v0`` into direction ``v1``."""
    a = np.asarray(v0, dtype=np.float64) / np.linalg.norm(v0)
    b = np.asarray(v1, dtype=np.float64) / np.linalg.norm(v1)
    axis = np.cross(a, b)
    s = np.linalg.norm(axis)
    if s < 1e-12:
        if a @ b > 0:
            return np.eye(3)
        # Opposite directions: any perpendicular axis will do.
        perp = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(perp) < 1e-6:
            perp = np.cross(a, [0.0, 1.0, 0.0])
        return rotation(perp, 180.0)
    return rotation(axis, np.rad2deg(np.arctan2(s, a @ b)))


@dataclass(frozen=True)
class Frame:
    """An orthonormal local frame: ``local = matrix @ (p_lps - origin)``.

    Attributes
    ----------
    matrix
        (3, 3) orthogonal matrix whose rows are the local axes expressed in LPS. It may be a
        reflection (det -1): the left femur is the mirror image of the canonical right femur.
    origin
        (3,) LPS position of the local origin, mm.
    """

    matrix: np.ndarray
    origin: np.ndarray

    def to_local(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local coordinates (float32, broadcast shape) of LPS positions ``x, y, z`` (mm)."""
        m = self.matrix.astype(_F32)
        dx = x - _F32(self.origin[0])
        dy = y - _F32(self.origin[1])
        dz = z - _F32(self.origin[2])
        return (
            m[0, 0] * dx + m[0, 1] * dy + m[0, 2] * dz,
            m[1, 0] * dx + m[1, 1] * dy + m[1, 2] * dz,
            m[2, 0] * dx + m[2, 1] * dy + m[2, 2] * dz,
        )

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """LPS positions (..., 3) of local points (..., 3), mm."""
        return np.asarray(points, dtype=np.float64) @ self.matrix + self.origin

    def direction_to_world(self, vectors: np.ndarray) -> np.ndarray:
        """LPS directions (..., 3) of local direction vectors (..., 3)."""
        return np.asarray(vectors, dtype=np.float64) @ self.matrix

    def world_bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LPS axis-aligned bounds (mm) of the local box ``[lo, hi]``."""
        corners = np.array(
            [[(lo, hi)[i][0], (lo, hi)[j][1], (lo, hi)[k][2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        )
        w = self.to_world(corners)
        return w.min(axis=0), w.max(axis=0)


@dataclass(frozen=True)
class Block:
    """An axis-aligned box of voxels of the scanner grid.

    Attributes
    ----------
    index
        ``(slice(z0, z1), slice(y0, y1), slice(x0, x1))`` into the (slice, row, column) array.
    x, y, z
        LPS coordinates (mm, float32) of the voxel centres, shaped ``(1, 1, nx)``,
        ``(1, ny, 1)`` and ``(nz, 1, 1)`` so that they broadcast to the block shape. This relies
        on the grid being axis-aligned in LPS, which axial CT without gantry tilt is.
    """

    index: tuple[slice, slice, slice]
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.z.shape[0], self.y.shape[1], self.x.shape[2])

    @property
    def size(self) -> int:
        nz, ny, nx = self.shape
        return nz * ny * nx
