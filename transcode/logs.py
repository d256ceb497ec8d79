"""Logging for the whole command, configured once.

Every module logs to `logging.getLogger(__name__)` and never configures
anything; the command line calls `configure` once, from its global options
(`-v`, `--log-level`, `--log-json`), and the processes it starts (ingest
workers, server workers) apply the same configuration through `inherit`,
which reads it from the environment they were started with. Records go to
standard error, as text lines or (`json_lines`) one JSON object per line with
the keys time (UTC, ISO 8601), level, logger, message and exc (the
traceback, or null). uvicorn's loggers are not configured apart: they
propagate to the same handler. Python warnings (pydicom's, say) are logged
too, by the logger `py.warnings`, except one pydicom has just logged itself
(its `warn_and_log` does both: the line came twice). A library's record
logged while a source file is read (`reading`) starts with that file's path:
pydicom's "Invalid value for VR UI" does not say which of a million files it
was. Standard output stays the user's: tables, reports, JSON results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

#: The configuration, passed on to child processes (see `inherit`).
ENVIRONMENT = "TRANSCODE_LOG"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The source file being read in this thread (or task), if any.
_SOURCE: ContextVar[str | None] = ContextVar("transcode_source", default=None)


@contextlib.contextmanager
def reading(path: str) -> Iterator[None]:
    """Name `path` in what libraries log meanwhile (our own records name
    their file already)."""
    token = _SOURCE.set(path)
    try:
        yield
    finally:
        _SOURCE.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback included)."""

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        if record.stack_info:
            exc = f"{exc}\n{record.stack_info}" if exc else record.stack_info
        return json.dumps({
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(), "exc": exc,
        })


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record comes (a test's
    capture, a redirection made after configuring), as logging's own
    last-resort handler does."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


class _LoggedOnce(logging.Filter):
    """Drops the `py.warnings` record of a warning that pydicom logged just
    before, on the same thread, under its own logger."""

    def __init__(self) -> None:
        super().__init__()
        self._last = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pydicom":
            self._last.message = record.getMessage()
        elif record.name == "py.warnings":
            last, self._last.message = getattr(self._last, "message", None), None
            # the warning's line reads "FILE:LINE: CATEGORY: MESSAGE\n  SOURCE LINE\n"
            return not (last and f"Warning: {last}\n" in record.getMessage())
        return True


class _NamesSource(logging.Filter):
    """Starts a library's record with the path of the file being read."""

    def filter(self, record: logging.LogRecord) -> bool:
        source = _SOURCE.get()
        if source is not None and not record.name.startswith("transcode"):
            record.msg, record.args = f"{source}: {record.getMessage()}", None
        return True


def level_from(verbose: int, level: str | None, default: str = "warning") -> int:
    """The level the options ask for: `level` by name if given, else
    `default` lowered one step (WARNING, INFO, DEBUG) per `-v`."""
    if level:
        return logging.getLevelNamesMapping()[level.upper()]
    return max(logging.DEBUG, logging.getLevelNamesMapping()[default.upper()] - 10 * verbose)


def configure(level: int, *, json_lines: bool = False) -> None:
    """Send records of `level` and above, from every logger, to standard
    error in the chosen format; and record the choice in the environment
    for the processes this one starts. Calling it again replaces what an
    earlier call set up (and nothing else: handlers that others added to
    the root logger stay)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.addFilter(_LoggedOnce())  # compares pydicom's own words: before they are prefixed
    handler.addFilter(_NamesSource())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    os.environ[ENVIRONMENT] = json.dumps({"level": level, "json_lines": json_lines})


def inherit() -> None:
    """In a child process: apply the configuration of the process that
    started it, if that one was configured (nothing otherwise)."""
    passed = os.environ.get(ENVIRONMENT)
    if passed:
        options = json.loads(passed)
        configure(int(options["level"]), json_lines=bool(options["json_lines"]))
