"""Label files: formats, geometry in (z, y, x) / LPS, folder listing, geometry checks."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from evaluation.case_metrics import EvaluationSettings
from evaluation.comparison import compare_folders
from evaluation.label_io import (
    check_same_geometry,
    list_label_files,
    read_label_volume,
    write_label_volume,
)
from operators.errors import CaseMismatchError, GeometryMismatchError, InputError


def labels(array: np.ndarray, *, spacing=(1.0, 1.0, 1.0), position=(0.0, 0.0, 0.0), direction=None) -> hd.Volume:
    return hd.Volume.from_components(
        np.asarray(array, dtype=np.uint8), spacing=spacing, coordinate_system="PATIENT",
        position=position, direction=np.eye(3) if direction is None else direction,
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_round_trip_keeps_array_and_zyx_geometry(tmp_path: Path, suffix: str) -> None:
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    array[1, 2, 3] = 1
    array[3, 4, 5] = 2
    # Array axis 0 (z) runs towards +x (Left) of the patient, axis 1 towards -y (Anterior).
    direction = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    volume = labels(array, spacing=(3.0, 0.9, 0.8), position=(10.0, 20.0, 30.0), direction=direction)
    path = tmp_path / f"FEMUR0001_left{suffix}"
    write_label_volume(path, volume)
    read = read_label_volume(path)
    np.testing.assert_array_equal(read.array, array)
    assert read.array.dtype == np.uint8
    np.testing.assert_allclose(read.spacing, (3.0, 0.9, 0.8), atol=1e-6)
    np.testing.assert_allclose(read.affine, volume.affine, atol=1e-5)
    # The affine maps index (z, y, x) where SimpleITK maps index (x, y, z).
    itk_point = sitk.ReadImage(str(path)).TransformIndexToPhysicalPoint((3, 2, 1))
    np.testing.assert_allclose((read.affine @ [1, 2, 3, 1])[:3], itk_point, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_float_labels_are_accepted_when_integral_and_refused_otherwise(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(np.array([[[0.0, 1.0], [2.0, 0.0]]], dtype=np.float32))
    sitk.WriteImage(image, str(tmp_path / "ok.nii.gz"))
    assert read_label_volume(tmp_path / "ok.nii.gz").array.dtype == np.uint8
    image = sitk.GetImageFromArray(np.array([[[0.0, 0.5]]], dtype=np.float32))
    sitk.WriteImage(image, str(tmp_path / "bad.nii.gz"))
    with pytest.raises(InputError, match="non-integer"):
        read_label_volume(tmp_path / "bad.nii.gz")


def test_unreadable_file_is_an_input_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a nifti file")
    with pytest.raises(InputError, match="broken.nii.gz") as info:
        read_label_volume(path)
    assert "\n" not in str(info.value)


def test_list_label_files_matches_case_ids_and_ignores_other_files(tmp_path: Path) -> None:
    volume = labels(np.zeros((2, 2, 2)))
    write_label_volume(tmp_path / "FEMUR0002_right.nii.gz", volume)
    write_label_volume(tmp_path / "FEMUR0001_left.nrrd", volume)
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "FEMUR0001_left.npz").write_bytes(b"")
    files = list_label_files(tmp_path)
    assert list(files) == ["FEMUR0001_left", "FEMUR0002_right"]
    write_label_volume(tmp_path / "FEMUR0001_left.nii", volume)
    with pytest.raises(InputError, match="FEMUR0001_left has two label files"):
        list_label_files(tmp_path)


def test_empty_or_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no label files"):
        list_label_files(tmp_path)
    with pytest.raises(InputError, match="not found"):
        list_label_files(tmp_path / "missing")


def test_geometry_check_tolerates_rounding_and_names_the_case() -> None:
    array = np.zeros((3, 4, 5))
    reference = labels(array, spacing=(2.0, 0.8, 0.8), position=(0.0, 0.0, 0.0))
    check_same_geometry(labels(array, spacing=(2.0, 0.8000001, 0.8), position=(1e-5, 0, 0)), reference, case_id="c")
    with pytest.raises(GeometryMismatchError, match=r"^case FEMUR0003_left: prediction and reference differ in spacing"):
        check_same_geometry(labels(array, spacing=(1.0, 0.8, 0.8)), reference, case_id="FEMUR0003_left")
    with pytest.raises(GeometryMismatchError, match="FEMUR0003_left.*origin"):
        check_same_geometry(labels(array, spacing=(2.0, 0.8, 0.8), position=(0.4, 0, 0)), reference, case_id="FEMUR0003_left")
    with pytest.raises(GeometryMismatchError, match="FEMUR0003_left.*shape"):
        check_same_geometry(labels(np.zeros((3, 4, 6))), reference, case_id="FEMUR0003_left")
    flipped = np.diag([1.0, 1.0, -1.0])
    with pytest.raises(GeometryMismatchError, match="FEMUR0003_left.*orientation"):
        check_same_geometry(labels(array, spacing=(2.0, 0.8, 0.8), direction=flipped), reference, case_id="FEMUR0003_left")


def test_compare_folders_refuses_mismatched_geometry_naming_the_case(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    array = np.zeros((3, 4, 5))
    write_label_volume(tmp_path / "pred" / "FEMUR0009_right.nii.gz", labels(array, spacing=(1.0, 1.0, 1.0)))
    write_label_volume(tmp_path / "ref" / "FEMUR0009_right.nii.gz", labels(array, spacing=(3.0, 1.0, 1.0)))
    with pytest.raises(GeometryMismatchError, match="case FEMUR0009_right: prediction and A differ in spacing"):
        compare_folders(tmp_path / "pred", tmp_path / "ref", reference_name="A", settings=EvaluationSettings())


def test_compare_folders_refuses_missing_predictions(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    volume = labels(np.zeros((2, 2, 2)))
    write_label_volume(tmp_path / "pred" / "P1_left.nii.gz", volume)
    write_label_volume(tmp_path / "ref" / "P1_left.nii.gz", volume)
    write_label_volume(tmp_path / "ref" / "P1_right.nii.gz", volume)
    with pytest.raises(CaseMismatchError, match="missing 1 case.*P1_right"):
        compare_folders(tmp_path / "pred", tmp_path / "ref")
    # Annotator pairs compare the cases both hold.
    result = compare_folders(tmp_path / "pred", tmp_path / "ref", require_all_reference_cases=False)
    assert [c.case.case_id for c in result.cases] == ["P1_left"]
