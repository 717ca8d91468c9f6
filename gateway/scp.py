"""DICOM C-STORE receiver (SCP) for PACS that push studies instead of being watched.

Each received instance is written (atomically) to ``<spool>/<study key>/<SeriesInstanceUID>/
<SOPInstanceUID>.dcm`` exactly as it was sent. A study is queued once no association that sent it is
still open and nothing of it arrived for ``quiet_s`` seconds (a PACS may send one study over several
associations). Queuing reads the received headers, applies the same series rules as the watcher and
creates a job whose source is the spool folder; a study with no qualifying series is dropped from the
spool. A study that already has a job is not queued again (``python -m gateway retry`` does that); its
re-sent images are dropped once that job has finished.

Verification (C-ECHO) is answered, every storage SOP class and transfer syntax is accepted.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway import study_key
from gateway.config import ReceiveSettings
from gateway.jobs import JobQueue
from gateway.rules import SeriesRules, series_from_datasets
from gateway.store import disable_nagle
from operators.atomic_files import atomic_output_path
from operators.safe_names import safe_name

logger = logging.getLogger(__name__)

_STATUS_SUCCESS = 0x0000
_STATUS_CANNOT_UNDERSTAND = 0xC000
_STATUS_OUT_OF_RESOURCES = 0xA700


@dataclass
class _Pending:
    """A study being received: when its last instance arrived (monotonic s), which associations send it."""

    last_arrival: float
    associations: set[int] = field(default_factory=set)
    instances: int = 0


class Receiver:
    """The C-STORE receiver; :meth:`start` opens the port, :meth:`flush` queues studies that are complete.

    Parameters
    ----------
    settings
        AE title, address, port, spool folder, quiet period (s), allowed calling AE titles.
    queue
        Where jobs go.
    rules
        Which series qualify.
    """

    def __init__(self, *, settings: ReceiveSettings, queue: JobQueue, rules: SeriesRules) -> None:
        self.settings = settings
        self.queue = queue
        self.rules = rules
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._server: object | None = None
        ae = AE(ae_title=settings.aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if settings.allowed_calling_aets:
            ae.require_calling_aet = list(settings.allowed_calling_aets)
        self._ae = ae

    @property
    def port(self) -> int:
        """The port listened on (the configured one, or the one the system chose for port 0)."""
        server = self._server
        return int(server.server_address[1]) if server is not None else self.settings.port  # type: ignore[attr-defined]

    def recover(self) -> int:
        """Treat studies left in the spool by an earlier run (stopped before it queued them) as just
        received, so that they are queued after the quiet period; returns how many were found."""
        found = 0
        if not self.settings.spool.is_dir():
            return 0
        for folder in sorted(p for p in self.settings.spool.iterdir() if p.is_dir()):
            first = next(iter(sorted(folder.glob("*/*.dcm"))), None)
            if first is None:
                continue
            try:
                study_uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
            except (OSError, AttributeError, pydicom.errors.InvalidDicomError):
                logger.warning("spool folder %s: unreadable, left alone", folder.name)
                continue
            count = sum(1 for _ in folder.glob("*/*.dcm"))
            with self._lock:
                self._pending.setdefault(study_uid, _Pending(last_arrival=time.monotonic(), instances=count))
            found += 1
        if found:
            logger.info("%d study/studies found in the spool from an earlier run", found)
        return found

    def start(self) -> None:
        """Listen for associations (in background threads)."""
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_close),
                    (evt.EVT_CONN_OPEN, lambda event: disable_nagle(event.assoc))]
        self._server = self._ae.start_server((self.settings.host, self.settings.port), block=False,
                                             evt_handlers=handlers)
        logger.info("receiving as %s on %s:%d; spool %s", self.settings.aet, self.settings.host, self.port,
                    self.settings.spool)

    def stop(self) -> None:
        """Stop listening (open associations are ended)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]

    def _on_store(self, event: evt.Event) -> int:
        """Write one received instance to the spool; returns the C-STORE status."""
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            study_uid = str(dataset.StudyInstanceUID)
            series_uid = str(dataset.SeriesInstanceUID)
            sop_uid = str(dataset.SOPInstanceUID)
        except (AttributeError, ValueError, KeyError) as error:
            logger.warning("refused an instance without study, series or SOP instance UID (%s)", type(error).__name__)
            return _STATUS_CANNOT_UNDERSTAND
        # UIDs come from the sender: names made from them cannot leave the spool (operators.safe_names).
        path = self.study_folder(study_uid) / safe_name(series_uid) / f"{safe_name(sop_uid)}.dcm"
        try:
            with atomic_output_path(path) as tmp:
                tmp.write_bytes(event.encoded_dataset(include_meta=True))
        except OSError as error:
            logger.error("cannot write a received instance to the spool: %s", error.strerror or error)
            return _STATUS_OUT_OF_RESOURCES
        with self._lock:
            pending = self._pending.setdefault(study_uid, _Pending(last_arrival=time.monotonic()))
            pending.last_arrival = time.monotonic()
            pending.associations.add(id(event.assoc))
            pending.instances += 1
        return _STATUS_SUCCESS

    def _on_close(self, event: evt.Event) -> None:
        association = id(event.assoc)
        with self._lock:
            for pending in self._pending.values():
                pending.associations.discard(association)

    def study_folder(self, study_uid: str) -> Path:
        """Spool folder of a study."""
        return self.settings.spool / study_key(study_uid)

    def flush(self, *, now: float | None = None) -> int:
        """Queue every study that is complete (see the module docstring); returns how many were queued."""
        now = time.monotonic() if now is None else now
        with self._lock:
            ready = [uid for uid, p in self._pending.items()
                     if not p.associations and now - p.last_arrival >= self.settings.quiet_s]
            received = {uid: self._pending.pop(uid).instances for uid in ready}
        return sum(self._queue_study(uid, received[uid]) for uid in ready)

    def _queue_study(self, study_uid: str, received: int) -> bool:
        key = study_key(study_uid)
        folder = self.study_folder(study_uid)
        existing = self.queue.find(study_uid)
        if existing is not None and existing.state in ("queued", "running"):
            logger.info("study %s: %d image(s) received, job %d already %s", key, received, existing.id, existing.state)
            return False
        if existing is not None:
            logger.info("study %s: received again, already job %d (%s); images dropped (retry to reprocess)",
                        key, existing.id, existing.state)
            shutil.rmtree(folder, ignore_errors=True)
            return False
        headers = []
        for path in sorted(folder.glob("*/*.dcm")):
            try:
                headers.append(pydicom.dcmread(path, stop_before_pixels=True))
            except (OSError, pydicom.errors.InvalidDicomError):
                logger.warning("study %s: unreadable received file %s", key, path.relative_to(folder))
        chosen = self.rules.select(series_from_datasets(headers))
        if not chosen:
            logger.info("study %s: %d image(s) received, no qualifying series; dropped", key, received)
            shutil.rmtree(folder, ignore_errors=True)
            return False
        logger.info("study %s: %d image(s) received, %d qualifying series", key, received, len(chosen))
        result = self.queue.enqueue(study_uid=study_uid, source={
            "kind": "spool", "folder": str(folder), "series": [s.series_uid for s in chosen]})
        return result.action == "created"

    def serve(self, stop: threading.Event, *, interval_s: float = 1.0) -> None:
        """Queue complete studies every ``interval_s`` seconds until ``stop`` is set, then stop listening
        (call :meth:`start` first)."""
        try:
            while not stop.wait(interval_s):
                self.flush()
        finally:
            self.stop()

    def run_forever(self, stop: threading.Event, *, interval_s: float = 1.0) -> None:
        """Recover the spool, listen, and queue complete studies until ``stop`` is set."""
        self.recover()
        self.start()
        self.serve(stop, interval_s=interval_s)
