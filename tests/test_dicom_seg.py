"""DICOM-SEG of femurs and lesions: written with highdicom, validated by dciodvfy, read back voxel for voxel."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from operators import dicom_seg
from operators.dicom_seg import (
    AlgorithmInfo,
    SegmentMask,
    SegmentSpec,
    build_segmentation,
    read_segment_masks,
    write_dataset,
)
from operators.series_volume import load_study
from tests.dicom_factory import FFS_ORIENTATION, HFS_ORIENTATION, write_ct_series

ALGORITHM = AlgorithmInfo(name="femur-lytic-lesion-nnunet", version="test-1")


def _masks(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    z, y, x = np.indices(shape)
    left = (x >= shape[2] // 2) & (abs(y - shape[1] // 2) < 5)
    right = (x < shape[2] // 2 - 1) & (abs(y - shape[1] // 2) < 5)
    # A lesion only in a few slices of the left femur: most frames of that segment are empty and omitted.
    lesion = left & (z >= 3) & (z <= 5) & (x >= shape[2] - 4)
    return {"left": left, "right": right, "lesion": lesion}


@pytest.mark.parametrize(
    "orientation,position,descending",
    [(HFS_ORIENTATION, "HFS", False), (FFS_ORIENTATION, "FFS", True)],
)
def test_seg_round_trip_matches_masks_voxel_for_voxel(tmp_path, orientation, position, descending):
    offsets = np.arange(10) * 2.0
    written = write_ct_series(
        tmp_path / "ct",
        n_slices=10,
        rows=20,
        columns=24,
        orientation=orientation,
        patient_position=position,
        slice_offsets=offsets[::-1] if descending else offsets,
    )
    loaded = load_study(tmp_path / "ct")
    masks = _masks(loaded.volume.spatial_shape)
    seg = build_segmentation(
        source_datasets=loaded.source_datasets,
        ct=loaded.volume,
        segments=[
            SegmentMask(SegmentSpec.femur("left"), masks["left"]),
            SegmentMask(SegmentSpec.femur("right"), masks["right"]),
            SegmentMask(SegmentSpec.lytic_lesion("left"), masks["lesion"]),
        ],
        algorithm=ALGORITHM,
    )
    path = write_dataset(seg, tmp_path / "out" / "seg.dcm")
    assert sorted(p.name for p in path.parent.iterdir()) == ["seg.dcm"], "temporary files left behind"

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == written.study_uid
    assert ds.SeriesInstanceUID != written.series_uid
    assert ds.FrameOfReferenceUID == written.frame_of_reference_uid
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [
        "Left femur",
        "Right femur",
        "Lytic lesion, left femur",
    ]
    femur = ds.SegmentSequence[0]
    assert femur.SegmentedPropertyTypeCodeSequence[0].CodeValue == "71341001"
    assert femur.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"
    lesion = ds.SegmentSequence[2]
    assert lesion.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == "7771000"
    # Empty frames are omitted: the lesion spans 3 slices, the femurs all 10.
    assert int(ds.NumberOfFrames) == 10 + 10 + 3

    back = read_segment_masks(path, loaded.volume)
    np.testing.assert_array_equal(back["Left femur"], masks["left"])
    np.testing.assert_array_equal(back["Right femur"], masks["right"])
    np.testing.assert_array_equal(back["Lytic lesion, left femur"], masks["lesion"])

    # Every referenced source instance is one of the CT's.
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced <= set(written.sop_uids)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_seg_passes_dciodvfy(tmp_path):
    write_ct_series(tmp_path / "ct", n_slices=10, rows=16, columns=16)
    loaded = load_study(tmp_path / "ct")
    masks = _masks(loaded.volume.spatial_shape)
    seg = build_segmentation(
        source_datasets=loaded.source_datasets,
        ct=loaded.volume,
        segments=[SegmentMask(SegmentSpec.femur("left"), masks["left"]),
                  SegmentMask(SegmentSpec.cyst("left"), masks["lesion"])],
        algorithm=ALGORITHM,
    )
    path = write_dataset(seg, tmp_path / "seg.dcm")
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_mask_shape_mismatch_is_a_clear_error(tmp_path):
    write_ct_series(tmp_path / "ct", n_slices=10, rows=8, columns=8)
    loaded = load_study(tmp_path / "ct")
    with pytest.raises(ValueError, match="shape"):
        build_segmentation(
            source_datasets=loaded.source_datasets,
            ct=loaded.volume,
            segments=[SegmentMask(SegmentSpec.femur("left"), np.zeros((3, 8, 8), bool))],
            algorithm=ALGORITHM,
        )


@pytest.mark.parametrize(
    "orientation,position,descending",
    [(HFS_ORIENTATION, "HFS", False), (FFS_ORIENTATION, "FFS", True)],
)
def test_seg_of_the_occupied_slab_equals_highdicoms_seg_of_the_whole_grid(tmp_path, orientation, position,
                                                                          descending):
    # The writer hands highdicom only the slices that hold a segment voxel and checks the overlap of
    # segments itself, to save memory; the frames, their positions, their source references and their
    # pixels must be those highdicom writes from the whole grid.
    import highdicom as hd

    offsets = np.arange(12) * 2.0
    write_ct_series(tmp_path / "ct", n_slices=12, rows=16, columns=18, orientation=orientation,
                    patient_position=position, slice_offsets=offsets[::-1] if descending else offsets)
    loaded = load_study(tmp_path / "ct")
    masks = _masks(loaded.volume.spatial_shape)
    z = np.arange(masks["left"].shape[0])[:, None, None]
    segments = [
        SegmentMask(SegmentSpec.femur("left"), masks["left"] & (z >= 2) & (z <= 9)),
        SegmentMask(SegmentSpec.femur("right"), masks["right"] & (z >= 4) & (z <= 8)),
        SegmentMask(SegmentSpec.lytic_lesion("left"), masks["lesion"]),
    ]
    ours = build_segmentation(source_datasets=loaded.source_datasets, ct=loaded.volume, segments=segments,
                              algorithm=ALGORITHM)
    stack = np.stack([s.mask for s in segments], axis=-1).astype(np.uint8)
    stock = hd.seg.Segmentation(
        source_images=list(loaded.source_datasets),
        pixel_array=hd.Volume(stack, loaded.volume.affine, coordinate_system="PATIENT",
                              frame_of_reference_uid=str(loaded.source_datasets[0].FrameOfReferenceUID),
                              channels={"SegmentNumber": [1, 2, 3]}),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[s.spec.describe(i, ALGORITHM) for i, s in enumerate(segments, start=1)],
        series_instance_uid=hd.UID(), series_number=1, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="x", manufacturer_model_name="x", software_versions="x", device_serial_number="0",
    )

    def frames(seg):
        return [(tuple(float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient),
                 int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
                 f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
                for f in seg.PerFrameFunctionalGroupsSequence]

    assert ours.SegmentsOverlap == stock.SegmentsOverlap == "YES"
    assert int(ours.NumberOfFrames) == int(stock.NumberOfFrames) == sum(
        int(s.mask.any(axis=(1, 2)).sum()) for s in segments)
    assert frames(ours) == frames(stock)
    np.testing.assert_array_equal(ours.pixel_array, stock.pixel_array)


def test_segments_that_do_not_overlap_are_declared_so(tmp_path):
    write_ct_series(tmp_path / "ct", n_slices=10, rows=16, columns=18)
    loaded = load_study(tmp_path / "ct")
    masks = _masks(loaded.volume.spatial_shape)
    seg = build_segmentation(
        source_datasets=loaded.source_datasets, ct=loaded.volume, algorithm=ALGORITHM,
        segments=[SegmentMask(SegmentSpec.femur("left"), masks["left"]),
                  SegmentMask(SegmentSpec.femur("right"), masks["right"])])
    assert seg.SegmentsOverlap == "NO"


def _boxed(mask: np.ndarray, margin: int = 1) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """``mask`` cut to its bounding box enlarged by ``margin`` (clipped): (box mask, box)."""
    hits = np.nonzero(mask)
    box = tuple(slice(max(int(h.min()) - margin, 0), min(int(h.max()) + 1 + margin, n))
                for h, n in zip(hits, mask.shape))
    return mask[box], box  # type: ignore[return-value]


def test_segments_kept_in_their_box_give_the_seg_of_full_grid_masks(tmp_path):
    # The application hands the writer each femur's masks in the femur's crop box, never on the full
    # grid; frames, positions and pixels must be those of the same masks given on the full grid.
    write_ct_series(tmp_path / "ct", n_slices=12, rows=16, columns=18, orientation=FFS_ORIENTATION,
                    patient_position="FFS", slice_offsets=(np.arange(12) * 2.0)[::-1])
    loaded = load_study(tmp_path / "ct")
    masks = _masks(loaded.volume.spatial_shape)
    z = np.arange(masks["left"].shape[0])[:, None, None]
    full = {"left": masks["left"] & (z >= 2) & (z <= 9), "right": masks["right"] & (z >= 4),
            "lesion": masks["lesion"]}
    specs = {"left": SegmentSpec.femur("left"), "right": SegmentSpec.femur("right"),
             "lesion": SegmentSpec.lytic_lesion("left")}
    # The lesion's box is the left femur's (as in the application): it holds empty slices around it.
    left_mask, left_box = _boxed(full["left"], margin=2)
    right_mask, right_box = _boxed(full["right"], margin=0)
    boxed = [SegmentMask(specs["left"], left_mask, left_box),
             SegmentMask(specs["right"], right_mask, right_box),
             SegmentMask(specs["lesion"], full["lesion"][left_box], left_box)]
    whole = [SegmentMask(specs[k], full[k]) for k in ("left", "right", "lesion")]
    for seg in boxed:
        assert np.array_equal(seg.full_mask(loaded.volume.spatial_shape), full[{"Left femur": "left",
                              "Right femur": "right"}.get(seg.spec.label, "lesion")])

    a = build_segmentation(source_datasets=loaded.source_datasets, ct=loaded.volume, segments=boxed,
                           algorithm=ALGORITHM)
    b = build_segmentation(source_datasets=loaded.source_datasets, ct=loaded.volume, segments=whole,
                           algorithm=ALGORITHM)
    assert int(a.NumberOfFrames) == int(b.NumberOfFrames) == sum(int(m.any(axis=(1, 2)).sum()) for m in full.values())
    positions = [[tuple(f.PlanePositionSequence[0].ImagePositionPatient) for f in s.PerFrameFunctionalGroupsSequence]
                 for s in (a, b)]
    assert positions[0] == positions[1]
    np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    back = read_segment_masks(write_dataset(a, tmp_path / "seg.dcm"), loaded.volume)
    np.testing.assert_array_equal(back["Lytic lesion, left femur"], full["lesion"])
    np.testing.assert_array_equal(back["Right femur"], full["right"])


@pytest.mark.parametrize("box,mask_shape,message", [
    ((slice(0, 4), slice(0, 8), slice(0, 8)), (4, 8, 7), "its box"),
    ((slice(8, 12), slice(0, 8), slice(0, 8)), (4, 8, 8), "inside the CT"),
    ((slice(0, 4), slice(None, 8), slice(0, 8)), (4, 8, 8), "inside the CT"),
    ((slice(0, 4, 2), slice(0, 8), slice(0, 8)), (2, 8, 8), "unit-step"),
])
def test_segment_box_outside_the_ct_or_of_another_shape_is_refused(tmp_path, box, mask_shape, message):
    write_ct_series(tmp_path / "ct", n_slices=10, rows=8, columns=8)
    loaded = load_study(tmp_path / "ct")
    with pytest.raises(ValueError, match=message):
        build_segmentation(source_datasets=loaded.source_datasets, ct=loaded.volume, algorithm=ALGORITHM,
                           segments=[SegmentMask(SegmentSpec.femur("left"), np.ones(mask_shape, bool), box)])


@pytest.mark.parametrize("descending", [False, True])
def test_frames_take_their_source_slice_directly_or_by_position_with_the_same_result(tmp_path, descending):
    # Where each CT slice is a source slice (the loader's series), the frames take their positions and
    # references from the slab's source slices; otherwise highdicom finds them by position. Both give one
    # SEG: the same frames, pixels and references (all source slices referenced in both).
    offsets = np.arange(12) * 2.0
    write_ct_series(tmp_path / "ct", n_slices=12, rows=16, columns=18,
                    slice_offsets=offsets[::-1] if descending else offsets)
    loaded = load_study(tmp_path / "ct")
    masks = _masks(loaded.volume.spatial_shape)
    z = np.arange(masks["left"].shape[0])[:, None, None]
    segments = [SegmentMask(SegmentSpec.femur("left"), masks["left"] & (z >= 3) & (z <= 8)),
                SegmentMask(SegmentSpec.lytic_lesion("left"), masks["lesion"])]
    slab = dicom_seg._slab_source_datasets(loaded.source_datasets, loaded.volume, 3, 9)
    assert slab is not None and [ds.SOPInstanceUID for ds in slab] == [
        ds.SOPInstanceUID for ds in loaded.source_datasets[3:9]]
    direct = build_segmentation(source_datasets=loaded.source_datasets, ct=loaded.volume, segments=segments,
                                algorithm=ALGORITHM)
    # Source datasets out of slice order are not taken for the slices': highdicom matches them by position.
    shuffled = list(loaded.source_datasets)[::-1]
    assert dicom_seg._slab_source_datasets(shuffled, loaded.volume, 3, 9) is None
    matched = build_segmentation(source_datasets=shuffled, ct=loaded.volume, segments=segments, algorithm=ALGORITHM)

    def frames(seg):
        return [(tuple(f.PlanePositionSequence[0].ImagePositionPatient),
                 int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber),
                 f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID,
                 tuple(f.FrameContentSequence[0].DimensionIndexValues))
                for f in seg.PerFrameFunctionalGroupsSequence]

    def references(seg):
        return sorted(r.ReferencedSOPInstanceUID
                      for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence)

    assert frames(direct) == frames(matched)
    assert len(frames(direct)) == 6 + 3
    np.testing.assert_array_equal(direct.pixel_array, matched.pixel_array)
    assert references(direct) == references(matched) == sorted(ds.SOPInstanceUID for ds in loaded.source_datasets)
    # A CT grid that is not the source slices' (shifted by half a slice) is not taken for theirs either.
    affine = np.array(loaded.volume.affine, dtype=float)
    affine[:3, 3] += 0.5 * affine[:3, 0]
    shifted = hd.Volume(loaded.volume.array, affine, coordinate_system="PATIENT")
    assert dicom_seg._slab_source_datasets(loaded.source_datasets, shifted, 3, 9) is None
