"""Checks shared by the metric functions: masks are 3-D boolean arrays, spacing is (sz, sy, sx) in mm."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_mask(array: np.ndarray, name: str) -> np.ndarray:
    """Return `array` as a 3-D boolean mask, (z, y, x).

    Non-boolean input is accepted when it only holds 0 and 1, so that a uint8 mask can be passed as
    is; anything else is refused, because a label volume passed by mistake would otherwise count every
    non-zero label as foreground.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3-D (z, y, x) array, got shape {array.shape}")
    if array.dtype == bool:
        return array
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be a boolean mask (values 0/1); select a label first")
    return array.astype(bool)


def as_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """Return `spacing` as three positive finite floats (sz, sy, sx) in millimetres."""
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive values (sz, sy, sx) in mm, got {tuple(spacing)}")
    return values  # type: ignore[return-value]


def check_same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    """Refuse two arrays on different voxel grids."""
    if a.shape != b.shape:
        raise ValueError(f"{names} differ in shape: {a.shape} vs {b.shape}")


def padded_bounding_box(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...] | None:
    """Slices of the bounding box of `mask` grown by `margin` voxels per axis, clipped to the array.

    Returns None when `mask` is empty.
    """
    if not mask.any():
        return None
    box = []
    for axis, pad in enumerate(margin):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        nonzero = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(nonzero[0]) - pad, 0), min(int(nonzero[-1]) + 1 + pad, mask.shape[axis])))
    return tuple(box)
