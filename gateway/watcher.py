"""Watch Orthanc's change feed and queue each study that becomes stable and has a qualifying series.

Orthanc marks a study stable ``StableAge`` seconds after its last instance arrived and writes a
``StableStudy`` entry in ``GET /changes``. The watcher reads the feed from the position saved in the
queue's database, queues qualifying studies, then saves the new position: after a crash it reads the
last entries again, and queuing a known study again changes nothing (one job per study). A study that
becomes stable again later (e.g. when the gateway's own SEG and SR arrive) is therefore not processed
twice.
"""

from __future__ import annotations

import logging
import threading

from gateway import study_key
from gateway.jobs import JobQueue
from gateway.orthanc import OrthancClient, PacsError
from gateway.rules import SeriesRules

logger = logging.getLogger(__name__)

STABLE_STUDY = "StableStudy"


class Watcher:
    """Turns Orthanc's ``StableStudy`` events into jobs.

    Parameters
    ----------
    client
        The Orthanc to watch.
    queue
        Where jobs go; also keeps the feed position (setting ``orthanc-changes:<url>``).
    rules
        Which series qualify.
    start_at
        First start only: ``now`` (skip what is already in the feed) or ``beginning``.
    poll_interval_s
        Seconds between reads of the feed when nothing is new.
    """

    def __init__(self, *, client: OrthancClient, queue: JobQueue, rules: SeriesRules, start_at: str = "now",
                 poll_interval_s: float = 2.0) -> None:
        self.client = client
        self.queue = queue
        self.rules = rules
        self.start_at = start_at
        self.poll_interval_s = poll_interval_s
        self._setting = f"orthanc-changes:{client.url}"

    def position(self) -> int:
        """Feed position already handled; on the very first call, set from ``start_at``."""
        saved = self.queue.get_setting(self._setting)
        if saved is not None:
            return int(saved)
        position = self.client.last_change() if self.start_at == "now" else 0
        self.queue.set_setting(self._setting, str(position))
        logger.info("watching Orthanc's change feed from position %d (%s)", position, self.start_at)
        return position

    def poll_once(self) -> int:
        """Read the feed up to its end, queueing stable studies; returns the number of studies queued."""
        queued = 0
        position = self.position()
        while True:
            changes, last, done = self.client.changes(since=position)
            for change in changes:
                if change.change_type == STABLE_STUDY and self.consider_study(change.resource_id):
                    queued += 1
            if last > position:
                position = last
                self.queue.set_setting(self._setting, str(position))
            if done or not changes:
                return queued

    def consider_study(self, study_id: str) -> bool:
        """Queue one Orthanc study if a series qualifies; True when a new job was created."""
        try:
            study_uid = self.client.study_uid(study_id)
        except PacsError as error:  # deleted since the event: nothing to do
            logger.info("study %s: skipped (%s)", study_id, error)
            return False
        key = study_key(study_uid)
        existing = self.queue.find(study_uid)
        if existing is not None:  # e.g. our own results made the study stable again
            logger.info("study %s: stable again, already job %d (%s)", key, existing.id, existing.state)
            return False
        series = self.client.study_series(study_id, modalities=self.rules.modalities)
        chosen = self.rules.select(s.info for s in series)
        if not chosen:
            logger.info("study %s: stable, no qualifying series among %d", key, len(series))
            return False
        logger.info("study %s: stable, %d qualifying series", key, len(chosen))
        result = self.queue.enqueue(study_uid=study_uid, source={
            "kind": "orthanc", "study": study_id, "series": [s.series_uid for s in chosen]})
        return result.action == "created"

    def run_forever(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; PACS outages are logged and waited out (up to 60 s between tries)."""
        delay = self.poll_interval_s
        while not stop.is_set():
            try:
                self.poll_once()
                delay = self.poll_interval_s
            except PacsError as error:
                logger.warning("watcher: %s; trying again in %.0f s", error, delay)
                delay = min(max(delay * 2, self.poll_interval_s), 60.0)
            stop.wait(delay)
