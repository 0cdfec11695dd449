from __future__ import annotations

import logging

import pytest

from mlmonitor.logs import EventLog


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingLogger:
    def __init__(self):
        self.lines: list[str] = []

    def log(self, level: int, message: str, *args) -> None:
        self.lines.append(message % args)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def logger():
    return RecordingLogger()


@pytest.fixture
def events(logger, clock):
    return EventLog(logger, "rows written", window_seconds=10.0, max_lines=3, clock=clock)


def test_logs_each_event_while_below_max_lines(events, logger):
    events.event("wrote row %s", "a")
    events.event("wrote row %s", "b")
    assert logger.lines == ["wrote row a", "wrote row b"]


def test_past_max_lines_counts_and_logs_a_summary_after_the_window(events, logger, clock):
    for number in range(8):
        events.event("wrote row %d", number)
    assert logger.lines == ["wrote row 0", "wrote row 1", "wrote row 2"]
    clock.now += 9.9
    events.flush()
    assert len(logger.lines) == 3

    clock.now += 0.1
    events.flush()
    assert logger.lines[3:] == ["8 rows written in the last 10s (1/s); 5 not shown one by one"]


def test_a_new_window_logs_events_one_by_one_again(events, logger, clock):
    for number in range(5):
        events.event("wrote row %d", number)
    clock.now += 10.0
    events.event("wrote row %s", "late")
    assert logger.lines[-2:] == ["5 rows written in the last 10s (0/s); 2 not shown one by one", "wrote row late"]
    clock.now += 20.0
    events.flush()
    assert logger.lines[-1] == "wrote row late"  # nothing was hidden, so no summary


def test_no_summary_when_every_event_was_shown(events, logger, clock):
    events.event("wrote row %s", "a")
    clock.now += 60.0
    events.flush()
    assert logger.lines == ["wrote row a"]


def test_logs_at_the_given_level(clock):
    seen = []

    class Logger:
        def log(self, level, message, *args):
            seen.append(level)

    EventLog(Logger(), "things", level=logging.WARNING, clock=clock).event("thing")
    assert seen == [logging.WARNING]
