"""Load: 30 small studies stored into a real Orthanc at once, the gateway (its own process, 2 workers)
takes them all, each study ends with one SEG and one SR, and the report gives studies per hour and peak
memory. In CI the application is the quick stand-in in its light mode (tests/standin_app.py), so that
what is measured is the gateway's own work (queue, downloads, uploads, processes); ``python -m
gateway.loadtest`` runs the same load with the real application."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.loadtest import main, run_load_test, template_study
from tests.gateway_support import require_orthanc, standin_command

pytestmark = pytest.mark.slow

STUDIES = 30
WORKERS = 2
GATEWAY_MEMORY_BOUND_MB = 400  # the gateway itself: queue, HTTP clients, two worker threads


def test_thirty_studies_at_once_all_finish_once_with_bounded_memory(tmp_path: Path) -> None:
    require_orthanc()
    template = template_study(tmp_path / "template")[::4]  # 25 images a study
    report = run_load_test(work=tmp_path, studies=STUDIES, workers=WORKERS, app_command=standin_command(),
                           model=tmp_path, app_env={"STANDIN_LIGHT": "1"}, template=template, timeout_s=240)
    assert report.passed, report.markdown()
    assert report.done == STUDIES and report.attempts == STUDIES  # each study processed once
    assert report.results_exactly_once
    assert report.studies_per_hour > 0 and report.processing_s > 0
    assert report.gateway_peak_rss_mb is not None and report.gateway_peak_rss_mb < GATEWAY_MEMORY_BOUND_MB
    # Recorded for every run (the light stand-in is a bare interpreter: ~8 MB, so no lower bound here).
    assert report.app_peak_rss_mb_max is not None and report.app_peak_rss_mb_median is not None
    assert 0 < report.app_peak_rss_mb_median <= report.app_peak_rss_mb_max
    text = report.markdown()
    assert "**studies per hour**" in text and "gateway peak memory" in text


def test_the_load_command_refuses_bad_arguments_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--studies", "0", "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err.strip() == "error: --studies and --workers must be at least 1"
    assert main(["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "report")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: no model folder")
    assert not (tmp_path / "report").exists()
