"""The gateway's job queue, series rules and configuration, without a PACS.

The queue is exercised through its SQLite file with a clock the tests move: restarts (a new JobQueue
on the same file), exactly-once per study, backoff, the end in ``failed``, lease expiry after a worker
died, and two workers racing for jobs.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pydicom
import pytest

from gateway.config import ConfigError, load_config
from gateway.jobs import JobQueue, RetryPolicy
from gateway.rules import SeriesInfo, SeriesRules, scan_extent_mm, series_from_datasets

UID = "1.2.826.0.1.3680043.8.498.1"
SOURCE = {"kind": "orthanc", "study": "abc", "series": ["1.2.3"]}


class Clock:
    """A clock the test moves by hand (Unix seconds)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _queue(path: Path, clock: Clock, **policy: float) -> JobQueue:
    return JobQueue(path=path / "jobs.sqlite", clock=clock,
                    policy=RetryPolicy(**{"max_attempts": 3, "backoff_base_s": 10, "backoff_max_s": 25,
                                          "lease_s": 60, **policy}))  # type: ignore[arg-type]


def test_a_job_survives_a_restart_and_is_done_once(tmp_path: Path, clock: Clock) -> None:
    with _queue(tmp_path, clock) as queue:
        assert queue.enqueue(study_uid=UID, source=SOURCE).action == "created"
    with _queue(tmp_path, clock) as queue:  # the gateway restarted
        job = queue.claim(owner="w1")
        assert job is not None and job.study_uid == UID and job.source == SOURCE and job.attempts == 1
        assert queue.complete(job.id, owner="w1", results={"stored": ["seg.dcm"]})
        # The same study sent again: no new job, no second run.
        again = queue.enqueue(study_uid=UID, source=SOURCE)
        assert again.action == "unchanged" and again.job.id == job.id and again.job.state == "done"
        assert queue.claim(owner="w1") is None
        assert queue.counts() == {"queued": 0, "running": 0, "done": 1, "failed": 0}
        # Unless asked: forced, it runs again (same job, attempts reset).
        forced = queue.enqueue(study_uid=UID, source=SOURCE, force=True)
        assert forced.action == "requeued" and forced.job.state == "queued" and forced.job.attempts == 0
        assert forced.job.results is None


def test_retryable_failures_back_off_exponentially_then_fail_with_the_reason(tmp_path: Path, clock: Clock) -> None:
    with _queue(tmp_path, clock) as queue:
        queue.enqueue(study_uid=UID, source=SOURCE)
        delays = []
        for attempt in (1, 2):
            job = queue.claim(owner="w1")
            assert job is not None and job.attempts == attempt
            failed = queue.fail(job.id, owner="w1", error=f"exit 1 on try {attempt}", permanent=False)
            assert failed is not None and failed.state == "queued"
            delays.append(failed.next_attempt_at - clock.now)
            assert queue.claim(owner="w1") is None  # not before the backoff
            clock.now = failed.next_attempt_at
        assert delays == [10, 20]
        job = queue.claim(owner="w1")
        assert job is not None and job.attempts == 3
        failed = queue.fail(job.id, owner="w1", error="exit 1\n on try 3", permanent=False)
        assert failed is not None and failed.state == "failed" and failed.last_error == "exit 1 on try 3"
        clock.now += 10_000
        assert queue.claim(owner="w1") is None
    assert RetryPolicy(backoff_base_s=10, backoff_max_s=25).backoff_s(5) == 25


def test_a_permanent_failure_is_not_retried_until_asked(tmp_path: Path, clock: Clock) -> None:
    with _queue(tmp_path, clock) as queue:
        queue.enqueue(study_uid=UID, source=SOURCE)
        job = queue.claim(owner="w1")
        assert job is not None
        failed = queue.fail(job.id, owner="w1", error="no usable series: not a CT", permanent=True)
        assert failed is not None and failed.state == "failed" and failed.attempts == 1
        assert queue.enqueue(study_uid=UID, source=SOURCE).action == "unchanged"
        retried = queue.retry(job.id)
        assert retried.state == "queued" and retried.attempts == 0 and retried.last_error is None
        assert queue.claim(owner="w2") is not None


def test_a_dead_workers_job_is_taken_again_after_its_lease_and_the_old_owner_cannot_finish_it(
        tmp_path: Path, clock: Clock) -> None:
    with _queue(tmp_path, clock) as queue:
        queue.enqueue(study_uid=UID, source=SOURCE)
        first = queue.claim(owner="dead")
        assert first is not None
        clock.now += 50
        assert queue.heartbeat(first.id, owner="dead")  # renewed: 60 s from now
        clock.now += 59
        assert queue.claim(owner="w2") is None  # lease still valid
        clock.now += 2
        second = queue.claim(owner="w2")
        assert second is not None and second.id == first.id and second.attempts == 2
        # The first worker wakes up: it holds nothing any more.
        assert not queue.heartbeat(first.id, owner="dead")
        assert not queue.complete(first.id, owner="dead", results={})
        assert queue.fail(first.id, owner="dead", error="x", permanent=True) is None
        assert queue.complete(second.id, owner="w2", results={"stored": []})
        assert queue.get(first.id).state == "done"


def test_a_job_that_keeps_killing_its_worker_ends_failed(tmp_path: Path, clock: Clock) -> None:
    with _queue(tmp_path, clock, max_attempts=2) as queue:
        queue.enqueue(study_uid=UID, source=SOURCE)
        for _ in range(2):
            assert queue.claim(owner="w") is not None
            clock.now += 61
        assert queue.claim(owner="w") is None
        job = queue.find(UID)
        assert job is not None and job.state == "failed" and "lease expired" in (job.last_error or "")


def test_released_jobs_are_queued_again_without_counting_an_attempt(tmp_path: Path, clock: Clock) -> None:
    with _queue(tmp_path, clock) as queue:
        queue.enqueue(study_uid=UID, source=SOURCE)
        job = queue.claim(owner="w1")
        assert job is not None and queue.release(job.id, owner="w1")
        again = queue.claim(owner="w2")
        assert again is not None and again.attempts == 1


def test_concurrent_workers_never_claim_the_same_job(tmp_path: Path) -> None:
    with JobQueue(path=tmp_path / "jobs.sqlite") as queue:
        for n in range(40):
            queue.enqueue(study_uid=f"{UID}.{n}", source=SOURCE)
    claimed: dict[str, list[int]] = {}

    def work(name: str) -> None:
        with JobQueue(path=tmp_path / "jobs.sqlite") as own:  # one connection per worker, as the gateway does
            mine = claimed.setdefault(name, [])
            while (job := own.claim(owner=name)) is not None:
                mine.append(job.id)
                own.complete(job.id, owner=name, results={})

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for ids in claimed.values() for i in ids]
    assert sorted(ids) == list(range(1, 41))
    with JobQueue(path=tmp_path / "jobs.sqlite") as queue:
        assert queue.counts()["done"] == 40


def test_settings_persist(tmp_path: Path) -> None:
    with JobQueue(path=tmp_path / "q.sqlite") as queue:
        assert queue.get_setting("feed") is None
        queue.set_setting("feed", "12")
        queue.set_setting("feed", "13")
    with JobQueue(path=tmp_path / "q.sqlite") as queue:
        assert queue.get_setting("feed") == "13"


# --------------------------------------------------------------------------------------------------
# Rules


def _series(**fields: object) -> SeriesInfo:
    base: dict[str, object] = dict(series_uid="1.2.3", modality="CT", body_part="PELVIS", description="Bone 1 B60f",
                                   image_types=("ORIGINAL", "PRIMARY", "AXIAL"), instances=200, extent_mm=400.0)
    base.update(fields)
    return SeriesInfo(**base)  # type: ignore[arg-type]


def test_rules_take_a_lower_body_ct_and_leave_out_the_rest() -> None:
    rules = SeriesRules()
    assert rules.qualifies(_series())
    assert rules.qualifies(_series(body_part="", description="CT Hüfte / FEMUR links"))
    assert rules.reasons_against(_series(modality="MR")) == ["modality MR"]
    assert rules.reasons_against(_series(image_types=("ORIGINAL", "PRIMARY", "LOCALIZER"), instances=1)) == [
        "image type LOCALIZER", "1 image(s) < 20"]
    assert not rules.qualifies(_series(body_part="CHEST", description="Lung 1 mm"))
    assert not rules.qualifies(_series(modality="SEG"))


def test_geometry_rule_accepts_a_long_scan_without_a_telling_name() -> None:
    anonymous = _series(body_part="", description="", extent_mm=350.0)
    assert not SeriesRules().qualifies(anonymous)
    assert SeriesRules(min_extent_mm=300).qualifies(anonymous)
    assert not SeriesRules(min_extent_mm=300).qualifies(_series(body_part="", description="", extent_mm=120.0))
    assert SeriesRules(body_parts=(), description_patterns=()).qualifies(anonymous)  # no coverage check at all


def test_scan_extent_follows_the_slice_normal() -> None:
    # Sagittal slices along x: rows along y, columns along -z; normal is x.
    positions = [[float(x), 10.0, 5.0] for x in range(0, 101, 5)]
    assert scan_extent_mm(positions, [0, 1, 0, 0, 0, -1]) == pytest.approx(100.0)
    assert scan_extent_mm([[0, 0, -300.0], [0, 0, 100.0]], None) == pytest.approx(400.0)
    assert scan_extent_mm([], None) is None


def test_series_are_described_from_received_headers() -> None:
    def header(series: str, z: float, image_type: str = "ORIGINAL\\PRIMARY\\AXIAL") -> pydicom.Dataset:
        ds = pydicom.Dataset()
        ds.SeriesInstanceUID, ds.Modality, ds.BodyPartExamined = series, "CT", "LEG"
        ds.SeriesDescription, ds.ImageType = "Bone", image_type.split("\\")
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
        return ds

    infos = series_from_datasets([header("1", z) for z in range(0, 90, 3)] + [header("2", 0, "ORIGINAL\\PRIMARY\\LOCALIZER")])
    assert [(i.series_uid, i.instances, i.extent_mm, i.body_part) for i in infos] == [("1", 30, 87.0, "LEG"),
                                                                                       ("2", 1, 0.0, "LEG")]
    assert [i.series_uid for i in SeriesRules().select(infos)] == ["1"]


# --------------------------------------------------------------------------------------------------
# Configuration


def test_configuration_paths_are_relative_to_the_file_and_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    path = tmp_path / "gateway.toml"
    path.write_text('[orthanc]\nurl = "http://pacs:8042"\nusername = "gw"\npassword_file = "secret"\n'
                    '[app]\nmodel = "model"\nmirroring = false\n[queue]\nworkers = 2\n'
                    '[rules]\nbody_parts = ["PELVIS"]\nmin_extent_mm = 250\n')
    config = load_config(path)
    assert config.orthanc.password == "s3cret" and config.app.model == (tmp_path / "model").resolve()
    assert config.queue.database == (tmp_path / "gateway.sqlite").resolve() and config.queue.workers == 2
    assert config.rules.body_parts == ("PELVIS",) and config.rules.min_extent_mm == 250
    assert config.receive.spool == (tmp_path / "spool").resolve()

    for text, message in [("[app]\nmodel = 'm'\n[queue]\nworkerz = 1\n", "unknown key(s) in [queue]: workerz"),
                          ("[queue]\nworkers = 1\n", "app.model is required"),
                          ("[app]\nmodel = 'm'\n[watch]\nstart_at = 'yesterday'\n", "watch.start_at"),
                          ("[app\n", "not valid TOML"),
                          ("[app]\nmodel = 'm'\n[rules]\ndescription_patterns = ['(']\n", "invalid description pattern")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            load_config(path)
        assert "\n" not in str(info.value)
