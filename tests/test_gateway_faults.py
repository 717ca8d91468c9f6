"""The gateway under faults, with a real Orthanc and the gateway in its own process (``python -m gateway
watch``). The application is the quick stand-in (tests/standin_app.py: same contract, seconds instead of
tens of seconds); the end-to-end tests run the real one.

* the application killed (SIGKILL) mid-study: the attempt fails with the signal as its reason, the next
  attempt finishes, the study holds one SEG and one SR;
* the gateway killed (SIGKILL) while its upload is half done (Orthanc holds the SEG, the SR is still
  arriving): after the restart the job is reclaimed when its lease runs out, finds its results in the
  PACS (results manifest) and ends done without running or sending anything again;
* an upload that hangs longer than the lease (2 workers): the worker keeps renewing its lease, the other
  worker does not take the study, one attempt;
* Orthanc stopped and started again while a study is computed: the upload fails and is retried with
  backoff, the watcher resumes from its saved change sequence and takes a study sent after the restart;
* the upload refused (a Lua ``ReceivedInstanceFilter`` that refuses SR, which Orthanc's DICOMweb plugin
  still answers with success): the reason is in the status and the log, the job is retried per policy,
  then failed and left alone; once the PACS accepts again, ``retry`` stores the same outputs (the
  application ran once) and the study holds one SEG and one SR;
* a full disk while the application writes: simulated with RLIMIT_FSIZE on the application process
  (``prlimit``, always available: writes beyond the limit fail with EFBIG, "File too large"), and,
  where the tests may mount file systems (root), with a real full tmpfs holding the work folder (ENOSPC)
  that is freed afterwards. The reason is visible, the partial output is removed, nothing is stored,
  and the job is retried (and, on the freed disk, finishes).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from gateway.jobs import JobQueue
from gateway.loadtest import clone_study, template_study
from gateway.orthanc_server import LocalOrthanc
from tests.gateway_support import (client_of, filter_script, finished_job, gateway_cli, job_of, processes_matching,
                                   results_in_pacs, standin_command, start_gateway, start_orthanc, stop_gateway,
                                   wait_for, write_config)

pytestmark = pytest.mark.slow

TIMEOUT_S = 90


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A small axial CT series (every fourth image of the small preset's thick series: 25 images)."""
    return template_study(tmp_path_factory.mktemp("gw-faults") / "template")[::4]


@pytest.fixture
def study(template: list[Path], tmp_path: Path) -> tuple[str, list[Path]]:
    """A study of its own for each test: (StudyInstanceUID, files)."""
    return clone_study(template, tmp_path / "study", index=1)


def _config(tmp_path: Path, pacs: LocalOrthanc, *, delay_s: float = 0.0, prefix: tuple[str, ...] = (),
            env: dict[str, str] | None = None, **sections: dict[str, object]) -> Path:
    app = {"command": standin_command(*prefix),
           "env": {"PYTHONDONTWRITEBYTECODE": "1", "STANDIN_DELAY_S": str(delay_s), **(env or {})}}
    queue = {"workers": 1, "lease_s": 3.0, "backoff_base_s": 1.0, "max_attempts": 3, **sections.pop("queue", {})}
    return write_config(tmp_path / "gateway.toml", pacs=pacs, model=tmp_path, app=app, queue=queue, **sections)


def _send(pacs: LocalOrthanc, study: tuple[str, list[Path]]) -> None:
    client_of(pacs).stow(study[0], study[1])


def _app_started(work: Path, job_id: int = 1, attempt: int = 1) -> bool:
    log = work / f"job-{job_id}" / f"output-{attempt}.log"
    return log.is_file()


def _one_seg_one_sr(pacs: LocalOrthanc, study_uid: str) -> None:
    held = results_in_pacs(pacs, study_uid)
    assert len(held["SEG"]) == 1 and len(held["SR"]) == 1, held


def test_the_application_killed_mid_study_is_run_again_and_its_results_stored_once(
        tmp_path: Path, study: tuple[str, list[Path]]) -> None:
    for pacs in start_orthanc(tmp_path / "orthanc"):
        config = _config(tmp_path, pacs, delay_s=3.0)
        log, database, work = tmp_path / "gateway.log", tmp_path / "gateway.sqlite", tmp_path / "work"
        gateway = start_gateway("watch", config, log)
        try:
            _send(pacs, study)
            wait_for(lambda: _app_started(work), timeout_s=60, what="the application to start", log=log,
                     interval_s=0.1)
            [app] = wait_for(lambda: processes_matching(str(work / "job-1" / "output-1")), timeout_s=10,
                             what="the application's process", interval_s=0.1)
            os.kill(app, signal.SIGKILL)
            job = finished_job(database, study[0], timeout_s=TIMEOUT_S, log=log)
        finally:
            assert stop_gateway(gateway) == 0
        text = log.read_text()
        assert job.state == "done" and job.attempts == 2, text[-3000:]
        assert "application exit -9: the application was ended by signal SIGKILL" in text
        assert not (work / "job-1").exists()  # the killed run's partial output and the job folder are gone
        _one_seg_one_sr(pacs, study[0])


def test_the_gateway_killed_during_the_upload_finishes_from_its_manifest_without_a_second_copy(
        tmp_path: Path, study: tuple[str, list[Path]]) -> None:
    flags = tmp_path / "flags"
    for pacs in start_orthanc(tmp_path / "orthanc", lua_scripts=(filter_script(flags),)):
        config = _config(tmp_path, pacs)
        log, database, work = tmp_path / "gateway.log", tmp_path / "gateway.sqlite", tmp_path / "work"
        (flags / "hold-SR").touch()  # the SR of the upload waits in Orthanc: the SEG is in, the upload not over
        gateway = start_gateway("watch", config, log)
        try:
            _send(pacs, study)
            wait_for(lambda: results_in_pacs(pacs, study[0])["SEG"], timeout_s=60, what="the SEG to arrive", log=log)
            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait()
            assert not processes_matching(str(work / "job-1" / "output-1"))
            (flags / "hold-SR").unlink()  # Orthanc stores the SR of the killed upload
            wait_for(lambda: results_in_pacs(pacs, study[0])["SR"], timeout_s=30, what="the SR to arrive")
            job = job_of(database, study[0])
            assert job is not None and job.state == "running" and len(job.results["instances"]) == 2

            gateway = start_gateway("watch", config, log)
            job = finished_job(database, study[0], timeout_s=TIMEOUT_S, log=log)
        finally:
            stop_gateway(gateway)
        text = log.read_text()
        assert job.state == "done" and job.attempts == 2, text[-3000:]
        assert "lease of" in text and "expired" in text
        assert "already in the PACS, not sent again: seg.dcm, sr.dcm" in text
        assert text.count("running the application") == 1 and job.results["sent"] == []
        _one_seg_one_sr(pacs, study[0])
        assert sorted(job.results["sop_instance_uids"]) == sorted(sum(results_in_pacs(pacs, study[0]).values(), []))


def test_an_upload_longer_than_the_lease_keeps_the_job_with_its_worker(
        tmp_path: Path, study: tuple[str, list[Path]]) -> None:
    flags = tmp_path / "flags"
    for pacs in start_orthanc(tmp_path / "orthanc", lua_scripts=(filter_script(flags),)):
        config = _config(tmp_path, pacs, queue={"workers": 2})  # a second worker ready to take the job
        log, database = tmp_path / "gateway.log", tmp_path / "gateway.sqlite"
        (flags / "hold-SR").touch()
        gateway = start_gateway("watch", config, log)
        try:
            _send(pacs, study)
            wait_for(lambda: results_in_pacs(pacs, study[0])["SEG"], timeout_s=60, what="the upload to begin", log=log)
            time.sleep(7)  # the upload hangs for more than twice the 3 s lease
            (flags / "hold-SR").unlink()
            job = finished_job(database, study[0], timeout_s=TIMEOUT_S, log=log)
        finally:
            stop_gateway(gateway)
        text = log.read_text()
        assert job.state == "done" and job.attempts == 1, text[-3000:]
        assert "expired" not in text and "lease lost" not in text
        _one_seg_one_sr(pacs, study[0])


def test_orthanc_restarted_mid_run_the_upload_is_retried_and_the_watcher_resumes(
        template: list[Path], tmp_path: Path, study: tuple[str, list[Path]]) -> None:
    later = clone_study(template, tmp_path / "later", index=2)
    for pacs in start_orthanc(tmp_path / "orthanc"):
        # Retries 5 s apart: the outage (and the status read during it) fits before the second attempt.
        config = _config(tmp_path, pacs, delay_s=3.0, queue={"max_attempts": 6, "backoff_base_s": 5.0})
        log, database, work = tmp_path / "gateway.log", tmp_path / "gateway.sqlite", tmp_path / "work"
        gateway = start_gateway("watch", config, log)
        try:
            _send(pacs, study)
            wait_for(lambda: _app_started(work), timeout_s=60, what="the application to start", log=log,
                     interval_s=0.1)
            pacs.stop()  # while the application computes
            wait_for(lambda: "attempt 1 failed" in log.read_text(), timeout_s=30, what="the upload to fail", log=log)
            job = job_of(database, study[0])
            assert job is not None and job.state == "queued" and "cannot reach the PACS" in (job.last_error or "")
            status = gateway_cli("status", "-c", str(config))
            assert "retry in" in status.stdout and "cannot reach the PACS" in status.stdout, status.stdout
            pacs.start()  # same folder and ports: same storage, database and change feed
            job = finished_job(database, study[0], timeout_s=TIMEOUT_S, log=log)
            assert job.state == "done", log.read_text()[-3000:]
            _send(pacs, later)  # arrives after the restart: the watcher still follows the feed
            later_job = finished_job(database, later[0], timeout_s=TIMEOUT_S, log=log)
        finally:
            stop_gateway(gateway)
        text = log.read_text()
        assert later_job.state == "done" and later_job.attempts == 1
        assert job.attempts >= 2 and text.count("running the application") == 2  # the results were not recomputed
        assert "watcher: " in text and "trying again" in text  # the watcher waited the outage out
        for uid in (study[0], later[0]):
            _one_seg_one_sr(pacs, uid)
        with JobQueue(path=database) as queue:
            assert queue.counts() == {"queued": 0, "running": 0, "done": 2, "failed": 0}


def test_a_refused_upload_is_retried_then_failed_with_its_reason_and_stored_once_after_retry(
        tmp_path: Path, study: tuple[str, list[Path]]) -> None:
    flags = tmp_path / "flags"
    for pacs in start_orthanc(tmp_path / "orthanc", lua_scripts=(filter_script(flags),)):
        config = _config(tmp_path, pacs)
        log, database = tmp_path / "gateway.log", tmp_path / "gateway.sqlite"
        (flags / "refuse-SR").touch()
        gateway = start_gateway("watch", config, log)
        try:
            _send(pacs, study)
            job = finished_job(database, study[0], timeout_s=TIMEOUT_S, log=log)
            assert job.state == "failed" and job.attempts == 3, log.read_text()[-3000:]
            assert job.last_error == "the PACS accepted the upload but does not hold sr.dcm (refused by its filters?)"
            time.sleep(3)  # failed is final: no further attempt
            assert job_of(database, study[0]).attempts == 3
            status = gateway_cli("status", "-c", str(config))
            assert "failed: 1" in status.stdout and "does not hold sr.dcm" in status.stdout, status.stdout
            assert results_in_pacs(pacs, study[0]) == {"SEG": results_in_pacs(pacs, study[0])["SEG"], "SR": []}

            (flags / "refuse-SR").unlink()  # the PACS is fixed; the operator retries
            retried = gateway_cli("retry", "-c", str(config), "--failed")
            assert retried.returncode == 0 and "queued again" in retried.stdout
            job = finished_job(database, study[0], timeout_s=TIMEOUT_S, log=log)
        finally:
            stop_gateway(gateway)
        text = log.read_text()
        assert job.state == "done", text[-3000:]
        assert text.count("running the application") == 1  # the same outputs were stored, not new ones
        assert "attempt 1 failed (the PACS accepted the upload but does not hold sr.dcm" in text
        assert "failed after 3 attempt(s)" in text
        assert job.results["sent"] == ["sr.dcm"]
        _one_seg_one_sr(pacs, study[0])


def test_a_full_disk_rlimit_fails_the_run_visibly_removes_the_partial_output_and_stores_nothing(
        tmp_path: Path, study: tuple[str, list[Path]]) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    for pacs in start_orthanc(tmp_path / "orthanc"):
        # Each file the application writes may hold 256 KiB; its SEG is padded to 1 MiB.
        config = _config(tmp_path, pacs, prefix=("prlimit", "--fsize=262144", "--"), env={"STANDIN_SEG_MB": "1"},
                         queue={"max_attempts": 2})
        log, database, work = tmp_path / "gateway.log", tmp_path / "gateway.sqlite", tmp_path / "work"
        gateway = start_gateway("watch", config, log)
        try:
            _send(pacs, study)
            job = finished_job(database, study[0], timeout_s=TIMEOUT_S, log=log)
        finally:
            stop_gateway(gateway)
        text = log.read_text()
        assert job.state == "failed" and job.attempts == 2, text[-3000:]
        assert job.last_error.startswith("application exit 1: cannot write the results: ")
        assert job.last_error.endswith("File too large"), job.last_error
        assert "attempt 1 failed (application exit 1: cannot write the results: " in text
        assert not list((work / "job-1").glob("output-*/")), "a partial output was left"
        assert results_in_pacs(pacs, study[0]) == {"SEG": [], "SR": []}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (a real file system that fills up), where the tests may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_disk_fails_the_attempt_and_the_study_finishes_once_space_is_freed(
        tmp_path: Path, study: tuple[str, list[Path]], small_disk: Path) -> None:
    for pacs in start_orthanc(tmp_path / "orthanc"):
        work = small_disk / "work"
        config = _config(tmp_path, pacs, delay_s=2.0, env={"STANDIN_SEG_MB": "1"},
                         queue={"work_dir": str(work), "backoff_base_s": 2.0})
        log, database = tmp_path / "gateway.log", tmp_path / "gateway.sqlite"
        gateway = start_gateway("watch", config, log)
        ballast = small_disk / "ballast"
        try:
            _send(pacs, study)
            wait_for(lambda: _app_started(work), timeout_s=60, what="the application to start", log=log,
                     interval_s=0.1)
            with open(ballast, "wb") as out:  # fill the disk while the application computes
                try:
                    while True:
                        out.write(b"\0" * (1 << 16))
                        out.flush()
                except OSError:
                    pass
            wait_for(lambda: "attempt 1 failed" in log.read_text(), timeout_s=30, what="the attempt to fail", log=log)
            job = job_of(database, study[0])
            assert job is not None and job.state == "queued"
            assert job.last_error.startswith("application exit 1: cannot write the results: ")
            assert job.last_error.endswith("No space left on device"), job.last_error
            assert not (work / "job-1" / "output-1").exists()  # the partial output is gone
            assert results_in_pacs(pacs, study[0]) == {"SEG": [], "SR": []}
            ballast.unlink()  # space freed: the next attempt finishes
            job = finished_job(database, study[0], timeout_s=TIMEOUT_S, log=log)
        finally:
            stop_gateway(gateway)
        assert job.state == "done" and job.attempts == 2, log.read_text()[-3000:]
        _one_seg_one_sr(pacs, study[0])
        assert pydicom.dcmread(study[1][0], stop_before_pixels=True).StudyInstanceUID == study[0]
