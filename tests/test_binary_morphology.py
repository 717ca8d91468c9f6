"""fill_holes gives exactly what scipy.ndimage.binary_fill_holes gives, for the structures the splitter uses."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from operators.binary_morphology import fill_holes

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
