"""Voxel-overlap metrics of one femur: Dice with the true-negative rule, and lesion volume error.

The Dice rule follows Rachmil et al. (2024): a femur without a lesion in the reference and without a
predicted lesion is a true negative. Its Dice is NaN, not 1 (it would inflate the mean) and not 0
(nothing went wrong); summaries leave it out of the mean and count it separately. When only one of
the two masks is empty the Dice is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evaluation._validation import as_mask, as_spacing, check_same_shape


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice similarity coefficient 2|P∩R| / (|P| + |R|) of two masks.

    Parameters
    ----------
    prediction, reference : numpy.ndarray
        Boolean (or 0/1) masks of the same shape, axes (z, y, x).

    Returns
    -------
    float
        The Dice in [0, 1]; NaN when both masks are empty (a true negative); 0 when exactly one is.
    """
    p = as_mask(prediction, "prediction")
    r = as_mask(reference, "reference")
    check_same_shape(p, r, "prediction and reference")
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(p & r)) / total


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a mask in millilitres.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean (or 0/1) mask, axes (z, y, x).
    spacing : sequence of float
        Voxel spacing (sz, sy, sx) in mm.
    """
    m = as_mask(mask, "mask")
    sz, sy, sx = as_spacing(spacing)
    return int(np.count_nonzero(m)) * sz * sy * sx / 1000.0


@dataclass(frozen=True)
class VolumeError:
    """Predicted minus reference lesion volume of one femur.

    Attributes
    ----------
    predicted_ml, reference_ml : float
        Lesion volumes in ml.
    error_ml : float
        ``predicted_ml - reference_ml`` in ml (positive: over-segmentation).
    relative : float
        ``error_ml / reference_ml`` (unitless, 0.25 = 25 % too large); NaN when the reference holds
        no lesion, where a relative error is undefined.
    """

    predicted_ml: float
    reference_ml: float
    error_ml: float
    relative: float


def volume_error(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> VolumeError:
    """Signed lesion volume error of one femur.

    Parameters
    ----------
    prediction, reference : numpy.ndarray
        Boolean (or 0/1) masks of the same shape, axes (z, y, x).
    spacing : sequence of float
        Voxel spacing (sz, sy, sx) in mm.
    """
    p = as_mask(prediction, "prediction")
    r = as_mask(reference, "reference")
    check_same_shape(p, r, "prediction and reference")
    predicted = volume_ml(p, spacing)
    reference_volume = volume_ml(r, spacing)
    error = predicted - reference_volume
    relative = error / reference_volume if reference_volume > 0 else math.nan
    return VolumeError(predicted_ml=predicted, reference_ml=reference_volume, error_ml=error, relative=relative)
