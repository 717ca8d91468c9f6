"""Cysts mistaken for tumour.

Cysts in the femoral head are fluid-filled, look lytic on CT and are not tumours (Rachmil et al. 2024
name them among the hard cases). When the reference marks cysts with their own label, this module
measures how much of them the model calls lesion: the voxel fraction, and per femur whether at least
one cyst was "called tumour", i.e. a cyst component (26-connected) of which at least
``called_fraction`` (default 50 %) of the voxels are predicted lesion. Given the predicted cysts too, it
measures the other side: how much of the reference cysts the model labels cyst. A model can keep cysts
out of its lesions by telling them apart, or by leaving them out altogether; only this second figure
tells the two apart.
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
    voxel_fraction_called_cyst : float
        Predicted-cyst voxels within reference cysts / reference cyst voxels; NaN without cysts or
        without predicted cysts to compare (a model without a cyst class).
    """

    cysts: int
    cysts_called_tumour: int
    voxel_fraction_called_lesion: float
    voxel_fraction_called_cyst: float = math.nan

    @property
    def called_tumour(self) -> bool | None:
        """Whether any cyst of this femur was called tumour; None when there is no cyst."""
        return None if self.cysts == 0 else self.cysts_called_tumour > 0


def cyst_confusion(
    predicted_lesion: np.ndarray,
    reference_cyst: np.ndarray,
    *,
    predicted_cyst: np.ndarray | None = None,
    called_fraction: float = DEFAULT_CALLED_FRACTION,
) -> CystConfusion:
    """Compare the predicted lesion (and cyst) masks with the reference cyst mask of one femur.

    Parameters
    ----------
    predicted_lesion : numpy.ndarray
        Boolean (or 0/1) mask of voxels predicted as lesion, axes (z, y, x).
    reference_cyst : numpy.ndarray
        Boolean (or 0/1) mask of reference cyst voxels, same shape.
    predicted_cyst : numpy.ndarray, optional
        Boolean (or 0/1) mask of voxels predicted as cyst, same shape; None when the test labels have no
        cyst class.
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
    q = None
    if predicted_cyst is not None:
        q = as_mask(predicted_cyst, "predicted_cyst")
        check_same_shape(q, c, "predicted_cyst and reference_cyst")
    if not (0.0 < called_fraction <= 1.0):
        raise ValueError(f"called_fraction must be in (0, 1], got {called_fraction}")
    box = padded_bounding_box(c, margin=(0, 0, 0))
    if box is None:
        return CystConfusion(cysts=0, cysts_called_tumour=0, voxel_fraction_called_lesion=math.nan)
    cyst_cc, n_cysts = ndimage.label(c[box], structure=_CONNECTIVITY_26)
    sizes = np.bincount(cyst_cc.ravel(), minlength=n_cysts + 1)
    called = np.bincount(cyst_cc[p[box]], minlength=n_cysts + 1)
    fractions = called[1:] / sizes[1:]
    cyst_voxels = float(sizes[1:].sum())
    return CystConfusion(
        cysts=int(n_cysts),
        cysts_called_tumour=int(np.count_nonzero(fractions >= called_fraction - _FRACTION_EPS)),
        voxel_fraction_called_lesion=float(called[1:].sum()) / cyst_voxels,
        voxel_fraction_called_cyst=math.nan if q is None else float(np.count_nonzero(q[box] & c[box])) / cyst_voxels,
    )
