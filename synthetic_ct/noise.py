"""Smooth random fields for textures and shape perturbations, defined in LPS millimetres.

A :class:`SmoothNoise` is a lattice of independent standard normal values with a spacing in mm
per axis, interpolated with cubic B-splines. Because the scanner grid is axis-aligned in LPS, a
block of it is sampled as three small matrix products (one per axis), so a field costs a few
multiply-adds per voxel whatever its smoothness. The field has zero mean and unit variance at
every position (rows of the interpolation matrices are normalised).
"""

from __future__ import annotations

import logging

import numpy as np

from .frames import Block

logger = logging.getLogger(__name__)


def _bspline_matrix(coords: np.ndarray, start: float, step: float, n_knots: int) -> np.ndarray:
    """(len(coords), n_knots) cubic B-spline weights, rows normalised to unit L2 norm."""
    u = (np.asarray(coords, dtype=np.float64) - start) / step
    i = np.floor(u).astype(int)
    t = u - i
    w = np.stack(
        [
            (1 - t) ** 3 / 6.0,
            (3 * t**3 - 6 * t**2 + 4) / 6.0,
            (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6.0,
            t**3 / 6.0,
        ],
        axis=1,
    )
    m = np.zeros((u.size, n_knots), dtype=np.float64)
    rows = np.arange(u.size)
    for j in range(4):
        idx = np.clip(i - 1 + j, 0, n_knots - 1)
        np.add.at(m, (rows, idx), w[:, j])
    m /= np.linalg.norm(m, axis=1, keepdims=True)
    return m.astype(np.float32)


class SmoothNoise:
    """Zero-mean, unit-variance smooth random field over an LPS box.

    Parameters
    ----------
    rng
        Source of the lattice values.
    lo, hi
        LPS corners (x, y, z) of the box the field must cover, mm. Outside it the field
        continues with the edge knots (still smooth, no longer independent).
    spacing
        Lattice spacing (x, y, z) in mm: the correlation length of the field is about this.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        lo: np.ndarray,
        hi: np.ndarray,
        spacing: tuple[float, float, float],
    ) -> None:
        self.spacing = tuple(float(s) for s in spacing)
        self.start = np.asarray(lo, dtype=np.float64) - 2.0 * np.asarray(self.spacing)
        extent = np.asarray(hi, dtype=np.float64) - self.start
        self.n = tuple(int(np.ceil(e / s)) + 4 for e, s in zip(extent, self.spacing))
        # Stored as (z, y, x) like the volumes.
        self.knots = rng.standard_normal((self.n[2], self.n[1], self.n[0]), dtype=np.float32)

    def sample(self, block: Block) -> np.ndarray:
        """Field values (float32) at the voxel centres of ``block``, shape ``block.shape``."""
        mx = _bspline_matrix(block.x.ravel(), self.start[0], self.spacing[0], self.n[0])
        my = _bspline_matrix(block.y.ravel(), self.start[1], self.spacing[1], self.n[1])
        mz = _bspline_matrix(block.z.ravel(), self.start[2], self.spacing[2], self.n[2])
        # Restrict the lattice to the knots that matter for this block before expanding.
        kx = np.nonzero(mx.any(axis=0))[0]
        ky = np.nonzero(my.any(axis=0))[0]
        kz = np.nonzero(mz.any(axis=0))[0]
        c = self.knots[kz[0] : kz[-1] + 1, ky[0] : ky[-1] + 1, kx[0] : kx[-1] + 1]
        mx = mx[:, kx[0] : kx[-1] + 1]
        my = my[:, ky[0] : ky[-1] + 1]
        mz = mz[:, kz[0] : kz[-1] + 1]
        # Three matrix products, each producing a contiguous array.
        t = c @ mx.T  # (kz, ky, nx)
        t = np.matmul(my, t)  # (kz, ny, nx)
        kz, ny, nx = t.shape
        return (mz @ t.reshape(kz, ny * nx)).reshape(mz.shape[0], ny, nx)
