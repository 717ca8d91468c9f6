"""Exact, resampling-free mapping between a CT's array grid and a canonical anatomical view.

The femur splitter works on a *canonical view* of the CT whose array axes run, in this order, towards
the patient's Head (superior), Posterior and Left: ``(S, P, L)``. The view is a transpose plus flips of
the input array (numpy views, no copy, no interpolation), so every index and box maps back to the input
grid exactly. The mapping is derived from the volume's affine (index -> LPS mm), never from the DICOM
Patient Position attribute or from array indices, so head-first and feet-first studies, ascending or
descending slices and flipped rows or columns are all handled alike.

This is the same rearrangement :meth:`highdicom.Volume.to_patient_orientation` performs (for the
orientation string ``"HPL"``); it is reimplemented here because the splitter must also map boxes and
arrays *back* to the input grid, which highdicom does not expose.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

#: For each canonical axis, the LPS component it follows and the sign: axis 0 -> +z (superior),
#: axis 1 -> +y (posterior), axis 2 -> +x (patient left).
_CANONICAL_LPS_COMPONENT = (2, 1, 0)

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class CanonicalView:
    """Permutation and flips that turn an input array (z, y, x) into the canonical (S, P, L) view.

    Attributes
    ----------
    input_shape:
        Spatial shape of the input array, (z, y, x) = (slice, row, column).
    perm:
        ``perm[k]`` is the input axis that becomes canonical axis ``k``.
    flip:
        ``flip[k]`` is True when canonical axis ``k`` runs opposite to input axis ``perm[k]``.
    input_affine:
        4x4 affine of the input grid, index (z, y, x) -> LPS mm.
    """

    input_shape: tuple[int, int, int]
    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    input_affine: np.ndarray

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, int, int]) -> CanonicalView:
        """Derive the view from an index -> LPS affine.

        Each canonical direction (S, P, L) is assigned the input axis whose direction is closest to it;
        the assignment is a permutation chosen to maximise the summed alignment, so oblique volumes
        (rotated up to 45 degrees) still get a consistent, invertible view.

        Parameters
        ----------
        affine:
            4x4 affine, index (z, y, x) -> LPS mm.
        shape:
            Spatial shape (z, y, x) of the input array.
        """
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if len(shape) != 3:
            raise ValueError(f"shape must have three spatial dimensions, got {tuple(shape)}")
        columns = affine[:3, :3]
        norms = np.linalg.norm(columns, axis=0)
        if np.any(norms <= 0) or abs(np.linalg.det(columns)) < 1e-9 * float(np.prod(norms)):
            raise ValueError("affine is singular: the volume has no well-defined orientation")
        unit = columns / norms
        best: tuple[float, tuple[int, int, int]] | None = None
        for perm in itertools.permutations(range(3)):
            score = sum(abs(unit[_CANONICAL_LPS_COMPONENT[k], perm[k]]) for k in range(3))
            if best is None or score > best[0] + 1e-12:
                best = (score, perm)
        assert best is not None
        perm = tuple(int(p) for p in best[1])
        flip = tuple(bool(unit[_CANONICAL_LPS_COMPONENT[k], perm[k]] < 0) for k in range(3))
        return cls(tuple(int(s) for s in shape), perm, flip, affine)  # type: ignore[arg-type]

    # -- arrays ---------------------------------------------------------------------------------

    @property
    def canonical_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the canonical view, (S, P, L)."""
        return tuple(self.input_shape[p] for p in self.perm)  # type: ignore[return-value]

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Canonical (S, P, L) view of an input-grid array (a numpy view; no data is copied)."""
        if array.shape[:3] != self.input_shape:
            raise ValueError(f"array shape {array.shape[:3]} does not match the grid {self.input_shape}")
        out = np.transpose(array, self.perm + tuple(range(3, array.ndim)))
        index = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        return out[index]

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Input-grid (z, y, x) view of a canonical-view array (a numpy view; no data is copied)."""
        if array.shape[:3] != self.canonical_shape:
            raise ValueError(
                f"array shape {array.shape[:3]} does not match the canonical grid {self.canonical_shape}"
            )
        index = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        flipped = array[index]
        inverse = tuple(int(i) for i in np.argsort(self.perm))
        return np.transpose(flipped, inverse + tuple(range(3, array.ndim)))

    # -- geometry -------------------------------------------------------------------------------

    @property
    def canonical_spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the canonical axes (S, P, L)."""
        norms = np.linalg.norm(self.input_affine[:3, :3], axis=0)
        return tuple(float(norms[p]) for p in self.perm)  # type: ignore[return-value]

    @property
    def canonical_affine(self) -> np.ndarray:
        """4x4 affine of the canonical view, canonical index -> LPS mm."""
        m = np.zeros((4, 4))
        m[3, 3] = 1.0
        for k, p in enumerate(self.perm):
            if self.flip[k]:
                m[p, k] = -1.0
                m[p, 3] = self.input_shape[p] - 1
            else:
                m[p, k] = 1.0
        return self.input_affine @ m

    def box_to_input(self, box: Box) -> Box:
        """Map a canonical box (positive-step slices with explicit bounds) to the input grid."""
        out: list[slice | None] = [None, None, None]
        for k, p in enumerate(self.perm):
            start, stop = _bounds(box[k], self.input_shape[p])
            if self.flip[k]:
                n = self.input_shape[p]
                start, stop = n - stop, n - start
            out[p] = slice(start, stop)
        return tuple(out)  # type: ignore[return-value]

    def box_to_canonical(self, box: Box) -> Box:
        """Map an input-grid box (positive-step slices) to the canonical view."""
        out = []
        for k, p in enumerate(self.perm):
            start, stop = _bounds(box[p], self.input_shape[p])
            if self.flip[k]:
                n = self.input_shape[p]
                start, stop = n - stop, n - start
            out.append(slice(start, stop))
        return tuple(out)  # type: ignore[return-value]


def _bounds(s: slice, n: int) -> tuple[int, int]:
    start, stop, step = s.indices(n)
    if step != 1:
        raise ValueError("boxes must use unit-step slices")
    return start, max(start, stop)


def box_from_mask(mask: np.ndarray) -> Box | None:
    """Tight bounding box of the True voxels of a 3D mask, or None when it is empty."""
    bounds = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        bounds.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(bounds)  # type: ignore[return-value]


def enlarge_box(box: Box, margin_vox: tuple[int, int, int], shape: tuple[int, ...]) -> Box:
    """Grow a box by a per-axis margin in voxels and clip it to ``shape``."""
    return tuple(
        slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(box, margin_vox, shape)
    )  # type: ignore[return-value]


def is_index_box_in(box: Sequence[slice], shape: Sequence[int]) -> bool:
    """Whether ``box`` is three unit-step slices with explicit bounds inside a grid of ``shape`` (z, y, x)."""
    return len(box) == 3 and all(
        b.step in (None, 1) and b.start is not None and b.stop is not None and 0 <= b.start <= b.stop <= n
        for b, n in zip(box, shape)
    )


def box_shape(box: Box) -> tuple[int, int, int]:
    """Shape of the region a box selects."""
    return tuple(s.stop - s.start for s in box)  # type: ignore[return-value]
