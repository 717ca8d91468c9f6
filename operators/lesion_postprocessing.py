"""Removal of lesion components too small to report, the lesion model's own post-processing.

A model trained on few cases leaves specks of lesion label in healthy bone (a few voxels to a few
tenths of a millilitre). The smallest lesion worth a radiologist's attention is larger than that, so
predicted components below a volume chosen on held-out data are dropped. The threshold belongs to a
model (its ``model.json``, key ``postprocessing.min_lesion_volume_ml``), because it depends on how
that model errs; :mod:`lesion_training.postprocessing_selection` chooses it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

logger = logging.getLogger(__name__)

__all__ = ["MIN_LESION_VOLUME_KEY", "min_lesion_volume_ml", "remove_small_components"]

#: Where a model's ``model.json`` keeps the threshold: ``{"postprocessing": {"min_lesion_volume_ml": 0.5}}``.
MIN_LESION_VOLUME_KEY = "min_lesion_volume_ml"

# Components are 26-connected: voxels touching at an edge or a corner belong to one lesion, as a
# reader would see them.
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def remove_small_components(
    labels: np.ndarray, value: int, min_volume_ml: float, spacing_mm: Sequence[float]
) -> np.ndarray:
    """Set to 0 the connected components of ``labels == value`` smaller than ``min_volume_ml``.

    Parameters
    ----------
    labels:
        Integer label array, axes (z, y, x).
    value:
        The label whose small components are removed (others are left alone).
    min_volume_ml:
        Smallest component volume kept, in millilitres (1 ml = 1000 mm^3). 0 keeps everything.
    spacing_mm:
        Voxel size along (z, y, x), in mm.

    Returns
    -------
    numpy.ndarray
        A new array of the same shape and dtype (``labels`` itself when nothing is removed).
    """
    if min_volume_ml < 0:
        raise ValueError(f"min_volume_ml must be >= 0, got {min_volume_ml}")
    if len(spacing_mm) != labels.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} does not match an array of {labels.ndim} axes")
    mask = labels == value
    if min_volume_ml == 0 or not mask.any():
        return labels
    components, n = ndi.label(mask, structure=_FULL_CONNECTIVITY)
    voxel_ml = float(np.prod(np.asarray(spacing_mm, dtype=float))) / 1000.0
    volumes_ml = np.bincount(components.ravel(), minlength=n + 1) * voxel_ml
    small = volumes_ml < min_volume_ml
    small[0] = False
    if not small.any():
        return labels
    out = labels.copy()
    out[small[components]] = 0
    logger.debug("removed %d of %d lesion component(s) under %.2f ml", int(small.sum()), n, min_volume_ml)
    return out


def min_lesion_volume_ml(model_json: Mapping[str, Any]) -> float:
    """The threshold a model's ``model.json`` declares (ml), 0 when it declares none.

    Raises
    ------
    ValueError
        If the value is present but not a number >= 0.
    """
    section = model_json.get("postprocessing") or {}
    if not isinstance(section, Mapping):
        raise ValueError("model.json: 'postprocessing' must be an object")
    value = section.get(MIN_LESION_VOLUME_KEY, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"model.json: postprocessing.{MIN_LESION_VOLUME_KEY} must be a number >= 0, got {value!r}")
    return float(value)
