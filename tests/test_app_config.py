"""The application's graph, settings and packaging configuration, without running a study."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from operators.errors import FemurSegError

REPO_ROOT = Path(__file__).resolve().parents[1]

try:
    from app.app import DEVICE_VARIABLE, FEMUR_MODEL_VARIABLE, MIRRORING_VARIABLE, FemurLesionSegApp, StageTimings
except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when libcudart.so.13 is not found
    pytest.skip(
        f"holoscan cannot be imported ({type(exc).__name__}: {exc}); run through `make test`, which sets "
        "LD_LIBRARY_PATH to the CUDA runtime wheel's lib folder",
        allow_module_level=True,
    )


def _fake_model(folder: Path) -> Path:
    (folder / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (folder / name).write_text("{}")
    return folder


def test_graph_wires_loader_splitter_lesions_and_outputs(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    model = _fake_model(tmp_path / "models" / "femur-lesion")
    app = FemurLesionSegApp([sys.executable, "app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                             "-m", str(tmp_path / "models")], device="cpu", use_mirroring=False)
    app.compose()

    graph = app.graph
    flows = {(a.name, b.name): graph.get_port_map(a, b) for a in graph.get_nodes() for b in graph.get_next_nodes(a)}
    assert flows == {
        ("study_loader", "femur_splitter"): {"loaded_series": {"loaded_series"}},
        ("study_loader", "study_outputs"): {"loaded_series": {"loaded_series"}},
        ("femur_splitter", "lesion_segmenter"): {"femur_split": {"femur_split"}},
        ("femur_splitter", "study_outputs"): {"femur_split": {"femur_split"}},
        ("lesion_segmenter", "study_outputs"): {"lesion_segmentation": {"lesion_segmentation"}},
    }
    # The model folder inside the models folder (as a MAP mounts it) was found; nothing was read yet.
    assert app.model_path == model
    assert app.input_folder == tmp_path / "in" and app.output_folder == tmp_path / "out"


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.app import _device_setting, _mirroring_setting

    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    monkeypatch.delenv(MIRRORING_VARIABLE, raising=False)
    assert _device_setting(None) == "auto" and _mirroring_setting(None) is True
    monkeypatch.setenv(DEVICE_VARIABLE, "CPU")
    monkeypatch.setenv(MIRRORING_VARIABLE, "off")
    assert _device_setting(None) == "cpu" and _mirroring_setting(None) is False
    assert _device_setting("auto") == "auto" and _mirroring_setting(True) is True
    monkeypatch.setenv(DEVICE_VARIABLE, "gpu")
    with pytest.raises(FemurSegError, match=DEVICE_VARIABLE):
        _device_setting(None)
    monkeypatch.setenv(MIRRORING_VARIABLE, "maybe")
    with pytest.raises(FemurSegError, match=MIRRORING_VARIABLE):
        _mirroring_setting(None)


def test_input_resampling_comes_from_the_argument_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.app import INPUT_RESAMPLING_VARIABLE, _input_resampling_setting

    monkeypatch.delenv(INPUT_RESAMPLING_VARIABLE, raising=False)
    assert _input_resampling_setting(None) == "torch"
    monkeypatch.setenv(INPUT_RESAMPLING_VARIABLE, "Plans")
    assert _input_resampling_setting(None) == "plans"
    assert _input_resampling_setting("torch") == "torch"
    monkeypatch.setenv(INPUT_RESAMPLING_VARIABLE, "cubic")
    with pytest.raises(FemurSegError, match=f"{INPUT_RESAMPLING_VARIABLE} must be plans or torch, got 'cubic'"):
        _input_resampling_setting(None)


def test_tile_step_comes_from_the_argument_or_the_environment_and_reaches_the_lesion_operator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from app.app import TILE_STEP_VARIABLE, _tile_step_setting

    monkeypatch.delenv(TILE_STEP_VARIABLE, raising=False)
    assert _tile_step_setting(None) == 0.5  # nnU-Net's default
    assert _tile_step_setting(1.0) == 1.0
    for bad, shown in (("0", "0"), ("1.5", "1.5"), ("fast", "'fast'")):
        monkeypatch.setenv(TILE_STEP_VARIABLE, bad)
        with pytest.raises(FemurSegError, match=f"{TILE_STEP_VARIABLE} must be a number in \\(0, 1\\], got {shown}$"):
            _tile_step_setting(None)
    monkeypatch.setenv(TILE_STEP_VARIABLE, " 0.75 ")
    assert _tile_step_setting(None) == 0.75
    lesions = next(op for op in _composed_app(tmp_path).graph.get_nodes() if op.name == "lesion_segmenter")
    assert lesions.tile_step_size == 0.75


def _composed_app(tmp_path: Path) -> FemurLesionSegApp:
    (tmp_path / "in").mkdir(exist_ok=True)
    if not (tmp_path / "models").exists():
        _fake_model(tmp_path / "models" / "femur-lesion")
    app = FemurLesionSegApp([sys.executable, "app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                             "-m", str(tmp_path / "models")], device="cpu", use_mirroring=False)
    app.compose()
    return app


def test_a_femur_model_setting_reaches_the_splitter(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from operators.femur_nnunet import NnUNetFemurSegmenter

    def splitter_of(app: FemurLesionSegApp):
        return next(op for op in app.graph.get_nodes() if op.name == "femur_splitter")

    monkeypatch.delenv(FEMUR_MODEL_VARIABLE, raising=False)
    assert splitter_of(_composed_app(tmp_path)).segmenter is None  # the classical splitter
    from tests.femur_model_support import model_folder_without_weights

    femur = model_folder_without_weights(tmp_path / "femur-model", folds=("0",))
    monkeypatch.setenv(FEMUR_MODEL_VARIABLE, str(femur))
    segmenter = splitter_of(_composed_app(tmp_path)).segmenter
    assert isinstance(segmenter, NnUNetFemurSegmenter)
    assert segmenter.model_folder == femur and segmenter.folds == (0,) and str(segmenter.device) == "cpu"


def test_a_bad_femur_model_setting_stops_the_run_before_any_study(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv(FEMUR_MODEL_VARIABLE, str(tmp_path / "no-such-model"))
    with pytest.raises(FemurSegError) as caught:
        _composed_app(tmp_path)
    message = str(caught.value)
    assert "no femur model folder or settings file" in message and FEMUR_MODEL_VARIABLE in message
    assert "\n" not in message


def test_stage_timings_are_listed_in_order() -> None:
    timings = StageTimings()
    with timings.measure("load"):
        pass
    with timings.measure("split"):
        pass
    described = timings.describe()
    assert described.startswith("load 0.0 s, split 0.0 s, total ")


def test_app_yaml_is_what_the_packager_reads() -> None:
    from holoscan_cli.packager.config_reader import ApplicationConfiguration

    config = ApplicationConfiguration()
    config.read(REPO_ROOT / "app.yaml")  # validates application/title and resources
    application = config._application_object
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert str(application["version"]) == version
    # The packager reads the hyphenated keys; camelCase ones would be ignored silently.
    assert application["input-formats"] == ["file"] and application["output-formats"] == ["file"]
    assert {"cpu", "gpu", "memory", "gpuMemory"} <= set(config._resource_object)
