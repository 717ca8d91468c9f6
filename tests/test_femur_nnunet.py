"""A learned femur model plugged into the splitter: settings, and a real nnU-Net femur model at work.

The settings tests need no weights (the segmenter checks its folder when it is built and loads the network
on first use). The model tests use a small nnU-Net femur model trained by nnU-Net on eight small synthetic
studies (:mod:`tests.femur_model_support`, committed in ``tests/data``): it finds the femurs (at 5 mm, so
the outlines are coarse) but not their sides, so its folder maps its labels to "femur" and the splitter
names the sides from the geometry.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from operators.errors import ModelFolderError
from operators.femur_nnunet import (
    SETTINGS_FILE_NAME,
    NnUNetFemurSegmenter,
    femur_segmenter_from_settings,
    mapping_from_label_names,
)
from operators.femur_splitter import SIDE_LABELS, SIDES, split_femurs
from synthetic_ct import generate_phantom
from tests.femur_model_support import HELD_OUT_SEED, model_folder_without_weights
from tests.femur_model_support import femur_model  # noqa: F401 - session fixture
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture


# ------------------------------------------------------------------------------------------- settings


def test_a_model_folder_alone_takes_the_defaults(tmp_path: Path) -> None:
    folder = model_folder_without_weights(tmp_path / "model", folds=("0", "1"))
    (folder / "fold_2").mkdir()  # a fold still training: no checkpoint yet
    segmenter = femur_segmenter_from_settings(folder, device="cpu")
    assert segmenter.model_folder == folder
    assert segmenter.folds == (0, 1)
    assert segmenter.label_mapping == {1: "left", 2: "right"} and segmenter.sided
    assert segmenter.orientation == "HPL"
    assert str(segmenter.device) == "cpu"


def test_a_settings_file_names_the_folder_relative_to_itself(tmp_path: Path) -> None:
    model_folder_without_weights(tmp_path / "models" / "femur", folds=("all",), labels={"background": 0, "femur": 1})
    settings = tmp_path / "models" / "femur.json"
    settings.write_text(json.dumps({"model_folder": "femur", "labels": {"1": "femur"}, "orientation": "FPR",
                                    "tile_step_size": 0.75, "mirroring": False}))
    segmenter = femur_segmenter_from_settings(settings, device="cpu")
    assert segmenter.model_folder == tmp_path / "models" / "femur"
    assert segmenter.folds == ("all",)
    assert segmenter.label_mapping == {1: "femur"} and not segmenter.sided
    assert segmenter.orientation == "FPR" and segmenter.tile_step_size == 0.75 and not segmenter.use_mirroring


def test_a_settings_file_inside_the_model_folder_is_read(tmp_path: Path) -> None:
    folder = model_folder_without_weights(tmp_path / "model", folds=("0", "1", "2"))
    (folder / SETTINGS_FILE_NAME).write_text(json.dumps({"folds": [2], "labels": {"2": "left", "1": "right"}}))
    segmenter = femur_segmenter_from_settings(folder, device="cpu")
    assert segmenter.model_folder == folder
    assert segmenter.folds == (2,)
    assert segmenter.label_mapping == {2: "left", 1: "right"}


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"background": 0, "left femur": 1, "right femur": 2}, {1: "left", 2: "right"}),
        # A whole-body model: only its femurs count, by the patient's side in their names.
        ({"background": 0, "hip_left": 1, "femur_left": 2, "femur_right": 3, "tibia": 4}, {2: "left", 3: "right"}),
        ({"background": 0, "Femur": 1}, {1: "femur"}),
        ({"background": 0, "femur": 1, "femur_left": 2}, {2: "left"}),
        ({"background": 0, "femur": [1, 2], "bone": 1}, {}),  # a region of two values is not one label
        ({"background": 0, "bone": 1, "lesion": 2}, {}),
    ],
)
def test_label_names_that_name_femurs_give_the_mapping(labels: dict, expected: dict) -> None:
    normalised = {name: tuple(v) if isinstance(v, list) else (v,) for name, v in labels.items()}
    assert mapping_from_label_names(normalised) == expected


def test_a_whole_body_models_femur_labels_are_used_without_settings(tmp_path: Path) -> None:
    folder = model_folder_without_weights(tmp_path / "model", labels={"background": 0, "hip_left": 1, "femur_left": 2,
                                                       "femur_right": 3})
    segmenter = femur_segmenter_from_settings(folder, device="cpu")
    assert segmenter.label_mapping == {2: "left", 3: "right"} and segmenter.sided


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ("not json", ["cannot read", "JSON"]),
        ([1, 2], ["JSON object"]),
        ({"label": {"1": "left"}}, ["unknown key", "label"]),
        ({"folds": "0"}, ["folds"]),
        ({"folds": [3]}, ["fold_3/checkpoint_final.pth"]),
        ({"labels": {"one": "left"}}, ["labels keys"]),
        ({"labels": {"3": "left"}}, ["[3]", "does not have"]),
        ({"labels": {"1": "left", "2": "femur"}}, ["cannot mix"]),
        ({"labels": {"1": "pelvis"}}, ["left", "right", "femur"]),
        ({"orientation": "XYZ"}, ["orientation", "XYZ"]),
        ({"tile_step_size": 2}, ["tile_step_size"]),
        ({"mirroring": "yes"}, ["mirroring must be true or false"]),
        ({"tile_step_size": True}, ["tile_step_size must be a number"]),
        ({"checkpoint": "checkpoint_best.pth"}, ["checkpoint_best.pth"]),
        ({"model_folder": "elsewhere"}, ["does not exist", "elsewhere"]),
    ],
    ids=lambda value: None if isinstance(value, list) and all(isinstance(w, str) for w in value) else str(value)[:30],
)
def test_bad_settings_fail_in_one_line_naming_the_problem(tmp_path: Path, settings, words: list[str]) -> None:
    model_folder_without_weights(tmp_path / "model")
    file = tmp_path / "model" / SETTINGS_FILE_NAME
    file.write_text(settings if isinstance(settings, str) else json.dumps(settings))
    with pytest.raises(ModelFolderError) as caught:
        femur_segmenter_from_settings(tmp_path / "model", device="cpu")
    message = str(caught.value)
    assert message.startswith("femur model") and "\n" not in message
    for word in words:
        assert word in message


def test_a_missing_path_or_checkpoint_fails_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelFolderError, match="no femur model folder or settings file at"):
        femur_segmenter_from_settings(tmp_path / "nowhere", device="cpu")
    model_folder_without_weights(tmp_path / "model", folds=())
    with pytest.raises(ModelFolderError, match=r"no fold_<k>/checkpoint_final.pth"):
        femur_segmenter_from_settings(tmp_path / "model", device="cpu")


def test_cuda_is_refused_where_there_is_none(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    model_folder_without_weights(tmp_path / "model")
    with pytest.raises(ModelFolderError, match="CUDA is not available"):
        femur_segmenter_from_settings(tmp_path / "model", device="cuda")
    assert str(femur_segmenter_from_settings(tmp_path / "model", device="auto").device) == "cpu"


# ------------------------------------------------------------------------------ a trained femur model


@pytest.fixture(scope="module")
def held_out_ct() -> hd.Volume:
    return generate_phantom(HELD_OUT_SEED, "small").ct


@pytest.fixture(scope="module")
def segmenter(femur_model: Path) -> NnUNetFemurSegmenter:  # noqa: F811
    return femur_segmenter_from_settings(femur_model, device="cpu")


@pytest.fixture(scope="module")
def predicted(segmenter: NnUNetFemurSegmenter, held_out_ct: hd.Volume) -> np.ndarray:
    """The model's labels for the held-out CT (0/1: the folder maps both model labels to femur)."""
    return segmenter.segment(held_out_ct)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


@pytest.mark.slow
def test_the_model_finds_both_femurs_and_the_geometry_their_sides(
    segmenter: NnUNetFemurSegmenter, held_out_ct: hd.Volume,
) -> None:
    assert not segmenter.sided  # the folder's femur_model.json maps both model labels to "femur"
    phantom = generate_phantom(HELD_OUT_SEED, "small")
    split = split_femurs(held_out_ct, segmenter=segmenter)
    assert sorted(split.femurs) == sorted(SIDES), split.notes
    labels = split.label_map()
    for side in SIDES:
        # A wrong side (or a flipped axis) would put each femur's label on the other femur: Dice near 0.
        assert _dice(labels == SIDE_LABELS[side], phantom.femur_mask(side)) >= 0.8, side
        crop = split.femurs[side]
        # The femur-only volume holds the CT inside the model's femur (0 HU nudged by 1e-3) and 0 outside.
        femur_only = np.asarray(crop.femur_only.array)
        assert np.array_equal(femur_only != 0, crop.mask)
        assert np.allclose(femur_only[crop.mask], np.asarray(held_out_ct.array)[crop.box][crop.mask], atol=1e-2)


@pytest.mark.slow
def test_the_prediction_does_not_depend_on_how_the_ct_is_stored(
    segmenter: NnUNetFemurSegmenter, held_out_ct: hd.Volume, predicted: np.ndarray,
) -> None:
    # The same CT stored feet first, rows and columns swapped: the model sees the same HPL array, so the
    # labels, brought back to the original grid, must be identical voxel for voxel.
    stored = held_out_ct.flip_spatial((0, 2)).permute_spatial_axes((0, 2, 1))
    other = hd.Volume(segmenter.segment(stored), stored.affine, "PATIENT").match_geometry(held_out_ct)
    assert predicted.any()
    assert np.array_equal(np.asarray(other.array), predicted)


@pytest.mark.slow
def test_a_sided_mapping_takes_the_sides_from_the_model(
    tmp_path: Path, femur_model: Path, held_out_ct: hd.Volume, predicted: np.ndarray,  # noqa: F811
) -> None:
    # The model's own labels as sides: the bone is the same, each label lands where the model put it.
    settings = _settings(tmp_path, femur_model, {"1": "left", "2": "right"})
    sided = femur_segmenter_from_settings(settings, device="cpu")
    assert sided.sided
    labels = sided.segment(held_out_ct)
    assert np.array_equal(labels > 0, predicted > 0)
    assert set(np.unique(labels)) == {0, 1, 2}


def _settings(folder: Path, model: Path, labels: dict[str, str]) -> Path:
    """A settings file in ``folder`` naming ``model`` by its absolute path, with these labels (no mirroring)."""
    file = folder / "femur_model.json"
    file.write_text(json.dumps({"model_folder": str(model.resolve()), "labels": labels, "mirroring": False}))
    return file


# --------------------------------------------------------------------------------- in the application


@pytest.mark.slow
def test_the_application_splits_with_the_configured_femur_model(
    tmp_path: Path, femur_model: Path, lesion_model: Path,  # noqa: F811
) -> None:
    from operators.dicom_seg import read_segment_masks
    from operators.series_volume import load_study
    from operators.study_outputs import SEG_FILE
    from synthetic_ct import write_study
    from tests.test_app_end_to_end import _failure_details, run_app

    settings = femur_model  # the folder, with its femur_model.json
    study = write_study(generate_phantom(HELD_OUT_SEED, "small"), tmp_path / "study", series=("thin",))
    out = tmp_path / "out"
    process = run_app(["-i", str(study.study_dir), "-o", str(out), "-m", str(lesion_model)],
                      env={"FEMUR_SPLITTER_MODEL": str(settings)})
    assert process.returncode == 0, _failure_details(process)
    assert "femur model " in process.stdout and "classical femur segmentation" not in process.stdout

    # The SEG's femurs are the ones this femur model gives, not the classical splitter's.
    loaded = load_study(study.study_dir)
    expected = split_femurs(loaded.volume, segmenter=femur_segmenter_from_settings(settings, device="cpu"))
    masks = read_segment_masks(out / SEG_FILE, loaded.volume)
    for side in SIDES:
        assert np.array_equal(masks[f"{side.capitalize()} femur"], expected.femurs[side].full_mask()), side


# ------------------------------------------------------- the training pipeline and the annotation server


@pytest.mark.slow
def test_the_dataset_builder_cuts_the_crops_the_femur_model_gives(
    tmp_path: Path, segmenter: NnUNetFemurSegmenter, held_out_ct: hd.Volume,
) -> None:
    from lesion_training.dataset_builder import BuildOptions, process_study

    none = np.zeros(held_out_ct.spatial_shape, dtype=bool)
    record = process_study(tmp_path / "raw", "study001", held_out_ct, none, none,
                           BuildOptions(femur_segmenter=segmenter))
    expected = split_femurs(held_out_ct, segmenter=segmenter)
    classical = split_femurs(held_out_ct)
    cases = {case.side: case for case in record.cases}
    assert sorted(cases) == sorted(SIDES)
    for side in SIDES:
        assert cases[side].crop_shape_zyx == list(expected.femurs[side].mask.shape)
        # The model's crops, not the classical splitter's (6 mm outlines against the bone's edge).
        assert cases[side].crop_shape_zyx != list(classical.femurs[side].mask.shape)


def test_the_dataset_command_refuses_a_bad_femur_model_in_one_line(tmp_path: Path, capsys) -> None:
    from lesion_training.cli import main

    cases = tmp_path / "cases.csv"
    cases.write_text("patient,ct,reference\n")
    status = main(["build-dataset", "--cases", str(cases), "--out", str(tmp_path / "raw"),
                   "--name", "Dataset901_Femurs", "--femur-model", str(tmp_path / "missing"), "--device", "cpu"])
    error = capsys.readouterr().err
    assert status == 2
    assert error.startswith("error: femur model: no femur model folder or settings file at")
    assert error.count("\n") == 1
    assert not (tmp_path / "raw").exists()


@pytest.mark.slow
def test_the_annotation_server_pipeline_splits_with_the_femur_model(
    tmp_path: Path, segmenter: NnUNetFemurSegmenter, lesion_model: Path,  # noqa: F811
) -> None:
    from label_app.lib.model_store import ModelStore
    from label_app.lib.pipeline import VersionedModel, run_pipeline
    from operators.series_volume import load_study
    from synthetic_ct import write_study

    study = write_study(generate_phantom(HELD_OUT_SEED, "small"), tmp_path / "study", series=("thin",))
    store = ModelStore(tmp_path / "store")
    store.seed(lesion_model)
    model = VersionedModel(store, device="cpu", use_mirroring=False, femur_segmenter=segmenter)
    result = run_pipeline(study.study_dir, model)
    expected = split_femurs(load_study(study.study_dir).volume, segmenter=segmenter)
    assert sorted(result.split.femurs) == sorted(SIDES)
    for side in SIDES:
        assert np.array_equal(result.split.femurs[side].full_mask(), expected.femurs[side].full_mask()), side


@pytest.mark.slow
def test_the_annotation_server_reads_its_femur_model_setting(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    folder = model_folder_without_weights(tmp_path / "model", folds=("0",))
    program = (
        "import sys\n"
        "from main import _femur_segmenter\n"
        "from operators.errors import ModelFolderError\n"
        "assert _femur_segmenter(None, 'cpu') is None and _femur_segmenter(' ', 'cpu') is None\n"
        "segmenter = _femur_segmenter(sys.argv[1], 'cpu')\n"
        "print(segmenter.model_folder, segmenter.folds, segmenter.label_mapping)\n"
        "try:\n"
        "    _femur_segmenter(sys.argv[1] + '-missing', 'cpu')\n"
        "except ModelFolderError as error:\n"
        "    print('refused:', error)\n"
    )
    paths = [str(root / "label_app" / "pythonpath"), str(root / "label_app"), str(root)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    done = subprocess.run([sys.executable, "-c", program, str(folder)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"{folder} (0,) {{1: 'left', 2: 'right'}}"
    assert lines[1].startswith("refused: femur model: no femur model folder or settings file at")
