"""The MAP contract, run exactly as the image's entry point runs the application.

The image runs ``python3 /opt/holoscan/app`` with HOLOSCAN_INPUT_PATH, HOLOSCAN_OUTPUT_PATH,
HOLOSCAN_MODEL_PATH and HOLOSCAN_WORKDIR set, as an unprivileged user for whom the application and model
folders are read-only. Here the folder `make map` stages is run the same way on a small synthetic study,
with the application, model and input folders made read-only (as root, the process also loses the
capability to override file permissions, so the read-only folders are really read-only), and the test
checks that the results land in the output folder and nowhere else.

Test-time mirroring is off (``FEMUR_LESION_MIRRORING=0``) to keep the run short on two cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from map_packaging.model_folder import find_model, stage_models
from map_packaging.runtime_requirements import pinned_runtime_requirements
from map_packaging.staging import stage_app_folder
from operators.study_outputs import OVERVIEW_FILE, REPORT_FILE, SEG_FILE, SR_FILE, SUMMARY_FILE
from synthetic_ct import generate_phantom, write_study
from tests.test_app_end_to_end import _failure_details, _raise_stack_limit
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
RUN_TIMEOUT_S = 600
# Capabilities that let root write into folders without write permission.
_OVERRIDE_CAPABILITIES = "-dac_override,-dac_read_search,-fowner"


@pytest.fixture(scope="module")
def image_like(tmp_path_factory: pytest.TempPathFactory, lesion_model: Path) -> dict[str, Path]:  # noqa: F811
    """The image's layout: /opt/holoscan/app, /opt/holoscan/models/<name>/, /var/holoscan as working
    folder, a small synthetic study (thin series only) as the input."""
    root = tmp_path_factory.mktemp("map-run")
    requirements = pinned_runtime_requirements(REPO_ROOT / "requirements.txt", REPO_ROOT / "constraints.txt")
    layout = {
        "app": stage_app_folder(REPO_ROOT, root / "opt" / "app", version=VERSION, requirements=requirements),
        "models": stage_models(find_model(lesion_model), root / "opt" / "models"),
        "input": write_study(generate_phantom(21, "small", storage="unsigned"), root / "study",
                             series=("thin",)).study_dir,
        "workdir": root / "var",
        "home": root / "home",
    }
    layout["workdir"].mkdir()
    layout["home"].mkdir()
    return layout


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` with its mode and content digest (files) — what a write would change."""
    entries: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(mode) else ""
        entries[str(path.relative_to(folder))] = f"{stat.filemode(mode)} {digest}"
    return entries


@contextmanager
def _read_only(*folders: Path) -> Iterator[None]:
    """Remove every write permission under ``folders`` for the duration (restored afterwards)."""
    saved = {p: p.stat().st_mode for f in folders for p in [f, *f.rglob("*")]}
    try:
        for path, mode in saved.items():
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        yield
    finally:
        for path, mode in saved.items():
            path.chmod(mode)


def _run_as_the_image_does(layout: dict[str, Path], output: Path, args: list[str] = ()
                           ) -> subprocess.CompletedProcess[str]:
    """``python3 <app folder> [args]`` with the environment the MAP's manifest sets, from its working folder."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("HOLOSCAN_", "FEMUR_LESION_", "PYTHON"))}
    cudart = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "lib"
    environment["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), environment.get("LD_LIBRARY_PATH")) if p)
    environment.update(
        HOLOSCAN_APPLICATION=str(layout["app"]), HOLOSCAN_INPUT_PATH=str(layout["input"]),
        HOLOSCAN_OUTPUT_PATH=str(output), HOLOSCAN_MODEL_PATH=str(layout["models"]),
        HOLOSCAN_WORKDIR=str(layout["workdir"]), HOME=str(layout["home"]),
        FEMUR_LESION_MIRRORING="0", FEMUR_LESION_DEVICE="cpu",
    )
    command = [sys.executable, str(layout["app"]), *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: read-only folders cannot be enforced")
        command = [setpriv, f"--bounding-set={_OVERRIDE_CAPABILITIES}", "--", *command]
    return subprocess.run(command, cwd=layout["workdir"], env=environment, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, preexec_fn=_raise_stack_limit, check=False)


def test_the_map_entry_point_writes_results_only_to_the_output_folder(image_like: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    output = tmp_path / "output"
    output.mkdir()  # the MAP's output folder exists (a mounted volume)
    watched = ("app", "models", "input", "workdir")
    before = {name: _tree(image_like[name]) for name in watched}
    with _read_only(image_like["app"], image_like["models"], image_like["input"]):
        run = _run_as_the_image_does(image_like, output)
    assert run.returncode == 0, _failure_details(run)
    assert run.stderr == "", _failure_details(run)
    assert sorted(os.listdir(output)) == sorted([SEG_FILE, SR_FILE, REPORT_FILE, SUMMARY_FILE, OVERVIEW_FILE])
    for name in watched:  # nothing written into the application, model, input or working folder
        assert _tree(image_like[name]) == before[name], name

    ct = pydicom.dcmread(next(p for p in image_like["input"].rglob("*") if p.is_file()), stop_before_pixels=True)
    seg = pydicom.dcmread(output / SEG_FILE, stop_before_pixels=True)
    assert seg.StudyInstanceUID == ct.StudyInstanceUID and seg.SoftwareVersions == VERSION
    report = json.loads((output / REPORT_FILE).read_text())
    assert report["software"] == {"name": "femur-lesion-seg", "version": VERSION}
    (model,) = image_like["models"].iterdir()  # the model came from HOLOSCAN_MODEL_PATH
    assert report["model"]["name"] == json.loads((model / "model.json").read_text())["name"]
    assert "stage timings: load" in run.stdout


def test_arguments_override_the_map_variables_and_a_failure_writes_nothing(image_like: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    # -i/-o/-m win over HOLOSCAN_*: an empty input folder fails in one line naming it, and neither output
    # folder (the one named by -o, the one HOLOSCAN_OUTPUT_PATH names) gets anything.
    (tmp_path / "empty").mkdir()
    env_output, arg_output = tmp_path / "env-output", tmp_path / "arg-output"
    env_output.mkdir()
    with _read_only(image_like["app"], image_like["models"]):
        run = _run_as_the_image_does(image_like, env_output, ["-i", str(tmp_path / "empty"), "-o", str(arg_output),
                                                               "-m", str(image_like["models"])])
    assert run.returncode == 2, _failure_details(run)
    assert run.stderr.splitlines() == [f"error: input folder {tmp_path / 'empty'} holds no files"], run.stderr
    assert os.listdir(env_output) == [] and (not arg_output.exists() or os.listdir(arg_output) == [])
