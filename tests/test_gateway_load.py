"""Load: 30 small studies stored into a real Orthanc at once, the gateway (its own process, 2 workers)
takes them all, each study ends with one SEG and one SR, and the report gives studies per hour and peak
memory. In CI the application is the quick stand-in in its light mode (tests/standin_app.py), so that
what is measured is the gateway's own work (queue, downloads, uploads, processes); ``python -m
gateway.loadtest`` runs the same load with the real application."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.loadtest import main, retried_attempts, run_load_test, template_study
from tests.gateway_support import require_orthanc, standin_command

pytestmark = pytest.mark.slow

STUDIES = 30
WORKERS = 2
MAX_RETRIES = 3  # retried attempts tolerated in one run (10 % of the studies), each with its logged reason
GATEWAY_MEMORY_BOUND_MB = 400  # the gateway itself: queue, HTTP clients, two worker threads


def test_thirty_studies_at_once_all_finish_once_with_bounded_memory(tmp_path: Path) -> None:
    require_orthanc()
    template = template_study(tmp_path / "template")[::4]  # 25 images a study
    report = run_load_test(work=tmp_path, studies=STUDIES, workers=WORKERS, app_command=standin_command(),
                           model=tmp_path, app_env={"STANDIN_LIGHT": "1"}, template=template, timeout_s=240)
    assert report.passed, report.markdown()
    assert report.done == STUDIES
    # Each study is processed once, unless an attempt failed for a reason that passes (the PACS slow to
    # answer on a loaded machine) or a lease ran out: then the gateway tries again, and must have said why.
    assert report.attempts == STUDIES + len(report.retries), report.markdown()
    assert len(report.retries) <= MAX_RETRIES, report.markdown()
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


def test_retried_attempts_are_read_from_the_gateway_log(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text(
        "2026-11-29 15:32:10,384 INFO gateway.jobs: job 3 (study 95bc9f2de2): claimed by vm:1:w0, attempt 1 of 3\n"
        "2026-11-29 15:32:11,001 WARNING gateway.jobs: job 3 (study 95bc9f2de2): attempt 1 failed "
        "(PACS timed out); next attempt in 5 s\n"
        "2026-11-29 15:32:12,002 WARNING gateway.jobs: job 4 (study 0148d4b89f): lease of vm:1:w1 expired, "
        "worker presumed dead\n"
        "2026-11-29 15:32:13,003 ERROR gateway.jobs: job 5 (study aae902d4e8): failed after 3 attempt(s): exit 2\n")
    assert retried_attempts(log) == [
        "WARNING gateway.jobs: job 3 (study 95bc9f2de2): attempt 1 failed (PACS timed out); next attempt in 5 s",
        "WARNING gateway.jobs: job 4 (study 0148d4b89f): lease of vm:1:w1 expired, worker presumed dead",
    ]
    assert retried_attempts(tmp_path / "missing.log") == []
