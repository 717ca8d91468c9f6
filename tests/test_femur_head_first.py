"""Femurs found from their heads (operators.femur_head_first) on hand-made geometry with known answers.

Canonical arrays as the segmenter uses them: axis 0 towards the head, axis 1 posterior, axis 2 the
patient's left; positions in mm are ``index * spacing``.
"""

from __future__ import annotations

import numpy as np
import pytest

from operators.femur_head_first import _best_pair, _run_below
from operators.femur_hip import HeadSphere


def _head(z_mm: float, l_mm: float) -> HeadSphere:
    return HeadSphere(np.array([z_mm, 100.0, l_mm]), 23.0, 25.0, np.array([-0.64, 0.0, 0.77]),
                      np.zeros((36, 72), dtype=bool))


@pytest.mark.parametrize(
    ("second", "paired"),
    [
        ((95.0, 290.0), True),  # level, 19 cm apart: two hips
        ((130.0, 290.0), False),  # 3 cm higher: not a level pair
        ((95.0, 470.0), False),  # 37 cm apart: shoulders, not hips
        ((95.0, 160.0), False),  # 5 cm apart: two candidates in one joint
    ],
)
def test_heads_count_only_as_a_level_pair_a_hip_width_apart(second, paired):
    first = _head(100.0, 100.0)
    pair = _best_pair([first, _head(*second)], known=[])
    assert bool(pair) is paired
    if paired:
        # Each head comes with its partner's centre, from which its lateral side follows.
        assert [h for h, _ in pair] == [first, pair[1][0]]
        assert pair[0][1][2] == pytest.approx(290.0)


def test_a_head_pairs_with_the_head_of_the_thigh_that_has_a_shaft_run():
    known = [np.array([102.0, 100.0, 300.0])]
    lone = _head(100.0, 110.0)
    assert _best_pair([lone], known) == [(lone, known[0])]
    # A head that does not pair with the known one gives nothing, even if it pairs with another new one.
    assert _best_pair([_head(100.0, 620.0), _head(100.0, 800.0)], known) == []


def _plane_labels(n_slices: int, pieces: list[tuple[float, float, float]], spacing: float = 2.0) -> np.ndarray:
    """Labelled slices (S, P, L) with one disc per piece (centre P mm, centre L mm, radius mm) in every slice."""
    labels = np.zeros((n_slices, 100, 160), dtype=np.int32)
    y, x = np.ogrid[:100, :160]
    for k, (p, l, r) in enumerate(pieces, start=1):
        disc = (y * spacing - p) ** 2 + (x * spacing - l) ** 2 <= r**2
        labels[:, disc] = k
    return labels


def test_the_run_below_a_head_follows_the_femur_lateral_of_it_not_the_ischium_medial_of_it():
    # A right hip (lateral is towards -L): head centre 60 mm above the view's lowest slice at L 150 mm,
    # the femur 40 mm lateral of it, the ischium as big and nearer, but medial.
    spacing = (2.0, 2.0, 2.0)
    labels = _plane_labels(40, [(100.0, 110.0, 16.0), (110.0, 175.0, 16.0)])
    run = _run_below(labels, np.array([60.0, 100.0, 150.0]), -1.0, spacing)
    assert run is not None and run.short
    # From 40 mm below the head's centre (slice 10) down to the lowest slice, the femur's piece throughout.
    assert run.slices == list(range(11))
    assert set(run.labels) == {1}
    assert np.allclose(run.mean_centre_mm, [100.0, 110.0], atol=1.0)
    # With only the ischium below it (the femur out of view), the head gets no run.
    ischium_only = _plane_labels(40, [(110.0, 175.0, 16.0)])
    assert _run_below(ischium_only, np.array([60.0, 100.0, 150.0]), -1.0, spacing) is None


def test_the_run_stops_where_the_femur_piece_ends():
    spacing = (2.0, 2.0, 2.0)
    labels = _plane_labels(40, [(100.0, 110.0, 16.0)])
    labels[:4] = 0  # the femur leaves the view 8 mm above the lowest slice
    run = _run_below(labels, np.array([60.0, 100.0, 150.0]), -1.0, spacing)
    assert run is not None and run.slices == list(range(4, 11))
