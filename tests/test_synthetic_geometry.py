"""Synthetic CT generator: the geometric building blocks (SDFs, frames, scanner grid, noise)
and, marked slow, a full standard-size study."""

from __future__ import annotations

import numpy as np
import pytest

from synthetic_ct import sdf as S
from synthetic_ct.frames import Frame, rotation
from synthetic_ct.grid import make_grid
from synthetic_ct.noise import SmoothNoise

F = np.float32


def _pts(*xyz):
    return tuple(np.asarray(v, dtype=F) for v in xyz)


def test_sphere_and_round_cone_are_exact_distances():
    a, b, c = _pts([0.0, 5.0, 12.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert np.allclose(S.sphere(a, b, c, 10.0), [-10.0, -5.0, 2.0])
    # Capsule of radius 2 from (0,0,0) to (0,0,10): distance to points beside, above, inside.
    a, b, c = _pts([5.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [5.0, 15.0, -4.0, 5.0])
    d = S.round_cone(a, b, c, np.zeros(3), np.array([0.0, 0.0, 10.0]), 2.0, 2.0)
    assert np.allclose(d, [3.0, 3.0, 2.0, -1.0], atol=1e-5)
    # Cone from radius 4 to 1: on the axis beyond the small end, distance to its sphere.
    d = S.round_cone(*_pts([0.0], [0.0], [13.0]), np.zeros(3), np.array([0.0, 0.0, 10.0]), 4.0, 1.0)
    assert np.allclose(d, [2.0], atol=1e-5)


def test_ellipsoid_sign_and_surface_distance():
    r = (30.0, 10.0, 20.0)
    a, b, c = _pts([0.0, 30.0, 35.0, 0.0, 25.0], [0.0, 0.0, 0.0, 12.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0])
    d = S.ellipsoid(a, b, c, r)
    assert d[0] == pytest.approx(-10.0, abs=1e-4)  # centre: the nearest surface is the short axis
    assert d[1] == pytest.approx(0.0, abs=1e-4)
    assert d[2] == pytest.approx(5.0, abs=0.2)
    assert d[3] == pytest.approx(2.0, abs=0.2)
    assert d[4] < 0


def test_coverage_is_half_on_the_surface_and_monotone():
    d = np.linspace(-3, 3, 13).astype(F)
    cov = S.coverage(d, 2.0)
    assert cov[6] == pytest.approx(0.5)
    assert cov[0] == 1.0 and cov[-1] == 0.0
    assert (np.diff(cov) <= 0).all()
    # A voxel centre inside the shape always counts at least half: labels agree with densities.
    assert (cov[d <= 0] >= 0.5).all()


def test_smooth_union_is_below_both_and_equals_min_far_apart():
    d1 = np.array([-1.0, 5.0, 20.0], F)
    d2 = np.array([20.0, 5.0, -1.0], F)
    u = S.smooth_union(d1, d2, 4.0)
    assert (u <= np.minimum(d1, d2) + 1e-6).all()
    assert u[0] == pytest.approx(-1.0) and u[2] == pytest.approx(-1.0)
    assert u[1] < 5.0


def test_mirror_frame_maps_lateral_to_patient_side():
    # Canonical (lateral, anterior, superior) -> LPS for the left side: lateral is +x, anterior -y.
    mirror = np.diag([1.0, -1.0, 1.0])
    fr = Frame(matrix=mirror.T, origin=np.array([10.0, 20.0, 30.0]))
    assert np.allclose(fr.to_world(np.array([5.0, 2.0, 1.0])), [15.0, 18.0, 31.0])
    loc = fr.to_local(*_pts([15.0], [18.0], [31.0]))
    assert np.allclose(np.ravel(loc), [5.0, 2.0, 1.0])
    r = rotation((0, 0, 1), 90.0)
    assert np.allclose(r @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_grid_orientation_and_slice_stacking(position):
    g = make_grid(
        patient_position=position,
        matrix=(64, 64),
        pixel_spacing=2.0,
        fov_centre_xy=(5.0, -3.0),
        z_range=(-100.0, 50.0),
        slice_spacing=2.5,
        slice_thickness=3.0,
    )
    iop = g.image_orientation
    assert iop[:3] == ((1.0, 0.0, 0.0) if position == "HFS" else (-1.0, 0.0, 0.0))
    assert iop[3:] == (0.0, 1.0, 0.0)
    zs, ys, xs = g.axis_coordinates()
    assert zs.min() >= -100.0 - 1e-6 and zs.max() <= 50.0 + 1e-6
    # Head first, slice 0 is the most superior; feet first, the most inferior.
    assert (np.diff(zs) < 0).all() if position == "HFS" else (np.diff(zs) > 0).all()
    assert (np.diff(xs) > 0).all() if position == "HFS" else (np.diff(xs) < 0).all()
    assert np.isclose(np.mean(xs), 5.0) and np.isclose(np.mean(ys), -3.0)
    assert np.linalg.det(g.affine[:3, :3]) > 0
    # The affine reproduces every slice position.
    for k in (0, g.shape[0] - 1):
        assert np.allclose(g.affine @ [k, 0, 0, 1], np.append(g.slice_positions()[k], 1.0))


def test_smooth_noise_has_unit_variance_and_is_smooth():
    rng = np.random.default_rng(0)
    noise = SmoothNoise(rng, np.array([0.0, 0.0, 0.0]), np.array([200.0, 200.0, 200.0]), (10.0, 10.0, 10.0))
    g = make_grid(
        patient_position="HFS", matrix=(100, 100), pixel_spacing=2.0, fov_centre_xy=(100.0, 100.0),
        z_range=(0.0, 200.0), slice_spacing=4.0, slice_thickness=4.0,
    )
    block = g.block((slice(0, g.shape[0]), slice(0, 100), slice(0, 100)))
    v = noise.sample(block)
    assert v.shape == block.shape and v.dtype == np.float32
    assert 0.8 < v.std() < 1.2 and abs(v.mean()) < 0.2
    # Neighbouring pixels (2 mm apart, correlation length 10 mm) are strongly correlated.
    assert np.corrcoef(v[:, :, :-1].ravel(), v[:, :, 1:].ravel())[0, 1] > 0.9
    # Same generator state, same field.
    again = SmoothNoise(np.random.default_rng(0), np.zeros(3), np.full(3, 200.0), (10.0, 10.0, 10.0))
    assert np.array_equal(again.sample(block), v)


@pytest.mark.slow
def test_standard_study_end_to_end(tmp_path):
    """A full-size study: 512 x 512, 400-700 slices, both femurs, written and read back."""
    import time

    import highdicom as hd
    import pydicom

    from synthetic_ct import generate_phantom, write_study

    t0 = time.perf_counter()
    ph = generate_phantom(4, "standard", transfer_syntax="explicit")
    t_gen = time.perf_counter() - t0
    nz, ny, nx = ph.grid.shape
    assert (ny, nx) == (512, 512) and 400 <= nz <= 700
    assert 0.6 <= ph.grid.pixel_spacing[0] <= 1.0 and 0.8 <= ph.grid.slice_spacing <= 1.5
    assert ph.truth["femurs_in_view"] == ["left", "right"] and ph.truth["knees_in_view"]
    # Generous bound: the target is 60 s on two free cores; CI machines are shared.
    assert t_gen < 240
    st = write_study(ph, tmp_path / "std", series=("thin",))
    files = st.series_by_role("thin").files
    assert len(files) == nz
    vol = hd.get_volume_from_series([pydicom.dcmread(f) for f in files], dtype=np.float32)
    assert np.array_equal(vol.array, ph.ct.array)
    assert np.allclose(vol.affine, ph.ct.affine, atol=1e-4)
