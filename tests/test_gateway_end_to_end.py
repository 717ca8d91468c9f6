"""The gateway end to end, as a hospital runs it: a real Orthanc, the gateway in its own process, the real
application.

* ``watch``: a small synthetic study arrives in Orthanc by C-STORE; the gateway sees it become stable, runs
  the application and stores the SEG and SR into the study by STOW-RS. The SEG read back from Orthanc
  references the CT series and has the femur segments; the study sent again gets no second results; the
  gateway's log names no patient.
* ``receive`` with a restart: Orthanc pushes the study to the gateway's C-STORE port; the gateway is
  killed (SIGKILL) while the application runs, and started again; the study is finished exactly once
  (one SEG, one SR in Orthanc, sent back by C-STORE) and the killed run left no application process.
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests

from gateway.jobs import Job, JobQueue
from gateway.orthanc_server import LocalOrthanc, free_port
from synthetic_ct import WrittenStudy, generate_phantom, write_study
from tests.gateway_support import (GATEWAY_AET, client_of, processes_matching, send_study, start_gateway,
                                   start_orthanc, stop_gateway, wait_for, write_config)
from tests.test_app_model import lesion_model  # noqa: F401 - session fixture

pytestmark = pytest.mark.slow

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
APP_TIMEOUT_S = 400

try:
    import monai.deploy.core  # noqa: F401
except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when libcudart.so.13 is not found
    pytest.skip(f"holoscan cannot be imported ({type(exc).__name__}: {exc}); run through `make test`",
                allow_module_level=True)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """A small synthetic lower-body study (thin and thick axial series, localizer)."""
    return write_study(generate_phantom(23, "small"), tmp_path_factory.mktemp("gw-e2e") / "study")


def _job(database: Path, study_uid: str) -> Job | None:
    with JobQueue(path=database) as queue:
        return queue.find(study_uid)


def _results_in_pacs(pacs: LocalOrthanc, study_uid: str) -> dict[str, list[str]]:
    by_modality = client_of(pacs).instances_by_modality(study_uid)
    return {m: by_modality.get(m, []) for m in ("SEG", "SR")}


def _read_instance(pacs: LocalOrthanc, sop_uid: str) -> pydicom.Dataset:
    [found] = requests.post(f"{pacs.url}/tools/lookup", data=sop_uid, auth=pacs.auth, timeout=30).json()
    answer = requests.get(f"{pacs.url}/instances/{found['ID']}/file", auth=pacs.auth, timeout=60)
    return pydicom.dcmread(io.BytesIO(answer.content))


def _check_results(pacs: LocalOrthanc, study: WrittenStudy) -> None:
    results = _results_in_pacs(pacs, study.study_uid)
    assert len(results["SEG"]) == 1 and len(results["SR"]) == 1, results
    seg = hd.seg.Segmentation.from_dataset(_read_instance(pacs, results["SEG"][0]))
    assert seg.SOPClassUID == SEG_SOP_CLASS and seg.StudyInstanceUID == study.study_uid
    thin = study.series_by_role("thin")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == thin.uid  # the thin axial series was segmented
    labels = {s.SegmentLabel for s in seg.SegmentSequence}
    assert {"Left femur", "Right femur"} <= labels, labels
    sr = _read_instance(pacs, results["SR"][0])
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.StudyInstanceUID == study.study_uid


def test_watch_stores_seg_and_sr_into_the_study_once(tmp_path: Path, study: WrittenStudy,
                                                     lesion_model: Path) -> None:  # noqa: F811
    for pacs in start_orthanc(tmp_path / "orthanc"):
        config = write_config(tmp_path / "gateway.toml", pacs=pacs, model=lesion_model)
        log = tmp_path / "gateway.log"
        gateway = start_gateway("watch", config, log)
        try:
            send_study(pacs, study.study_dir)
            database = tmp_path / "gateway.sqlite"
            job = wait_for(lambda: (j := _job(database, study.study_uid)) is not None and j.state in ("done", "failed")
                           and j, timeout_s=APP_TIMEOUT_S, what="the job to finish", log=log)
            assert job.state == "done", f"{job.last_error}\n{log.read_text()[-4000:]}"
            assert job.attempts == 1 and job.results["stored"] == ["seg.dcm", "sr.dcm"]
            _check_results(pacs, study)

            # The SEG and SR make the study stable again: the gateway sees it and runs nothing more.
            wait_for(lambda: "stable again, already job" in log.read_text(), timeout_s=30,
                     what="the stable event caused by the results", log=log)
            assert len(_results_in_pacs(pacs, study.study_uid)["SEG"]) == 1
            assert not (tmp_path / "work" / f"job-{job.id}").exists()  # scratch removed
        finally:
            assert stop_gateway(gateway) == 0, log.read_text()[-3000:]

        text = log.read_text()
        header = pydicom.dcmread(study.series_by_role("thin").files[0], stop_before_pixels=True)
        for identifier in (str(header.PatientName), str(header.PatientID), str(header.get("PatientBirthDate", ""))):
            if identifier:
                assert identifier not in text, "the gateway's log names the patient"
        assert "application done" in text and "stored seg.dcm, sr.dcm" in text


def test_receive_killed_mid_run_and_restarted_finishes_the_study_exactly_once(
        tmp_path: Path, study: WrittenStudy, lesion_model: Path) -> None:  # noqa: F811
    port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"gateway": (GATEWAY_AET, "127.0.0.1", port)})
    for pacs in orthanc:
        config = write_config(tmp_path / "gateway.toml", pacs=pacs, model=lesion_model,
                              receive={"port": port}, results={"method": "cstore"})
        log = tmp_path / "gateway.log"
        database = tmp_path / "gateway.sqlite"
        send_study(pacs, study.study_dir)
        study_id = client_of(pacs).find_study(study.study_uid)

        gateway = start_gateway("receive", config, log)
        try:
            wait_for(lambda: f"{GATEWAY_AET} on 127.0.0.1:{port}" in log.read_text(), timeout_s=60,
                     what="the receiver to listen", log=log, interval_s=0.2)
            pushed = requests.post(f"{pacs.url}/modalities/gateway/store", data=study_id, auth=pacs.auth, timeout=120)
            assert pushed.status_code == 200, pushed.text
            # Kill the gateway once the application has started and written its first lines.
            app_log = tmp_path / "work" / "job-1" / "output-1.log"
            wait_for(lambda: app_log.is_file() and app_log.stat().st_size > 0, timeout_s=120,
                     what="the application to start", log=log, interval_s=0.2)
            job = _job(database, study.study_uid)
            assert job is not None and job.state == "running"
            time.sleep(2)
            os.kill(gateway.pid, signal.SIGKILL)
            gateway.wait()
            # The application died with the gateway (no orphan still computing).
            wait_for(lambda: not processes_matching(str(tmp_path / "work" / "job-1" / "output-1")), timeout_s=10,
                     what="the killed gateway's application to end")
            assert _results_in_pacs(pacs, study.study_uid) == {"SEG": [], "SR": []}

            gateway = start_gateway("receive", config, log)
            job = wait_for(lambda: (j := _job(database, study.study_uid)) is not None and j.state in ("done", "failed")
                           and j, timeout_s=APP_TIMEOUT_S, what="the job to finish after the restart", log=log)
            assert job.state == "done", f"{job.last_error}\n{log.read_text()[-4000:]}"
            assert job.attempts == 2  # the killed attempt counts
            assert "lease of" in log.read_text() and "expired" in log.read_text()
        finally:
            stop_gateway(gateway)
        _check_results(pacs, study)
        with JobQueue(path=database) as queue:
            assert queue.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}
        assert not any((tmp_path / "spool").iterdir())  # the received images were dropped once done
