from __future__ import annotations

import pytest

from mlmonitor.amqp import _AckTracker


class FakeChannel:
    """Acks the way RabbitMQ does: the tag must still be unacked, else the channel would close
    with PRECONDITION_FAILED; multiple=True also acks every unacked tag below it."""

    def __init__(self):
        self.is_open = True
        self.unacked: set[int] = set()
        self.calls: list[tuple[int, bool]] = []

    def deliver(self, *tags: int) -> None:
        self.unacked.update(tags)

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        if delivery_tag not in self.unacked:
            raise AssertionError(f"unknown delivery tag {delivery_tag}: acked twice")
        self.calls.append((delivery_tag, multiple))
        covered = {tag for tag in self.unacked if tag <= delivery_tag} if multiple else {delivery_tag}
        self.unacked -= covered


class FakeIOLoop:
    def __init__(self):
        self.queued = []

    def call_later(self, delay: float, callback) -> None:
        assert delay == 0
        self.queued.append(callback)

    def run_queued(self) -> None:
        queued, self.queued = self.queued, []
        for callback in queued:
            callback()


@pytest.fixture
def channel():
    return FakeChannel()


@pytest.fixture
def ioloop():
    return FakeIOLoop()


@pytest.fixture
def tracker(channel, ioloop):
    tracker = _AckTracker(channel, ioloop)
    for tag in (1, 2, 3):
        channel.deliver(tag)
        tracker.received(tag)
    return tracker


def test_nothing_is_acked_before_the_loop_turn(tracker, channel, ioloop):
    tracker.done(1)
    assert channel.calls == []
    assert len(ioloop.queued) == 1


def test_a_finished_prefix_is_acked_once_with_multiple(tracker, channel, ioloop):
    for tag in (1, 2, 3):
        tracker.done(tag)
    assert len(ioloop.queued) == 1  # one flush per loop turn
    ioloop.run_queued()
    assert channel.calls == [(3, True)]
    assert channel.unacked == set()


def test_finished_deliveries_behind_a_pending_one_are_acked_singly(tracker, channel, ioloop):
    tracker.done(2)
    tracker.done(3)
    ioloop.run_queued()
    assert channel.calls == [(2, False), (3, False)]
    assert channel.unacked == {1}

    tracker.done(1)
    ioloop.run_queued()
    assert channel.calls[2:] == [(1, True)]
    assert channel.unacked == set()


def test_prefix_and_gap_in_one_turn(tracker, channel, ioloop):
    channel.deliver(4, 5)
    tracker.received(4)
    tracker.received(5)
    for tag in (1, 2, 4):
        tracker.done(tag)
    ioloop.run_queued()
    assert channel.calls == [(2, True), (4, False)]
    assert channel.unacked == {3, 5}


def test_nothing_is_acked_twice(tracker, channel, ioloop):
    tracker.done(2)
    tracker.done(2)
    ioloop.run_queued()
    tracker.done(2)
    tracker.done(1)
    tracker.done(1)
    ioloop.run_queued()
    tracker.done(3)
    tracker.done(1)
    ioloop.run_queued()
    ioloop.run_queued()
    assert channel.calls == [(2, False), (1, True), (3, True)]
    assert channel.unacked == set()


def test_unknown_tag_is_ignored(tracker, channel, ioloop):
    tracker.done(99)
    ioloop.run_queued()
    assert channel.calls == []


def test_nothing_is_acked_once_inactive_or_when_the_channel_closed(tracker, channel, ioloop):
    tracker.done(1)
    channel.is_open = False
    ioloop.run_queued()
    channel.is_open = True
    tracker.active = False
    tracker.done(2)
    ioloop.run_queued()
    assert channel.calls == []
