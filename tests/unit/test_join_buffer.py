from __future__ import annotations

import pytest

from metric import JoinBuffer, Pair, ScoredPair, TrafficClock, score
from mlmonitor.messages import MetricAdded, PredictionMessage, TargetMessage
from mlmonitor.metric_log import MetricRow

TTL = 5.0
MAX_WAIT = 600.0


def target(id: str, body: float = 151.0, sent_at: float | None = None) -> TargetMessage:
    return TargetMessage(id=id, body=body, sent_at=sent_at)


def prediction(id: str, body: float = 148.5) -> PredictionMessage:
    return PredictionMessage(id=id, body=body, model_version="v1")


@pytest.fixture
def buffer() -> JoinBuffer[str]:
    return JoinBuffer(ttl=TTL, max_wait=MAX_WAIT)


def predictions_for_other_ids(buffer: JoinBuffer[str], times: list[float]) -> None:
    for number, now in enumerate(times):
        buffer.add("y_pred", prediction(f"other-{now}-{number}"), f"other delivery {number}", now)


def expired_ids(expired) -> list[tuple[str, str]]:
    return [(queue, half.message.id) for queue, half in expired]


def test_target_first_then_prediction_makes_a_pair(buffer):
    assert buffer.add("y_true", target("a"), "d-true", 0.0) is None
    assert len(buffer) == 1
    pair = buffer.add("y_pred", prediction("a"), "d-pred", 0.5)
    assert (pair.y_true, pair.y_pred, pair.deliveries) == (target("a"), prediction("a"), ["d-true", "d-pred"])
    assert len(buffer) == 0


def test_prediction_first_then_target_makes_a_pair(buffer):
    assert buffer.add("y_pred", prediction("a"), "d-pred", 0.0) is None
    pair = buffer.add("y_true", target("a"), "d-true", 0.5)
    assert (pair.y_true, pair.y_pred, pair.deliveries) == (target("a"), prediction("a"), ["d-pred", "d-true"])
    assert len(buffer) == 0


def test_halves_with_different_ids_do_not_pair(buffer):
    assert buffer.add("y_true", target("a"), "d1", 0.0) is None
    assert buffer.add("y_pred", prediction("b"), "d2", 0.0) is None
    assert len(buffer) == 2


def test_duplicate_halves_wait_together_and_come_back_with_the_pair(buffer):
    buffer.add("y_true", target("a"), "first", 0.0)
    buffer.add("y_true", target("a"), "redelivered", 1.0)
    assert len(buffer) == 1
    pair = buffer.add("y_pred", prediction("a"), "partner", 2.0)
    assert pair.deliveries == ["first", "redelivered", "partner"]
    assert len(buffer) == 0


def test_duplicate_partners_waiting_all_come_back_with_the_pair(buffer):
    buffer.add("y_pred", prediction("a"), "p1", 0.0)
    buffer.add("y_pred", prediction("a"), "p2", 0.0)
    pair = buffer.add("y_true", target("a"), "t1", 0.0)
    assert sorted(pair.deliveries) == ["p1", "p2", "t1"]


def test_half_expires_after_ttl_seconds_of_partner_traffic(buffer):
    buffer.add("y_true", target("a"), "d-a", 0.0)
    predictions_for_other_ids(buffer, [0.0, 1.0, 2.0, 3.0, 4.0])
    assert buffer.expire(4.0) == []  # 4 s of y_pred traffic so far
    predictions_for_other_ids(buffer, [5.0])
    expired = buffer.expire(5.0)
    assert expired_ids(expired) == [("y_true", "a")]
    assert expired[0][1].deliveries == ["d-a"]
    assert "a" not in [half.message.id for _, half in buffer.expire(MAX_WAIT - 1)]


def test_own_queue_traffic_does_not_expire_a_half(buffer):
    buffer.add("y_true", target("a"), "d-a", 0.0)
    for second in range(1, 100):
        buffer.add("y_true", target(f"other-{second}"), "d", float(second))
    assert ("y_true", "a") not in expired_ids(buffer.expire(100.0))


def test_no_expiry_while_the_partner_queue_is_idle(buffer):
    buffer.add("y_true", target("a"), "d-a", 0.0)
    predictions_for_other_ids(buffer, [0.0, 1.0])
    assert buffer.expire(300.0) == []  # the model was down for five minutes
    predictions_for_other_ids(buffer, [300.0, 301.0, 302.0])  # the idle gap counts as one second at most
    assert ("y_true", "a") not in expired_ids(buffer.expire(302.0))  # 4 s of traffic
    predictions_for_other_ids(buffer, [303.0])
    assert ("y_true", "a") in expired_ids(buffer.expire(303.0))


def test_idle_partner_queue_expires_a_half_at_max_wait(buffer):
    buffer.add("y_true", target("a"), "d-a", 0.0)
    assert buffer.expire(MAX_WAIT - 0.1) == []
    assert expired_ids(buffer.expire(MAX_WAIT)) == [("y_true", "a")]
    assert len(buffer) == 0


def test_expiry_returns_the_oldest_halves_first_and_keeps_the_younger(buffer):
    for second, id in enumerate(["a", "b", "c", "d"]):
        buffer.add("y_true", target(id), f"d-{id}", float(second))
    buffer.add("y_true", target("b"), "d-b-again", 10.0)  # a duplicate keeps its first arrival time
    assert expired_ids(buffer.expire(MAX_WAIT + 2)) == [("y_true", "a"), ("y_true", "b"), ("y_true", "c")]
    assert len(buffer) == 1


def test_clear_forgets_every_half(buffer):
    buffer.add("y_true", target("a"), "d1", 0.0)
    buffer.add("y_pred", prediction("b"), "d2", 0.0)
    buffer.clear()
    assert len(buffer) == 0
    assert buffer.add("y_pred", prediction("a"), "d3", 1.0) is None


def test_traffic_clock_caps_each_gap():
    clock = TrafficClock(max_gap=1.0)
    for now in [10.0, 10.5, 11.0, 500.0, 500.25]:
        clock.tick(now)
    assert clock.seconds == pytest.approx(2.25)


def test_a_scored_pair_s_row_and_event_carry_the_absolute_error():
    pair = Pair(target("a", 151.0, sent_at=1700000000.5), prediction("a", 160.25), ["d1", "d2"])
    scored = ScoredPair(pair, score(pair.y_true, pair.y_pred, "auto"))
    assert pair.id == scored.id == "a"
    assert scored.row == MetricRow("a", 151.0, 160.25, 9.25)
    assert scored.event() == MetricAdded(id="a", y_true=151.0, y_pred=160.25, absolute_error=9.25,
                                         model_version="v1", sent_at=1700000000.5)


def test_a_pair_s_absolute_error_is_never_negative():
    assert score(target("a", 100.0), prediction("a", 90.0), "auto").absolute_error == 10.0


def test_remove_takes_out_every_waiting_half_of_an_id():
    buffer = JoinBuffer(ttl=5.0, max_wait=600.0)
    buffer.add("y_pred", PredictionMessage(id="a", body=1.0), "pred 1", 0.0)
    buffer.add("y_pred", PredictionMessage(id="a", body=1.0), "pred 2", 0.1)
    buffer.add("y_true", TargetMessage(id="b", body=2.0), "true b", 0.2)
    assert buffer.remove("a") == ["pred 1", "pred 2"]
    assert buffer.remove("a") == [] and len(buffer) == 1
