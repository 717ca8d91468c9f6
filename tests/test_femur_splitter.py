"""The femur splitter's contract: crops, geometry, femur-only volumes, sides, errors, points files.

These tests drive :func:`operators.femur_splitter.split_femurs` with fixed segmenters on small
hand-made volumes, so that every expectation is exact; the classical segmenter itself is tested on
synthetic studies in ``test_femur_classical.py``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from operators.errors import NoFemurInViewError
from operators.femur_points import POINTS_HEADER, export_femur_points
from operators.femur_splitter import FemurSplit, SplitterConfig, split_femurs, split_labels_by_side

REAL_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_ct_chest_j2k"


class FixedSegmenter:
    """Returns a given label array (the FemurSegmenter protocol)."""

    def __init__(self, labels: np.ndarray, *, sided: bool = True) -> None:
        self.labels = labels
        self.sided = sided

    def segment(self, ct: hd.Volume) -> np.ndarray:
        return self.labels


def _volume(shape=(12, 14, 16), *, flip_x: bool = False, seed: int = 0) -> hd.Volume:
    """A CT-like volume (HU, float32) on an axial HFS-like grid; columns run to patient right if flip_x."""
    rng = np.random.default_rng(seed)
    array = rng.normal(40.0, 20.0, size=shape).astype(np.float32)
    orientation = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0) if flip_x else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    return hd.Volume.from_attributes(
        array=array,
        image_position=(-50.0, -60.0, -300.0),
        image_orientation=orientation,
        pixel_spacing=(0.8, 0.9),
        spacing_between_slices=1.5,
        coordinate_system="PATIENT",
    )


def _two_blob_labels(shape) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:9, 3:8, 2:6] = 1  # low column index
    labels[3:10, 5:11, 10:14] = 2  # high column index
    return labels


def _config(**kw) -> SplitterConfig:
    return SplitterConfig(min_femur_volume_ml=0.0, **kw)


@pytest.mark.parametrize("flip_x", [False, True])
def test_crops_have_the_full_affine_shifted_to_their_origin_and_map_back_exactly(flip_x):
    ct = _volume(flip_x=flip_x)
    labels = _two_blob_labels(ct.spatial_shape)
    split = split_femurs(ct, config=_config(margin_mm=2.0), segmenter=FixedSegmenter(labels))

    assert set(split.femurs) == {"left", "right"}
    np.testing.assert_array_equal(split.label_map(), labels)
    for side, value in (("left", 1), ("right", 2)):
        crop = split.femurs[side]
        start = np.array([s.start for s in crop.box] + [1.0])
        expected = ct.affine.copy()
        expected[:3, 3] = (ct.affine @ start)[:3]
        np.testing.assert_allclose(crop.femur_only.affine, expected, atol=1e-9)
        assert crop.femur_only.spatial_shape == crop.mask.shape
        assert crop.femur_only.dtype == np.float32
        # Round trip: the crop mask placed back is exactly this femur's voxels of the full grid.
        np.testing.assert_array_equal(crop.to_full_grid(crop.mask, fill=False), labels == value)
        np.testing.assert_array_equal(crop.full_mask(), labels == value)
        # Femur-only values: the CT at femur voxels, exactly 0 elsewhere.
        values = crop.to_full_grid(crop.femur_only.array)
        np.testing.assert_array_equal(values[labels == value], ct.array[labels == value])
        assert np.all(values[labels != value] == 0)
        # Margin: 2 mm on each side, clipped to the volume.
        tight = [np.flatnonzero((labels == value).any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
        for k, s in enumerate(crop.box):
            margin = int(np.ceil(2.0 / ct.spacing[k]))
            assert s.start == max(0, int(tight[k][0]) - margin)
            assert s.stop == min(ct.spatial_shape[k], int(tight[k][-1]) + 1 + margin)


def test_zero_hu_femur_voxels_are_nudged_so_that_nnunet_sees_exactly_the_femur():
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    ct = _volume()
    labels = _two_blob_labels(ct.spatial_shape)
    array = ct.array.copy()
    array[4, 4, 3] = 0.0  # inside the left femur
    array[5, 6, 11] = -0.0  # inside the right femur
    array[0, 0, 0] = 0.0  # background
    ct = ct.with_array(array)
    split = split_femurs(ct, config=_config(margin_mm=3.0), segmenter=FixedSegmenter(labels))

    for side in ("left", "right"):
        crop = split.femurs[side]
        values = crop.femur_only.array
        assert np.all(values[crop.mask] != 0)
        assert np.all(values[~crop.mask] == 0)
        # nnU-Net's own definition of the region to normalise over (non-zero, holes filled).
        np.testing.assert_array_equal(create_nonzero_mask(values[None]), crop.mask)
    left = split.femurs["left"]
    local = tuple(i - s.start for i, s in zip((4, 4, 3), left.box))
    assert left.femur_only.array[local] == np.float32(1e-3)


def test_facts_report_volume_and_length_along_the_body_axis():
    ct = _volume()
    labels = np.zeros(ct.spatial_shape, dtype=np.uint8)
    labels[2:9, 3:8, 2:6] = 1  # 7 slices of 1.5 mm: centres 6 slices apart
    split = split_femurs(ct, config=_config(), segmenter=FixedSegmenter(labels))
    crop = split.femurs["left"]
    assert crop.volume_ml == pytest.approx(7 * 5 * 4 * 1.5 * 0.8 * 0.9 / 1000.0)
    assert crop.length_mm == pytest.approx(6 * 1.5)
    facts = split.facts()
    assert facts["femurs"]["left"]["bbox_zyx"] == [[s.start, s.stop] for s in crop.box]
    assert "no right femur in view" in facts["notes"]


@pytest.mark.parametrize("flip_x", [False, True])
def test_a_one_label_segmenter_gets_sides_from_the_geometry(flip_x):
    ct = _volume(flip_x=flip_x)
    labels = (_two_blob_labels(ct.spatial_shape) > 0).astype(np.uint8)
    split = split_femurs(ct, config=_config(), segmenter=FixedSegmenter(labels, sided=False))
    # Columns run to the patient's left (LPS +x) unless flipped: the high-column blob is then the
    # patient's left femur, and the low-column blob when the columns are flipped.
    high, low = (2, 1) if flip_x else (1, 2)
    label_map = split.label_map()
    assert np.all(label_map[3:10, 5:11, 10:14] == high)
    assert np.all(label_map[2:9, 3:8, 2:6] == low)
    assert set(split.femurs) == {"left", "right"}


def test_split_labels_by_side_drops_small_pieces():
    ct = _volume()
    mask = np.zeros(ct.spatial_shape, dtype=bool)
    mask[2:9, 3:8, 2:6] = True
    mask[0, 0, 15] = True  # a speck
    labels = split_labels_by_side(mask, ct, min_volume_ml=0.05)
    assert labels[0, 0, 15] == 0
    assert set(np.unique(labels)) == {0, 1 if (ct.affine @ [5, 5, 4, 1])[0] > 0 else 2}


def test_no_femur_is_an_outcome_with_a_reason():
    ct = _volume()
    split = split_femurs(ct, config=_config(), segmenter=FixedSegmenter(np.zeros(ct.spatial_shape, np.uint8)))
    assert split.femurs == {}
    assert split.no_femur_reason
    assert "no left femur in view" in split.notes and "no right femur in view" in split.notes
    assert not split.label_map().any()
    with pytest.raises(NoFemurInViewError, match="no femur in view"):
        split.require_femur()


def test_small_candidates_are_ignored():
    ct = _volume()
    labels = np.zeros(ct.spatial_shape, dtype=np.uint8)
    labels[5, 5, 5] = 2
    split = split_femurs(ct, config=SplitterConfig(min_femur_volume_ml=1.0), segmenter=FixedSegmenter(labels))
    assert split.femurs == {}
    assert any("right femur candidate" in n for n in split.notes)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((3, 3, 3), np.uint8), "expected the CT shape"),
        (np.full((12, 14, 16), 3, np.uint8), "expected only 0, 1"),
        (np.zeros((12, 14, 16), np.float32), "integer labels"),
    ],
)
def test_segmenter_output_is_checked(labels, message):
    with pytest.raises(ValueError, match=message):
        split_femurs(_volume(), segmenter=FixedSegmenter(labels))


def test_input_and_configuration_are_checked():
    with pytest.raises(TypeError, match="highdicom.Volume"):
        split_femurs(np.zeros((4, 4, 4)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="zero_hu_nudge"):
        SplitterConfig(zero_hu_nudge=0.0)
    with pytest.raises(ValueError, match="zero_hu_nudge"):
        SplitterConfig(zero_hu_nudge=5.0)
    with pytest.raises(ValueError, match="margin_mm"):
        SplitterConfig(margin_mm=-1.0)


def test_points_file_lists_every_femur_voxel_with_position_and_hu(tmp_path):
    ct = _volume(flip_x=True)
    labels = _two_blob_labels(ct.spatial_shape)
    split = split_femurs(ct, config=_config(margin_mm=1.0), segmenter=FixedSegmenter(labels))
    crop = split.femurs["left"]
    path = export_femur_points(crop, tmp_path / "left_points.csv")

    with path.open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == POINTS_HEADER
    body = np.array(rows[1:], dtype=np.float64)
    assert body.shape == (int(crop.mask.sum()), 7)
    index = body[:, :3].astype(int)
    np.testing.assert_array_equal(labels[tuple(index.T)], 1)
    expected_lps = np.column_stack([index, np.ones(len(index))]) @ ct.affine.T
    np.testing.assert_allclose(body[:, 3:6], expected_lps[:, :3], atol=1e-3)
    np.testing.assert_allclose(body[:, 6], ct.array[tuple(index.T)], atol=0.006)
    # Written atomically: nothing but the file itself is left in the folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["left_points.csv"]


def test_points_file_needs_an_existing_folder(tmp_path):
    ct = _volume()
    split = split_femurs(ct, config=_config(), segmenter=FixedSegmenter(_two_blob_labels(ct.spatial_shape)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_femur_points(split.femurs["left"], tmp_path / "missing" / "points.csv")


def test_tiny_volumes_yield_no_femur_without_error():
    for shape in [(1, 64, 64), (3, 3, 3), (40, 8, 8)]:
        ct = hd.Volume(np.full(shape, 1000.0, dtype=np.float32), np.eye(4), "PATIENT")
        split = split_femurs(ct)
        assert isinstance(split, FemurSplit)
        assert split.femurs == {} and split.no_femur_reason


def _load_real_chest() -> hd.Volume:
    datasets = []
    for path in sorted(REAL_CT.iterdir()):
        ds = pydicom.dcmread(path)
        # The anonymised files have empty SOP UIDs in the dataset; the file meta still holds them.
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        datasets.append(ds)
    return hd.get_volume_from_series(datasets, dtype=np.float32)


@pytest.mark.skipif(not REAL_CT.is_dir(), reason=f"real CT test data not found at {REAL_CT}")
def test_real_chest_ct_shows_no_femur():
    ct = _load_real_chest()
    assert ct.spatial_shape == (20, 512, 512)
    split = split_femurs(ct)
    assert split.femurs == {}
    assert "femoral shaft" in split.no_femur_reason
    with pytest.raises(NoFemurInViewError):
        split.require_femur()
