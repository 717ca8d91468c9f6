"""Workers: claim a job, gather the study's qualifying series, run the application, store the results.

One job, step by step (folder ``<work_dir>/job-<id>/``):

1. If an earlier attempt already produced outputs and recorded them in the queue (it was stopped or
   refused while storing), those same files are stored again: same SOPInstanceUIDs. Were the files lost
   meanwhile, the PACS is asked whether it holds the recorded instances: all there, the job is done
   without running anything; none there, the application runs again; some there, the job fails for good
   with that reason (a new run would put a second SEG beside the first).
2. Otherwise the qualifying series are copied into ``input/`` (downloaded from Orthanc, or hard-linked
   from the receiver's spool), and ``python -m app -i input -o output-<attempt> -m MODEL`` runs in its
   own process, with a timeout, dying with the gateway (so a killed gateway leaves no orphan). A run
   that fails (or is stopped) has its output folder removed, so nothing partial is ever stored.
3. Exit 0: seg.dcm and sr.dcm (whichever exist) are recorded in the queue with their SOPInstanceUIDs
   (the results manifest), then the instances the PACS does not already hold are stored (STOW-RS or
   C-STORE), then the job is done and its folder removed.
   Exit 2 (a problem with the input or model): failed for good, with the application's one-line reason.
   Exit 1, a crash or a signal (e.g. a full disk, the process killed), a timeout or a PACS problem
   (unreachable, refused the upload): tried again after the backoff, until the attempts are used up.

While it works the worker renews the job's lease every third of ``lease_s`` (in a background thread, so
that long downloads and uploads keep it too); if the lease is lost (the queue gave the job to another
worker) it stops the application and leaves the outcome to the other.
The application's peak resident memory (sampled from /proc about twice a second) and run time are
logged and kept in the job's results.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pydicom

from gateway.config import AppSettings
from gateway.jobs import Job, JobQueue
from gateway.orthanc import OrthancClient, PacsError
from gateway.store import ResultStore
from operators.safe_names import safe_name

logger = logging.getLogger(__name__)

RESULT_FILES = ("seg.dcm", "sr.dcm")  # what goes back into the PACS, in this order
_STACK_BYTES = 32 * 1024 * 1024  # Holoscan wants 32 MB of stack (ulimit -s 32768)
_PR_SET_PDEATHSIG = 1
_APP_EXIT_INPUT = 2
_STDERR_LINES = 200  # last lines of the application's standard error kept for its error line
_MEMORY_SAMPLE_S = 0.5  # seconds between samples of the application's peak memory


class JobFailure(Exception):
    """An attempt failed; ``permanent`` says whether trying again could help."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(" ".join(message.split()))
        self.permanent = permanent


class LeaseLost(Exception):
    """The queue gave the job to another worker (this one was too slow to renew its lease)."""


class ShuttingDown(Exception):
    """The gateway is stopping; the job goes back to the queue."""


@dataclass(frozen=True)
class AppRun:
    """Outcome of one run of the application: exit status, the error line (stderr), seconds taken and
    peak resident memory in MiB (None where /proc cannot tell)."""

    status: int
    error: str
    seconds: float
    peak_rss_mb: float | None = None


class Worker:
    """Runs jobs from ``queue`` until ``stop`` is set.

    Parameters
    ----------
    queue
        The job queue (its own connection: one per worker thread).
    app
        How to run the application.
    work_dir
        Scratch folder; each job works in ``job-<id>/`` below it, removed when the job is done.
    store
        Where results go.
    orthanc
        Source of studies queued by the watcher (None in a receiver-only gateway).
    stop
        Set to make the worker give its job back and return.
    name
        Lease owner name; default ``<host>:<pid>:<thread>``.
    """

    def __init__(self, *, queue: JobQueue, app: AppSettings, work_dir: Path, store: ResultStore,
                 orthanc: OrthancClient | None, stop: threading.Event, name: str | None = None,
                 idle_poll_s: float = 1.0) -> None:
        self.queue = queue
        self.app = app
        self.work_dir = work_dir
        self.store = store
        self.orthanc = orthanc
        self.stop = stop
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"
        self.idle_poll_s = idle_poll_s

    def run_forever(self) -> None:
        """Claim and run jobs until ``stop`` is set."""
        logger.info("worker %s started", self.name)
        while not self.stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # noqa: BLE001 - a bug must not end the worker; the job's lease will expire
                logger.exception("worker %s: unexpected error", self.name)
                worked = False
            if not worked:
                self.stop.wait(self.idle_poll_s)
        logger.info("worker %s stopped", self.name)

    def run_once(self) -> bool:
        """Claim one due job and run it; False when there was none."""
        job = self.queue.claim(owner=self.name)
        if job is None:
            return False
        try:
            with _LeaseKeeper(queue=self.queue, job_id=job.id, owner=self.name):
                results = self._process(job)
        except JobFailure as failure:
            self.queue.fail(job.id, owner=self.name, error=str(failure), permanent=failure.permanent)
        except PacsError as error:
            self.queue.fail(job.id, owner=self.name, error=str(error), permanent=False)
        except OSError as error:
            self.queue.fail(job.id, owner=self.name, error=f"{type(error).__name__}: {error.strerror or error}",
                            permanent=False)
        except LeaseLost:
            logger.warning("job %d (study %s): lease lost, leaving the job to its new owner", job.id, job.key)
        except ShuttingDown:
            self.queue.release(job.id, owner=self.name)
        else:
            if self.queue.complete(job.id, owner=self.name, results=results):
                shutil.rmtree(self._job_dir(job), ignore_errors=True)
                self._discard_spool(job)
            else:
                logger.warning("job %d (study %s): lease lost before completion", job.id, job.key)
        return True

    # ---------------------------------------------------------------------------------------------

    def _job_dir(self, job: Job) -> Path:
        return self.work_dir / f"job-{job.id}"

    def _process(self, job: Job) -> dict[str, Any]:
        job_dir = self._job_dir(job)
        job_dir.mkdir(parents=True, exist_ok=True)
        earlier = _manifest(job.results)
        if earlier is not None and all(Path(entry["file"]).is_file() for entry in earlier):
            logger.info("job %d (study %s): storing the outputs of an earlier attempt", job.id, job.key)
            return self._store(job, earlier, run=None)
        if earlier:
            # The files of an earlier attempt are gone (e.g. the work folder was cleaned): what reached
            # the PACS decides, never a second SEG beside the first.
            self._check_lease(job)
            uids = [entry["sop_instance_uid"] for entry in earlier]
            present = self.store.present(job.study_uid, uids)
            if present is not None and present >= set(uids):
                logger.info("job %d (study %s): the results of an earlier attempt are all in the PACS", job.id,
                            job.key)
                return _results(earlier, sent=[], run=None)
            if present:
                raise JobFailure("the results of an earlier attempt are partly in the PACS and their files are "
                                 "gone; remove them from the study, then retry", permanent=True)
        manifest, run = self._produce(job)
        return self._store(job, manifest, run=run)

    def _produce(self, job: Job) -> tuple[list[dict[str, str]], AppRun]:
        """Gather the input, run the application and record its outputs (the results manifest)."""
        job_dir = self._job_dir(job)
        input_dir = job_dir / "input"
        shutil.rmtree(input_dir, ignore_errors=True)  # never trust a partial copy of an earlier attempt
        count = self._gather_input(job, input_dir)
        logger.info("job %d (study %s): %d image(s) gathered, running the application", job.id, job.key, count)
        output_dir = job_dir / f"output-{job.attempts}"
        shutil.rmtree(output_dir, ignore_errors=True)
        try:
            run = self._run_app(job, input_dir, output_dir)
            if run.status != 0:
                what = run.error or _status_text(run.status)
                if run.status == _APP_EXIT_INPUT:
                    raise JobFailure(what, permanent=True)
                raise JobFailure(f"application exit {run.status}: {what}", permanent=False)
            outputs = [output_dir / name for name in RESULT_FILES if (output_dir / name).is_file()]
            manifest = [_describe(path) for path in outputs]
        except BaseException:
            # Whatever a failed or stopped run left (a half-written file on a full disk) goes: only a
            # complete run's outputs are ever recorded or stored.
            shutil.rmtree(output_dir, ignore_errors=True)
            raise
        memory = "" if run.peak_rss_mb is None else f", peak memory {run.peak_rss_mb:.0f} MiB"
        logger.info("job %d (study %s): application done in %.0f s%s; outputs: %s", job.id, job.key, run.seconds,
                    memory, ", ".join(p.name for p in outputs) or "none to store")
        self._check_lease(job)
        # Recorded before storing: a worker that takes over after a crash stores these same files, or
        # finds them in the PACS.
        self.queue.record_results(job.id, owner=self.name, results={
            "outputs": [str(p) for p in outputs], "instances": manifest})
        return manifest, run

    def _store(self, job: Job, manifest: list[dict[str, str]], *, run: AppRun | None) -> dict[str, Any]:
        """Store the manifest's instances that the PACS does not hold yet; returns the job's results."""
        self._check_lease(job)
        uids = [entry["sop_instance_uid"] for entry in manifest]
        present = (self.store.present(job.study_uid, uids) if manifest else None) or set()
        send = [entry for entry in manifest if entry["sop_instance_uid"] not in present]
        if present:
            logger.info("job %d (study %s): already in the PACS, not sent again: %s", job.id, job.key,
                        ", ".join(Path(e["file"]).name for e in manifest if e["sop_instance_uid"] in present))
        self.store.store(job.study_uid, [Path(entry["file"]) for entry in send])
        if send:
            # A PACS may answer an upload with success and keep nothing (Orthanc's DICOMweb plugin does so
            # for instances its ReceivedInstanceFilter refuses): what counts is what it holds afterwards.
            held = self.store.present(job.study_uid, [entry["sop_instance_uid"] for entry in send])
            missing = [Path(e["file"]).name for e in send if held is not None and e["sop_instance_uid"] not in held]
            if missing:
                raise PacsError(f"the PACS accepted the upload but does not hold {', '.join(missing)} "
                                "(refused by its filters?)")
        logger.info("job %d (study %s): stored %s in the PACS", job.id, job.key,
                    ", ".join(Path(e["file"]).name for e in send) or "nothing")
        return _results(manifest, sent=send, run=run)

    def _check_lease(self, job: Job) -> None:
        if self.stop.is_set():
            raise ShuttingDown()
        if not self.queue.heartbeat(job.id, owner=self.name):
            raise LeaseLost()

    def _gather_input(self, job: Job, input_dir: Path) -> int:
        """Copy the job's qualifying series into ``input_dir``; returns the number of files."""
        source = job.source
        series = set(source.get("series", []))
        if source.get("kind") == "orthanc":
            if self.orthanc is None:
                raise JobFailure("job comes from Orthanc but no [orthanc] server is configured", permanent=True)
            instance_ids: list[str] = []
            for s in self.orthanc.study_series(str(source["study"]), modalities=()):
                if s.info.series_uid in series:
                    instance_ids.extend(s.instance_ids)
            if not instance_ids:
                raise JobFailure("the study's qualifying series are no longer in the PACS", permanent=True)
            staging = input_dir.with_name(input_dir.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            self.orthanc.download_instances(instance_ids, staging)
            staging.rename(input_dir)  # the input folder exists only when complete
            return len(instance_ids)
        if source.get("kind") == "spool":
            folder = Path(str(source["folder"]))
            if not folder.is_dir():
                raise JobFailure("the received images are no longer in the spool folder", permanent=True)
            return _link_series(folder, input_dir, series)
        raise JobFailure(f"unknown job source {source.get('kind')!r}", permanent=True)

    def _run_app(self, job: Job, input_dir: Path, output_dir: Path) -> AppRun:
        """Run the application on ``input_dir``; renews the lease and samples its memory while it runs."""
        command = [*self.app.command, "-i", str(input_dir), "-o", str(output_dir), "-m", str(self.app.model)]
        log_path = output_dir.with_name(output_dir.name + ".log")
        err_path = output_dir.with_name(output_dir.name + ".err")
        heartbeat_s = max(self.queue.policy.lease_s / 3.0, 0.2)
        started = time.monotonic()
        last_heartbeat = started
        peak_kb: int | None = None
        with open(log_path, "wb") as log:
            # Standard error comes through a pipe and its last lines are kept in memory: the error line
            # must reach the queue even when the disk is full.
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                       env=self._app_env(), cwd=self._job_dir(job), preexec_fn=_child_setup)
            assert process.stderr is not None
            tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
            reader = threading.Thread(target=_drain, args=(process.stderr, err_path, tail), daemon=True,
                                      name=f"app-stderr-{job.id}")
            reader.start()
            try:
                while True:
                    peak_kb = max(filter(None, (peak_kb, _peak_rss_kb(process.pid))), default=None)
                    try:
                        process.wait(timeout=min(heartbeat_s, _MEMORY_SAMPLE_S))
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.monotonic()
                    if now - started > self.app.timeout_s:
                        raise JobFailure(f"the application did not finish within {self.app.timeout_s:.0f} s",
                                         permanent=False)
                    if now - last_heartbeat >= heartbeat_s:
                        self._check_lease(job)
                        last_heartbeat = now
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                reader.join(timeout=10)
        lines = [line for line in tail if line.strip()]
        error = next((line.removeprefix("error: ") for line in reversed(lines) if line.startswith("error: ")),
                     lines[-1] if lines else "")
        return AppRun(status=process.returncode, error=error.strip(), seconds=time.monotonic() - started,
                      peak_rss_mb=None if peak_kb is None else peak_kb / 1024.0)

    def _app_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HOLOSCAN_")}  # -i/-o/-m decide
        cudart = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cu13" / "lib"
        if cudart.is_dir():  # Holoscan loads libcudart.so.13 from the CUDA runtime wheel
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p)
        env["FEMUR_LESION_DEVICE"] = self.app.device
        env["FEMUR_LESION_MIRRORING"] = "1" if self.app.mirroring else "0"
        env.update(self.app.env)
        return env

    def _discard_spool(self, job: Job) -> None:
        if job.source.get("kind") == "spool":
            shutil.rmtree(str(job.source["folder"]), ignore_errors=True)


class _LeaseKeeper:
    """Renews a job's lease in a background thread, every third of ``lease_s``, while the worker is on it.

    The worker also renews it at each step (:meth:`Worker._check_lease`), but a long download or upload
    (a large series, a slow PACS) has no steps: without this the lease would run out and a second worker
    would take the same study while the first is still on it.
    """

    def __init__(self, *, queue: JobQueue, job_id: int, owner: str) -> None:
        self.queue, self.job_id, self.owner = queue, job_id, owner
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        interval_s = max(self.queue.policy.lease_s / 3.0, 0.2)
        while not self._done.wait(interval_s):
            try:
                if not self.queue.heartbeat(self.job_id, owner=self.owner):
                    return  # lost: the worker notices at its next step
            except Exception:  # noqa: BLE001 - e.g. the database busy for long; the next beat tries again
                logger.debug("job %d: lease renewal failed", self.job_id, exc_info=True)


def _describe(path: Path) -> dict[str, str]:
    """One entry of the results manifest: the file, its SOPInstanceUID and modality (no patient data)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        return {"file": str(path), "sop_instance_uid": str(header.SOPInstanceUID), "modality": str(header.Modality)}
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        raise JobFailure(f"the application's output {path.name} is not readable DICOM ({type(error).__name__})",
                         permanent=False) from None


def _manifest(results: dict[str, Any] | None) -> list[dict[str, str]] | None:
    """The results manifest recorded by an earlier attempt, or None. Outputs recorded without their
    SOPInstanceUIDs (by an older gateway) are read again when their files are still there."""
    if not results:
        return None
    if isinstance(results.get("instances"), list):
        return [dict(entry) for entry in results["instances"]]
    if isinstance(results.get("outputs"), list):
        paths = [Path(p) for p in results["outputs"]]
        return [_describe(p) for p in paths] if all(p.is_file() for p in paths) else None
    return None


def _results(manifest: list[dict[str, str]], *, sent: list[dict[str, str]], run: AppRun | None) -> dict[str, Any]:
    """What a done job keeps: the files now in the PACS, their SOPInstanceUIDs, what this attempt sent
    and, when it ran the application, its run time (s) and peak memory (MiB)."""
    results: dict[str, Any] = {
        "stored": [Path(entry["file"]).name for entry in manifest],
        "sop_instance_uids": [entry["sop_instance_uid"] for entry in manifest],
        "sent": [Path(entry["file"]).name for entry in sent],
        "instances": manifest,
    }
    if run is not None:
        results["app_seconds"] = round(run.seconds, 3)
        results["app_peak_rss_mb"] = None if run.peak_rss_mb is None else round(run.peak_rss_mb, 1)
    return results


def _drain(stream: IO[bytes], path: Path, tail: collections.deque[str]) -> None:
    """Copy the application's standard error to ``path`` (best effort: the disk may be full) and keep its
    last lines in ``tail``."""
    out: IO[bytes] | None = None
    try:
        out = open(path, "wb")  # noqa: SIM115 - closed below; may fail on a full disk
    except OSError:
        pass
    try:
        with stream:
            for raw in stream:
                tail.append(raw.decode(errors="replace").rstrip("\r\n"))
                if out is not None:
                    try:
                        out.write(raw)
                        out.flush()
                    except OSError:
                        _close_quietly(out)
                        out = None
    finally:
        if out is not None:
            _close_quietly(out)


def _close_quietly(file: IO[bytes]) -> None:
    try:
        file.close()
    except OSError:  # the last buffered bytes did not fit on the disk
        pass


def _status_text(status: int) -> str:
    """Words for an exit status without an error line; a negative status is the signal that ended it."""
    if status < 0:
        try:
            return f"the application was ended by signal {signal.Signals(-status).name}"
        except ValueError:
            return f"the application was ended by signal {-status}"
    return f"the application ended with status {status}"


def _peak_rss_kb(pid: int) -> int | None:
    """Peak resident memory of a live process (VmHWM, KiB), or None (ended, or no /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _link_series(folder: Path, input_dir: Path, series: set[str]) -> int:
    """Hard-link (or copy) the files of ``series`` from a receiver spool folder into ``input_dir``.

    The spool keeps one subfolder per series (``<SeriesInstanceUID>/``), written by :mod:`gateway.scp`.
    """
    staging = input_dir.with_name(input_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    count = 0
    for series_uid in sorted(series):
        source = folder / safe_name(series_uid)  # the receiver's name for the series folder
        if not source.is_dir():
            continue
        target = staging / safe_name(series_uid)
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(source.glob("*.dcm")):
            try:
                os.link(path, target / path.name)
            except OSError:  # another file system: copy
                shutil.copy2(path, target / path.name)
            count += 1
    if count == 0:
        raise JobFailure("none of the qualifying series' images are in the spool folder", permanent=True)
    staging.rename(input_dir)
    return count


def _child_setup() -> None:
    """In the application's process, before exec: 32 MB stack, and die when the gateway dies."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = _STACK_BYTES if hard == resource.RLIM_INFINITY else min(_STACK_BYTES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the application may outlive a killed gateway
        pass


def start_workers(count: int, make_worker: Callable[[int], Worker]) -> list[threading.Thread]:
    """Start ``count`` worker threads (daemon threads: the process's exit ends them)."""
    threads = []
    for index in range(count):
        worker = make_worker(index)
        thread = threading.Thread(target=worker.run_forever, name=f"worker-{index}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads

