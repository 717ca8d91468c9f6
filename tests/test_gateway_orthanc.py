"""The gateway against a real Orthanc (started by the tests on loopback, authentication on), without the
application: the watcher's stable-study events and rules, the C-STORE receiver fed by Orthanc, the
Orthanc client, and the command line's one-line errors."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests

from gateway.config import ReceiveSettings
from gateway.jobs import JobQueue
from gateway.orthanc_server import LocalOrthanc, free_port, free_ports
from gateway.rules import SeriesRules
from gateway.scp import Receiver
from gateway.watcher import Watcher
from synthetic_ct import WrittenStudy, generate_phantom, write_study
from tests.gateway_support import (GATEWAY_AET, REPO_ROOT, client_of, require_orthanc, send_study, start_orthanc,
                                   wait_for, write_config)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> WrittenStudy:
    """A small synthetic lower-body study: thin and thick axial CT series and a localizer."""
    return write_study(generate_phantom(21, "small"), tmp_path_factory.mktemp("gw-study") / "study")


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[LocalOrthanc]:
    yield from start_orthanc(tmp_path / "orthanc")


def test_ports_asked_for_together_are_distinct() -> None:
    # Two ports asked for one after the other can be the same (the first was released before the second
    # was bound); Orthanc given one port for HTTP and DICOM fails to start.
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert all(1024 <= p <= 65535 for p in ports)


def test_orthanc_runs_with_authentication_and_dicomweb(pacs: LocalOrthanc) -> None:
    assert requests.get(pacs.url + "/system", timeout=10).status_code == 401
    assert requests.get(pacs.url + "/system", auth=pacs.auth, timeout=10).json()["DicomAet"] == pacs.aet
    assert requests.get(pacs.dicomweb_url + "/studies", auth=pacs.auth, timeout=10).status_code == 200


def test_the_watcher_queues_a_stable_ct_study_once_with_its_volume_series(
        pacs: LocalOrthanc, small_study: WrittenStudy, tmp_path: Path) -> None:
    client = client_of(pacs)
    with JobQueue(path=tmp_path / "jobs.sqlite") as queue:
        watcher = Watcher(client=client, queue=queue, rules=SeriesRules(), start_at="now")
        assert watcher.poll_once() == 0  # sets the feed position before the study arrives
        localizer = small_study.series_by_role("localizer").files
        volumes_files = [f for s in small_study.series if s.role != "localizer" for f in s.files]
        assert send_study(pacs, volumes_files) == len(volumes_files)
        wait_for(lambda: watcher.poll_once() or queue.jobs(), timeout_s=30, what="the StableStudy event")
        [job] = queue.jobs()
        assert job.study_uid == small_study.study_uid and job.state == "queued" and job.source["kind"] == "orthanc"
        volumes = {small_study.series_by_role("thin").uid, small_study.series_by_role("thick").uid}
        assert set(job.source["series"]) == volumes
        assert queue.get_setting(f"orthanc-changes:{pacs.url}") == str(client.last_change())

        # More of the same study arrives later (the localizer): stable again, still one job.
        stable_events = lambda: [c for c in client.changes(since=0, limit=10_000)[0]  # noqa: E731
                                 if c.change_type == "StableStudy"]
        assert len(stable_events()) == 1
        send_study(pacs, localizer)
        wait_for(lambda: len(stable_events()) == 2, timeout_s=30, what="the second StableStudy event")
        assert watcher.poll_once() == 0 and len(queue.jobs()) == 1
        assert queue.get(job.id).source == job.source

        # A restarted watcher resumes from the saved position instead of "now".
        restarted = Watcher(client=client, queue=queue, rules=SeriesRules(), start_at="now")
        assert restarted.position() == client.last_change()

        # The client downloads exactly the instances of a series.
        [series] = [s for s in client.study_series(job.source["study"], modalities=("CT",))
                    if s.info.series_uid == small_study.series_by_role("thin").uid]
        assert series.info.image_types[:2] == ("ORIGINAL", "PRIMARY") and series.info.extent_mm
        files = client.download_instances(series.instance_ids[:3], tmp_path / "download")
        assert {pydicom.dcmread(f).SeriesInstanceUID for f in files} == {series.info.series_uid}


def test_a_study_without_a_qualifying_series_is_not_queued(pacs: LocalOrthanc, small_study: WrittenStudy,
                                                            tmp_path: Path) -> None:
    with JobQueue(path=tmp_path / "jobs.sqlite") as queue:
        # Rules for chest CT only: the lower-body study does not qualify.
        watcher = Watcher(client=client_of(pacs), queue=queue, start_at="beginning",
                          rules=SeriesRules(body_parts=("CHEST",), description_patterns=("lung",)))
        send_study(pacs, small_study.series_by_role("thin").files)
        study_id = client_of(pacs).find_study(small_study.study_uid)
        wait_for(lambda: requests.get(f"{pacs.url}/studies/{study_id}", auth=pacs.auth, timeout=10).json()["IsStable"],
                 timeout_s=30, what="the study to become stable")
        watcher.poll_once()
        assert queue.jobs() == []


def test_the_receiver_queues_a_study_that_orthanc_pushes(small_study: WrittenStudy, tmp_path: Path) -> None:
    require_orthanc()
    port = free_port()
    with LocalOrthanc(folder=tmp_path / "orthanc", modalities={"gateway": (GATEWAY_AET, "127.0.0.1", port)}) as pacs, \
            JobQueue(path=tmp_path / "jobs.sqlite") as queue:
        send_study(pacs, small_study.study_dir)
        settings = ReceiveSettings(aet=GATEWAY_AET, host="127.0.0.1", port=port, spool=tmp_path / "spool", quiet_s=0.5)
        receiver = Receiver(settings=settings, queue=queue, rules=SeriesRules())
        receiver.start()
        try:
            study_id = client_of(pacs).find_study(small_study.study_uid)
            answer = requests.post(f"{pacs.url}/modalities/gateway/store", data=study_id, auth=pacs.auth, timeout=120)
            assert answer.status_code == 200, answer.text
            assert receiver.flush(now=time.monotonic()) == 0  # quiet period not over yet
            wait_for(lambda: receiver.flush(), timeout_s=10, what="the study to be queued")
        finally:
            receiver.stop()
        [job] = queue.jobs()
        thin = small_study.series_by_role("thin")
        assert job.source["kind"] == "spool" and thin.uid in job.source["series"]
        folder = Path(job.source["folder"])
        assert sorted(p.name for p in (folder / thin.uid).iterdir()) == sorted(
            f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in thin.files)

        # A gateway restarted before queuing finds what is in the spool; the known study is not queued twice.
        again = Receiver(settings=settings, queue=queue, rules=SeriesRules())
        assert again.recover() == 1 and again.flush(now=time.monotonic() + 1) == 0 and len(queue.jobs()) == 1


def test_the_command_line_reports_a_wrong_password_in_one_line(pacs: LocalOrthanc, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.toml", pacs=pacs, model=tmp_path, orthanc={"password": "wrong"})
    run = subprocess.run([sys.executable, "-m", "gateway", "watch", "-c", str(config)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == "error: system information: the PACS refused the credentials (HTTP 401)"
    status = subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(config)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout.startswith("queued: 0  running: 0  done: 0  failed: 0")
