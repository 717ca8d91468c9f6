"""The application end to end, as a hospital runs it: ``python -m app`` in its own process.

Small synthetic studies (head-first with all three series as a PACS sends them; feet-first with unsigned
rescaled storage, run through the HOLOSCAN_* variables and a models folder as a MAP mounts it), the real
JPEG 2000 chest series (no femur in view), an MR-only study and a folder without DICOM. The SEG is read
back with highdicom and compared voxel for voxel with the same pipeline run in this process; dciodvfy
checks the SEG and SR.

Test-time mirroring is off (``FEMUR_LESION_MIRRORING=0``) to keep the runs short on two cores.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from operators.dicom_seg import read_segment_masks
from operators.dicom_sr import read_findings_sr
from operators.femur_splitter import split_femurs
from operators.lesion_model import LesionModel
from operators.lesion_segmentation import StudySegmentation, segment_lesions
from operators.series_volume import LoadedSeries, load_study
from operators.study_outputs import OVERVIEW_FILE, REPORT_FILE, SEG_FILE, SR_FILE, SUMMARY_FILE, segment_masks
from synthetic_ct import generate_phantom, write_study
from tests.dicom_factory import write_ct_series
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
CHEST_J2K = REPO_ROOT.parent / "shared" / "data" / "real_ct_chest_j2k"
RUN_TIMEOUT_S = 600
_STACK_BYTES = 32 * 1024 * 1024  # Holoscan wants 32 MB of stack (ulimit -s 32768)

try:
    import monai.deploy.core  # noqa: F401
except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when libcudart.so.13 is not found
    pytest.skip(
        f"holoscan cannot be imported ({type(exc).__name__}: {exc}); run through `make test`, which sets "
        "LD_LIBRARY_PATH to the CUDA runtime wheel's lib folder",
        allow_module_level=True,
    )


def _raise_stack_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = _STACK_BYTES if hard == resource.RLIM_INFINITY else min(_STACK_BYTES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def run_app(args: list[str], *, env: dict[str, str] | None = None, as_folder: bool = False
            ) -> subprocess.CompletedProcess[str]:
    """Run the application in a new process from the repository root, as ``python -m app`` or ``python app``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HOLOSCAN_")}
    cudart = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "lib"
    if cudart.is_dir():
        environment["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(cudart), environment.get("LD_LIBRARY_PATH", "")) if p)
    environment.update(FEMUR_LESION_MIRRORING="0", FEMUR_LESION_DEVICE="cpu", PYTHONDONTWRITEBYTECODE="1")
    environment.update(env or {})
    command = [sys.executable, "app" if as_folder else "-m", *([] if as_folder else ["app"]), *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, preexec_fn=_raise_stack_limit, check=False)


def _failure_details(run: subprocess.CompletedProcess[str]) -> str:
    return f"exit {run.returncode}\n--- stderr\n{run.stderr}\n--- stdout (end)\n{run.stdout[-4000:]}"


@dataclass
class AppRun:
    name: str
    process: subprocess.CompletedProcess[str]
    output: Path
    loaded: LoadedSeries
    segmentation: StudySegmentation  # the same pipeline, run in this process


@pytest.fixture(scope="module")
def femur_runs(tmp_path_factory: pytest.TempPathFactory, lesion_model: Path) -> dict[str, AppRun]:  # noqa: F811
    root = tmp_path_factory.mktemp("app")
    model = LesionModel.from_folder(lesion_model, device="cpu", use_mirroring=False)
    runs: dict[str, AppRun] = {}

    # Head-first, every series a PACS would send (the loader picks the thin axial one); -i/-o/-m.
    hfs = write_study(generate_phantom(11, "small", patient_position="HFS", storage="unsigned"), root / "hfs")
    process = run_app(["-i", str(hfs.study_dir), "-o", str(root / "out-hfs"), "-m", str(lesion_model)])
    runs["HFS"] = _with_pipeline("HFS", process, root / "out-hfs", hfs.study_dir, model)

    # Feet-first, descending slices, through the variables a MAP sets, the model inside a models folder.
    ffs = write_study(generate_phantom(12, "small", patient_position="FFS", slice_order="descending",
                                       storage="unsigned"), root / "ffs", series=("thin",))
    models = root / "models"
    models.mkdir()
    (models / "femur-lesion").symlink_to(Path(lesion_model).resolve(), target_is_directory=True)
    process = run_app([], env={"HOLOSCAN_INPUT_PATH": str(ffs.study_dir),
                               "HOLOSCAN_OUTPUT_PATH": str(root / "out-ffs"),
                               "HOLOSCAN_MODEL_PATH": str(models)})
    runs["FFS"] = _with_pipeline("FFS", process, root / "out-ffs", ffs.study_dir, model)
    return runs


def _with_pipeline(name: str, process: subprocess.CompletedProcess[str], output: Path, study_dir: Path,
                   model: LesionModel) -> AppRun:
    loaded = load_study(study_dir)
    segmentation = segment_lesions(split_femurs(loaded.volume), model)
    return AppRun(name=name, process=process, output=output, loaded=loaded, segmentation=segmentation)


@pytest.fixture(params=["HFS", "FFS"])
def femur_run(request: pytest.FixtureRequest, femur_runs: dict[str, AppRun]) -> AppRun:
    run = femur_runs[request.param]
    assert run.process.returncode == 0, _failure_details(run.process)
    return run


def test_the_run_succeeds_quietly_and_logs_its_stage_timings(femur_run: AppRun) -> None:
    assert femur_run.process.stderr == "", _failure_details(femur_run.process)
    assert "stage timings: load" in femur_run.process.stdout
    assert sorted(os.listdir(femur_run.output)) == sorted([SEG_FILE, SR_FILE, REPORT_FILE, SUMMARY_FILE,
                                                           OVERVIEW_FILE])


def test_seg_masks_equal_the_pipeline_voxel_for_voxel(femur_run: AppRun) -> None:
    seg = pydicom.dcmread(femur_run.output / SEG_FILE)
    ct = femur_run.loaded.source_datasets[0]
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.StudyInstanceUID == ct.StudyInstanceUID and seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID

    shape = femur_run.loaded.volume.spatial_shape
    expected = {s.spec.label: s.full_mask(shape) for s in segment_masks(femur_run.segmentation)}
    assert {"Left femur", "Right femur"} <= set(expected)
    for side in ("left", "right"):
        assert np.array_equal(expected[f"{side.capitalize()} femur"], femur_run.segmentation.femurs[side].femur_mask)
    masks = read_segment_masks(femur_run.output / SEG_FILE, femur_run.loaded.volume)
    assert list(masks) == list(expected)
    for label, mask in expected.items():
        assert np.array_equal(masks[label], mask), label


def test_seg_and_sr_pass_dciodvfy(femur_run: AppRun) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    for name in (SEG_FILE, SR_FILE):
        completed = subprocess.run(["dciodvfy", "-new", str(femur_run.output / name)], capture_output=True,
                                   text=True, check=False)
        errors = [line for line in (completed.stdout + completed.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{name}: {errors}"


def test_report_and_summary_agree_with_the_seg(femur_run: AppRun) -> None:
    seg = pydicom.dcmread(femur_run.output / SEG_FILE)
    sr = pydicom.dcmread(femur_run.output / SR_FILE)
    labels = {str(s.SegmentLabel) for s in seg.SegmentSequence}
    report = json.loads((femur_run.output / REPORT_FILE).read_text())
    groups = read_findings_sr(sr)
    voxel_ml = float(np.prod(femur_run.loaded.volume.spacing)) / 1000.0

    assert report["femur_in_view"] is True
    assert report["outputs"]["segmentation"]["sop_instance_uid"] == seg.SOPInstanceUID
    assert report["outputs"]["structured_report"]["sop_instance_uid"] == sr.SOPInstanceUID
    assert report["study"]["series_instance_uid"] == femur_run.loaded.source_datasets[0].SeriesInstanceUID
    for side in ("left", "right"):
        femur = report["femurs"][side]
        assert femur["present"] == (f"{side.capitalize()} femur" in labels)
        mask = femur_run.segmentation.femurs[side].femur_mask
        assert femur["femur_volume_ml"] == pytest.approx(mask.sum() * voxel_ml, abs=0.01)
        has_lesion_segment = f"Lytic lesion, {side} femur" in labels
        if femur["n_lesions"]:
            assert has_lesion_segment
        group = groups[f"{side.capitalize()} femur"]
        assert group["evaluations"]["Lesion"] == ["Present" if femur["n_lesions"] else "Absent"]
        assert group["measurements"]["Number of lesions"][0] == femur["n_lesions"]
    assert (femur_run.output / SUMMARY_FILE).read_text().splitlines() == report["summary"] + [
        f"Note: {note}." for note in report["notes"]]


@pytest.mark.skipif(not CHEST_J2K.is_dir(), reason=f"real CT series not available ({CHEST_J2K})")
def test_real_chest_ct_is_no_femur_in_view(tmp_path: Path, lesion_model: Path) -> None:  # noqa: F811
    out = tmp_path / "out"
    process = run_app(["-i", str(CHEST_J2K), "-o", str(out), "-m", str(lesion_model)])
    assert process.returncode == 0, _failure_details(process)
    assert process.stderr == ""
    assert not (out / SEG_FILE).exists()
    summary = (out / SUMMARY_FILE).read_text().splitlines()
    assert summary[0] == "No femur in view."
    assert summary[1].startswith("Note: no femoral shaft found") and "no pair of femoral heads" in summary[1]
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["femur_in_view"] is False
    assert report["outputs"]["segmentation"] is None
    # Its StudyInstanceUID is empty (anonymised): no SR can reference it, and the log says why.
    assert not (out / SR_FILE).exists()
    assert "no DICOM SEG or SR: the CT series has no StudyInstanceUID" in process.stdout


def _assert_one_line_failure(process: subprocess.CompletedProcess[str], out: Path, *words: str) -> None:
    assert process.returncode == 2, _failure_details(process)
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), _failure_details(process)
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in process.stdout + process.stderr
    assert not out.exists() or os.listdir(out) == [], f"left in the output folder: {os.listdir(out)}"


def test_mr_only_input_fails_in_one_line(tmp_path: Path, lesion_model: Path) -> None:  # noqa: F811
    write_ct_series(tmp_path / "mr", modality="MR", n_slices=8, series_description="T1 axial")
    out = tmp_path / "out"
    process = run_app(["-i", str(tmp_path / "mr"), "-o", str(out), "-m", str(lesion_model)])
    _assert_one_line_failure(process, out)


def test_input_without_dicom_fails_in_one_line_as_a_map_runs_it(
    tmp_path: Path, lesion_model: Path,  # noqa: F811
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    # `python app`: the folder form a MAP uses (python3 /opt/holoscan/app).
    process = run_app(["-i", str(tmp_path / "in"), "-o", str(out), "-m", str(lesion_model)], as_folder=True)
    _assert_one_line_failure(process, out, "DICOM")
