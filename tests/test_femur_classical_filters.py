"""The classical segmenter's watershed and relief: their memory-lean forms give the plain forms' values.

The watershed runs on its mask's bounding box and the relief is summed into the Laplacian's buffer, so
that a 512 x 512 x 600 study splits in less memory. Both claim the very values of the straightforward
computation (skimage's watershed on the whole arrays; ``-min(image, cap) + weight * valley`` with scipy's
Gaussian derivatives); a difference of one voxel or one float32 step would change the femur masks.
Arrays here are small random volumes (z, y, x) with anisotropic spacing (mm).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from operators.femur_classical import (
    ClassicalSegmenterConfig,
    _laplacian_valley,
    _watershed,
    _watershed_relief,
    block_mean,
)

SPACING = (2.5, 0.8, 0.9)


def _volume(seed: int, shape: tuple[int, int, int] = (24, 40, 36)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Blurred noise scaled to HU: smooth blobs of "bone" and "soft tissue" with flat stretches and ties.
    image = ndi.gaussian_filter(rng.normal(size=shape), 1.5) * 4000.0
    return np.round(image / 50.0).astype(np.float32) * np.float32(50.0)


def _plain_valley(image: np.ndarray, sigma_mm: float) -> np.ndarray:
    sigma = tuple(sigma_mm / s for s in SPACING)
    lap = np.zeros(image.shape, dtype=np.float32)
    for axis in range(3):
        order = [0, 0, 0]
        order[axis] = 2
        second = ndi.gaussian_filter(image, sigma, order=order, output=np.float32)
        lap += second / np.float32(SPACING[axis] ** 2)
    return np.maximum(lap, 0) * np.float32(sigma_mm**2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_watershed_on_the_masks_box_labels_every_voxel_as_on_the_whole_arrays(seed):
    image = _volume(seed)
    mask = np.zeros(image.shape, dtype=bool)
    mask[3:20, 5:33, 4:30] = image[3:20, 5:33, 4:30] > 0
    markers = np.zeros(image.shape, dtype=np.int32)
    markers[5, 10, 8] = 1
    markers[15, 25, 22] = 2
    markers[10, 6:9, 20] = 3
    markers[~mask] = 0
    expected = watershed(-image, markers=markers, mask=mask, connectivity=1)
    labels = _watershed(-image, markers, mask)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 2  # the markers flooded something


def test_the_watershed_of_an_empty_mask_is_all_background():
    image = _volume(3)
    markers = np.ones(image.shape, dtype=np.int32)
    labels = _watershed(image, markers, np.zeros(image.shape, dtype=bool))
    assert labels.shape == image.shape and not labels.any()


@pytest.mark.parametrize("weight", [0.0, 1.0, 0.7])
def test_the_relief_is_the_capped_intensity_plus_the_weighted_valley_bit_for_bit(weight):
    image = _volume(4)
    cfg = ClassicalSegmenterConfig(valley_weight=weight)
    cap = 450.0
    whole = np.ones(image.shape, dtype=bool)
    expected = -np.minimum(image, np.float32(cap))
    if weight > 0:
        expected = expected + np.float32(weight) * _plain_valley(image, cfg.valley_sigma_mm)
    relief = _watershed_relief(image, SPACING, cap, cfg, within=whole)
    assert relief.dtype == np.float32
    np.testing.assert_array_equal(relief, expected)
    if weight > 0:
        assert (relief != -np.minimum(image, np.float32(cap))).any()  # the valley term is there


def test_the_valley_within_a_mask_equals_the_whole_images_valley_in_the_masks_reach():
    image = _volume(5)
    within = np.zeros(image.shape, dtype=bool)
    within[8:14, 12:25, 10:20] = True
    valley = _laplacian_valley(image, SPACING, 1.0, within=within)
    whole = _laplacian_valley(image, SPACING, 1.0)
    np.testing.assert_array_equal(whole, _plain_valley(image, 1.0))
    np.testing.assert_array_equal(valley[within], whole[within])
    far = np.ones(image.shape, dtype=bool)
    far[4:18, 6:31, 4:26] = False  # beyond the Gaussian's reach of the mask's box
    assert not valley[far].any() and whole[far].any()


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 3, 2), (3, 1, 1)])
def test_block_mean_in_threads_equals_the_whole_array_mean(factors: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(-1024, 3000, size=(157, 41, 38)).astype(np.float32)  # 157: a partial last chunk
    nz, ny, nx = (s // f for s, f in zip(image.shape, factors))
    fz, fy, fx = factors
    expected = image[:nz * fz, :ny * fy, :nx * fx].reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5),
                                                                                         dtype=np.float32)
    np.testing.assert_array_equal(block_mean(image, factors), expected)
    # An integer CT (stored values) gives the same as its float32 copy.
    np.testing.assert_array_equal(block_mean(image.astype(np.int16), factors), expected)
    # Fractional HU (a resampled or filtered volume): the same means, up to float32 rounding of the sums.
    fractional = image + rng.random(image.shape, dtype=np.float32)
    expected = fractional[:nz * fz, :ny * fy, :nx * fx].reshape(nz, fz, ny, fy, nx, fx).mean(
        axis=(1, 3, 5), dtype=np.float64)
    np.testing.assert_allclose(block_mean(fractional, factors), expected, rtol=0, atol=1e-3)
