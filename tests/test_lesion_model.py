"""The nnU-Net lesion model: canonical orientation round trips, model folder checks, predictions in the crop's grid."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from operators.errors import InputError, ModelFolderError
from operators.lesion_model import CANONICAL_ORIENTATION, LesionModel, to_nnunet_input

# Orientations a femur crop arrives in: head-first supine (canonical), feet-first supine, prone,
# and layouts with permuted axes (sagittal or coronal stacking).
ORIENTATIONS = ["HPL", "FPR", "HAR", "FAL", "PHL", "LFP", "RAH"]


def _volume(orientation: str = "HPL", shape: tuple[int, int, int] = (9, 7, 5)) -> hd.Volume:
    """A volume with distinct voxel values, built in HPL and re-laid out to ``orientation``."""
    rng = np.random.default_rng(42)
    array = rng.normal(300.0, 100.0, size=shape).astype(np.float32)
    spacing = (2.5, 0.7, 0.9)
    affine = np.array([
        [0.0, 0.0, spacing[2], -30.0],
        [0.0, spacing[1], 0.0, 12.5],
        [spacing[0], 0.0, 0.0, -700.0],
        [0.0, 0.0, 0.0, 1.0],
    ])
    canonical = hd.Volume(array, affine, coordinate_system="PATIENT")
    return canonical.to_patient_orientation(orientation)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_to_nnunet_input_is_canonical_and_round_trips_exactly(orientation: str) -> None:
    volume = _volume(orientation)
    nnunet_input = to_nnunet_input(volume)

    assert nnunet_input.array.dtype == np.float32
    assert nnunet_input.array.shape == (1, 9, 7, 5)
    # The same femur gives the same network input whatever the layout it came in.
    assert np.array_equal(nnunet_input.array[0], _volume("HPL").array)
    assert nnunet_input.spacing == pytest.approx((2.5, 0.7, 0.9))
    assert "".join(v.value for v in hd.Volume(nnunet_input.array[0], nnunet_input.affine, "PATIENT")
                   .get_closest_patient_orientation()) == CANONICAL_ORIENTATION
    assert np.array_equal(nnunet_input.to_original(nnunet_input.array[0]), volume.array)
    assert np.array_equal(nnunet_input.to_canonical(volume.array), nnunet_input.array[0])


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_canonical_voxels_keep_their_patient_position(orientation: str) -> None:
    volume = _volume(orientation)
    nnunet_input = to_nnunet_input(volume)
    # Label one voxel in the canonical grid; after mapping back it must sit at the same LPS point.
    marker = np.zeros(nnunet_input.canonical_shape, dtype=np.uint8)
    marker[6, 2, 3] = 1
    original_index = np.argwhere(nnunet_input.to_original(marker))[0]
    position_canonical = nnunet_input.affine @ np.array([6, 2, 3, 1.0])
    position_original = volume.affine @ np.append(original_index, 1.0)
    assert np.allclose(position_canonical, position_original)


def test_to_original_keeps_leading_axes_and_checks_shape() -> None:
    nnunet_input = to_nnunet_input(_volume("LFP"))
    probabilities = np.stack([nnunet_input.array[0], -nnunet_input.array[0]])
    back = nnunet_input.to_original(probabilities)
    assert back.shape == (2, *nnunet_input.original_shape)
    assert back.flags["C_CONTIGUOUS"]
    assert np.array_equal(back[1], -_volume("LFP").array)
    with pytest.raises(ValueError, match="canonical grid"):
        nnunet_input.to_original(np.zeros((2, 3, 4)))


def test_integer_ct_is_handed_over_as_float32() -> None:
    volume = _volume("FPR")
    nnunet_input = to_nnunet_input(volume.with_array(np.round(volume.array).astype(np.int16)))
    assert nnunet_input.array.dtype == np.float32


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: np.zeros((4, 4, 4)), "highdicom.Volume"),
        (lambda: _volume().with_array(np.full((9, 7, 5), np.nan, dtype=np.float32)), "NaN"),
        (lambda: hd.Volume(np.zeros((4, 4, 4, 2), np.float32), np.eye(4), "PATIENT",
                           channels={"LUTLabel": ["a", "b"]}), "single-channel"),
    ],
)
def test_invalid_crops_are_refused_with_one_line(make, message: str) -> None:
    with pytest.raises(InputError, match=message) as raised:
        to_nnunet_input(make())
    assert "\n" not in str(raised.value)


# --------------------------------------------------------------------------------------------------
# Model folders


def _fake_model_folder(root: Path, folds: tuple[str, ...] = ("fold_0",)) -> Path:
    folder = root / "model"
    folder.mkdir()
    (folder / "plans.json").write_text("{}")
    (folder / "dataset.json").write_text("{}")
    for fold in folds:
        (folder / fold).mkdir()
        (folder / fold / "checkpoint_final.pth").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("damage", "kwargs", "message"),
    [
        (lambda f: shutil.rmtree(f), {}, "lesion model not found"),
        (lambda f: (f / "plans.json").unlink(), {}, "has no plans.json"),
        (lambda f: (f / "dataset.json").unlink(), {}, "has no dataset.json"),
        (lambda f: (f / "fold_0" / "checkpoint_final.pth").unlink(), {}, r"has no fold_\*/checkpoint_final.pth"),
        (lambda f: None, {"folds": [0, 3]}, "has no fold_3/checkpoint_final.pth"),
        (lambda f: None, {"checkpoint": "checkpoint_best.pth"}, r"has no fold_\*/checkpoint_best.pth"),
    ],
)
def test_incomplete_model_folder_names_what_is_missing(tmp_path: Path, damage, kwargs, message: str) -> None:
    folder = _fake_model_folder(tmp_path)
    damage(folder)
    with pytest.raises(ModelFolderError, match=message) as raised:
        LesionModel.from_folder(folder, device="cpu", **kwargs)
    assert "\n" not in str(raised.value)


def test_archive_without_exactly_one_model_is_refused(tmp_path: Path) -> None:
    not_a_zip = tmp_path / "model.pth"
    not_a_zip.write_bytes(b"weights")
    with pytest.raises(ModelFolderError, match="neither a folder nor a zip"):
        LesionModel.from_folder(not_a_zip, device="cpu")

    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "nothing here")
    with pytest.raises(ModelFolderError, match="holds no folder with plans.json"):
        LesionModel.from_folder(empty, device="cpu")

    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        for config in ("3d_fullres", "3d_lowres"):
            base = f"Dataset501_Femur/nnUNetTrainer__nnUNetPlans__{config}"
            archive.writestr(f"{base}/plans.json", "{}")
            archive.writestr(f"{base}/dataset.json", "{}")
            archive.writestr(f"{base}/fold_0/checkpoint_final.pth", "")
    with pytest.raises(ModelFolderError, match="several models"):
        LesionModel.from_folder(two, device="cpu")


def test_unreadable_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    folder = _fake_model_folder(tmp_path)
    # What a clone gets when the weights were committed through Git LFS and not fetched.
    (folder / "fold_0" / "checkpoint_final.pth").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 15000000\n"
    )
    with pytest.raises(ModelFolderError, match="cannot be loaded") as raised:
        LesionModel.from_folder(folder, device="cpu")
    assert "\n" not in str(raised.value)


def test_invalid_settings_are_refused(tmp_path: Path) -> None:
    folder = _fake_model_folder(tmp_path)
    with pytest.raises(ValueError, match="device"):
        LesionModel.from_folder(folder, device="gpu")
    with pytest.raises(ValueError, match="tile_step_size"):
        LesionModel.from_folder(folder, device="cpu", tile_step_size=0.0)


# --------------------------------------------------------------------------------------------------
# Predictions with a real (untrained) nnU-Net model


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lesion_training.toy_dataset import write_untrained_model

    return write_untrained_model(tmp_path_factory.mktemp("untrained") / "model")


def _crop_for(orientation: str) -> hd.Volume:
    from lesion_training.toy_dataset import toy_femur_crop

    volume, _ = toy_femur_crop(shape=(40, 30, 28), seed=7)
    return volume.to_patient_orientation(orientation)


@pytest.mark.parametrize("orientation", ["FPR", "LFP"])
def test_prediction_comes_back_in_the_crops_own_grid(untrained_model: Path, orientation: str) -> None:
    model = LesionModel.from_folder(untrained_model, device="auto", use_mirroring=False)
    canonical = model.predict(_crop_for("HPL"), return_probabilities=True)
    crop = _crop_for(orientation)
    prediction = model.predict(crop, return_probabilities=True)

    assert prediction.labels.shape == crop.spatial_shape
    assert prediction.labels.dtype == np.uint8
    assert prediction.probabilities.shape == (2, *crop.spatial_shape)
    assert prediction.probabilities.dtype == np.float32
    assert np.allclose(prediction.probabilities.sum(axis=0), 1.0, atol=1e-5)
    # The network saw the same canonical array: outputs are the canonical ones, re-laid out.
    mapping = to_nnunet_input(crop)
    assert np.array_equal(mapping.to_canonical(prediction.labels), canonical.labels)
    assert np.array_equal(mapping.to_canonical(prediction.probabilities), canonical.probabilities)


def test_model_info_identifies_the_model(untrained_model: Path) -> None:
    model = LesionModel.from_folder(untrained_model, device="cpu", folds=[0])
    info = model.model_info
    assert (info.name, info.version, info.configuration) == ("femur-lesion-untrained", "0.0.0", "3d_fullres")
    assert info.folds == (0,)
    assert info.label_names == {0: "background", 1: "lesion"}
    assert model.device == "cpu"


def test_model_without_model_json_falls_back_on_nnunet_names(untrained_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(untrained_model, tmp_path / "nnUNetTrainer__nnUNetPlans_femur_untrained__3d_fullres")
    (copy / "model.json").unlink()
    info = LesionModel.from_folder(copy, device="cpu").model_info
    assert info.name == "Dataset999_Toy"
    assert info.version == "unversioned"
    assert info.configuration == "3d_fullres"
    assert info.trainer == "nnUNetTrainer"


def test_nnunet_export_zip_loads_like_the_folder(untrained_model: Path, tmp_path: Path) -> None:
    # nnUNetv2_export_model_to_zip stores paths relative to nnUNet_results.
    archive = tmp_path / "model.zip"
    base = "Dataset999_Toy/nnUNetTrainer__nnUNetPlans_femur_untrained__3d_fullres"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in untrained_model.rglob("*"):
            if path.is_file():
                zipped.write(path, f"{base}/{path.relative_to(untrained_model)}")
    crop = _crop_for("FPR")
    from_zip = LesionModel.from_folder(archive, device="cpu", use_mirroring=False).predict(crop)
    from_folder = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False).predict(crop)
    assert np.array_equal(from_zip.labels, from_folder.labels)


def test_checkpoint_naming_an_unknown_trainer_is_a_model_error(untrained_model: Path, tmp_path: Path) -> None:
    import torch

    copy = shutil.copytree(untrained_model, tmp_path / "model")
    checkpoint_file = copy / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainerThatDoesNotExist"
    torch.save(checkpoint, checkpoint_file)
    with pytest.raises(ModelFolderError, match="trainer class nnU-Net cannot find"):
        LesionModel.from_folder(copy, device="cpu")


def test_crop_without_femur_voxels_predicts_background(untrained_model: Path) -> None:
    model = LesionModel.from_folder(untrained_model, device="cpu")
    crop = _crop_for("FPR")
    empty = crop.with_array(np.zeros(crop.spatial_shape, dtype=np.float32))
    prediction = model.predict(empty, return_probabilities=True)
    assert not prediction.labels.any()
    assert np.array_equal(prediction.probabilities[0], np.ones(crop.spatial_shape, dtype=np.float32))


def test_model_json_version_is_read(untrained_model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(untrained_model, tmp_path / "model")
    meta = json.loads((copy / "model.json").read_text())
    meta.update(name="femur-lesion-small", version="1.2.3")
    (copy / "model.json").write_text(json.dumps(meta))
    info = LesionModel.from_folder(copy, device="cpu").model_info
    assert (info.name, info.version) == ("femur-lesion-small", "1.2.3")


def _with_min_lesion_volume(untrained_model: Path, folder: Path, value: object) -> Path:
    copy = shutil.copytree(untrained_model, folder)
    meta = json.loads((copy / "model.json").read_text())
    meta["postprocessing"] = {"min_lesion_volume_ml": value}
    (copy / "model.json").write_text(json.dumps(meta))
    return copy


def test_model_json_minimum_lesion_volume_is_applied_on_the_crops_grid(untrained_model: Path, tmp_path: Path) -> None:
    from operators.lesion_postprocessing import remove_small_components

    crop = _crop_for("FPR")
    raw = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False).predict(crop).labels
    # Half the largest predicted component's volume: the threshold removes some components, not all.
    from scipy import ndimage as ndi

    components, n = ndi.label(raw == 1, structure=np.ones((3, 3, 3)))
    voxel_ml = float(np.prod(crop.spacing)) / 1000.0
    threshold = 0.5 * float(np.bincount(components.ravel())[1:].max()) * voxel_ml if n else 0.001
    model = LesionModel.from_folder(_with_min_lesion_volume(untrained_model, tmp_path / "m", threshold),
                                    device="cpu", use_mirroring=False)
    labels = model.predict(crop).labels
    assert np.array_equal(labels, remove_small_components(raw, 1, threshold, crop.spacing))
    unfiltered = LesionModel.from_folder(tmp_path / "m", device="cpu", use_mirroring=False,
                                         apply_postprocessing=False).predict(crop).labels
    assert np.array_equal(unfiltered, raw)
    # The network's labels and the post-processing apart (one inference, both results; the evaluation
    # of the shipped model scores both): the same as predict's.
    assert model.has_postprocessing and not LesionModel.from_folder(untrained_model, device="cpu").has_postprocessing
    apart = model.predict(crop, postprocess=False).labels
    assert np.array_equal(apart, raw)
    assert np.array_equal(model.postprocess(apart, crop.spacing), labels)


@pytest.mark.parametrize("value", [-1, "big", True])
def test_invalid_minimum_lesion_volume_is_a_model_error(untrained_model: Path, tmp_path: Path, value) -> None:
    copy = _with_min_lesion_volume(untrained_model, tmp_path / "m", value)
    with pytest.raises(ModelFolderError, match="min_lesion_volume_ml must be a number >= 0"):
        LesionModel.from_folder(copy, device="cpu")


def test_nnunets_crop_to_nonzero_keeps_its_result_with_the_faster_hole_filling(untrained_model: Path) -> None:
    from nnunetv2.preprocessing.cropping import cropping
    from scipy import ndimage as ndi

    from operators.binary_morphology import fill_holes

    LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False)
    assert cropping.binary_fill_holes is fill_holes  # the predictor's process uses the faster one...
    # ...and nnU-Net's mask is what scipy gives. A femur-like input with a marrow cavity of zeros (a hole) and a notch open to the outside (not one).
    data = np.zeros((1, 20, 16, 16), dtype=np.float32)
    data[0, 2:18, 3:13, 3:13] = 500.0
    data[0, 5:15, 6:10, 6:10] = 0.0
    data[0, 8:12, 3:5, 7:9] = 0.0
    mask = cropping.create_nonzero_mask(data)
    np.testing.assert_array_equal(mask, ndi.binary_fill_holes(data[0] != 0))
    assert mask[10, 8, 8] and not mask[10, 3, 8]


def test_output_is_resampled_by_nnunets_torch_resampling_with_the_default_result(untrained_model: Path) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    model = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False)
    predictor = model._predictor
    configuration = predictor.configuration_manager.configuration
    assert configuration["resampling_fn_probabilities"] == "resample_torch_fornnunet"
    assert configuration["resampling_fn_probabilities_kwargs"]["device"].type == "cpu"
    crop = _crop_for("HPL")
    # The crop's 1.5 x 0.8 x 0.8 mm grid differs from the model's: the output really is resampled.
    assert not np.allclose(crop.spacing, predictor.configuration_manager.spacing)
    fast = model.predict(crop, return_probabilities=True, postprocess=False)

    # The same prediction through the resampling the model's plans name (nnU-Net's SciPy default).
    plans = json.loads((untrained_model / "plans.json").read_text())["configurations"]["3d_fullres"]
    default = dict(configuration)
    for key in ("resampling_fn_probabilities", "resampling_fn_probabilities_kwargs"):
        default[key] = plans[key]
    predictor.configuration_manager = ConfigurationManager(default)
    reference = model.predict(crop, return_probabilities=True, postprocess=False)

    np.testing.assert_allclose(fast.probabilities, reference.probabilities, atol=1e-3)
    top_two = np.sort(reference.probabilities, axis=0)[-2:]
    decided = top_two[1] - top_two[0] > 2e-3
    assert decided.mean() > 0.5
    np.testing.assert_array_equal(fast.labels[decided], reference.labels[decided])


def _with_resampling_order(untrained_model: Path, folder: Path, entry: str, order: int) -> Path:
    """A copy of the model whose plans give the resampling ``entry`` its own spline order (no default)."""
    shutil.copytree(untrained_model, folder)
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"][entry + "_kwargs"]["order"] = order
    (folder / "plans.json").write_text(json.dumps(plans))
    return folder


def test_a_model_that_names_its_own_output_resampling_keeps_it(untrained_model: Path, tmp_path: Path) -> None:
    copy = _with_resampling_order(untrained_model, tmp_path / "model", "resampling_fn_probabilities", 3)

    model = LesionModel.from_folder(copy, device="cpu", use_mirroring=False)
    configuration = model._predictor.configuration_manager.configuration
    assert configuration["resampling_fn_probabilities"] == "resample_data_or_seg_to_shape"
    assert configuration["resampling_fn_probabilities_kwargs"]["order"] == 3


def test_warm_up_runs_in_the_background_and_leaves_predictions_as_they_were(
        untrained_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    crop = _crop_for("FPR")
    cold = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False)
    expected = cold.predict(crop, return_probabilities=True)

    with caplog.at_level("INFO", logger="operators.lesion_model"):
        warm = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False, warm_up=True)
        # predict waits for the warm-up (both use one nnU-Net predictor), whether or not it has finished.
        prediction = warm.predict(crop, return_probabilities=True)
        warm.wait_for_warm_up()
    warmed = [r.getMessage() for r in caplog.records if "warmed up" in r.getMessage()]
    assert len(warmed) == 1 and "on cpu" in warmed[0], caplog.text
    assert "warm-up failed" not in caplog.text
    assert np.array_equal(prediction.labels, expected.labels)
    assert np.array_equal(prediction.probabilities, expected.probabilities)


def test_no_warm_up_on_a_cpu_unless_asked(untrained_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="operators.lesion_model"):
        model = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False)
        model.wait_for_warm_up()  # returns at once: none was started
    assert "warmed up" not in caplog.text


def test_torch_input_resampling_resamples_image_and_mask_on_the_device(untrained_model: Path) -> None:
    crop = _crop_for("FPR")
    plans = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False, input_resampling="plans")
    on_torch = LesionModel.from_folder(untrained_model, device="cpu", use_mirroring=False)  # the default
    configuration = on_torch._predictor.configuration_manager.configuration
    for key, is_seg in (("resampling_fn_data", False), ("resampling_fn_seg", True)):
        assert configuration[key] == "resample_torch_fornnunet"
        assert configuration[key + "_kwargs"]["is_seg"] is is_seg
        assert configuration[key + "_kwargs"]["device"].type == "cpu"
    assert plans._predictor.configuration_manager.configuration["resampling_fn_data"] == "resample_data_or_seg_to_shape"

    expected = plans.predict(crop, return_probabilities=True, postprocess=False)
    got = on_torch.predict(crop, return_probabilities=True, postprocess=False)
    assert got.labels.shape == expected.labels.shape == crop.spatial_shape
    # Linear instead of the cubic spline: the network sees a slightly different image.
    assert not np.array_equal(got.probabilities, expected.probabilities)
    # The toy crop is small and the model untrained (probabilities near 0.5 in places), so single voxels
    # may flip; on the whole the two agree (measured: 0.014 mean difference, 96 % of labels equal).
    assert np.abs(got.probabilities - expected.probabilities).mean() < 0.03
    assert (got.labels == expected.labels).mean() > 0.9


def test_unknown_input_resampling_is_refused(untrained_model: Path) -> None:
    with pytest.raises(ValueError, match="input_resampling must be one of plans, torch, got 'cubic'"):
        LesionModel.from_folder(untrained_model, device="cpu", input_resampling="cubic")


def test_a_model_that_names_its_own_input_resampling_keeps_it(untrained_model: Path, tmp_path: Path) -> None:
    copy = _with_resampling_order(untrained_model, tmp_path / "model", "resampling_fn_data", 1)

    model = LesionModel.from_folder(copy, device="cpu", use_mirroring=False, input_resampling="torch")
    configuration = model._predictor.configuration_manager.configuration
    assert configuration["resampling_fn_data"] == "resample_data_or_seg_to_shape"
    assert configuration["resampling_fn_data_kwargs"]["order"] == 1
    # The mask's resampling is still nnU-Net's default there, so it moves to torch.
    assert configuration["resampling_fn_seg"] == "resample_torch_fornnunet"
