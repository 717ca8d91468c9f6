"""Mean ± standard deviation with the true-negative rule: NaN values are counted, not averaged."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MeanSD:
    """Summary of a metric over femurs.

    Attributes
    ----------
    mean : float
        Mean of the non-NaN values; NaN when there is none.
    sd : float
        Sample standard deviation (ddof = 1) of the non-NaN values; NaN when fewer than two.
    n : int
        Number of non-NaN values (those in the mean).
    n_nan : int
        Number of NaN values left out (for Dice and NSD: true negatives).
    """

    mean: float
    sd: float
    n: int
    n_nan: int


def mean_sd(values: Iterable[float]) -> MeanSD:
    """Mean and sample SD of `values`, leaving NaN out and counting it.

    The sample SD (n - 1 in the denominator) is what papers report as "mean ± SD" over a sample of
    patients, and what ``numpy.std(..., ddof=1)`` and R's ``sd`` return.
    """
    array = np.asarray(list(values), dtype=float)
    nan = np.isnan(array)
    kept = array[~nan]
    n = int(kept.size)
    mean = float(kept.mean()) if n else math.nan
    sd = float(kept.std(ddof=1)) if n >= 2 else math.nan
    return MeanSD(mean=mean, sd=sd, n=n, n_nan=int(nan.sum()))
