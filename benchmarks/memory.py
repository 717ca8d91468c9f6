"""Wall time and peak resident memory of the stages of one benchmark process.

Peak memory per stage is the kernel's own high-water mark of the process's resident set (``VmHWM`` in
``/proc/self/status``), reset to the current resident set at the start of each stage by writing ``5`` to
``/proc/self/clear_refs`` (Linux 4.0 and later). So a stage's figure is the largest resident set of the
whole process while that stage ran, including what earlier stages still hold, never a sampled estimate.
Where the reset is refused (no procfs, some sandboxes), a thread samples ``VmRSS`` every 5 ms instead, and
:attr:`StageRecorder.method` says so. The peak of a whole path is the largest of its stages' peaks and
``ru_maxrss`` of its process, which runs only that path (see :mod:`benchmarks.child`).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_SAMPLE_PERIOD_S = 0.005

#: How per-stage peaks are measured, as the report names it.
HWM_METHOD = "kernel high-water mark (VmHWM) reset per stage through /proc/self/clear_refs"
SAMPLED_METHOD = "VmRSS sampled every 5 ms by a thread"


@dataclass(frozen=True)
class StageRecord:
    """One timed stage.

    Attributes
    ----------
    name : str
        Stage name as the report shows it.
    seconds : float
        Wall time, s.
    peak_rss_mib : float or None
        Largest resident set of the process during the stage, MiB; None for a stage timed inside a
        function that measures its own parts (its memory is that of the enclosing stage).
    part_of : str or None
        Name of the enclosing stage, for such parts.
    """

    name: str
    seconds: float
    peak_rss_mib: float | None
    part_of: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_peak_rss_mib(records: Sequence[StageRecord] = ()) -> float:
    """Peak resident set size of this process since it started, MiB (Linux reports KiB).

    Resetting the high-water mark through ``clear_refs`` also resets what ``ru_maxrss`` reports for the
    process (both read the same counter), so after per-stage resets ``ru_maxrss`` holds only the peak
    since the last reset: the largest of it and the stages' own peaks is the process's peak.
    """
    peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0]
    peaks += [r.peak_rss_mib for r in records if r.peak_rss_mib is not None]
    return max(peaks)


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class _Sampler:
    """Largest VmRSS seen by a background thread while running."""

    def __init__(self) -> None:
        self.peak_kib = _status_kib("VmRSS") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(_SAMPLE_PERIOD_S):
            self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _status_kib("VmRSS") or 0)


class StageRecorder:
    """Records the stages of one process in the order they ran.

    Use ``with recorder.stage("scan"): ...`` around each stage, and :meth:`add_part` for parts a
    function times itself (e.g. the SEG inside the outputs stage).
    """

    def __init__(self) -> None:
        self.records: list[StageRecord] = []
        self.method = HWM_METHOD if _reset_high_water_mark() else SAMPLED_METHOD
        self._started = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block and measure its peak resident set, as stage ``name``."""
        sampler: _Sampler | None = None
        if self.method == HWM_METHOD:
            _reset_high_water_mark()
        else:
            sampler = _Sampler().__enter__()
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            if sampler is not None:
                sampler.__exit__()
                peak_kib = sampler.peak_kib
            else:
                peak_kib = _status_kib("VmHWM") or 0
            self.records.append(StageRecord(name, seconds, peak_kib / 1024.0))
            logger.info("%s: %.2f s, peak RSS %.0f MiB", name, seconds, peak_kib / 1024.0)

    def add_part(self, name: str, seconds: float, *, part_of: str) -> None:
        """Record a part of stage ``part_of`` that the stage's function timed itself."""
        self.records.append(StageRecord(name, float(seconds), None, part_of=part_of))

    def seconds(self, *names: str) -> float:
        """Total wall time of the named stages, s."""
        return sum(r.seconds for r in self.records if r.name in names)

    @property
    def elapsed(self) -> float:
        """Seconds since the recorder was created."""
        return time.perf_counter() - self._started
