"""The building blocks of the classical femur segmenter on hand-made geometry with known answers.

Canonical arrays as the segmenter uses them: axis 0 towards the head, axis 1 posterior, axis 2 the
patient's left; positions in mm are ``index * spacing``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from operators.femur_breach import (
    CAVITY_MIN_DEPTH_TO_MOUTH,
    TROCHANTER_CAVITY_MIN_DEPTH_TO_MOUTH,
    _convex_hull,
    _cortex_levels,
    fill_lesion_cavities,
    repair_cortical_breaches,
)
from operators.femur_classical import _OTHER, ClassicalSegmenterConfig, _coarse_labels, _find_head, block_mean
from operators.femur_hip import fit_head_sphere, head_candidates, head_from_its_rim, sphere_markers
from operators.femur_shafts import _IN_PLANE_8, ShaftCriteria, ShaftTrack, choose_femur_tracks, find_shaft_tracks


# ------------------------------------------------------------------------------------------------
# Shaft runs
# ------------------------------------------------------------------------------------------------


def _disc(shape, centre, radius_mm, spacing):
    y, x = np.ogrid[: shape[0], : shape[1]]
    return ((y * spacing - centre[0]) ** 2 + (x * spacing - centre[1]) ** 2) <= radius_mm**2


def _legs(n_slices=60, spacing=(2.0, 2.0, 2.0), fibula_slices=range(0), vessel=True):
    """Filled bone mask and image of two vertical shafts 180 mm apart (plus optional extras)."""
    shape = (n_slices, 100, 160)
    bone = np.zeros(shape, dtype=bool)
    image = np.full(shape, 40.0, dtype=np.float32)
    for z in range(n_slices):
        for cx in (70.0, 250.0):
            d = _disc(shape[1:], (100.0, cx), 14.0, spacing[1])
            bone[z] |= d
            image[z][d] = 1500.0
        if vessel:  # a contrast-filled artery 20 mm from the right shaft: must not disqualify it
            v = _disc(shape[1:], (100.0, 70.0 + 34.0), 4.0, spacing[1])
            bone[z] |= v
            image[z][v] = 350.0
        if z in fibula_slices:  # a dense small bone next to the left shaft: not a femur there
            f = _disc(shape[1:], (120.0, 250.0 + 28.0), 7.0, spacing[1])
            bone[z] |= f
            image[z][f] = 1200.0
    return bone, image, spacing


def test_two_shafts_are_found_despite_a_nearby_contrast_vessel():
    bone, image, spacing = _legs()
    _, tracks = find_shaft_tracks(bone, image, spacing, criteria=ShaftCriteria(), midline_mm=160.0)
    tracks = choose_femur_tracks(tracks, spacing[0])
    assert len(tracks) == 2
    assert sorted(round(t.mean_centre_mm[1]) for t in tracks) == [70, 250]
    assert all(t.slices[0] == 0 and t.slices[-1] == 59 for t in tracks)


def test_a_bone_beside_the_shaft_disqualifies_those_slices():
    bone, image, spacing = _legs(fibula_slices=range(0, 60), vessel=False)
    _, tracks = find_shaft_tracks(bone, image, spacing, criteria=ShaftCriteria(), midline_mm=160.0)
    assert [round(t.mean_centre_mm[1]) for t in tracks] == [70]


def test_bone_on_the_midline_marks_a_slice_as_not_thigh():
    bone, image, spacing = _legs(vessel=False)
    for z in range(bone.shape[0]):  # a vertebra-like bone on the midline in every slice
        d = _disc(bone.shape[1:], (150.0, 160.0), 15.0, spacing[1])
        bone[z] |= d
        image[z][d] = 1300.0
    _, tracks = find_shaft_tracks(bone, image, spacing, criteria=ShaftCriteria(), midline_mm=160.0)
    assert tracks == []


# ------------------------------------------------------------------------------------------------
# Femoral head in its cup
# ------------------------------------------------------------------------------------------------

HEAD_CENTRE = np.array([60.0, 50.0, 55.0])  # mm
HEAD_RADIUS = 22.0
GAP = 2.5


def _hip(spacing=1.0, noise=15.0, seed=3, cortex_hu=1200.0, cancellous_hu=None, gap=GAP, outer_cortex=False):
    """Ball (cortex 1.5 mm) with a neck running down and to patient-right, in a cup covering the
    upper-left hemisphere (medial = +L for this right-side ball), a ``gap`` mm cartilage gap between.
    ``cancellous_hu`` (None: 300-350 HU) fills neck, head and the bone behind the cup, 12 mm deep
    and, with ``outer_cortex``, closed by a second cortex (the acetabulum's outer wall)."""
    shape = tuple(int(v / spacing) for v in (120.0, 100.0, 110.0))
    z, y, x = np.meshgrid(*[np.arange(n) * spacing for n in shape], indexing="ij")
    d = np.stack([z - HEAD_CENTRE[0], y - HEAD_CENTRE[1], x - HEAD_CENTRE[2]])
    r = np.sqrt((d**2).sum(axis=0))
    image = np.full(shape, 40.0, dtype=np.float32)
    neck_dir = np.array([-0.64, 0.0, -0.77])
    t = np.tensordot(neck_dir, d, axes=1)
    radial = np.sqrt(np.maximum(r**2 - t**2, 0.0))
    neck = (t > 0) & (t < 70.0) & (radial < 15.0)
    image[neck] = cortex_hu
    image[neck & (radial < 13.5)] = cancellous_hu or 300.0
    cup_axis = np.array([0.64, 0.0, 0.77])
    in_cup_dirs = np.tensordot(cup_axis, d, axes=1) > 0.05 * r
    image[in_cup_dirs & (r >= HEAD_RADIUS + gap) & (r < HEAD_RADIUS + gap + 1.5)] = cortex_hu
    image[in_cup_dirs & (r >= HEAD_RADIUS + gap + 1.5) & (r < HEAD_RADIUS + gap + 12.0)] = cancellous_hu or 320.0
    if outer_cortex:
        image[in_cup_dirs & (r >= HEAD_RADIUS + gap + 10.5) & (r < HEAD_RADIUS + gap + 12.0)] = cortex_hu
    image[r < HEAD_RADIUS] = cortex_hu
    image[r < HEAD_RADIUS - 1.5] = cancellous_hu or 350.0
    image[in_cup_dirs & (r >= HEAD_RADIUS) & (r < HEAD_RADIUS + gap)] = 100.0
    image += np.random.default_rng(seed).normal(0.0, noise, size=shape).astype(np.float32)
    return image, (spacing, spacing, spacing)


def test_the_head_is_found_and_fitted_to_its_sphere():
    image, spacing = _hip()
    coarse = block_mean(image, (2, 2, 2))
    cspacing = (2.0, 2.0, 2.0)
    shaft_top = np.array([10.0, 50.0, 20.0])
    candidates = head_candidates(
        coarse, cspacing, shaft_top_mm=shaft_top, shaft_direction=np.array([1.0, 0.0, 0.0]),
        medial=np.array([0.0, 0.0, 1.0]),
    )
    assert candidates
    # Coarse voxel k covers full voxels 2k, 2k+1: its centre lies half a full voxel further.
    best = min(candidates, key=lambda c: np.linalg.norm(c + 0.5 - HEAD_CENTRE))
    assert np.linalg.norm(best + 0.5 - HEAD_CENTRE) < 4.0
    sphere = fit_head_sphere(image, spacing, candidates[0] + 0.5, np.array([-0.64, 0.0, -0.77]))
    assert sphere is not None
    assert np.linalg.norm(sphere.centre_mm - HEAD_CENTRE) < 1.5
    assert sphere.head_radius_mm == pytest.approx(HEAD_RADIUS, abs=1.0)
    assert HEAD_RADIUS < sphere.cup_radius_mm <= HEAD_RADIUS + GAP + 1.5

    femur, pelvis = sphere_markers(image.shape, (0, 0, 0), spacing, sphere, head_margin_mm=2.0, cup_margin_mm=1.0)
    z, y, x = np.nonzero(pelvis)
    d = np.stack([z, y, x], axis=1) * 1.0 - HEAD_CENTRE
    # Pelvis seeds only beyond the gap and on the cup's side; femur seeds only inside the head.
    assert np.all(np.linalg.norm(d, axis=1) > HEAD_RADIUS + GAP)
    assert np.all(d @ np.array([0.64, 0.0, 0.77]) > -2.0)
    zf, yf, xf = np.nonzero(femur)
    assert np.all(np.linalg.norm(np.stack([zf, yf, xf], 1) - HEAD_CENTRE, axis=1) < HEAD_RADIUS)


@pytest.mark.parametrize(("medial_of_shaft_mm", "found"), [(10.0, True), (-5.0, False)])
def test_a_head_close_above_a_medially_leaning_shaft_is_a_candidate_one_lateral_of_it_is_not(
    medial_of_shaft_mm, found
):
    # A valgus neck or a rotated patient leaves the top of the shaft run only ~10-15 mm lateral of the
    # head centre; a ball lateral of the shaft cannot be the head.
    image, _ = _hip()
    coarse = block_mean(image, (2, 2, 2))
    shaft_top = np.array([10.0, 50.0, HEAD_CENTRE[2] - medial_of_shaft_mm])
    candidates = head_candidates(
        coarse, (2.0, 2.0, 2.0), shaft_top_mm=shaft_top, shaft_direction=np.array([1.0, 0.0, 0.0]),
        medial=np.array([0.0, 0.0, 1.0]),
    )
    near = [c for c in candidates if np.linalg.norm(c + 0.5 - HEAD_CENTRE) < 4.0]
    assert bool(near) is found


def test_a_head_with_a_faint_thin_cortex_is_still_found():
    # Osteoporotic cortex of 600 HU, 1.5 mm thick, over 250 HU cancellous bone (or the same at high
    # kVp): blurred by the coarse grid, no edge of the head or cup reaches the usual voting gradient,
    # so only the pelvis' thick edges would vote. The search then lets weaker edges vote.
    image, spacing = _hip(cortex_hu=600.0, cancellous_hu=250.0)
    coarse = block_mean(image, (2, 2, 2))
    cspacing = (2.0, 2.0, 2.0)
    shaft_top = np.array([10.0, 50.0, 20.0])
    up, medial = np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0])
    strong_only = head_candidates(coarse, cspacing, shaft_top_mm=shaft_top, shaft_direction=up, medial=medial)
    assert not any(np.linalg.norm(c + 0.5 - HEAD_CENTRE) < 4.0 for c in strong_only)

    track = ShaftTrack(
        slices=list(range(6)), labels=[1] * 6, centres_mm=[shaft_top[1:]] * 6, areas_mm2=[600.0] * 6
    )
    sphere = _find_head(coarse, image, track, cspacing, spacing, np.full(3, 0.5), midline_mm=100.0)
    assert sphere is not None
    assert np.linalg.norm(sphere.centre_mm - HEAD_CENTRE) < 1.5
    assert sphere.head_radius_mm == pytest.approx(HEAD_RADIUS, abs=1.0)


def test_the_cup_of_a_thin_joint_is_its_inner_surface_not_the_acetabulums_outer_wall():
    # An arthritic hip: a 1.5 mm joint gap and an acetabulum closed by an outer cortex 12 mm out.
    # Blurred, the thin gap is shallower than the acetabulum's marrow between its two cortices; the
    # cup must still be found at the gap, or the pelvis' seeds start beyond the outer wall and the
    # femur takes the acetabulum's marrow.
    image, spacing = _hip(cortex_hu=1000.0, cancellous_hu=250.0, gap=1.5, outer_cortex=True)
    sphere = fit_head_sphere(image, spacing, HEAD_CENTRE + 1.0, np.array([-0.64, 0.0, -0.77]))
    assert sphere is not None
    assert sphere.head_radius_mm == pytest.approx(HEAD_RADIUS, abs=1.0)
    assert sphere.cup_radius_mm <= HEAD_RADIUS + 1.5 + 1.5


@pytest.mark.parametrize("seed", [3, 4])
def test_on_thick_slices_the_head_is_fitted_at_the_joint_not_at_the_acetabulums_marrow(seed: int) -> None:
    # 3 mm slices, each the mean of three 1 mm ones: the 2.5 mm joint gap blurs into a valley shallower
    # than the acetabulum's marrow between its two cortices. Taking the deepest valley for the joint put
    # the head's surface at the cup's cortex (radius 26.8 mm, cup 35.8 mm): the femur's seeds then
    # reached into the acetabulum.
    image, _ = _hip(cortex_hu=1200.0, cancellous_hu=200.0, gap=2.5, outer_cortex=True, seed=seed)
    thick = block_mean(image, (3, 1, 1))
    centre = HEAD_CENTRE - np.array([1.0, 0.0, 0.0])  # a 3 mm slice's centre lies 1 mm above its first 1 mm slice
    sphere = fit_head_sphere(thick, (3.0, 1.0, 1.0), centre + 1.0, np.array([-0.64, 0.0, -0.77]))
    assert sphere is not None
    assert np.linalg.norm(sphere.centre_mm - centre) < 2.0
    assert sphere.head_radius_mm == pytest.approx(HEAD_RADIUS, abs=1.25)
    assert sphere.cup_radius_mm <= HEAD_RADIUS + 2.5 + 1.5


@pytest.mark.parametrize("seed", [3, 4])
def test_a_head_fitted_out_to_the_cups_cortex_is_brought_back_to_its_rim(seed: int) -> None:
    # 3 mm slices of 2 mm pixels over a 1.5 mm joint gap: the gap blurs into the head's and the cup's
    # cortices, and the deepest valley left is the acetabulum's marrow. Fitted there, the head's surface
    # lay at the cup's cortex (25.3 mm against 22 mm, the cup at 33 mm beyond the acetabulum's marrow):
    # the femur's seeds reached into the pelvis and the pelvis' started beyond its outer wall. The rise
    # from the head's cancellous interior to its rim, about 2 mm inside the head's surface, tells where
    # that surface is.
    image, _ = _hip(cortex_hu=1000.0, cancellous_hu=300.0, gap=1.5, outer_cortex=True, seed=seed)
    thick = block_mean(image, (3, 2, 2))
    # Coarse positions count from the first coarse voxel's centre, 1 mm (z) and 0.5 mm (y, x) past the first
    # full voxel's.
    centre = HEAD_CENTRE - np.array([1.0, 0.5, 0.5])
    sphere = fit_head_sphere(thick, (3.0, 2.0, 2.0), centre + 1.0, np.array([-0.64, 0.0, -0.77]))
    assert sphere is not None
    assert np.linalg.norm(sphere.centre_mm - centre) < 2.0
    assert sphere.head_radius_mm == pytest.approx(HEAD_RADIUS, abs=1.25)
    assert sphere.head_radius_mm < sphere.cup_radius_mm <= HEAD_RADIUS + 1.5 + 1.5


@pytest.mark.parametrize("offset_mm", [(0.0, 0.0, 0.0), (2.0, 1.0, -1.0)])
def test_a_head_without_a_joint_gap_is_sized_from_its_rim(offset_mm) -> None:
    # An arthritic hip on 3 mm slices: head and cup touch (no cartilage gap at all). Placed where the other
    # hip's head, mirrored, says it is (a few mm off, and that head 3 mm larger), the head is sized from the
    # rise to its rim; the cup, 1.5 mm beyond, keeps the pelvis' seeds out of the head.
    image, _ = _hip(cortex_hu=1000.0, cancellous_hu=300.0, gap=0.0, outer_cortex=True)
    thick = block_mean(image, (3, 1, 1))
    centre = HEAD_CENTRE - np.array([1.0, 0.0, 0.0]) + np.array(offset_mm)
    covered = np.zeros((36, 72), dtype=bool)
    covered[:18] = True
    sphere = head_from_its_rim(thick, (3.0, 1.0, 1.0), centre, np.array([-0.64, 0.0, -0.77]), covered, 25.0)
    assert sphere is not None
    assert sphere.head_radius_mm == pytest.approx(HEAD_RADIUS, abs=1.25)
    assert sphere.cup_radius_mm == pytest.approx(sphere.head_radius_mm + 1.5)
    assert np.array_equal(sphere.covered, covered)


def test_a_ball_without_a_socket_is_not_a_hip():
    image, spacing = _hip(noise=0.0)
    z, y, x = np.meshgrid(*[np.arange(n) * 1.0 for n in image.shape], indexing="ij")
    r = np.sqrt((z - HEAD_CENTRE[0]) ** 2 + (y - HEAD_CENTRE[1]) ** 2 + (x - HEAD_CENTRE[2]) ** 2)
    image[(r >= HEAD_RADIUS) & (r < HEAD_RADIUS + GAP + 12.0) & (image != 300.0)] = 40.0  # no cup
    sphere = fit_head_sphere(image, spacing, HEAD_CENTRE, np.array([-0.64, 0.0, -0.77]))
    assert sphere is None


# ------------------------------------------------------------------------------------------------
# Knee
# ------------------------------------------------------------------------------------------------


def test_the_condyles_stay_with_the_femur_when_the_knee_joint_is_bridged():
    # Coarse grid. Tibia below 45 mm, a 5 mm joint gap crossed by a one-voxel partial-volume bridge,
    # then the femur: condyles 60 mm wide narrowing into a shaft whose run (the femur's seeds)
    # only starts at 110 mm, as the shaft finder's runs end where the metaphysis flares. The tibia's
    # label is across the bridge from the condyles, the femur's 60 mm of bone away.
    spacing = (2.5, 2.0, 2.0)
    shape = (90, 60, 60)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    r = np.hypot(y - 60.0, x - 60.0)
    radius = np.where(z < 110.0, 30.0 - (z - 50.0) / 60.0 * 16.0, 14.0)
    tibia = (z < 45.0) & (r < 30.0)
    femur = (z >= 50.0) & (r < radius)
    image = np.full(shape, 40.0, dtype=np.float32)
    image[tibia | femur] = 300.0
    image[(tibia & (r > 27.0)) | (femur & (r > radius - 3.0))] = 900.0
    image[(z >= 45.0) & (z < 50.0) & (r >= 24.0) & (r < 26.0) & (x > 60.0)] = 250.0
    bone = image > 180.0
    in_plane, _ = ndi.label(bone, structure=_IN_PLANE_8)
    run = list(range(44, 90))
    track = ShaftTrack(
        slices=run, labels=[int(in_plane[k, 30, 30]) for k in run],
        centres_mm=[np.array([60.0, 60.0])] * len(run), areas_mm2=[600.0] * len(run),
    )
    no_head = [lambda: None]  # a knee: no femoral head in this scene
    labels = _coarse_labels(image, bone, [track], spacing, (1, 1, 1), 0.0, ClassicalSegmenterConfig(), no_head).labels
    condyles = bone & femur & (z < 110.0)
    assert np.mean(labels[condyles] == 1) > 0.95  # the rest: the rim of their lowest slice, at the joint
    assert np.mean(labels[bone & tibia] == _OTHER) > 0.99


# ------------------------------------------------------------------------------------------------
# Cortical breaches
# ------------------------------------------------------------------------------------------------


def test_a_breached_shaft_cross_section_is_rebuilt_within_the_true_outline():
    spacing = (1.0, 0.8, 0.8)
    shape = (80, 60, 60)
    truth = np.zeros(shape, dtype=bool)
    for z in range(shape[0]):
        truth[z] = _disc(shape[1:], (24.0 + 0.1 * z, 24.0), 13.0, 0.8)  # a slightly slanted shaft
    femur = truth.copy()
    # A lesion has destroyed the anterior half over 25 mm: what is left is a crescent.
    yy = np.arange(shape[1])[:, None] * 0.8
    for z in range(30, 55):
        femur[z] &= yy > 24.0 + 0.1 * z + 2.0
    repaired = repair_cortical_breaches(femur, spacing=spacing, z_range=(0, 80), convex_range=(0, 80))

    lost = truth & ~femur
    restored = (repaired & lost).sum() / lost.sum()
    assert restored > 0.95
    # Nothing is added more than a voxel outside the true outline.
    from scipy import ndimage as ndi

    outside = repaired & ~ndi.binary_dilation(truth, iterations=1)
    assert outside.sum() == 0
    np.testing.assert_array_equal(repaired[:30], femur[:30])


def test_intact_cross_sections_are_left_alone():
    spacing = (1.0, 0.8, 0.8)
    femur = np.zeros((40, 50, 50), dtype=bool)
    for z in range(40):
        femur[z] = _disc((50, 50), (20.0, 20.0), 12.0, 0.8)
    repaired = repair_cortical_breaches(femur, spacing=spacing, z_range=(0, 40), convex_range=(0, 40))
    np.testing.assert_array_equal(repaired, femur)


def test_a_breached_trochanteric_crescent_is_rebuilt_without_growing_past_the_intact_cortex():
    # Outside the convex range (no hull help): an oval cross-section that widens towards the head, of
    # which a lesion has destroyed the lateral side over 40 mm. What is left is the open crescent of
    # the cortex only (the hole filling cannot fill an open ring), so the rebuild has to come from the
    # intact cross-sections above and below.
    from scipy import ndimage as ndi

    spacing = (1.0, 0.8, 0.8)
    shape = (90, 90, 130)
    yy, xx = np.indices(shape[1:]) * 0.8
    truth = np.zeros(shape, dtype=bool)
    femur = np.zeros(shape, dtype=bool)
    for z in range(shape[0]):
        a, b = 14.0 + 0.25 * z, 15.0 + 0.03 * z  # semi-axes (mm) along L and P
        cy, cx = 36.0, 50.0 - 0.15 * z  # widening medially, as it does towards the neck
        inside = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0
        truth[z] = inside
        if 30 <= z < 70:
            cortex = inside & ~ndi.binary_erosion(inside, iterations=3)
            femur[z] = cortex & (xx < cx + 0.3 * a)
        else:
            femur[z] = inside
    repaired = repair_cortical_breaches(femur, spacing=spacing, z_range=(0, 90), convex_range=(0, 0))

    lost = truth & ~femur
    assert (repaired & lost).sum() / lost.sum() > 0.95
    outside = repaired & ~ndi.binary_dilation(truth, iterations=1)
    assert outside.sum() < 0.01 * lost.sum()
    # Beyond the intact medial cortex nothing farther than two voxels out.
    assert not (repaired & ~ndi.binary_dilation(truth, iterations=2) & (xx < 40.0)[None]).any()
    # Intact cross-sections away from the breach stay as they were, but for a stray voxel of the polar
    # outline where their widening makes one look bitten (area below that of the wider neighbours).
    for intact in (np.s_[:25], np.s_[75:]):
        assert (repaired[intact] != femur[intact]).sum() <= 2 * repaired[intact].shape[0]


def _bone_with_a_cavity(cavity_centre_mm: float, cavity_radius_mm: float, lined: bool):
    """Five cross-sections of a bone (radius 15 mm, 1.5 mm cortex of 1500 HU over 300 HU cancellous bone)
    into which a round cavity of soft tissue (40 HU) opens at the top (axis 1), left out of the mask as
    the hole filling leaves an open cavity out. With ``lined`` the cavity is walled by 1.5 mm of cortex
    (a normal notch); without, by cancellous bone (the edge a lesion leaves)."""
    spacing = (1.0, 0.5, 0.5)
    shape = (5, 80, 80)
    bone = _disc(shape[1:], (20.0, 20.0), 15.0, 0.5)
    cavity = _disc(shape[1:], (20.0 - cavity_centre_mm, 20.0), cavity_radius_mm, 0.5)
    section = bone & ~cavity
    image2d = np.full(shape[1:], 40.0, dtype=np.float32)
    image2d[bone] = 1500.0
    image2d[_disc(shape[1:], (20.0, 20.0), 13.5, 0.5)] = 300.0
    if lined:
        image2d[section & _disc(shape[1:], (20.0 - cavity_centre_mm, 20.0), cavity_radius_mm + 1.5, 0.5)] = 1500.0
    image2d[cavity] = 40.0
    femur = np.repeat(section[None], shape[0], axis=0)
    image = np.repeat(image2d[None], shape[0], axis=0)
    return femur, image, spacing, cavity & bone


def test_a_lesion_cavity_opening_through_the_cortex_is_filled():
    # 6 mm lesion centred 11 mm from the centre: it opens through a ~10 mm mouth and reaches 10 mm deep,
    # walled by cancellous bone. Not a crescent, not short of area: the breach rebuild leaves it.
    femur, image, spacing, cavity = _bone_with_a_cavity(11.0, 6.0, lined=False)
    assert np.array_equal(repair_cortical_breaches(femur, spacing=spacing, z_range=(0, 5), convex_range=(0, 0),
                                                   image=image), femur)
    filled = fill_lesion_cavities(femur, spacing=spacing, z_range=(0, 5), image=image, convex_range=(0, 5))
    # Filled up to the straight chord across its mouth (the cross-section's convex hull): all of the
    # cavity inside it; the sliver of the round outline beyond the chord stays out.
    hull = _convex_hull(femur[0])
    assert filled[:, cavity & hull].all()
    assert filled[:, cavity].mean() > 0.85
    assert not (filled & ~hull[None]).any()
    # Only the slices asked for.
    partly = fill_lesion_cavities(femur, spacing=spacing, z_range=(1, 3), image=image, convex_range=(0, 5))
    assert partly[1:3, cavity & hull].all() and not partly[[0, 3, 4]][:, cavity].any()


@pytest.mark.parametrize(
    ("case", "centre_mm", "radius_mm", "lined"),
    [
        ("notch lined with cortex", 11.0, 6.0, True),
        ("wide bay lined with cortex, 6.5 mm deep", 16.0, 12.0, True),
        ("unlined bay only 4.5 mm deep", 18.0, 10.0, False),
        ("pit 5.5 mm deep and 7 mm wide", 13.0, 3.5, False),
    ],
)
def test_a_normal_concavity_of_the_outline_is_left_open(case, centre_mm, radius_mm, lined):
    femur, image, spacing, cavity = _bone_with_a_cavity(centre_mm, radius_mm, lined)
    for ratio in (CAVITY_MIN_DEPTH_TO_MOUTH, TROCHANTER_CAVITY_MIN_DEPTH_TO_MOUTH):
        filled = fill_lesion_cavities(femur, spacing=spacing, z_range=(0, 5), image=image, convex_range=(0, 5),
                                      min_depth_to_mouth=ratio)
        np.testing.assert_array_equal(filled, femur, err_msg=case)


def test_a_wide_unlined_bay_is_filled_along_the_shaft_and_below_the_head():
    # What a lesion leaves of the greater trochanter's lateral wall: a bay 6.5 mm deep, about a fifth of
    # its mouth, walled by cancellous bone. Far too shallow for the ratio of a pit; filled because no
    # cortex lines it, with either ratio. Lined with cortex, the same bay is a normal notch (see above).
    femur, image, spacing, cavity = _bone_with_a_cavity(16.0, 12.0, lined=False)
    hull = _convex_hull(femur[0])
    for ratio in (CAVITY_MIN_DEPTH_TO_MOUTH, TROCHANTER_CAVITY_MIN_DEPTH_TO_MOUTH):
        filled = fill_lesion_cavities(femur, spacing=spacing, z_range=(0, 5), image=image, convex_range=(0, 5),
                                      min_depth_to_mouth=ratio)
        assert filled[:, cavity & hull].all()
        assert not (filled & ~hull[None]).any()


def test_a_cavity_against_another_bone_is_left_open():
    femur, image, spacing, cavity = _bone_with_a_cavity(11.0, 6.0, lined=False)
    blocked = np.zeros_like(femur)
    blocked[:, 8:16, 36:44] = True  # a tip of another bone in the cavity's mouth (the acetabulum, say)
    blocked &= ~femur
    filled = fill_lesion_cavities(
        femur, spacing=spacing, z_range=(0, 5), image=image, convex_range=(0, 5), blocked=blocked
    )
    np.testing.assert_array_equal(filled, femur)


# ------------------------------------------------------------------------------------------------
# Holes walled by the femur together with another bone
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shaft_cortex_hu", "expected"), [(1300.0, (306.0, 535.0)), (2000.0, (400.0, 700.0))])
def test_the_cortex_levels_of_the_rebuild_follow_a_faint_shaft_down_never_up(shaft_cortex_hu, expected):
    # Faint bone (osteoporosis, 140 kVp) has a faint cortex everywhere, also at the end of the greater
    # trochanter, whose notch must not be taken for a breach: the levels scale with the shaft's cortex.
    spacing = 0.8
    femur = np.zeros((30, 50, 50), dtype=bool)
    image = np.full(femur.shape, 40.0, dtype=np.float32)
    for z in range(30):
        femur[z] = _disc(femur.shape[1:], (20.0, 20.0), 12.0, spacing)
        image[z][femur[z]] = shaft_cortex_hu
        image[z][_disc(femur.shape[1:], (20.0, 20.0), 8.0, spacing)] = -50.0  # marrow
    levels = _cortex_levels(femur, image, (0, 20))
    assert levels["cortex_hu"] == pytest.approx(expected[0], abs=1.0)
    assert levels["dense_cortex_hu"] == pytest.approx(expected[1], abs=1.0)


def test_a_neck_whose_cortex_partly_went_to_the_hip_bone_is_still_filled():
    from operators.femur_classical import _fill_holes_walled_with

    shape = (6, 60, 90)
    neck_inside = np.zeros(shape, dtype=bool)
    neck_ring = np.zeros(shape, dtype=bool)
    hip = np.zeros(shape, dtype=bool)
    hip_marrow = np.zeros(shape, dtype=bool)
    for z in range(shape[0]):
        outer = _disc(shape[1:], (30.0, 30.0), 16.0, 1.0)
        inner = _disc(shape[1:], (30.0, 30.0), 13.0, 1.0)
        neck_inside[z] = inner
        neck_ring[z] = outer & ~inner
        bone_outer = _disc(shape[1:], (30.0, 62.0), 14.0, 1.0)
        bone_inner = _disc(shape[1:], (30.0, 62.0), 11.0, 1.0)
        hip[z] = bone_outer & ~bone_inner
        hip_marrow[z] = bone_inner
    # A stretch of the neck's cortex (a quarter of the ring, on the side of the hip bone) went to the hip.
    x = np.arange(shape[2])[None, None, :]
    lost = neck_ring & (x >= 40)
    femur = neck_ring & ~lost
    other = hip | lost
    filled = _fill_holes_walled_with(femur, other)

    np.testing.assert_array_equal(filled & neck_inside, neck_inside)  # the neck's interior is the femur's
    assert not (filled & hip_marrow).any()  # the hip bone's marrow is not
    assert not (filled & other).any()  # nothing of the other bone is taken
    # Without another bone in the slices the mask comes back as it was.
    np.testing.assert_array_equal(_fill_holes_walled_with(femur, np.zeros(shape, dtype=bool)), femur)



def test_the_head_is_found_close_above_a_short_run_that_leans_into_the_trochanter():
    # Where the view ends a few cm below the lesser trochanters, the short shaft run reaches up into the
    # trochanteric region and its centres lean laterally towards the greater trochanter, here 17 degrees.
    # Along that lean the head's centre is only ~12 mm above the run's top; along the body axis, 18 mm.
    image, spacing = _hip()
    coarse = block_mean(image, (2, 2, 2))
    cspacing = (2.0, 2.0, 2.0)
    slices = list(range(5, 22))
    top_l = HEAD_CENTRE[2] - 20.0  # lateral of the head is -L for this right-side ball
    centres = [np.array([HEAD_CENTRE[1], top_l + 0.3 * (21 - s) * cspacing[0]]) for s in slices]
    long_run = ShaftTrack(slices=slices, labels=[1] * len(slices), centres_mm=centres, areas_mm2=[600.0] * len(slices))
    assert _find_head(coarse, image, long_run, cspacing, spacing, np.full(3, 0.5), midline_mm=100.0) is None
    short_run = ShaftTrack(slices=slices, labels=[1] * len(slices), centres_mm=centres, areas_mm2=[600.0] * len(slices),
                           short=True)
    sphere = _find_head(coarse, image, short_run, cspacing, spacing, np.full(3, 0.5), midline_mm=100.0)
    assert sphere is not None
    assert np.linalg.norm(sphere.centre_mm - HEAD_CENTRE) < 1.5
