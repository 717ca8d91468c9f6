"""Binary morphology on large masks: exact equivalents of scipy.ndimage operations, computed faster.

``scipy.ndimage.binary_fill_holes`` floods the background from the border with an iterated binary dilation,
one voxel layer per pass: on a femur's box at full resolution (a few 10^7 voxels, long marrow cavities) that
is the slowest step of the femur splitter. :func:`fill_holes` gets the same result from one connected-component
labelling of the background. :func:`closing_in_plane` closes every axial slice with a disk from running
maxima and minima along rows, instead of visiting each of the disk's pixels at every voxel.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["closing_in_plane", "fill_holes"]


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


def closing_in_plane(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Close every slice (axis 0) of a 3D mask with a 2D footprint: exactly
    ``scipy.ndimage.binary_closing(mask, structure=footprint[None])``.

    The footprint must be symmetric (it is its own reflection) and each of its rows one run of pixels
    centred on the middle column, as a digital disk or ellipse is. A dilation by such a footprint is
    then, row of the footprint by row, a running maximum along axis 2 (of that row's width) shifted
    along axis 1, and an erosion the same with running minima: a few passes over the mask whatever
    the footprint's size. As in scipy, the array is surrounded by background: the dilation does not
    reach beyond the edges, and the erosion removes what the footprint would push across them.

    Parameters
    ----------
    mask:
        3D array (z, y, x); non-zero is foreground. Slices along axis 0 are closed independently.
    footprint:
        2D bool array (y, x) of odd shape, symmetric, each row empty or one run centred on the middle
        column.

    Returns
    -------
    numpy.ndarray
        bool array of ``mask``'s shape.
    """
    mask = np.asarray(mask, dtype=bool)
    half_widths = _row_half_widths(footprint)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got {mask.ndim} axes")
    return _sweep_rows(_sweep_rows(mask, half_widths, dilate=True), half_widths, dilate=False)


def _row_half_widths(footprint: np.ndarray) -> dict[int, int]:
    """Row offset (axis 1, from the centre) -> half-width of that row's run, for the non-empty rows."""
    fp = np.asarray(footprint, dtype=bool)
    if fp.ndim != 2 or fp.shape[0] % 2 == 0 or fp.shape[1] % 2 == 0:
        raise ValueError(f"footprint must be a 2D array of odd shape, got shape {fp.shape}")
    if not np.array_equal(fp, fp[::-1, ::-1]):
        raise ValueError("footprint must be symmetric")
    cy, cx = fp.shape[0] // 2, fp.shape[1] // 2
    half_widths: dict[int, int] = {}
    for row in range(fp.shape[0]):
        n = int(fp[row].sum())
        if n == 0:
            continue
        w = n // 2
        if n % 2 == 0 or not fp[row, cx - w:cx + w + 1].all():
            raise ValueError("each row of the footprint must be one run centred on the middle column")
        half_widths[row - cy] = w
    if not half_widths:
        raise ValueError("footprint is empty")
    return half_widths


def _row_runs(mask: np.ndarray, half_widths: dict[int, int], maximum: bool) -> dict[int, np.ndarray]:
    """Per half-width, the running maximum (or minimum, background beyond the edges) along axis 2."""
    as_bytes = mask.view(np.uint8)
    runs = {}
    for w in sorted(set(half_widths.values())):
        if maximum:
            runs[w] = ndi.maximum_filter1d(as_bytes, 2 * w + 1, axis=2, mode="constant", cval=0).view(bool)
        else:
            runs[w] = ndi.minimum_filter1d(as_bytes, 2 * w + 1, axis=2, mode="constant", cval=0).view(bool)
    return runs


def _sweep_rows(mask: np.ndarray, half_widths: dict[int, int], *, dilate: bool) -> np.ndarray:
    """Dilation (OR of running maxima) or erosion (AND of running minima) by the rows of a footprint."""
    runs = _row_runs(mask, half_widths, maximum=dilate)
    combine = np.logical_or if dilate else np.logical_and
    n = mask.shape[1]
    out = np.zeros_like(mask) if dilate else np.ones_like(mask)
    for dy, w in half_widths.items():
        # out[:, y] = combine(out[:, y], runs[w][:, y + dy]) where y + dy lies in the array. Beyond it is
        # background: it adds nothing to a dilation, and no voxel whose footprint reaches it survives erosion.
        if abs(dy) >= n:
            if not dilate:
                out[...] = False
            continue
        if dy >= 0:
            target, source, beyond = out[:, :n - dy], runs[w][:, dy:], out[:, n - dy:]
        else:
            target, source, beyond = out[:, -dy:], runs[w][:, :n + dy], out[:, :-dy]
        combine(target, source, out=target)
        if not dilate:
            beyond[...] = False
    return out
