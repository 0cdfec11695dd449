from metric import JoinBuffer
from mlmonitor.messages import PredictionMessage, TargetMessage


def test_remove_takes_out_every_waiting_half_of_an_id():
    buffer = JoinBuffer(ttl=5.0, max_wait=600.0)
    buffer.add("y_pred", PredictionMessage(id="a", body=1.0), "pred 1", 0.0)
    buffer.add("y_pred", PredictionMessage(id="a", body=1.0), "pred 2", 0.1)
    buffer.add("y_true", TargetMessage(id="b", body=2.0), "true b", 0.2)
    assert buffer.remove("a") == ["pred 1", "pred 2"]
    assert buffer.remove("a") == [] and len(buffer) == 1


def test_last_rows_reads_only_the_tail_of_the_log(tmp_path):
    from metric import last_rows

    path = tmp_path / "metric_log.csv"
    path.write_text("id,y_true,y_pred,absolute_error\n" + "".join(f"id-{n},1.0,2.0,1.0\n" for n in range(1000))
                    + "unfinished,1.0")
    rows = last_rows(path, 10, bytes_per_row=20)
    assert "id-999" in rows and "id-900" not in rows and "unfinished" not in rows
    assert rows["id-999"].absolute_error == 1.0
    assert set(last_rows(path, 5000)) == {f"id-{n}" for n in range(1000)}
    assert last_rows(tmp_path / "missing.csv", 10) == {}
