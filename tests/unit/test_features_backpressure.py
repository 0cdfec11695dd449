"""features' backpressure: new events only within --max-backlog of the deepest pipeline queue."""

from __future__ import annotations

import pytest

from features import FeatureStreamer, Settings
from mlmonitor.settings import load_settings
from mlmonitor.topology import FEATURES, Y_PRED, Y_TRUE


class FakeSession:
    is_open = True

    def __init__(self):
        self.published: list[tuple[str, object]] = []  # (queue, on_confirmed)
        self.timers: list[tuple[float, object]] = []
        self.on_depths = None

    def publish(self, exchange, routing_key, body, on_confirmed=None, headers=None):
        self.published.append((routing_key, on_confirmed))

    def call_later(self, delay, callback):
        self.timers.append((delay, callback))

    def every(self, interval, callback):
        pass

    def watch_queue_depths(self, queues, interval, on_depths):
        assert tuple(queues) == (FEATURES, Y_TRUE, Y_PRED)
        self.on_depths = on_depths

    def confirm_all(self):
        published, self.published = self.published, []
        for _, on_confirmed in published:
            on_confirmed()
        return len(published) // 2

    def events_published(self):
        return sum(queue == FEATURES for queue, _ in self.published)


def samples():
    while True:
        yield [0.0] * 10, 100.0


def streamer_with(*args: str) -> tuple[FeatureStreamer, FakeSession]:
    streamer = FeatureStreamer(load_settings(Settings, list(args)), samples())
    session = FakeSession()
    streamer.on_connected(session)
    return streamer, session


def depths(features=0, y_true=0, y_pred=0) -> dict[str, int]:
    return {FEATURES: features, Y_TRUE: y_true, Y_PRED: y_pred}


def test_publishes_only_what_keeps_the_deepest_queue_within_max_backlog():
    streamer, session = streamer_with("--rate", "0", "--max-backlog", "10")
    assert session.events_published() == 0, "nothing before the first depth poll"
    session.on_depths(depths(features=2, y_true=4, y_pred=1))
    assert session.events_published() == 6
    assert session.confirm_all() == 6
    assert session.published == [], "confirms free the unconfirmed window, not the backlog budget"
    session.on_depths(depths(features=10, y_true=10))
    assert session.published == []
    session.on_depths(depths(y_true=3))
    assert session.events_published() == 7


def test_max_backlog_0_turns_backpressure_off():
    streamer, session = streamer_with("--rate", "0", "--max-backlog", "0", "--max-unconfirmed", "50")
    assert session.on_depths is None
    assert session.events_published() == 50


def test_a_pause_is_not_made_up_in_a_burst_at_a_fixed_rate(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("features.time.monotonic", lambda: clock[0])
    streamer, session = streamer_with("--rate", "100", "--max-backlog", "1000")
    session.on_depths(depths(y_true=1000))  # full from the start: paused
    assert session.published == []
    clock[0] += 5.0
    session.on_depths(depths(y_true=0))
    assert session.events_published() == 1, "the schedule starts again now, not 500 events behind"


def test_a_reconnect_waits_for_a_fresh_poll():
    streamer, session = streamer_with("--rate", "0", "--max-backlog", "10")
    session.on_depths(depths())
    assert session.events_published() == 10
    streamer.on_disconnected()
    second = FakeSession()
    streamer.on_connected(second)
    assert second.events_published() == 10, "the unconfirmed events go out again, no new ones"
    second.on_depths(depths(features=10))
    assert second.events_published() == 10


@pytest.mark.parametrize("bad", ["-1", "x"])
def test_max_backlog_must_be_a_count(bad):
    with pytest.raises(SystemExit):
        load_settings(Settings, ["--max-backlog", bad])
