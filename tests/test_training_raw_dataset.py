"""Raw dataset writers: nnU-Net reads back exactly what the predictor hands it; dataset.json and splits."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from operators.errors import TrainingDataError
from operators.lesion_model import to_nnunet_input
from lesion_training.raw_dataset import (
    CHANNEL_NAME,
    patient_grouped_splits,
    write_dataset_json,
    write_nnunet_case,
    write_splits,
)
from lesion_training.toy_dataset import toy_femur_crop


@pytest.fixture
def crop() -> tuple[hd.Volume, np.ndarray]:
    return toy_femur_crop(shape=(20, 16, 14), spacing=(1.25, 0.8, 0.7), seed=3)


@pytest.mark.parametrize("orientation", ["HPL", "FPR", "LFP"])
def test_case_reads_back_in_nnunet_as_the_predictor_sees_it(
    tmp_path: Path, crop: tuple[hd.Volume, np.ndarray], orientation: str
) -> None:
    import SimpleITK as sitk
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    volume, labels = crop
    volume = volume.to_patient_orientation(orientation)
    # The same lesion on the re-laid-out grid (the toy crop is built canonical).
    labels = to_nnunet_input(volume).to_original(labels)
    image_file, label_file = write_nnunet_case(tmp_path / "Dataset501_Femur", "femur_001_L", volume, labels)

    assert image_file == tmp_path / "Dataset501_Femur" / "imagesTr" / "femur_001_L_0000.nii.gz"
    assert label_file == tmp_path / "Dataset501_Femur" / "labelsTr" / "femur_001_L.nii.gz"
    expected = to_nnunet_input(volume)
    image, properties = SimpleITKIO().read_images([str(image_file)])
    segmentation, _ = SimpleITKIO().read_seg(str(label_file))
    assert np.array_equal(image, expected.array)
    assert list(properties["spacing"]) == pytest.approx(list(expected.spacing))
    assert np.array_equal(segmentation[0], expected.to_canonical(labels))
    assert segmentation[0].sum() == crop[1].sum() > 0

    # World geometry (LPS, mm) of a voxel is that of the same voxel of the crop.
    itk = sitk.ReadImage(str(image_file))
    z, y, x = 15, 3, 7
    point = np.array(itk.TransformIndexToPhysicalPoint((x, y, z)))
    original_index = np.argwhere(expected.to_original(_marker(expected.canonical_shape, (z, y, x))))[0]
    assert np.allclose(point, (volume.affine @ np.append(original_index, 1.0))[:3], atol=1e-4)
    assert not any(p.name.startswith(".") for p in (tmp_path / "Dataset501_Femur").rglob("*"))


def _marker(shape: tuple[int, int, int], index: tuple[int, int, int]) -> np.ndarray:
    marker = np.zeros(shape, dtype=np.uint8)
    marker[index] = 1
    return marker


def test_case_without_labels_writes_the_image_only(tmp_path: Path, crop) -> None:
    image_file, label_file = write_nnunet_case(tmp_path / "Dataset501_Femur", "test_case", crop[0], None)
    assert image_file.is_file() and label_file is None
    assert not (tmp_path / "Dataset501_Femur" / "labelsTr").exists()


@pytest.mark.parametrize(
    ("case_id", "labels", "message"),
    [
        ("femur 1", None, "invalid case id"),
        ("../escape", None, "invalid case id"),
        ("ok", np.zeros((20, 16, 13), np.uint8), "do not match the crop"),
        ("ok", np.full((20, 16, 14), 3, np.uint8), r"values \[3\]"),
        ("ok", np.zeros((20, 16, 14), np.float32), "must be integers"),
    ],
)
def test_invalid_cases_are_refused(tmp_path: Path, crop, case_id: str, labels, message: str) -> None:
    with pytest.raises(TrainingDataError, match=message):
        write_nnunet_case(tmp_path / "Dataset501_Femur", case_id, crop[0], labels)


def test_dataset_json_names_a_zscore_channel_and_the_lesion_labels(tmp_path: Path, crop) -> None:
    raw = tmp_path / "Dataset501_Femur"
    for k in range(3):
        write_nnunet_case(raw, f"c{k}", *crop)
    description = json.loads(write_dataset_json(raw).read_text())
    assert description["channel_names"] == {"0": CHANNEL_NAME}
    assert description["labels"] == {"background": 0, "lesion": 1}
    assert description["numTraining"] == 3
    assert description["file_ending"] == ".nii.gz"
    assert description["orientation"] == "HPL"

    with_cyst = json.loads(write_dataset_json(raw, with_cyst=True).read_text())
    assert with_cyst["labels"] == {"background": 0, "lesion": 1, "cyst": 2}


def test_dataset_json_refuses_ct_channel_and_bad_folder(tmp_path: Path, crop) -> None:
    raw = tmp_path / "Dataset501_Femur"
    write_nnunet_case(raw, "c0", *crop)
    with pytest.raises(TrainingDataError, match="global CT normalisation"):
        write_dataset_json(raw, channel_name="CT")
    with pytest.raises(TrainingDataError, match="DatasetXXX_Name"):
        write_dataset_json(tmp_path / "femurs")


def test_splits_are_checked_and_written(tmp_path: Path) -> None:
    splits = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]
    target = write_splits(tmp_path, splits, case_ids=["a", "b", "c"])
    assert json.loads(target.read_text()) == splits
    assert target.name == "splits_final.json"

    source = tmp_path / "mine.json"
    source.write_text(json.dumps(splits))
    assert json.loads(write_splits(tmp_path / "other", source).read_text()) == splits

    with pytest.raises(TrainingDataError, match="both train and val"):
        write_splits(tmp_path, [{"train": ["a", "b"], "val": ["b"]}])
    with pytest.raises(TrainingDataError, match="unknown cases d"):
        write_splits(tmp_path, [{"train": ["a"], "val": ["d"]}], case_ids=["a", "b"])
    with pytest.raises(TrainingDataError, match="keys 'train' and 'val'"):
        write_splits(tmp_path, [{"training": ["a"], "val": ["b"]}])
    with pytest.raises(TrainingDataError, match="cannot read"):
        write_splits(tmp_path, tmp_path / "missing.json")


def test_patient_grouped_splits_never_separate_a_patients_femurs() -> None:
    cases = {f"p{k:02d}": [f"p{k:02d}_L", f"p{k:02d}_R"] for k in range(12)}
    cases["p99"] = ["p99_L"]  # one femur only (amputation, prosthesis)
    splits = patient_grouped_splits(cases, n_folds=5, seed=1)

    assert len(splits) == 5
    all_cases = sorted(c for v in cases.values() for c in v)
    assert sorted(c for s in splits for c in s["val"]) == all_cases  # each case validated once
    for split in splits:
        assert sorted(split["train"] + split["val"]) == all_cases
        for patient, femurs in cases.items():
            sides = {("val" if f in split["val"] else "train") for f in femurs}
            assert len(sides) == 1, f"{patient} on both sides"
    sizes = [len(s["val"]) for s in splits]
    assert max(sizes) - min(sizes) <= 2
    assert patient_grouped_splits(cases, n_folds=5, seed=1) == splits
    with pytest.raises(TrainingDataError, match="cannot make 5 folds from 3 patients"):
        patient_grouped_splits({"a": ["a"], "b": ["b"], "c": ["c"]})
