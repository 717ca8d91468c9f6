"""The performance benchmark (``python -m benchmarks``): its report holds every stage, ratio and the machine.

The full run is the quick one (a small synthetic study, one scaling point, a two-row settings table) with
the application tests' model; tile step 1 keeps the stock path's whole-volume inference short. Timings are
not asserted: the machines are shared. What matters is that every stage was really run and measured, that
both paths chose the same series and wrote a SEG, and that the report is complete.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from benchmarks import our_path, stock_path
from benchmarks.cli import main
from benchmarks.machine import describe_machine
from benchmarks.memory import StageRecorder
from benchmarks.references import HIGHDICOM_STAGE, SIMPLEITK_STAGE
from benchmarks.studies import spacing_for_slices
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_each_stage_has_its_own_memory_peak() -> None:
    recorder = StageRecorder()
    with recorder.stage("big"):
        block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
        time.sleep(0.05)  # long enough for the sampling fallback to see it
        del block
    with recorder.stage("small"):
        time.sleep(0.05)
    big, small = recorder.records
    assert big.peak_rss_mib - small.peak_rss_mib > 200  # the second stage does not inherit the first's peak
    assert recorder.seconds("big", "small") >= 0.1


def test_slice_spacing_for_a_slice_count() -> None:
    assert spacing_for_slices(599.0, 600) == 1.0
    with pytest.raises(ValueError, match="allow"):
        spacing_for_slices(515.0, 40)  # 13 mm slices


def test_settings_rows_are_parsed_and_bad_ones_named(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.cli import build_parser

    args = build_parser().parse_args(["--settings", "on/0.5/plans, off/0.75/torch"])
    assert args.settings == [(True, 0.5, "plans"), (False, 0.75, "torch")]
    for bad, message in (("off/0.5/cubic", "is not MIRRORING/STEP/RESAMPLING"), ("off/fast/torch", "is not a number"),
                         ("off/1.5/torch", "tile step must be in (0, 1]")):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["--settings", bad])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_gpu_script_stops_with_a_clear_message_without_a_gpu(tmp_path: Path) -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("nvidia-smi is installed: on a GPU machine the script runs the whole benchmark")
    run = subprocess.run([str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "gpu")], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 3
    assert run.stderr.strip() == "error: no NVIDIA GPU visible (nvidia-smi missing or lists none); this check needs one"
    assert not (tmp_path / "gpu").exists()


@pytest.mark.slow
def test_quick_benchmark_reports_every_stage_ratio_and_the_machine(tmp_path: Path, lesion_model: Path) -> None:
    # A private copy: the shared model cache may be replaced by another test session while this one runs.
    model = shutil.copytree(lesion_model, tmp_path / "model")
    status = main(["--quick", "--tile-step", "1", "--slices", "100", "--cores", "2", "--device", "cpu",
                   "--model", str(model), "--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "report")])
    assert status == 0
    report = json.loads((tmp_path / "report" / "benchmark.json").read_text(encoding="utf-8"))
    main_entry = report["main"]

    ours = {s["name"] for s in main_entry["ours"]["stages"]}
    assert {our_path.MODEL_STAGE, *our_path.INGEST_STAGES, our_path.SPLIT_STAGE, "inference left",
            "inference right", our_path.OUTPUTS_STAGE, "SEG", "SR", "report"} <= ours
    stock = {s["name"] for s in main_entry["stock"]["stages"]}
    assert {stock_path.MODEL_STAGE, *stock_path.INGEST_STAGES, stock_path.INFERENCE_STAGE,
            stock_path.SEG_STAGE} <= stock
    assert {SIMPLEITK_STAGE, HIGHDICOM_STAGE} <= {s["name"] for s in main_entry["references"]["stages"]}
    for run in (main_entry["ours"], main_entry["stock"], main_entry["references"]):
        assert all(s["seconds"] >= 0 for s in run["stages"])
        assert all(s["peak_rss_mib"] is None or s["peak_rss_mib"] > 0 for s in run["stages"])
        assert run["peak_rss_mib"] > 0 and run["cpus"] and len(run["cpus"]) <= 2

    for target in main_entry["ratios"]["targets"]:
        assert isinstance(target["ratio"], float) and math.isfinite(target["ratio"]) and target["ratio"] > 0, target
        assert isinstance(target["met"], bool)
    figures = main_entry["ratios"]["figures"]
    assert figures["voxels_full_volume"] > figures["voxels_femur_crops"] > figures["voxels_femur_mask"] > 0

    # Both paths read the thin series of the three and wrote a SEG on it.
    study = main_entry["study"]
    assert study["n_series"] == 3 and main_entry["same_series"]
    assert main_entry["ours"]["result"]["series_uid"] == study["thin_series_uid"]
    assert {"seg.dcm", "sr.dcm", "report.json"} <= set(main_entry["ours"]["result"]["outputs"])
    stock_seg = next((tmp_path / "work" / "runs" / "main" / "stock-output").glob("*.dcm"))
    assert pydicom.dcmread(stock_seg, stop_before_pixels=True).SOPClassUID == SEG_SOP_CLASS

    (scaled,) = report["scaling"]
    assert abs(scaled["study"]["shape_zyx"][0] - 100) <= 3
    assert {stock_path.INFERENCE_STAGE} & {s["name"] for s in scaled["stock_ingest"]["stages"]} == set()
    rows = report["settings_table"]["result"]["rows"]
    assert [(r["use_mirroring"], r["tile_step_size"], r["input_resampling"]) for r in rows] == [
        (False, 0.5, "plans"), (False, 0.5, "torch")]
    assert all(r["seconds_per_femur"] > 0 for r in rows)

    markdown = (tmp_path / "report" / "benchmark.md").read_text(encoding="utf-8")
    machine = describe_machine("cpu")
    assert machine["cpu"] in markdown and f"{machine['cores']} cores usable" in markdown
    assert "torch device: cpu" in markdown
    assert "Growth with the number of slices" in markdown and "Inference settings" in markdown


def test_the_process_peak_counts_stages_whose_high_water_mark_was_reset_since() -> None:
    # Resetting VmHWM before each stage also lowers what ru_maxrss reports, so the process's peak must
    # take the stages' own peaks into account (a large first stage, then a small one).
    from benchmarks.memory import StageRecorder, process_peak_rss_mib

    recorder = StageRecorder()
    with recorder.stage("large"):
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        del block
    with recorder.stage("small"):
        pass
    large, small = (r.peak_rss_mib for r in recorder.records)
    assert large >= small + 150
    assert process_peak_rss_mib(recorder.records) >= large
