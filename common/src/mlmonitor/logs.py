"""Readable logs: one line per event at low rates, a periodic summary at high rates."""

from __future__ import annotations

import logging
import sys
import time


def configure_logging(service: str, level: str = "INFO") -> logging.Logger:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stdout,
        format=f"%(asctime)s {service} %(levelname)s %(message)s",
        force=True,
    )
    # pika logs each failed connect with tracebacks; the runtime reports every failure in one line
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    return logging.getLogger(service)


class EventLog:
    """Logs each event while they are few; past `max_lines` per window, counts them and logs a summary.

    `what` names the events in the summary ("rows written"); call `flush()` now and then so a
    summary appears even when traffic stops.
    """

    def __init__(self, logger: logging.Logger, what: str, window_seconds: float = 10.0, max_lines: int = 10,
                 level: int = logging.INFO, clock=time.monotonic):
        self._logger = logger
        self._what = what
        self._window = window_seconds
        self._max_lines = max_lines
        self._level = level
        self._clock = clock
        self._window_start = clock()
        self._count = 0
        self._shown = 0

    def event(self, message: str, *args) -> None:
        self.flush()
        self._count += 1
        if self._shown < self._max_lines:
            self._shown += 1
            self._logger.log(self._level, message, *args)

    def flush(self) -> None:
        now = self._clock()
        elapsed = now - self._window_start
        if elapsed < self._window:
            return
        hidden = self._count - self._shown
        if hidden > 0:
            self._logger.log(self._level, "%d %s in the last %.0fs (%.0f/s); %d not shown one by one",
                             self._count, self._what, elapsed, self._count / elapsed, hidden)
        self._window_start = now
        self._count = 0
        self._shown = 0
