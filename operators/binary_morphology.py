"""Binary morphology on large masks: exact equivalents of scipy.ndimage operations, computed faster.

``scipy.ndimage.binary_fill_holes`` floods the background from the border with an iterated binary dilation,
one voxel layer per pass: on a femur's box at full resolution (a few 10^7 voxels, long marrow cavities) that
is the slowest step of the femur splitter. :func:`fill_holes` gets the same result from one connected-component
labelling of the background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["fill_holes"]


def fill_holes(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """Fill the holes of a binary mask: ``scipy.ndimage.binary_fill_holes(mask, structure)``, exactly.

    A hole is a connected piece of background (connectivity ``structure``) that cannot be reached from
    outside the array. The outside touches a background piece where the piece reaches the first or last
    index of an axis along which ``structure`` connects neighbours; an in-plane structure (no neighbours
    along axis 0) therefore fills every slice on its own.

    Parameters
    ----------
    mask:
        Array of any dimension; non-zero is foreground.
    structure:
        Symmetric connectivity of the background, as for ``scipy.ndimage.label``; the default is
        face connectivity (``generate_binary_structure(mask.ndim, 1)``), scipy's default.

    Returns
    -------
    numpy.ndarray
        bool array of ``mask``'s shape: the mask with its holes filled.
    """
    mask = np.asarray(mask, dtype=bool)
    if structure is None:
        structure = ndi.generate_binary_structure(mask.ndim, 1)
    structure = np.asarray(structure, dtype=bool)
    if structure.ndim != mask.ndim or any(s != 3 for s in structure.shape):
        raise ValueError(f"structure must be 3 x ... x 3 with {mask.ndim} axes, got shape {structure.shape}")
    if not np.array_equal(structure, structure[(slice(None, None, -1),) * structure.ndim]):
        raise ValueError("structure must be symmetric")
    if mask.size == 0:
        return mask.copy()
    background, n = ndi.label(~mask, structure=structure)
    if n == 0:
        return mask.copy()
    reaches_outside = np.zeros(n + 1, dtype=bool)
    for axis in range(mask.ndim):
        # Neighbours along this axis exist when the structure has an element off its centre plane.
        if not np.take(structure, [0, 2], axis=axis).any():
            continue
        for end in (0, -1):
            reaches_outside[np.unique(np.take(background, end, axis=axis))] = True
    reaches_outside[0] = True  # label 0 is the mask itself: it stays as it is
    return mask | ~reaches_outside[background]
