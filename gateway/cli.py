"""Command line of the gateway: ``python -m gateway {watch,receive,status,retry} -c gateway.toml``.

``watch``    follow Orthanc's stable-study events, run the application, store SEG and SR back (runs until
             SIGTERM/SIGINT; a job in progress goes back to the queue).
``receive``  the same for studies pushed by C-STORE to the gateway's own DICOM port.
``status``   print the job queue (``--json`` for machines).
``retry``    queue failed or finished studies again: job ids, ``--failed`` (all failed), or ``--study UID``.

The configuration file is ``-c FILE`` or ``$FEMUR_GATEWAY_CONFIG``. The log goes to standard error and
never names a patient: studies are named by job id and a short hash of the StudyInstanceUID.

Exit status: 0 success (or a clean stop); 2 a problem with the arguments or configuration, or a PACS
that cannot be reached at start, with one line ``error: ...`` on standard error; 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from gateway import study_key
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.jobs import Job, JobQueue
from gateway.orthanc import OrthancClient, PacsError, client_from_settings
from gateway.store import CStoreStore, ResultStore, StowStore
from gateway.worker import Worker, start_workers

logger = logging.getLogger("gateway")

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
CONFIG_VARIABLE = "FEMUR_GATEWAY_CONFIG"


class UsageError(Exception):
    """A problem the user can fix (arguments, configuration, unreachable PACS); one-line message."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":  # pynetdicom logs every received image at INFO
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except (UsageError, ConfigError, PacsError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - a bug: one line for the user, the traceback in the log
        logger.debug("unexpected failure", exc_info=True)
        print(f"error: unexpected failure ({type(error).__name__}: {error})", file=sys.stderr)
        return EXIT_UNEXPECTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", type=Path, default=None,
                        help=f"configuration file (TOML); default ${CONFIG_VARIABLE}")
    common.add_argument("-l", "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    watch = sub.add_parser("watch", parents=[common], help="follow Orthanc's stable studies")
    watch.add_argument("--workers", type=int, default=None, help="worker threads (default: queue.workers)")
    watch.set_defaults(func=_watch)

    receive = sub.add_parser("receive", parents=[common], help="receive studies by C-STORE")
    receive.add_argument("--workers", type=int, default=None, help="worker threads (default: queue.workers)")
    receive.set_defaults(func=_receive)

    status = sub.add_parser("status", parents=[common], help="print the job queue")
    status.add_argument("--json", action="store_true", help="one JSON object per job")
    status.set_defaults(func=_status)

    retry = sub.add_parser("retry", parents=[common], help="queue studies again")
    retry.add_argument("jobs", nargs="*", type=int, help="job ids")
    retry.add_argument("--failed", action="store_true", help="every failed job")
    retry.add_argument("--study", action="append", default=[], help="StudyInstanceUID (repeatable)")
    retry.set_defaults(func=_retry)
    return parser


def _config(args: argparse.Namespace) -> GatewayConfig:
    path = args.config or (Path(os.environ[CONFIG_VARIABLE]) if os.environ.get(CONFIG_VARIABLE) else None)
    if path is None:
        raise UsageError(f"no configuration file: give -c FILE or set {CONFIG_VARIABLE}")
    return load_config(path)


def _queue(config: GatewayConfig) -> JobQueue:
    return JobQueue(path=config.queue.database, policy=config.queue.policy)


# ------------------------------------------------------------------------------------------------
# Services


def _watch(args: argparse.Namespace) -> int:
    from gateway.watcher import Watcher

    config = _config(args)
    client = _checked_client(config)
    queue = _queue(config)
    watcher = Watcher(client=client, queue=queue, rules=config.rules, start_at=config.watch.start_at,
                      poll_interval_s=config.watch.poll_interval_s)
    return _serve(config, args, client, watcher.run_forever)


def _receive(args: argparse.Namespace) -> int:
    from gateway.scp import Receiver

    config = _config(args)
    client = _checked_client(config) if config.results.method == "stow" else None
    queue = _queue(config)
    config.receive.spool.mkdir(mode=0o700, parents=True, exist_ok=True)  # received images: service user only
    receiver = Receiver(settings=config.receive, queue=queue, rules=config.rules)
    receiver.recover()
    try:
        receiver.start()
    except OSError as error:
        raise UsageError(f"cannot listen on {config.receive.host}:{config.receive.port}: "
                         f"{error.strerror or error}") from None
    return _serve(config, args, client, receiver.serve)


def _checked_client(config: GatewayConfig) -> OrthancClient:
    client = client_from_settings(config.orthanc)
    system = client.system()  # fails early, with one line, on a wrong URL or password
    logger.info("PACS %s (Orthanc %s) reachable", system.get("Name", "?"), system.get("Version", "?"))
    return client


def _result_store(config: GatewayConfig, client: OrthancClient | None) -> ResultStore:
    if config.results.method == "cstore":
        r = config.results
        return CStoreStore(host=r.host, port=r.port, aet=r.aet, calling_aet=r.calling_aet)
    assert client is not None
    return StowStore(client=client)


def _serve(config: GatewayConfig, args: argparse.Namespace, client: OrthancClient | None,
           source: Callable[[threading.Event], None]) -> int:
    """Run the workers and ``source`` (the watcher or the receiver loop) until SIGTERM/SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    count = args.workers or config.queue.workers
    # The work folder holds patients' images: the service's user only.
    config.queue.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def make_worker(index: int) -> Worker:
        # Each worker has its own connection to the queue and to the PACS.
        worker_client = client_from_settings(config.orthanc) if client is not None else None
        return Worker(queue=_queue(config), app=config.app, work_dir=config.queue.work_dir,
                      store=_result_store(config, worker_client), orthanc=worker_client, stop=stop,
                      name=f"{os.uname().nodename}:{os.getpid()}:w{index}")

    threads = start_workers(count, make_worker)
    logger.info("gateway running: %d worker(s), queue %s", count, config.queue.database)
    source_thread = threading.Thread(target=source, args=(stop,), name="source", daemon=True)
    source_thread.start()
    while not stop.is_set():
        stop.wait(1.0)
        if not source_thread.is_alive():
            raise UsageError("the gateway's watcher/receiver stopped unexpectedly; see the log")
    logger.info("stopping: waiting for the workers to hand back their jobs")
    for thread in [*threads, source_thread]:
        thread.join(timeout=30)
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# Queue


def _status(args: argparse.Namespace) -> int:
    config = _config(args)
    with _queue(config) as queue:
        jobs = queue.jobs()
        counts = queue.counts()
    if args.json:
        for job in jobs:
            print(json.dumps(_job_dict(job), sort_keys=True))
        return EXIT_OK
    print("  ".join(f"{state}: {n}" for state, n in counts.items()))
    if jobs:
        print(f"{'job':>5}  {'study':10}  {'state':7}  {'tries':>5}  {'updated (UTC)':19}  detail")
    for job in jobs:
        print(f"{job.id:>5}  {job.key:10}  {job.state:7}  {job.attempts:>5}  {_time(job.updated_at)}  {_detail(job)}")
    return EXIT_OK


def _retry(args: argparse.Namespace) -> int:
    config = _config(args)
    with _queue(config) as queue:
        targets: list[Job] = []
        for job_id in args.jobs:
            try:
                targets.append(queue.get(job_id))
            except KeyError:
                raise UsageError(f"no job {job_id}") from None
        for uid in args.study:
            job = queue.find(uid)
            if job is None:
                raise UsageError(f"no job for study {study_key(uid)}")
            targets.append(job)
        if args.failed:
            targets.extend(queue.jobs(state="failed"))
        if not targets:
            raise UsageError("nothing to retry: give job ids, --study UID or --failed")
        for job in targets:
            if job.state in ("queued", "running"):
                print(f"job {job.id}: already {job.state}")
                continue
            queue.retry(job.id)
            print(f"job {job.id}: queued again")
    return EXIT_OK


def _job_dict(job: Job) -> dict[str, object]:
    return {"id": job.id, "study": job.key, "study_uid": job.study_uid, "state": job.state,
            "attempts": job.attempts, "next_attempt_at": job.next_attempt_at, "last_error": job.last_error,
            "results": job.results, "created_at": job.created_at, "updated_at": job.updated_at,
            "finished_at": job.finished_at}


def _detail(job: Job) -> str:
    if job.state == "queued" and job.last_error:
        wait = max(job.next_attempt_at - time.time(), 0)
        return f"retry in {wait:.0f} s; last error: {job.last_error}"
    if job.state == "failed":
        return job.last_error or ""
    if job.state == "done":
        return "stored " + ", ".join((job.results or {}).get("stored", [])) if (job.results or {}).get("stored") \
            else "nothing to store"
    if job.state == "running":
        return f"lease of {job.lease_owner}"
    return ""


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
