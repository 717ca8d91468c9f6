"""The canonical (S, P, L) view: exact, invertible, and in agreement with highdicom."""

from __future__ import annotations

import itertools

import highdicom as hd
import numpy as np
import pytest

from operators.femur_geometry import CanonicalView, box_from_mask, enlarge_box


def _volume(perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> hd.Volume:
    """A small volume whose axes are a permutation/flip of an HFS axial series, with distinct values."""
    base = hd.Volume.from_attributes(
        array=np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6),
        image_position=(-10.0, 20.0, 30.0),
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        pixel_spacing=(0.8, 0.7),
        spacing_between_slices=2.5,
        coordinate_system="PATIENT",
    )
    vol = base.permute_spatial_axes(perm)
    axes = [k for k in range(3) if flips[k]]
    return vol.flip_spatial(axes) if axes else vol


ORIENTATIONS = [
    (perm, flips)
    for perm in itertools.permutations(range(3))
    for flips in itertools.product((False, True), repeat=3)
]


@pytest.mark.parametrize("perm,flips", ORIENTATIONS)
def test_canonical_view_matches_highdicom_and_inverts_exactly(perm, flips):
    vol = _volume(perm, flips)
    view = CanonicalView.from_affine(vol.affine, vol.spatial_shape)
    reference = vol.to_patient_orientation("HPL")
    canonical = view.to_canonical(vol.array)
    np.testing.assert_array_equal(canonical, reference.array)
    np.testing.assert_allclose(view.canonical_affine, reference.affine, atol=1e-9)
    np.testing.assert_allclose(view.canonical_spacing, reference.spacing)
    np.testing.assert_array_equal(view.from_canonical(canonical), vol.array)


@pytest.mark.parametrize("perm,flips", ORIENTATIONS[::5])
def test_boxes_map_to_the_same_voxels(perm, flips):
    vol = _volume(perm, flips)
    view = CanonicalView.from_affine(vol.affine, vol.spatial_shape)
    canonical = view.to_canonical(vol.array)
    cbox = (slice(1, 3), slice(0, 4), slice(2, 5))
    ibox = view.box_to_input(cbox)
    assert sorted(vol.array[ibox].ravel().tolist()) == sorted(canonical[cbox].ravel().tolist())
    assert view.box_to_canonical(ibox) == cbox


def test_oblique_affine_gets_the_closest_axes():
    angle = np.deg2rad(30.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot[:, [2, 1, 0]]  # index (z, y, x) -> LPS with x/y rotated by 30 degrees
    view = CanonicalView.from_affine(affine, (3, 4, 5))
    assert view.perm == (0, 1, 2)
    assert view.flip == (False, False, False)


def test_singular_affine_is_rejected():
    affine = np.eye(4)
    affine[:3, 2] = affine[:3, 1]
    with pytest.raises(ValueError, match="singular"):
        CanonicalView.from_affine(affine, (2, 2, 2))


def test_box_helpers():
    mask = np.zeros((5, 6, 7), dtype=bool)
    assert box_from_mask(mask) is None
    mask[1:3, 2, 4:6] = True
    box = box_from_mask(mask)
    assert box == (slice(1, 3), slice(2, 3), slice(4, 6))
    assert enlarge_box(box, (2, 1, 3), mask.shape) == (slice(0, 5), slice(1, 4), slice(1, 7))
