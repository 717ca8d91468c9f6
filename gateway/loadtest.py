"""Load test of the gateway on loopback: many studies arrive in Orthanc at once, the gateway processes them.

``python -m gateway.loadtest --studies 30 --workers 2 --out load-report`` writes one small synthetic
study (preset ``small``), copies it ``--studies`` times as different patients and studies (new UIDs and
identifiers), starts a local Orthanc (loopback, authentication, random password), stores every study
into it by STOW-RS in one burst, then starts ``python -m gateway watch`` with ``--workers`` workers and
waits until every job has ended. It reports:

* studies per hour: studies done / seconds from the first job created to the last job finished x 3600;
* peak resident memory of the gateway process (VmHWM, sampled until it stops) and of the application
  runs (the worker's samples, kept in each job's results);
* jobs done and failed, attempts, and whether every study holds exactly one SEG and one SR;
* every retried attempt with its reason, as the gateway logged it (a failed attempt, or a lease that ran out).

The application is the real one by default (``python -m app`` on the shipped model, CPU, mirroring off:
its preset costs ~10-20 s of imports and model per study on 2 cores); ``--app-command`` runs another
command with the application's contract instead (the gateway tests use a quick stand-in). The report is
``load-report.json`` and ``load-report.md`` in ``--out``. Exit status 0 when every study was done once
with one SEG and one SR, 1 otherwise, 2 with one line ``error: ...`` for a problem with the arguments
or the environment (no Orthanc, no model).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from gateway.jobs import JobQueue
from gateway.orthanc import OrthancClient
from gateway.orthanc_server import LocalOrthanc, OrthancUnavailableError
from operators.atomic_files import write_text_atomic

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
_SAMPLE_S = 0.5  # seconds between samples of the gateway's memory


@dataclass
class LoadReport:
    """What one load test measured (times in seconds, memory in MiB)."""

    studies: int
    workers: int
    app_command: list[str]
    instances_per_study: int
    done: int = 0
    failed: int = 0
    attempts: int = 0
    upload_s: float = 0.0
    processing_s: float = 0.0
    studies_per_hour: float = 0.0
    gateway_peak_rss_mb: float | None = None
    app_peak_rss_mb_max: float | None = None
    app_peak_rss_mb_median: float | None = None
    app_seconds_median: float | None = None
    results_exactly_once: bool = False
    cores: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    load_average: list[float] = field(default_factory=list)  # 1-minute load average, each minute of the run
    failures: list[str] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)  # the gateway's log line for each attempt made again

    @property
    def passed(self) -> bool:
        return self.done == self.studies and self.failed == 0 and self.results_exactly_once

    def markdown(self) -> str:
        def mb(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.0f} MiB"

        # The interpreter's path says where this machine keeps its files, not what ran.
        command = " ".join(["python" if i == 0 and c == sys.executable else c for i, c in enumerate(self.app_command)])
        load = (f"load average {min(self.load_average):.1f}-{max(self.load_average):.1f} during the run"
                if self.load_average else "load average not sampled")
        lines = [
            "# Gateway load test", "",
            f"{self.studies} studies ({self.instances_per_study} images each) stored into Orthanc at once, "
            f"{self.workers} worker(s), application `{command}`; {self.cores} CPU cores, {load}.", "",
            "| measure | value |", "|---|---|",
            f"| studies done / failed | {self.done} / {self.failed} |",
            f"| attempts (all jobs) | {self.attempts} |",
            f"| upload of all studies | {self.upload_s:.1f} s |",
            f"| processing (first job queued to last done) | {self.processing_s:.1f} s |",
            f"| **studies per hour** | **{self.studies_per_hour:.0f}** |",
            f"| gateway peak memory (RSS) | {mb(self.gateway_peak_rss_mb)} |",
            f"| application peak memory (RSS), max / median | {mb(self.app_peak_rss_mb_max)} / "
            f"{mb(self.app_peak_rss_mb_median)} |",
            f"| application run, median | "
            f"{'n/a' if self.app_seconds_median is None else f'{self.app_seconds_median:.1f} s'} |",
            f"| every study: one SEG and one SR | {'yes' if self.results_exactly_once else 'no'} |",
        ]
        if self.retries:
            lines += ["", "Attempts made again (the gateway's log):", *(f"- {line}" for line in self.retries)]
        if self.failures:
            lines += ["", "Failures:", *(f"- {line}" for line in self.failures)]
        return "\n".join(lines) + "\n"


def clone_study(files: Sequence[Path], out_dir: Path, *, index: int, patient_name: str | None = None,
                patient_id: str | None = None, birth_date: str | None = None) -> tuple[str, list[Path]]:
    """Copy a study's files into ``out_dir`` as another study of another patient: new Study, Series,
    SOP Instance and Frame of Reference UIDs (consistent within the copy) and new patient identifiers
    (given, or made from ``index``). Returns the new StudyInstanceUID and the files written."""
    mapping: dict[str, str] = {}

    def new(uid: str) -> str:
        return mapping.setdefault(uid, generate_uid())

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if keyword in ds:
                setattr(ds, keyword, new(str(getattr(ds, keyword))))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = patient_name or f"Load^Patient{index:03d}"
        ds.PatientID = patient_id or f"LOAD{index:05d}"
        ds.PatientBirthDate = birth_date or f"19{40 + index % 50:02d}0101"
        ds.AccessionNumber = f"LA{index:06d}"
        target = out_dir / f"{n:05d}.dcm"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return str(mapping[str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)]), written


def template_study(folder: Path, *, seed: int = 31, preset: str = "small", series: str = "thick") -> list[Path]:
    """Write one synthetic study (one axial series) and return its files."""
    from synthetic_ct import generate_phantom, write_study

    study = write_study(generate_phantom(seed, preset), folder, series=(series,))
    return sorted(study.series_by_role(series).files)


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a live process in MiB, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_load_test(*, work: Path, studies: int, workers: int, app_command: Sequence[str], model: Path,
                  app_env: dict[str, str] | None = None, timeout_s: float = 3600.0,
                  template: Sequence[Path] | None = None) -> LoadReport:
    """Run the whole load test in ``work`` (see the module docstring) and return its report."""
    files = list(template) if template is not None else template_study(work / "template")
    report = LoadReport(studies=studies, workers=workers, app_command=list(app_command),
                        instances_per_study=len(files))
    study_uids: list[str] = []
    clones: list[list[Path]] = []
    for index in range(studies):
        uid, written = clone_study(files, work / "studies" / f"{index:03d}", index=index)
        study_uids.append(uid)
        clones.append(written)
    with LocalOrthanc(folder=work / "orthanc", stable_age_s=1) as pacs:
        client = OrthancClient(url=pacs.url, auth=pacs.auth, timeout_s=300)
        started = time.monotonic()
        for uid, written in zip(study_uids, clones):
            client.stow(uid, written)
        report.upload_s = time.monotonic() - started
        config = _write_config(work / "gateway.toml", pacs=pacs, model=model, workers=workers,
                               app_command=app_command, app_env=app_env or {})
        log_path = work / "gateway.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOLOSCAN_")}
        with open(log_path, "ab") as log:
            gateway = subprocess.Popen([sys.executable, "-m", "gateway", "watch", "-c", str(config)], cwd=REPO_ROOT,
                                       env=env, stdout=log, stderr=subprocess.STDOUT)
        peak: float | None = None
        shown: tuple[int, int] | None = None
        next_load_sample = time.monotonic()
        try:
            deadline = time.monotonic() + timeout_s
            with JobQueue(path=work / "gateway.sqlite") as queue:
                while time.monotonic() < deadline:
                    peak = max(filter(None, (peak, peak_rss_mb(gateway.pid))), default=None)
                    if time.monotonic() >= next_load_sample:
                        report.load_average.append(round(os.getloadavg()[0], 2))
                        next_load_sample += 60.0
                    counts = queue.counts()
                    if (counts["done"], counts["failed"]) != shown:
                        shown = (counts["done"], counts["failed"])
                        logger.info("%d of %d studies done, %d failed (%.0f s)", shown[0], studies, shown[1],
                                    time.monotonic() - started)
                    if counts["done"] + counts["failed"] >= studies:
                        break
                    if gateway.poll() is not None:
                        report.failures.append(f"the gateway stopped with status {gateway.returncode}")
                        break
                    time.sleep(_SAMPLE_S)
                else:
                    report.failures.append(f"not finished within {timeout_s:.0f} s: {queue.counts()}")
                peak = max(filter(None, (peak, peak_rss_mb(gateway.pid))), default=None)
                jobs = queue.jobs()
        finally:
            if gateway.poll() is None:
                gateway.send_signal(signal.SIGTERM)
                try:
                    gateway.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    gateway.kill()
                    gateway.wait()
        report.gateway_peak_rss_mb = None if peak is None else round(peak, 1)
        report.retries = retried_attempts(log_path)
        report.done = sum(j.state == "done" for j in jobs)
        report.failed = sum(j.state == "failed" for j in jobs)
        report.attempts = sum(j.attempts for j in jobs)
        report.failures += [f"job {j.id} ({j.key}): {j.last_error}" for j in jobs if j.state == "failed"]
        finished = [j for j in jobs if j.state == "done" and j.finished_at is not None]
        if finished:
            report.processing_s = round(max(j.finished_at or 0 for j in finished) - min(j.created_at for j in jobs), 2)
            report.studies_per_hour = round(len(finished) / max(report.processing_s, 1e-6) * 3600.0, 1)
        peaks = [float(j.results["app_peak_rss_mb"]) for j in finished if (j.results or {}).get("app_peak_rss_mb")]
        seconds = [float(j.results["app_seconds"]) for j in finished if (j.results or {}).get("app_seconds")]
        if peaks:
            report.app_peak_rss_mb_max = round(max(peaks), 1)
            report.app_peak_rss_mb_median = round(statistics.median(peaks), 1)
        if seconds:
            report.app_seconds_median = round(statistics.median(seconds), 2)
        counts_ok = True
        for uid in study_uids:
            held = client.instances_by_modality(uid)
            if len(held.get("SEG", [])) != 1 or len(held.get("SR", [])) != 1:
                counts_ok = False
                report.failures.append(f"a study holds {len(held.get('SEG', []))} SEG and {len(held.get('SR', []))} SR")
        report.results_exactly_once = counts_ok and len(jobs) == studies
    return report


#: The queue's log lines for an attempt that will be made again (gateway.jobs): a failed attempt, a lost lease.
_RETRY_LINE = re.compile(r"attempt \d+ failed|lease of .* expired")


def retried_attempts(log_path: Path) -> list[str]:
    """The gateway log's lines (timestamp dropped) that report an attempt to be made again."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line.split(" ", 2)[-1] for line in lines if _RETRY_LINE.search(line)]


def _write_config(path: Path, *, pacs: LocalOrthanc, model: Path, workers: int, app_command: Sequence[str],
                  app_env: dict[str, str]) -> Path:
    def q(value: str) -> str:
        return json.dumps(value)  # a JSON string is a valid TOML basic string

    env = "".join(f"{key} = {q(value)}\n" for key, value in app_env.items())
    password_file = path.with_name("orthanc-password")
    password_file.write_text(pacs.password)
    password_file.chmod(0o600)
    path.write_text(
        f"[orthanc]\nurl = {q(pacs.url)}\nusername = {q(pacs.username)}\npassword_file = {q(str(password_file))}\n"
        "[watch]\npoll_interval_s = 0.5\nstart_at = \"beginning\"\n"
        f"[app]\nmodel = {q(str(model))}\ncommand = [{', '.join(q(c) for c in app_command)}]\n"
        "timeout_s = 1800\ndevice = \"cpu\"\nmirroring = false\n"
        f"[queue]\nworkers = {workers}\nlease_s = 30\nbackoff_base_s = 5\nmax_attempts = 3\n"
        f"[app.env]\n{env}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "model", help="lesion model folder")
    parser.add_argument("--app-command", default=None,
                        help="command with the application's contract (default: this Python, -m app)")
    parser.add_argument("--out", type=Path, default=Path("load-report"), help="folder for the report")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder, new or empty (default: a temporary one, removed afterwards)")
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    args = parser.parse_args(argv)
    command = shlex.split(args.app_command) if args.app_command else [sys.executable, "-m", "app"]
    if args.studies < 1 or args.workers < 1:
        print("error: --studies and --workers must be at least 1", file=sys.stderr)
        return 2
    if not args.model.is_dir():
        print(f"error: no model folder {args.model}", file=sys.stderr)
        return 2
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        print(f"error: the scratch folder {args.work} is not empty", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-load-") as scratch:
            work = args.work or Path(scratch)
            report = run_load_test(work=work, studies=args.studies, workers=args.workers, app_command=command,
                                   model=args.model.resolve(), timeout_s=args.timeout_s)
    except OrthancUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "load-report.json", json.dumps(asdict(report), indent=2) + "\n")
    write_text_atomic(args.out / "load-report.md", report.markdown())
    print(report.markdown())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
