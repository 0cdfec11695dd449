from metric import JoinBuffer, RecentIds
from mlmonitor.messages import PredictionMessage, TargetMessage


def test_recent_ids_remembers_the_last_size_ids():
    recent = RecentIds(2)
    for id in ("a", "b", "a", "c"):
        recent.add(id)
    assert "a" not in recent and "b" in recent and "c" in recent


def test_remove_takes_out_every_waiting_half_of_an_id():
    buffer = JoinBuffer(ttl=5.0, max_wait=600.0)
    buffer.add("y_pred", PredictionMessage(id="a", body=1.0), "pred 1", 0.0)
    buffer.add("y_pred", PredictionMessage(id="a", body=1.0), "pred 2", 0.1)
    buffer.add("y_true", TargetMessage(id="b", body=2.0), "true b", 0.2)
    assert buffer.remove("a") == ["pred 1", "pred 2"]
    assert buffer.remove("a") == [] and len(buffer) == 1
