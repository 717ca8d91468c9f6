"""Cysts mistaken for tumour.

Cysts in the femoral head are fluid-filled, look lytic on CT and are not tumours (Rachmil et al. 2024
name them among the hard cases). When the reference marks cysts with their own label, this module
measures how much of them the model calls lesion: the voxel fraction, and per femur whether at least
one cyst was "called tumour", i.e. a cyst component (26-connected) of which at least
``called_fraction`` (default 50 %) of the voxels are predicted lesion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from evaluation._validation import as_mask, check_same_shape, padded_bounding_box

DEFAULT_CALLED_FRACTION = 0.5

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_FRACTION_EPS = 1e-9


@dataclass(frozen=True)
class CystConfusion:
    """How much of the reference cysts of one femur is predicted as lesion.

    Attributes
    ----------
    cysts : int
        Reference cyst components (0: the femur has no reference cyst).
    cysts_called_tumour : int
        Cyst components with >= the called fraction of their voxels predicted lesion.
    voxel_fraction_called_lesion : float
        Predicted-lesion voxels within reference cysts / reference cyst voxels; NaN without cysts.
    """

    cysts: int
    cysts_called_tumour: int
    voxel_fraction_called_lesion: float

    @property
    def called_tumour(self) -> bool | None:
        """Whether any cyst of this femur was called tumour; None when there is no cyst."""
        return None if self.cysts == 0 else self.cysts_called_tumour > 0


def cyst_confusion(
    predicted_lesion: np.ndarray,
    reference_cyst: np.ndarray,
    *,
    called_fraction: float = DEFAULT_CALLED_FRACTION,
) -> CystConfusion:
    """Compare the predicted lesion mask with the reference cyst mask of one femur.

    Parameters
    ----------
    predicted_lesion : numpy.ndarray
        Boolean (or 0/1) mask of voxels predicted as lesion, axes (z, y, x).
    reference_cyst : numpy.ndarray
        Boolean (or 0/1) mask of reference cyst voxels, same shape.
    called_fraction : float
        Fraction of a cyst's voxels that must be predicted lesion for it to count as called tumour,
        in (0, 1].

    Returns
    -------
    CystConfusion
    """
    p = as_mask(predicted_lesion, "predicted_lesion")
    c = as_mask(reference_cyst, "reference_cyst")
    check_same_shape(p, c, "predicted_lesion and reference_cyst")
    if not (0.0 < called_fraction <= 1.0):
        raise ValueError(f"called_fraction must be in (0, 1], got {called_fraction}")
    box = padded_bounding_box(c, margin=(0, 0, 0))
    if box is None:
        return CystConfusion(cysts=0, cysts_called_tumour=0, voxel_fraction_called_lesion=math.nan)
    cyst_cc, n_cysts = ndimage.label(c[box], structure=_CONNECTIVITY_26)
    sizes = np.bincount(cyst_cc.ravel(), minlength=n_cysts + 1)
    called = np.bincount(cyst_cc[p[box]], minlength=n_cysts + 1)
    fractions = called[1:] / sizes[1:]
    return CystConfusion(
        cysts=int(n_cysts),
        cysts_called_tumour=int(np.count_nonzero(fractions >= called_fraction - _FRACTION_EPS)),
        voxel_fraction_called_lesion=float(called[1:].sum() / sizes[1:].sum()),
    )
