"""DICOM-SEG of femurs and lesions: written with highdicom, validated by dciodvfy, read back voxel for voxel."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest

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
