"""Lesion findings on hand-built masks: volumes, diameters, counts, cortex and site along the femur."""

from __future__ import annotations

import json
import logging
import math

import highdicom as hd
import numpy as np
import pytest

from operators.lesion_findings import (
    FindingsConfig,
    femur_findings,
    largest_diameter_mm,
    study_findings,
    study_findings_in_boxes,
)

# --------------------------------------------------------------------------------------------------
# Grids: an affine from index (z, y, x) to LPS mm and the LPS positions of all voxel centres.
# --------------------------------------------------------------------------------------------------


def _grid(shape: tuple[int, int, int], columns: np.ndarray, origin: np.ndarray) -> hd.Volume:
    affine = np.eye(4)
    affine[:3, :3] = columns
    affine[:3, 3] = origin
    return hd.Volume(np.zeros(shape, dtype=np.float32), affine, "PATIENT")


def _positions(grid: hd.Volume) -> np.ndarray:
    index = np.indices(grid.spatial_shape).reshape(3, -1).T.astype(np.float64)
    return (index @ grid.affine[:3, :3].T + grid.affine[:3, 3]).reshape(grid.spatial_shape + (3,))


def hfs_grid(lo: tuple[float, float, float], hi: tuple[float, float, float], spacing=(1.0, 1.0, 1.0)) -> hd.Volume:
    """Head-first supine axial grid covering the LPS box [lo, hi]: slices run head to feet, rows to
    posterior, columns to the patient's left (as highdicom orders a head-first series)."""
    sz, sy, sx = spacing
    n = [int(round((hi[2] - lo[2]) / sz)) + 1, int(round((hi[1] - lo[1]) / sy)) + 1,
         int(round((hi[0] - lo[0]) / sx)) + 1]
    columns = np.array([[0.0, 0.0, sx], [0.0, sy, 0.0], [-sz, 0.0, 0.0]])
    return _grid(tuple(n), columns, np.array([lo[0], lo[1], lo[2] + (n[0] - 1) * sz]))


def ffs_grid(lo: tuple[float, float, float], hi: tuple[float, float, float], spacing=(1.0, 1.0, 1.0)) -> hd.Volume:
    """Feet-first supine grid over the same voxel centres: slices run feet to head, columns towards the
    patient's right, rows towards anterior."""
    sz, sy, sx = spacing
    n = [int(round((hi[2] - lo[2]) / sz)) + 1, int(round((hi[1] - lo[1]) / sy)) + 1,
         int(round((hi[0] - lo[0]) / sx)) + 1]
    columns = np.array([[0.0, 0.0, -sx], [0.0, -sy, 0.0], [sz, 0.0, 0.0]])
    return _grid(tuple(n), columns, np.array([lo[0] + (n[2] - 1) * sx, lo[1] + (n[1] - 1) * sy, lo[2]]))


# --------------------------------------------------------------------------------------------------
# A synthetic left femur: head sphere, tilted neck cylinder, vertical shaft cylinder (LPS mm).
# --------------------------------------------------------------------------------------------------

HEAD = np.array([-36.0, 0.0, 110.0])  # medial to the shaft (towards the patient's right for a left femur)
HEAD_RADIUS = 12.0
SHAFT_RADIUS = 8.0
SHAFT_TOP = 88.0
NECK_RADIUS = 7.0
# Neck-shaft angle 130 degrees: the neck meets the shaft axis 36 / tan(50 deg) below the head centre.
JUNCTION = np.array([0.0, 0.0, 110.0 - 36.0 / math.tan(math.radians(50.0))])
NECK_DIR = (JUNCTION - HEAD) / np.linalg.norm(JUNCTION - HEAD)
FEMUR_BOX = ((-50.0, -14.0, -3.0), (14.0, 14.0, 126.0))


def _ball(p: np.ndarray, centre, radius: float) -> np.ndarray:
    return np.linalg.norm(p - np.asarray(centre, dtype=np.float64), axis=-1) <= radius


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def femur_mask(p: np.ndarray) -> np.ndarray:
    shaft = (np.hypot(p[..., 0], p[..., 1]) <= SHAFT_RADIUS) & (p[..., 2] >= 0.0) & (p[..., 2] <= SHAFT_TOP)
    neck = _segment_distance(p, JUNCTION, HEAD) <= NECK_RADIUS
    return shaft | neck | _ball(p, HEAD, HEAD_RADIUS)


LESION_SITES = {
    "head": (HEAD + np.array([0.0, 0.0, 2.0]), 3.0),
    "neck": (HEAD + 22.0 * NECK_DIR, 3.0),
    "trochanteric": (np.array([0.0, 0.0, 76.0]), 3.0),
    "shaft": (np.array([0.0, 0.0, 40.0]), 3.0),
}


def test_synthetic_femur_lesions_are_placed_in_head_neck_trochanteric_region_and_shaft():
    grid = hfs_grid(*FEMUR_BOX)
    p = _positions(grid)
    lesions = np.zeros(grid.spatial_shape, dtype=bool)
    for centre, radius in LESION_SITES.values():
        lesions |= _ball(p, centre, radius)
    result = femur_findings(side="left", femur_mask=femur_mask(p), lesion_mask=lesions, grid=grid)

    assert result.present and result.proximal_femur_in_view
    lm = result.landmarks
    assert np.allclose(lm.head_centre_mm, HEAD, atol=1.0)
    assert 12.0 <= lm.head_radius_mm <= 13.0  # distance to the nearest voxel centre outside
    assert lm.shaft_axis_fitted
    assert abs(lm.shaft_direction[2]) > 0.999  # vertical shaft, pointing to the head
    assert np.allclose(lm.shaft_point_mm[:2], (0.0, 0.0), atol=0.1)
    assert lm.shaft_radius_mm == pytest.approx(SHAFT_RADIUS, abs=0.3)
    assert np.allclose(lm.neck_direction, NECK_DIR, atol=0.05)
    assert np.allclose(lm.neck_junction_mm, JUNCTION, atol=2.0)

    by_site = {}
    for lesion in result.lesions:
        def distance(site: str) -> float:
            return float(np.linalg.norm(np.subtract(lesion.centroid_lps_mm, LESION_SITES[site][0])))
        by_site[min(LESION_SITES, key=distance)] = lesion
    assert {site: lesion.location for site, lesion in by_site.items()} == {
        "head": "head", "neck": "neck", "trochanteric": "trochanteric", "shaft": "shaft"}
    assert result.locations == ("head", "neck", "trochanteric", "shaft")
    # All four balls lie at least 3 mm inside the bone: none reaches the cortex.
    assert not any(lesion.cortical_involvement for lesion in result.lesions)
    assert result.cortical_involvement is False


def test_same_femur_in_a_feet_first_flipped_grid_gives_the_same_findings():
    lesion_centres = [(HEAD + 22.0 * NECK_DIR, 3.0), (np.array([6.0, 0.0, 30.0]), 2.5)]
    results = []
    for make in (hfs_grid, ffs_grid):
        grid = make(*FEMUR_BOX)
        p = _positions(grid)
        lesions = np.zeros(grid.spatial_shape, dtype=bool)
        for centre, radius in lesion_centres:
            lesions |= _ball(p, centre, radius)
        results.append(femur_findings(side="left", femur_mask=femur_mask(p), lesion_mask=lesions, grid=grid))
    hfs, ffs = results
    assert not np.allclose(hfs_grid(*FEMUR_BOX).affine, ffs_grid(*FEMUR_BOX).affine)
    assert hfs.n_lesions == ffs.n_lesions == 2
    assert hfs.femur_volume_ml == pytest.approx(ffs.femur_volume_ml)
    for a, b in zip(hfs.lesions, ffs.lesions):
        assert a.n_voxels == b.n_voxels
        assert a.largest_diameter_mm == pytest.approx(b.largest_diameter_mm)
        assert np.allclose(a.centroid_lps_mm, b.centroid_lps_mm)
        assert (a.location, a.cortical_involvement) == (b.location, b.cortical_involvement)
    assert [(l.location, l.cortical_involvement) for l in hfs.lesions] == [("neck", False), ("shaft", True)]
    assert np.allclose(hfs.landmarks.head_centre_mm, ffs.landmarks.head_centre_mm)


def test_the_head_is_found_above_a_trochanteric_region_wider_than_it():
    # A trochanteric region (here a ball of radius 14 mm on the shaft, 50 mm below the head's centre) can
    # hold a larger inscribed sphere than the head (12 mm): the head is still the sphere at the top.
    grid = hfs_grid((-50.0, -20.0, -3.0), (20.0, 20.0, 126.0))
    p = _positions(grid)
    femur = femur_mask(p) | _ball(p, (0.0, 0.0, 60.0), 14.0)
    lesion = _ball(p, LESION_SITES["neck"][0], 3.0)
    result = femur_findings(side="left", femur_mask=femur, lesion_mask=lesion, grid=grid)

    assert result.proximal_femur_in_view
    assert np.allclose(result.landmarks.head_centre_mm, HEAD, atol=1.0)
    assert 12.0 <= result.landmarks.head_radius_mm <= 13.0
    assert [lesion.location for lesion in result.lesions] == ["neck"]


def test_proximal_femur_out_of_view_gives_unknown_sites():
    # Only the shaft: the femur runs through the top of the image.
    lo, hi = (-12.0, -12.0, 10.0), (12.0, 12.0, 60.0)
    grid = hfs_grid(lo, hi)
    p = _positions(grid)
    femur = np.hypot(p[..., 0], p[..., 1]) <= SHAFT_RADIUS
    lesion = _ball(p, (0.0, 0.0, 30.0), 3.0)
    result = femur_findings(side="right", femur_mask=femur, lesion_mask=lesion, grid=grid)
    assert result.present and not result.proximal_femur_in_view
    assert result.lesions[0].location == "unknown"
    assert "upper edge" in result.location_note
    # The cut ends of the shaft are not its surface: a lesion at the image edge does not breach the cortex.
    edge = _ball(p, (0.0, 0.0, 60.0), 3.0)
    at_edge = femur_findings(side="right", femur_mask=femur, lesion_mask=edge, grid=grid)
    assert at_edge.lesions[0].cortical_involvement is False


# --------------------------------------------------------------------------------------------------
# Hand-checkable geometry on a block "femur".
# --------------------------------------------------------------------------------------------------

SPACING = (1.5, 0.8, 0.7)  # (z, y, x) mm: voxel volume 0.84 mm3


def _block_grid() -> hd.Volume:
    columns = np.diag([0.7, 0.8, 1.5])[:, ::-1]  # z index -> LPS z, y -> y, x -> x (axis order z, y, x)
    return _grid((20, 24, 24), columns, np.array([0.0, 0.0, 0.0]))


def _block_femur(shape) -> np.ndarray:
    femur = np.zeros(shape, dtype=bool)
    femur[2:18, 2:22, 2:22] = True
    return femur


def test_cube_lesion_volume_and_diagonal():
    grid = _block_grid()
    assert grid.voxel_volume == pytest.approx(0.84)
    femur = _block_femur(grid.spatial_shape)
    lesion = np.zeros_like(femur)
    lesion[8:12, 10:14, 10:14] = True  # 4 x 4 x 4 voxels, deep inside
    result = femur_findings(side="left", femur_mask=femur, lesion_mask=lesion, grid=grid)
    (cube,) = result.lesions
    assert cube.n_voxels == 64
    assert cube.volume_ml == pytest.approx(64 * 0.84 / 1000)  # 0.05376 ml
    # Between the centres of opposite corner voxels: 3 steps along each axis.
    assert cube.largest_diameter_mm == pytest.approx(math.sqrt((3 * 1.5) ** 2 + (3 * 0.8) ** 2 + (3 * 0.7) ** 2))
    assert cube.cortical_involvement is False
    assert result.femur_volume_ml == pytest.approx(16 * 20 * 20 * 0.84 / 1000)
    # Centroid: the index centre (9.5, 11.5, 11.5) through the affine.
    assert np.allclose(cube.centroid_lps_mm, (11.5 * 0.7, 11.5 * 0.8, 9.5 * 1.5))


def test_two_lesions_small_components_and_26_connectivity():
    grid = _block_grid()
    femur = _block_femur(grid.spatial_shape)
    lesion = np.zeros_like(femur)
    lesion[4:7, 4:7, 4:7] = True           # 27 voxels = 22.68 mm3
    lesion[7:10, 7:10, 7:10] = True        # touches the first only at a corner: the same lesion (26-connected)
    lesion[12:16, 12:17, 12:17] = True     # 100 voxels = 84 mm3
    lesion[14, 4, 18] = True               # 0.84 mm3: under 20 mm3, ignored
    lesion[4:6, 18, 4:6] = True            # 4 voxels = 3.36 mm3: ignored
    result = femur_findings(side="right", femur_mask=femur, lesion_mask=lesion, grid=grid)
    assert result.n_lesions == 2
    assert [l.n_voxels for l in result.lesions] == [100, 54]
    assert [l.number for l in result.lesions] == [1, 2]
    assert result.n_small_components_ignored == 2
    assert result.small_components_volume_ml == pytest.approx(5 * 0.84 / 1000)
    assert result.total_lesion_volume_ml == pytest.approx(154 * 0.84 / 1000)
    assert result.largest_lesion_volume_ml == pytest.approx(100 * 0.84 / 1000)
    # The corner-joined pair spans 5 steps along each axis, more than the 4x5x5 block.
    assert result.largest_diameter_mm == pytest.approx(math.sqrt((5 * 1.5) ** 2 + (5 * 0.8) ** 2 + (5 * 0.7) ** 2))
    # A larger minimum volume drops the smaller lesion too.
    stricter = femur_findings(side="right", femur_mask=femur, lesion_mask=lesion, grid=grid,
                              config=FindingsConfig(min_lesion_volume_mm3=50.0))
    assert stricter.n_lesions == 1 and stricter.n_small_components_ignored == 3


@pytest.mark.parametrize(
    "x_slice,expected",
    [
        (slice(2, 5), True),     # replaces the cortex: lesion voxels on the bone surface
        (slice(3, 6), True),     # one voxel of bone left between the lesion and the outside
        (slice(4, 7), False),    # two voxels of bone left
        (slice(10, 13), False),  # deep inside
    ],
)
def test_cortical_involvement_within_one_voxel_of_the_surface(x_slice, expected):
    grid = _block_grid()
    femur = _block_femur(grid.spatial_shape)
    lesion = np.zeros_like(femur)
    lesion[8:11, 10:13, x_slice] = True
    result = femur_findings(side="left", femur_mask=femur, lesion_mask=lesion, grid=grid)
    assert result.lesions[0].cortical_involvement is expected
    assert result.cortical_involvement is expected


def test_largest_diameter_of_flat_and_linear_point_sets():
    assert largest_diameter_mm(np.zeros((1, 3))) == 0.0
    line = np.column_stack([np.arange(5.0), np.zeros(5), np.zeros(5)])
    assert largest_diameter_mm(line) == pytest.approx(4.0)
    square = np.array([[0, 0, 0], [3, 0, 0], [0, 4, 0], [3, 4, 0], [1, 1, 0]], dtype=float)
    assert largest_diameter_mm(square) == pytest.approx(5.0)


# --------------------------------------------------------------------------------------------------
# Study level
# --------------------------------------------------------------------------------------------------


def test_study_findings_sides_not_in_view_and_json(caplog):
    grid = _block_grid()
    femur = _block_femur(grid.spatial_shape)
    lesion = np.zeros_like(femur)
    lesion[8:12, 10:14, 10:14] = True
    with caplog.at_level(logging.DEBUG, logger="operators.lesion_findings"):
        study = study_findings(grid=grid, femur_masks={"left": femur}, lesion_masks=lesion)
    assert study.femur_in_view
    assert study.left.present and study.left.n_lesions == 1
    assert not study.right.present
    data = json.loads(json.dumps(study.to_dict()))
    assert data["femurs"]["right"] == {"side": "right", "present": False}
    left = data["femurs"]["left"]
    assert left["n_lesions"] == 1 and left["total_lesion_volume_ml"] == pytest.approx(0.054, abs=1e-3)
    assert left["locations"] == ["unknown"]  # a block has no femoral head
    assert data["criteria"]["min_lesion_volume_mm3"] == 20.0
    assert "left femur" in caplog.text and "1 lesion(s)" in caplog.text

    nothing = study_findings(grid=grid, femur_masks={}, lesion_masks=None)
    assert not nothing.femur_in_view
    assert nothing.to_dict()["femur_in_view"] is False


def test_bad_inputs_are_one_line_errors():
    grid = _block_grid()
    femur = _block_femur(grid.spatial_shape)
    with pytest.raises(ValueError, match="shape"):
        femur_findings(side="left", femur_mask=femur[:-1], lesion_mask=None, grid=grid)
    with pytest.raises(ValueError, match="side"):
        femur_findings(side="LEFT", femur_mask=femur, lesion_mask=None, grid=grid)
    with pytest.raises(ValueError, match="boolean"):
        femur_findings(side="left", femur_mask=femur.astype(np.float32) * 3, lesion_mask=None, grid=grid)
    with pytest.raises(ValueError, match="keys"):
        study_findings(grid=grid, femur_masks={"middle": femur})


def test_loaded_head_first_and_feet_first_series_give_the_same_findings(tmp_path):
    from operators.series_volume import load_study
    from tests.dicom_factory import FFS_ORIENTATION, HFS_ORIENTATION, write_ct_series

    n, rows, columns = 14, 20, 24
    # The feet-first series covers the same voxel centres: columns run to the patient's right from the
    # other side, slices run towards the feet from the top.
    write_ct_series(tmp_path / "hfs", n_slices=n, rows=rows, columns=columns, orientation=HFS_ORIENTATION,
                    origin=(-6.0, -5.0, 20.0))
    write_ct_series(tmp_path / "ffs", n_slices=n, rows=rows, columns=columns, orientation=FFS_ORIENTATION,
                    patient_position="FFS", origin=(-6.0 + (columns - 1) * 0.7, -5.0, 20.0 + (n - 1) * 1.5))
    results = []
    for name in ("hfs", "ffs"):
        volume = load_study(tmp_path / name).volume
        p = _positions(volume)
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        femur = (np.abs(x - 2.0) <= 6.0) & (np.abs(y - 2.0) <= 5.0) & (z >= 22.0) & (z <= 36.0)
        lesion = femur & (x >= 4.0) & (np.abs(y - 2.0) <= 2.0) & (z >= 26.0) & (z <= 31.0)
        results.append(study_findings(grid=volume, femur_masks={"left": femur}, lesion_masks={"left": lesion}))
    hfs, ffs = (r.left for r in results)
    assert hfs.n_lesions == ffs.n_lesions == 1
    a, b = hfs.lesions[0], ffs.lesions[0]
    assert a.cortical_involvement and b.cortical_involvement  # the lesion reaches x = 8 mm, the surface
    assert (a.n_voxels, a.location) == (b.n_voxels, b.location)
    assert a.largest_diameter_mm == pytest.approx(b.largest_diameter_mm)
    assert np.allclose(a.centroid_lps_mm, b.centroid_lps_mm)
    assert hfs.femur_volume_ml == pytest.approx(ffs.femur_volume_ml)


@pytest.mark.parametrize("margin", [0, 1, 5])
def test_findings_of_masks_in_boxes_equal_those_on_the_full_grid(margin):
    # The application measures each femur in its crop box; the figures must be those of the full grid,
    # also where the box is tighter than the room the measurement takes and where the femur leaves the
    # image (the left block touches the grid's first slices).
    grid = _block_grid()
    shape = grid.spatial_shape
    left = np.zeros(shape, dtype=bool)
    left[0:14, 3:12, 3:12] = True
    right = np.zeros(shape, dtype=bool)
    right[5:19, 14:22, 13:22] = True
    lesion_left = np.zeros(shape, dtype=bool)
    lesion_left[0:4, 5:9, 5:12] = True  # at the image edge and reaching the surface
    lesion_left[9, 6, 6] = True  # a component too small to report
    lesion_right = np.zeros(shape, dtype=bool)
    lesion_right[9:13, 16:19, 16:19] = True

    def boxed(mask, lesion):
        hits = np.nonzero(mask)
        box = tuple(slice(max(0, int(h.min()) - margin), min(n, int(h.max()) + 1 + margin))
                    for h, n in zip(hits, shape))
        return box, mask[box], lesion[box]

    full = study_findings(grid=grid, femur_masks={"left": left, "right": right},
                          lesion_masks={"left": lesion_left, "right": lesion_right})
    in_boxes = study_findings_in_boxes(grid=grid, femurs={"left": boxed(left, lesion_left),
                                                          "right": boxed(right, lesion_right)})
    assert full.left.n_lesions == 1 and full.left.n_small_components_ignored == 1 and full.right.n_lesions == 1
    assert json.dumps(in_boxes.to_dict(), sort_keys=True) == json.dumps(full.to_dict(), sort_keys=True)

    one_side = study_findings_in_boxes(grid=grid, femurs={"right": boxed(right, lesion_right)})
    assert not one_side.left.present and one_side.right.to_dict() == full.right.to_dict()


def test_boxes_outside_the_grid_or_of_another_shape_are_refused():
    grid = _block_grid()
    femur = np.ones((4, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="inside the grid"):
        study_findings_in_boxes(grid=grid, femurs={"left": ((slice(18, 22), slice(0, 4), slice(0, 4)), femur, None)})
    with pytest.raises(ValueError, match="its box"):
        study_findings_in_boxes(grid=grid, femurs={"left": ((slice(0, 4), slice(0, 4), slice(0, 5)), femur, None)})
    with pytest.raises(ValueError, match="keys"):
        study_findings_in_boxes(grid=grid, femurs={"middle": ((slice(0, 4),) * 3, femur, None)})
