"""geodesic_distance gives exactly the cumulative costs of skimage's MCP_Geometric, which it replaces."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.graph import MCP_Geometric

from operators.geodesic_distance import geodesic_distance


def _mcp_distance(mask: np.ndarray, seeds: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    mcp = MCP_Geometric(np.where(mask, 1.0, -1.0), sampling=spacing, fully_connected=True)
    dist, _ = mcp.find_costs(np.argwhere(seeds & mask))
    return np.where(mask, dist, np.inf)


def test_equals_mcp_geometric_on_random_masks_bit_for_bit():
    rng = np.random.default_rng(3)
    for _ in range(25):
        shape = tuple(int(n) for n in rng.integers(2, 16, size=3))
        mask = rng.random(shape) < rng.uniform(0.3, 0.8)
        seeds = mask & (rng.random(shape) < 0.03)
        seeds.flat[np.flatnonzero(mask)[:1]] = True  # at least one seed
        spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, size=3))
        np.testing.assert_array_equal(geodesic_distance(mask, seeds, spacing), _mcp_distance(mask, seeds, spacing))


def test_distance_runs_around_a_wall_not_through_it():
    # A U-shaped tube (z, y, x): from one arm's end to the other the path goes down, across and up.
    mask = np.zeros((1, 12, 7), dtype=bool)
    mask[0, :, 0] = mask[0, :, 6] = True
    mask[0, 11, :] = True
    seeds = np.zeros_like(mask)
    seeds[0, 0, 0] = True
    dist = geodesic_distance(mask, seeds, (1.0, 2.0, 1.0))
    assert dist[0, 0, 0] == 0.0
    # Down the arm (10 steps of 2 mm), a diagonal into the base (sqrt(2^2 + 1^2)), along it (4 x 1 mm), a
    # diagonal out of it and up the other arm: 48.5 mm, against 6 mm straight across.
    assert dist[0, 0, 6] == pytest.approx(20.0 + np.sqrt(5.0) + 4.0 + np.sqrt(5.0) + 20.0, abs=1e-9)
    assert np.isinf(dist[0, 5, 3])  # outside the mask


def test_unreached_voxels_and_no_seed_are_inf():
    mask = np.zeros((3, 3, 7), dtype=bool)
    mask[1, 1, :3] = mask[1, 1, 4:] = True  # two pieces
    seeds = np.zeros_like(mask)
    seeds[1, 1, 0] = True
    dist = geodesic_distance(mask, seeds, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(dist[1, 1, :3], [0.0, 1.0, 2.0])
    assert np.isinf(dist[1, 1, 4:]).all()
    assert np.isinf(geodesic_distance(mask, np.zeros_like(mask), (1.0, 1.0, 1.0))).all()
    with pytest.raises(ValueError, match="spacing"):
        geodesic_distance(mask, seeds, (1.0, 0.0, 1.0))
