"""The MONAI Label app, served by a real ``monailabel start_server`` on loopback over a local studies folder.

Three small synthetic studies, the application tests' lesion model (:mod:`tests.test_app_model`), the
model on the CPU without mirroring. Checked through the REST API as a client sees it: /info, /infer (the
label volume equals, voxel for voxel and on the same grid, the deploy application's SEG of the same
study), /activelearning (first, random, uncertainty after a background scoring run, against entropies
computed here independently), saving a final label, and a short fine-tuning run that publishes a new
model version which the next /infer uses, with the previous version kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from operators.dicom_seg import read_segment_masks
from operators.femur_splitter import split_femurs
from operators.lesion_model import LesionModel
from operators.lesion_segmentation import segment_lesions
from operators.series_volume import load_study
from operators.volume_io import read_volume
from synthetic_ct import generate_phantom, write_study
from tests.label_server_support import LabelServer
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow

STUDIES = {"case-a": 21, "case-b": 22, "case-c": 23}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("label-studies")
    folder = root / "studies"
    folder.mkdir()
    for name, seed in STUDIES.items():
        written = write_study(generate_phantom(seed, "small"), root / f"written-{name}", series=("thin",))
        shutil.move(str(written.study_dir), folder / name)
    return folder


@pytest.fixture(scope="module")
def server(studies: Path, lesion_model: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    work = tmp_path_factory.mktemp("label-server")
    with LabelServer(str(studies), store=work / "store", model=lesion_model, log=work / "server.log",
                     conf={"epochs": "1", "iterations_per_epoch": "2"}) as running:
        yield running


@pytest.fixture(scope="module")
def cpu_model(lesion_model: Path) -> LesionModel:  # noqa: F811
    return LesionModel.from_folder(lesion_model, device="cpu", use_mirroring=False)


def _with_cyst(lesion_model: Path) -> bool:  # noqa: F811
    labels = json.loads((lesion_model / "dataset.json").read_text())["labels"]
    return "cyst" in labels


def _infer_label(server: LabelServer, image: str) -> tuple[np.ndarray, np.ndarray]:
    """/infer as the OHIF panel asks (output=image, .nrrd): label array (z, y, x) and its affine."""
    response = server.post(f"/infer/femur_lesion?image={image}&output=image",
                           data={"params": json.dumps({"result_extension": ".nrrd"})})
    path = Path(server.log).parent / f"{image}.nrrd"
    path.write_bytes(response.content)
    volume = read_volume(path)
    return np.asarray(volume.array), np.asarray(volume.affine)


def _infer_params(server: LabelServer, image: str) -> dict:
    """/infer's JSON answer (label names, model version). Each /infer runs the whole pipeline, so a test
    asks only for what it checks."""
    return server.post(f"/infer/femur_lesion?image={image}&output=json").json()


def test_info_lists_the_model_and_its_labels(server: LabelServer, lesion_model: Path) -> None:  # noqa: F811
    info = server.get("/info/").json()
    assert "femur_lesion" in info["models"] and "femur_lesion" in info["trainers"]
    expected = ["femur", "lytic lesion", *(["cyst"] if _with_cyst(lesion_model) else [])]
    assert info["labels"] == expected and info["models"]["femur_lesion"]["labels"] == expected
    assert {"random", "first", "uncertainty"} <= set(info["strategies"])
    assert "uncertainty" in info["scoring"]
    assert info["model_versions"]["current"] == "0001"
    assert info["datastore"]["total"] == len(STUDIES)


def test_infer_equals_the_deploy_pipeline_voxel_for_voxel(server: LabelServer, studies: Path,
                                                          cpu_model: LesionModel, tmp_path: Path) -> None:
    labels, affine = _infer_label(server, "case-a")
    params = _infer_params(server, "case-a")
    loaded = load_study(studies / "case-a")
    assert labels.dtype == np.uint8 and labels.shape == loaded.volume.spatial_shape
    np.testing.assert_allclose(affine, loaded.volume.affine, atol=1e-4)
    assert params["label_names"]["femur"] == 1 and params["label_names"]["lytic lesion"] == 2
    assert params["model"]["store_version"] == "0001"

    # The deploy application's chain, in this process, and its output operator's function writing the SEG.
    from operators.study_outputs import SEG_FILE, write_study_outputs

    split = split_femurs(loaded.volume)
    segmentation = segment_lesions(split, cpu_model)
    assert segmentation.femurs, "the synthetic study must show femurs"
    write_study_outputs(tmp_path / "out", loaded=loaded, split=split, segmentation=segmentation, overview=False)
    masks = read_segment_masks(tmp_path / "out" / SEG_FILE, loaded.volume)
    femur = np.zeros(labels.shape, bool)
    lesion = np.zeros(labels.shape, bool)
    cyst = np.zeros(labels.shape, bool)
    for label, mask in masks.items():
        target = lesion if "lesion" in label.lower() else cyst if "cyst" in label.lower() else femur
        target |= mask
    assert femur.any()
    assert np.array_equal(labels > 0, femur)
    assert np.array_equal(labels == 2, lesion)
    assert np.array_equal(labels == 3, cyst & ~lesion)


def test_first_and_random_pick_unlabeled_studies(server: LabelServer) -> None:
    assert server.post("/activelearning/first").json()["id"] == "case-a"
    assert server.post("/activelearning/random").json()["id"] in STUDIES


def _entropy_inside_femurs(study: Path, model: LesionModel) -> float:
    """Mean normalised softmax entropy over the femur voxels, computed here independently of the app."""
    from scipy.stats import entropy

    split = split_femurs(load_study(study).volume)
    values = []
    for crop in split.femurs.values():
        probabilities = model.predict(crop.femur_only, return_probabilities=True).probabilities
        p = probabilities[:, crop.mask]
        values.append(entropy(p, axis=0) / np.log(p.shape[0]))
    return float(np.concatenate(values).mean())


def test_uncertainty_strategy_returns_the_most_uncertain_study(server: LabelServer, studies: Path,
                                                               cpu_model: LesionModel) -> None:
    expected = {name: _entropy_inside_femurs(studies / name, cpu_model) for name in STUDIES}
    ranked = sorted(expected, key=expected.get)
    # The answer must be unambiguous: the top score clearly above the next.
    assert expected[ranked[-1]] - expected[ranked[-2]] > 1e-4, expected

    assert server.post("/activelearning/uncertainty").json() == {}  # nothing scored yet
    server.post("/scoring/uncertainty")  # a background task
    task = server.wait_for_task("scoring")
    assert task["status"] == "DONE", server.tail()
    answer = server.post("/activelearning/uncertainty").json()
    assert answer["id"] == ranked[-1], (answer, expected)
    assert answer["uncertainty"] == pytest.approx(expected[ranked[-1]], rel=1e-3)


def test_saved_label_then_training_publishes_a_version_the_next_infer_uses(
        server: LabelServer, studies: Path) -> None:
    labels, _ = _infer_label(server, "case-b")
    path = Path(server.log).parent / "case-b-final.nrrd"
    shutil.copy(Path(server.log).parent / "case-b.nrrd", path)
    with open(path, "rb") as handle:
        saved = server.put("/datastore/label?image=case-b&tag=final",
                            files={"label": ("case-b.nrrd", handle)}).json()
    assert saved["label"] == "case-b"
    assert server.get("/info/").json()["datastore"]["completed"] == 1
    stored = read_volume(studies / "labels" / "final" / "case-b.nrrd")
    assert np.array_equal(np.asarray(stored.array), labels)

    summary = server.post("/train/femur_lesion?run_sync=true",
                          json={"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1}).json()
    assert summary["version"] == "0002" and summary["previous"] == "0001", summary
    info = server.get("/info/").json()
    assert info["model_versions"] == {"current": "0002", "previous": "0001", "all": ["0001", "0002"]}
    assert (Path(server.store) / "versions" / "0001" / "plans.json").is_file()  # kept for rollback

    params = _infer_params(server, "case-c")
    assert params["model"]["store_version"] == "0002"
    assert params["model"]["version"].endswith("+label.0002")
