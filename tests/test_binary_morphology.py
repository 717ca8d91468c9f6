"""fill_holes and closing_in_plane give exactly what scipy.ndimage gives, for the structures the splitter uses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from operators.binary_morphology import closing_in_plane, fill_holes

IN_PLANE_4 = np.zeros((3, 3, 3), dtype=bool)
IN_PLANE_4[1] = ndi.generate_binary_structure(2, 1)
STRUCTURES = {
    "default": None,
    "in-plane 4": IN_PLANE_4,
    "18-connected": ndi.generate_binary_structure(3, 2),
    "26-connected": ndi.generate_binary_structure(3, 3),
}


@pytest.mark.parametrize("name", STRUCTURES)
def test_fill_holes_equals_scipy_on_random_masks(name):
    structure = STRUCTURES[name]
    rng = np.random.default_rng(11)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 14, size=3))
        mask = rng.random(shape) < rng.uniform(0.3, 0.8)
        np.testing.assert_array_equal(fill_holes(mask, structure), ndi.binary_fill_holes(mask, structure=structure))


def test_a_closed_shell_is_filled_in_3d_and_an_open_tube_only_slice_by_slice():
    shell = np.zeros((9, 9, 9), dtype=bool)
    shell[1:8, 1:8, 1:8] = True
    shell[2:7, 2:7, 2:7] = False  # a closed box: its inside is a hole in 3D
    assert fill_holes(shell)[4, 4, 4]
    tube = shell.copy()
    tube[0:2, 3:6, 3:6] = False  # opened at the bottom: no longer a 3D hole...
    assert not fill_holes(tube)[4, 4, 4]
    assert fill_holes(tube, IN_PLANE_4)[4, 4, 4]  # ...but every slice still encloses it
    assert fill_holes(np.zeros((0, 3, 3), dtype=bool)).shape == (0, 3, 3)


def test_structures_it_cannot_treat_exactly_are_refused():
    with pytest.raises(ValueError, match="symmetric"):
        fill_holes(np.ones((3, 3)), np.array([[0, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=bool))
    with pytest.raises(ValueError, match="3 x"):
        fill_holes(np.ones((3, 3, 3)), np.ones((3, 3), dtype=bool))


def _ellipse(radius_y: float, radius_x: float) -> np.ndarray:
    # The splitter's digital disk: integer offsets inside the ellipse.
    ry, rx = max(1, int(np.floor(radius_y))), max(1, int(np.floor(radius_x)))
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return (y / radius_y) ** 2 + (x / radius_x) ** 2 <= 1.0


def test_closing_in_plane_equals_scipy_on_random_masks_and_disks():
    rng = np.random.default_rng(5)
    for _ in range(60):
        # Shapes down to one row or column, disks wider than the mask: the edges are where it can go wrong.
        shape = tuple(int(n) for n in rng.integers(1, 24, size=3))
        mask = rng.random(shape) < rng.uniform(0.05, 0.8)
        disk = _ellipse(rng.uniform(0.6, 6.0), rng.uniform(0.6, 6.0))
        expected = ndi.binary_closing(mask, structure=disk[None])
        np.testing.assert_array_equal(closing_in_plane(mask, disk), expected)
    square = np.ones((3, 5), dtype=bool)
    mask = rng.random((6, 12, 12)) < 0.4
    np.testing.assert_array_equal(closing_in_plane(mask, square), ndi.binary_closing(mask, structure=square[None]))


def test_closing_in_plane_seals_a_gap_narrower_than_the_disk_and_keeps_each_slice_apart():
    # Two blocks of cortex 2 pixels apart in the middle slice: a disk of radius 3.5 cannot enter the slot.
    mask = np.zeros((3, 20, 24), dtype=bool)
    mask[1, 5:15, 3:11] = True
    mask[1, 5:15, 13:21] = True
    closed = closing_in_plane(mask, _ellipse(3.5, 3.5))
    assert closed[1, 6:14, 11:13].all()  # the slot is sealed away from the blocks' corners
    assert not closed[1, :4].any() and not closed[1, 16:].any()  # nothing grows beyond the blocks
    assert not closed[0].any() and not closed[2].any()  # nor into the slices above and below


def test_footprints_it_cannot_treat_exactly_are_refused():
    with pytest.raises(ValueError, match="odd shape"):
        closing_in_plane(np.ones((2, 4, 4)), np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="symmetric"):
        closing_in_plane(np.ones((2, 4, 4)), np.array([[1, 1, 1], [1, 1, 1], [0, 1, 0]], dtype=bool))
    with pytest.raises(ValueError, match="one run"):
        closing_in_plane(np.ones((2, 4, 4)), np.array([[1, 0, 1], [1, 1, 1], [1, 0, 1]], dtype=bool))
    with pytest.raises(ValueError, match="3D"):
        closing_in_plane(np.ones((4, 4)), np.ones((3, 3), dtype=bool))
