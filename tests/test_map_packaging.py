"""What `make map` hands the SDK's packager, and what the packager makes of it.

app.yaml, the pinned runtime requirements, the staged application folder and the staged model are
checked directly; then the real holoscan-cli 4.2.0 packager runs in this process on them up to its
`docker buildx` call (no docker engine is needed) and its Dockerfile, app.json and pkg.json are read.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml

from map_packaging.app_config import AppConfigError, read_app_config
from map_packaging.model_folder import ModelError, find_model, stage_models
from map_packaging.packager import PackageRequest, PackagingError, capture_build_context, docker_engine_problem
from map_packaging.runtime_requirements import pinned_runtime_requirements, read_pins
from map_packaging.staging import stage_app_folder
from operators.lesion_segmentation import resolve_model_path
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_YAML = REPO_ROOT / "app.yaml"
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
PINS = read_pins(REPO_ROOT / "constraints.txt")


@pytest.fixture(scope="module")
def runtime_requirements() -> list[str]:
    return pinned_runtime_requirements(REPO_ROOT / "requirements.txt", REPO_ROOT / "constraints.txt")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, runtime_requirements: list[str],
           lesion_model: Path) -> tuple[Path, Path]:  # noqa: F811
    """(application folder, models folder) as `make map` stages them, with the test model."""
    root = tmp_path_factory.mktemp("map")
    app_folder = stage_app_folder(REPO_ROOT, root / "app-src", version=VERSION, requirements=runtime_requirements)
    models = stage_models(find_model(lesion_model), root / "models")
    return app_folder, models


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory, staged: tuple[Path, Path]):
    root = tmp_path_factory.mktemp("package")
    app_folder, models = staged
    request = PackageRequest(app_folder=app_folder, config=APP_YAML, models=models,
                             tag=f"femur-lesion-seg:{VERSION}", build_cache=root / "cache")
    return capture_build_context(request, root / "package")


# --------------------------------------------------------------------------------------------------
# app.yaml


def test_app_yaml_states_resources_version_and_formats() -> None:
    config = read_app_config(APP_YAML, expected_version=VERSION)
    assert config.version == VERSION
    assert config.input_formats == ("file",) and config.output_formats == ("file",)
    resources = config.resources
    assert resources["gpu"] == 1 and resources["cpu"] >= 1
    assert resources["memory"].endswith("Gi") and resources["gpuMemory"].endswith("Gi")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["application"].update(inputFormats=d["application"].pop("input-formats")),
     "inputFormats is ignored by the packager; write 'input-formats'"),
    (lambda d: d["application"].pop("title"), "application.title is missing"),
    (lambda d: d["application"].update(version="0.2.0"), "differs from the product version"),
    (lambda d: d["resources"].update(gpu=0), "resources.gpu must be a whole number of GPUs >= 1"),
    (lambda d: d["resources"].update(memory="8 gigs"), "resources.memory must be a size"),
    (lambda d: d["resources"].pop("gpuMemory"), "resources.gpuMemory must be a size"),
    (lambda d: d.pop("resources"), "'resources' is missing"),
])
def test_app_yaml_mistakes_are_one_line_errors(tmp_path: Path, change, message: str) -> None:
    document = yaml.safe_load(APP_YAML.read_text())
    change(document)
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(AppConfigError, match=message.replace("(", r"\(").replace("*", r"\*")) as error:
        read_app_config(path, expected_version=VERSION)
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------------
# The image's requirements


def test_image_requirements_are_the_runtime_closure_pinned_as_in_constraints(runtime_requirements: list[str]) -> None:
    pinned = dict(line.split("==") for line in runtime_requirements)
    assert pinned["torch"] == PINS["torch"] == "2.14.1"
    assert pinned["numpy"] == PINS["numpy"] == "1.26.4"
    assert pinned["holoscan-cu13"] == "4.2.0" and pinned["monai-deploy-app-sdk"] == "4.0.0"
    # Every direct runtime requirement, and what they need (nnU-Net's own dependencies), is in.
    direct = [line.split("==")[0].lower() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert set(map(str.lower, direct)) - {"simpleitk"} <= set(pinned) and "simpleitk" in pinned
    assert {"dynamic-network-architectures", "batchgenerators", "acvl-utils"} <= set(pinned)
    # Nothing of the annotation server or the test tools.
    assert not {"monailabel", "pytest", "fastapi"} & set(pinned)
    for name, version in pinned.items():
        assert PINS.get(name, version) == version, name


# --------------------------------------------------------------------------------------------------
# The staged application folder and models


def test_staged_app_folder_holds_the_app_and_operators_packages_and_a_launcher(
        staged: tuple[Path, Path], runtime_requirements: list[str]) -> None:
    app_folder, _ = staged
    top = sorted(p.name for p in app_folder.iterdir())
    assert top == ["__main__.py", "app", "femur_lesion_seg-0.1.0.dist-info", "operators", "requirements.txt"]
    for package in ("app", "operators"):
        repo_files = sorted(str(p.relative_to(REPO_ROOT / package)) for p in (REPO_ROOT / package).rglob("*.py"))
        staged_files = sorted(str(p.relative_to(app_folder / package)) for p in (app_folder / package).rglob("*")
                              if p.is_file())
        assert staged_files == repo_files, package  # the same modules, no caches
        for name in repo_files:
            assert (app_folder / package / name).read_bytes() == (REPO_ROOT / package / name).read_bytes()
    assert "from app.cli import main" in (app_folder / "__main__.py").read_text()
    lines = [line for line in (app_folder / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert lines == runtime_requirements
    metadata = (app_folder / "femur_lesion_seg-0.1.0.dist-info" / "METADATA").read_text()
    assert f"Version: {VERSION}" in metadata and "Name: femur-lesion-seg" in metadata


def test_staged_app_folder_imports_nothing_from_outside_itself(staged: tuple[Path, Path]) -> None:
    # The development environment also finds `app` and `operators` in the repository (editable
    # install); drop that finder so a module missing from the staged folder fails to import.
    app_folder, _ = staged
    probe = """
import importlib, json, os, pkgutil, sys
sys.path[0] = os.getcwd()  # as `python3 /opt/holoscan/app` puts that folder first
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]
import app.app, app.cli, operators
for module in pkgutil.walk_packages(operators.__path__, 'operators.'):
    importlib.import_module(module.name)
from importlib import metadata
product = ('app', 'operators', 'lesion_training', 'synthetic_ct', 'evaluation', 'tests', 'map_packaging')
print(json.dumps({'modules': {n: getattr(m, '__file__', None) for n, m in list(sys.modules.items())
                              if n.split('.')[0] in product},
                  'distribution': str(metadata.distribution('femur-lesion-seg')._path)}))
"""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HOLOSCAN_", "PYTHONPATH"))}
    cudart = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "lib"
    environment["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), environment.get("LD_LIBRARY_PATH")) if p)
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    # Started from the staged folder, as `python3 /opt/holoscan/app` puts that folder first on sys.path.
    run = subprocess.run([sys.executable, "-c", probe], cwd=app_folder, env=environment, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert {n.split(".")[0] for n in found["modules"]} == {"app", "operators"}
    outside = {n: f for n, f in found["modules"].items() if f and not Path(f).is_relative_to(app_folder)}
    assert outside == {}
    assert Path(found["distribution"]).parent == app_folder  # the SEG/SR name this version


def test_staged_models_folder_holds_only_the_model(staged: tuple[Path, Path], lesion_model: Path) -> None:  # noqa: F811
    _, models = staged
    model = find_model(lesion_model)
    assert [p.name for p in models.iterdir()] == [model.name]
    assert resolve_model_path(models) == models / model.name  # what the app finds in /opt/holoscan/models
    assert sorted(str(p.relative_to(models / model.name)) for p in (models / model.name).rglob("*")) == \
        sorted(str(p.relative_to(model)) for p in model.rglob("*"))


def test_missing_or_weightless_model_is_a_one_line_error(tmp_path: Path) -> None:
    # model/ before a model is trained: only the model card.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "README.md").write_text("# Model card\n")
    with pytest.raises(ModelError, match=r"no lesion model in .*make model"):
        find_model(tmp_path / "model")
    # plans.json, dataset.json and a fold folder, but no weights.
    weightless = tmp_path / "weightless" / "femur_lesion_nnunet"
    (weightless / "fold_all").mkdir(parents=True)
    (weightless / "plans.json").write_text('{"plans_name": "x"}')
    (weightless / "dataset.json").write_text('{"labels": {}}')
    with pytest.raises(ModelError, match=r"no fold_\*/checkpoint_final.pth with weights"):
        find_model(tmp_path / "weightless")
    (weightless / "fold_all" / "checkpoint_final.pth").write_bytes(b"weights")
    (weightless / "plans.json").write_text("{")
    with pytest.raises(ModelError, match="plans.json: not readable JSON"):
        find_model(tmp_path / "weightless")


# --------------------------------------------------------------------------------------------------
# The packager (holoscan-cli 4.2.0), run for real up to docker buildx


def test_app_json_runs_the_staged_folder_with_our_formats(captured) -> None:
    app_json = captured.app_json
    assert json.loads(app_json["command"]) == ["python3", "/opt/holoscan/app"]
    assert app_json["input"] == {"path": "input/", "formats": ["file"]}
    assert app_json["output"] == {"path": "output/", "formats": ["file"]}
    assert app_json["workingDirectory"] == "/var/holoscan"
    assert app_json["environment"]["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert app_json["sdk"] == "monai-deploy" and app_json["sdkVersion"] == "4.0.0"
    assert app_json["version"] == VERSION


def test_pkg_json_reserves_the_resources_of_app_yaml_and_carries_the_model(captured, staged) -> None:
    _, models = staged
    (name,) = [p.name for p in models.iterdir()]
    pkg_json = captured.pkg_json
    assert pkg_json["resources"] == yaml.safe_load(APP_YAML.read_text())["resources"]
    assert pkg_json["models"] == {name: f"/opt/holoscan/models/{name}"}
    assert pkg_json["version"] == VERSION and pkg_json["applicationRoot"] == "/opt/holoscan/app"


def test_dockerfile_installs_the_pinned_runtime_and_copies_app_and_model(captured, staged,
                                                                          runtime_requirements: list[str]) -> None:
    app_folder, models = staged
    dockerfile = captured.dockerfile
    assert "FROM nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04" in dockerfile
    assert "pip install --no-cache-dir --user -r /tmp/requirements.txt" in dockerfile
    assert "COPY ./app /opt/holoscan/app" in dockerfile and "COPY ./models  /opt/holoscan/models" in dockerfile
    assert "ENV HOLOSCAN_INPUT_PATH=/var/holoscan/input" in dockerfile
    assert "ENV HOLOSCAN_OUTPUT_PATH=/var/holoscan/output" in dockerfile
    pip_lines = [line for line in (captured.folder / "pip" / "requirements.txt").read_text().splitlines()
                 if line and not line.startswith("#")]
    assert pip_lines == runtime_requirements
    # The context holds the whole staged folder and model, and .dockerignore drops none of it.
    files = captured.files
    staged_files = [f"app/{p.relative_to(app_folder)}" for p in app_folder.rglob("*") if p.is_file()]
    model_files = [f"models/{p.relative_to(models)}" for p in models.rglob("*") if p.is_file()]
    assert set(staged_files) | set(model_files) <= set(files)
    ignored = [line.strip() for line in (captured.folder / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    dropped = [f for f in staged_files + model_files for pattern in ignored
               if fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(f, pattern.rstrip("/") + "/*")
               or fnmatch.fnmatch("/" + f, pattern.replace("**", "*"))]
    assert dropped == []
    # The image's user is never root (useradd -u 0 fails in the Dockerfile).
    assert captured.build["build_args"]["UID"] != "0" and captured.image_tag.endswith(f":{VERSION}")


def test_the_image_entry_script_drops_the_application_exit_status(captured, tmp_path: Path) -> None:
    # holoscan-cli 4.2.0's /var/holoscan/tools, as it goes into the image, runs app.json's command and
    # exits 0 whatever the application returned (the README tells deployments to start
    # /opt/holoscan/app directly where the status matters). This fails when a packager fixes that.
    if shutil.which("jq") is None:
        pytest.skip("jq (used by the entry script) is not installed")
    failing = tmp_path / "failing.py"
    failing.write_text("import sys\nsys.exit(2)\n")
    (tmp_path / "app.json").write_text(json.dumps({"command": json.dumps([sys.executable, str(failing)])}))
    run = subprocess.run(["bash", str(captured.folder / "tools")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOLOSCAN_APP_MANIFEST_PATH": str(tmp_path / "app.json")}, check=False)
    assert "Application exited with 2." in run.stderr
    assert run.returncode == 0


def test_packager_rejections_reach_the_caller_as_one_line(tmp_path: Path, staged) -> None:
    app_folder, models = staged
    config = tmp_path / "app.yaml"
    config.write_text("application:\n  title: x\n  version: 0.1.0\n")  # no resources
    request = PackageRequest(app_folder=app_folder, config=config, models=models, tag="x:0.1.0",
                             build_cache=tmp_path / "cache")
    with pytest.raises(PackagingError, match=r"Resources \('resources'\) configuration cannot be found") as error:
        capture_build_context(request, tmp_path / "package")
    assert "\n" not in str(error.value) and not (tmp_path / "package").exists()


# --------------------------------------------------------------------------------------------------
# `make map` (python -m map_packaging)


def _make_map(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    no_docker = tmp_path / "bin-without-docker"
    no_docker.mkdir(exist_ok=True)
    environment = {**os.environ, "PATH": str(no_docker)}
    return subprocess.run([sys.executable, "-m", "map_packaging", *args], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True, timeout=300, check=False)


def test_make_map_without_docker_checks_everything_and_says_the_image_was_not_built(
        tmp_path: Path, lesion_model: Path) -> None:  # noqa: F811
    # Laid out as model/ is: the model card beside the nnU-Net model folder.
    shutil.copytree(find_model(lesion_model), tmp_path / "model" / "femur_lesion_nnunet")
    card = tmp_path / "model" / "README.md"
    card.write_text("# Model card\n\nNot for clinical use.\n")
    run = _make_map(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "map")], tmp_path)
    assert run.returncode == 3, run.stderr + run.stdout[-3000:]
    assert run.stderr.splitlines() == [
        f"error: image femur-lesion-seg:{VERSION} not built: no docker engine is available here "
        "(no docker client on PATH)"]
    package = tmp_path / "map" / "package"
    for name in ("Dockerfile", "map/app.json", "map/pkg.json", "pip/requirements.txt", "app/__main__.py"):
        assert (package / name).is_file(), name
    assert (tmp_path / "map" / "app-src" / "operators" / "femur_splitter.py").is_file()
    pkg_json = json.loads((package / "map" / "pkg.json").read_text())
    assert pkg_json["models"] == {"femur_lesion_nnunet": "/opt/holoscan/models/femur_lesion_nnunet"}
    # The model card goes into the image's documentation folder.
    assert "COPY ./docs  /opt/holoscan/docs" in (package / "Dockerfile").read_text()
    assert (package / "docs" / "MODEL_CARD.md").read_text() == card.read_text()
    assert not [p for p in (tmp_path / "map").iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_a_docker_client_without_an_engine_is_reported_in_one_line() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker client here (the case without one is tested through `make map` above)")
    problem = docker_engine_problem()
    if problem is None:
        pytest.skip("a docker engine runs here")
    assert problem.startswith("`docker info` failed: ") and "\n" not in problem


def test_make_map_without_a_model_says_so_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    shutil.copy(REPO_ROOT / "model" / "README.md", tmp_path / "model" / "README.md")
    run = _make_map(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "map")], tmp_path)
    assert run.returncode == 2
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("error: no lesion model in ")
    assert not (tmp_path / "map").exists()
