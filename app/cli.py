"""Command line of the application: ``python -m app -i DICOM_FOLDER -o OUTPUT_FOLDER -m MODEL``.

Arguments are those of every MONAI Deploy application (``-i/--input``, ``-o/--output``, ``-m/--model``,
``-w/--workdir``, ``-l/--log-level``); without them the paths come from ``HOLOSCAN_INPUT_PATH``,
``HOLOSCAN_OUTPUT_PATH`` and ``HOLOSCAN_MODEL_PATH``, as in a MAP.

Streams and exit status
    The run's log (this application's and Holoscan's) goes to standard output. Standard error carries
    nothing on success and exactly one line on failure, ``error: <what is wrong, and with which file or
    series>``; the traceback is in the log at debug level (``-l DEBUG``).

    ====  ======================================================================================
    0     results written (including "no femur in view", which is an outcome, not a failure)
    1     unexpected failure (a bug): the one line names the exception
    2     a problem with the input, the arguments or the model (not a CT, unreadable or no DICOM
          files, no usable series, a missing or broken model); nothing is written to the output
    130   interrupted
    ====  ======================================================================================
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import TextIO

logger = logging.getLogger("app")

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_HOLOSCAN_LOG_LEVEL_VARIABLE = "HOLOSCAN_LOG_LEVEL"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        Program name and arguments, as ``sys.argv`` (its default).
    """
    argv = list(sys.argv if argv is None else argv)
    user_stderr = _send_logs_to_stdout()
    status, message = _run(argv)
    if message:
        user_stderr.write(f"error: {_one_line(message)}\n")
        user_stderr.flush()
    return status


def _run(argv: list[str]) -> tuple[int, str | None]:
    """Run the application; returns the exit status and the error line (None on success)."""
    started = time.perf_counter()
    try:
        from monai.deploy.core.arg_parser import parse_args, set_up_logging

        from app.app import FemurLesionSegApp
        from operators.errors import FemurSegError
    except (ImportError, OSError) as error:  # OSError: Holoscan's CUDA runtime library not found
        return EXIT_UNEXPECTED, f"cannot load the application ({type(error).__name__}: {error})"

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = parse_args(argv)
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help
            return EXIT_OK, None
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        message = lines[-1].split(": error: ", 1)[-1] if lines else "invalid arguments"
        return EXIT_USAGE, re.sub(r"PosixPath\('([^']*)'\)", r"\1", message)
    set_up_logging(args.log_level)
    _set_holoscan_log_level(args.log_level)

    app = FemurLesionSegApp([sys.executable, *argv])
    failure: BaseException | None = None
    try:
        app.run()
    except FemurSegError as error:  # e.g. no usable model, raised while composing the graph
        logger.debug("run failed", exc_info=True)
        failure = error
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED, "interrupted"
    except Exception as error:  # noqa: BLE001 - a bug: one line for the user, the traceback in the log
        logger.debug("run failed", exc_info=True)
        logger.info("stage timings: %s", app.timings.describe())
        return EXIT_UNEXPECTED, f"unexpected failure ({type(error).__name__}: {error}); run with -l DEBUG for details"
    failure = failure or app.failure
    logger.info("stage timings: %s", app.timings.describe())
    if failure is not None:
        status = int(getattr(failure, "exit_code", EXIT_USAGE))
        if status != EXIT_OK:
            return status, str(failure)
        logger.info("%s", failure)  # an outcome to report (e.g. no femur in view), not a failure
    logger.info("done in %.1f s", time.perf_counter() - started)
    return EXIT_OK, None


def _send_logs_to_stdout() -> TextIO:
    """Point file descriptor 2 at standard output; return a stream on the original standard error.

    Holoscan writes its log to file descriptor 2 from C++, and Python's logging writes to
    ``sys.stderr``: both then land on standard output, and the returned stream stays the user's
    standard error for the final line.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(1, 2)
    except OSError:  # no usable descriptors (embedded use): leave the streams as they are
        return sys.stderr
    return os.fdopen(saved, "w", encoding="utf-8", errors="replace")


def _set_holoscan_log_level(level: str | None) -> None:
    """Give Holoscan's own log the level of ``-l``, unless ``HOLOSCAN_LOG_LEVEL`` sets it."""
    if level is None or os.environ.get(_HOLOSCAN_LOG_LEVEL_VARIABLE):
        return
    from holoscan.logger import LogLevel, set_log_level

    set_log_level(getattr(LogLevel, level, LogLevel.INFO))


def _one_line(message: str) -> str:
    return " ".join(str(message).split())
