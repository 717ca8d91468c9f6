"""Normalised surface distance (NSD) of two masks at a tolerance in millimetres.

NSD (Nikolov et al. 2021, "surface Dice") is the fraction of the two boundaries that lies within a
tolerance of the other boundary. It rewards a contour that is everywhere close to the reference even
where Dice is low because the lesion is small, which is the typical situation for femoral lesions.

This implementation counts boundary *voxels*: a boundary voxel is a foreground voxel with at least one
6-connected background neighbour (the array border counts as background). Distances between boundary
voxel centres are Euclidean in millimetres, from distance transforms sampled with the anisotropic
voxel spacing, so a one-slice shift costs the slice thickness, not one in-plane pixel. Every boundary
voxel weighs the same; with strongly anisotropic voxels this differs slightly from a surface-area
weighted NSD, but needs no mesh and reproduces exactly from the masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from evaluation._validation import as_mask, as_spacing, check_same_shape, padded_bounding_box

DEFAULT_TOLERANCE_MM = 2.0

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)

# Distances are sums of squared spacings, so a distance equal to the tolerance in exact arithmetic
# can come out a few ulp above it (0.1 mm x 20 = 2.0000000000000004); it still counts as within.
_ROUNDING_MM = 1e-6


def boundary_voxels(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels of `mask` that touch the background through a face, axes (z, y, x).

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean 3-D mask.

    Returns
    -------
    numpy.ndarray
        Boolean mask of the boundary voxels, same shape.
    """
    m = as_mask(mask, "mask")
    # border_value=0: a mask touching the edge of the volume has a boundary there.
    interior = ndimage.binary_erosion(m, structure=_FACE_NEIGHBOURS, border_value=0)
    return m & ~interior


def normalised_surface_distance(
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> float:
    """Fraction of boundary voxels of either mask within `tolerance_mm` of the other mask's boundary.

    Parameters
    ----------
    prediction, reference : numpy.ndarray
        Boolean (or 0/1) masks of the same shape, axes (z, y, x).
    spacing : sequence of float
        Voxel spacing (sz, sy, sx) in mm.
    tolerance_mm : float
        Distance in mm up to which a boundary voxel counts as matched (inclusive).

    Returns
    -------
    float
        NSD in [0, 1]: (|B_P within tol of B_R| + |B_R within tol of B_P|) / (|B_P| + |B_R|).
        NaN when both masks are empty (a true negative, as for Dice); 0 when exactly one is.
    """
    p = as_mask(prediction, "prediction")
    r = as_mask(reference, "reference")
    check_same_shape(p, r, "prediction and reference")
    sampling = as_spacing(spacing)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance_mm must be a non-negative number, got {tolerance_mm}")
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return math.nan
    if not p_any or not r_any:
        return 0.0

    # All boundary voxels lie inside the bounding box of the union, so distances computed on that
    # box (grown by one voxel so that erosion sees the same neighbourhood) are exact and the
    # distance transforms run on a small block instead of the whole femur volume.
    box = padded_bounding_box(p | r, margin=(1, 1, 1))
    assert box is not None
    bp = boundary_voxels(p[box])
    br = boundary_voxels(r[box])
    # distance_transform_edt measures the distance to the nearest zero: zeros are the other boundary.
    dist_to_r = ndimage.distance_transform_edt(~br, sampling=sampling)
    dist_to_p = ndimage.distance_transform_edt(~bp, sampling=sampling)
    limit = tolerance_mm + _ROUNDING_MM
    matched = np.count_nonzero(dist_to_r[bp] <= limit) + np.count_nonzero(dist_to_p[br] <= limit)
    return float(matched) / float(np.count_nonzero(bp) + np.count_nonzero(br))
