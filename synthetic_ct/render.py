"""Compositing of tissues into the CT and label arrays, one chunk of slices at a time.

Shapes are painted in anatomical order (body, organs, bones, femurs, lesions, metal) with the
partial-volume model of :func:`synthetic_ct.sdf.coverage`: each voxel's value moves toward the
new tissue's density in proportion to the fraction of the voxel the tissue covers. Labels and
the tissue map are taken at voxel centres (coverage >= 0.5), so they agree with the densities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from . import sdf as S
from .tissues import Tissue

logger = logging.getLogger(__name__)

_F32 = np.float32


@dataclass
class Canvas:
    """The arrays of one chunk of slices being rendered.

    Attributes
    ----------
    hu
        Noise-free density, float32 HU, (slices, rows, columns) of the chunk.
    tissue
        uint8 :class:`~synthetic_ct.tissues.Tissue` code at each voxel centre.
    labels
        uint8 ground-truth label at each voxel centre (see docs/CONVENTIONS.md).
    index
        Where the chunk lies in the full grid: ``(slice(z0, z1), slice(0, rows), slice(0, cols))``.
    width
        Partial-volume ramp width in mm (about the voxel size).
    """

    hu: np.ndarray
    tissue: np.ndarray
    labels: np.ndarray
    index: tuple[slice, slice, slice]
    width: float

    def local(self, box: tuple[slice, slice, slice]) -> tuple[slice, slice, slice]:
        """Convert a grid index box inside the chunk to an index into the chunk arrays."""
        return tuple(slice(b.start - c.start, b.stop - c.start) for b, c in zip(box, self.index))  # type: ignore[return-value]


def paint(
    canvas: Canvas,
    box: tuple[slice, slice, slice],
    sdf: np.ndarray,
    value: np.ndarray | float,
    tissue: Tissue,
    *,
    label: int | None = None,
    mask: np.ndarray | None = None,
) -> None:
    """Paint a tissue of density ``value`` (HU) bounded by ``sdf`` (mm) into ``box``.

    Parameters
    ----------
    box
        Grid index box (inside the canvas's chunk) that ``sdf`` and ``value`` cover.
    mask
        Optional extra restriction (bool, same shape): voxels where it is False are untouched.
    """
    sub = canvas.local(box)
    cov = S.coverage(sdf, canvas.width)
    if mask is not None:
        cov = cov * mask
    hu = canvas.hu[sub]
    hu += cov * (value - hu)
    inside = sdf <= 0
    if mask is not None:
        inside &= mask
    canvas.tissue[sub][inside] = tissue
    if label is not None:
        canvas.labels[sub][inside] = label


def paint_bone(
    canvas: Canvas,
    box: tuple[slice, slice, slice],
    sdf: np.ndarray,
    *,
    cortex_thickness: np.ndarray | float,
    cortex_hu: np.ndarray | float,
    inner_hu: np.ndarray | float,
    cortex_tissue: Tissue,
    inner_tissue: Tissue,
    label: int | None = None,
    replace: list[tuple[np.ndarray, np.ndarray | float, Tissue, int | None]] | None = None,
) -> None:
    """Paint a bone: a cortical shell of the given thickness (mm) around an inner material.

    ``replace`` lists materials that take the bone's place inside its outer surface (lytic
    lesions, cysts, metal): ``(sdf, hu, tissue, label)``, applied in order, clipped to the bone.
    """
    sub = canvas.local(box)
    depth_in = sdf + cortex_thickness
    a_in = S.coverage(depth_in, canvas.width)
    bone = cortex_hu + (inner_hu - cortex_hu) * a_in
    inside = sdf <= 0
    tissue = canvas.tissue[sub]
    labels = canvas.labels[sub]
    tissue[inside] = cortex_tissue
    tissue[inside & (depth_in <= 0)] = inner_tissue
    if label is not None:
        labels[inside] = label
    for r_sdf, r_hu, r_tissue, r_label in replace or []:
        a_r = S.coverage(r_sdf, canvas.width)
        bone = bone + a_r * (r_hu - bone)
        m = inside & (r_sdf <= 0)
        tissue[m] = r_tissue
        if r_label is not None:
            labels[m] = r_label
    a = S.coverage(sdf, canvas.width)
    hu = canvas.hu[sub]
    hu += a * (bone - hu)
