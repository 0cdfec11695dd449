"""A student's producer: plain pika, the course's `{"id": <float timestamp>, "body": ...}` messages."""

from __future__ import annotations

import json

import pika
import pytest
from sklearn.datasets import load_diabetes

from broker import drain
from mlmonitor.metric_log import HEADER_LINE
from mlmonitor.model_store import load_model
from service_harness import queue_exists, wait_for_rows, wait_until_drained
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def test_float_timestamp_ids_from_a_plain_pika_producer_give_one_row_each(pipeline, amqp_url, vhost, logs_dir,
                                                                           trained_model):
    pipeline.start("model")
    pipeline.start("metric")
    # a plain publish to a queue that does not exist yet is dropped, so wait until the services declared it
    wait_until(lambda: queue_exists(amqp_url, "features") and queue_exists(amqp_url, "y_true"),
               message="the services' queues")
    vector = load_diabetes().data[0].tolist()

    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.basic_publish(exchange="", routing_key="features",
                          body=json.dumps({"id": 1700000000.123456, "body": vector}))
    channel.basic_publish(exchange="", routing_key="y_true", body=json.dumps({"id": 1700000000.123456, "body": 151.0}))
    # the same event named by a number in one message and by a string in the other
    channel.basic_publish(exchange="", routing_key="features", body=json.dumps({"id": 1700000001.5, "body": vector}))
    channel.basic_publish(exchange="", routing_key="y_true", body=json.dumps({"id": "1700000001.5", "body": 150.0}))
    # a prediction of the student's own model, straight to the y_pred queue
    channel.basic_publish(exchange="", routing_key="y_true", body=json.dumps({"id": 1700000002.25, "body": 90.0}))
    channel.basic_publish(exchange="", routing_key="y_pred", body=json.dumps({"id": 1700000002.25, "body": 97.125}))
    connection.close()

    rows = wait_for_rows(logs_dir, 3)
    estimator, _ = load_model(trained_model)
    predicted = float(estimator.predict([vector])[0])
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {"1700000000.123456", "1700000001.5", "1700000002.25"}
    assert float(by_id["1700000000.123456"]["y_true"]) == 151.0
    assert float(by_id["1700000000.123456"]["y_pred"]) == pytest.approx(predicted)
    assert float(by_id["1700000000.123456"]["absolute_error"]) == pytest.approx(abs(151.0 - predicted))
    assert float(by_id["1700000001.5"]["absolute_error"]) == pytest.approx(abs(150.0 - predicted))
    wait_until_drained(vhost, "features", "y_true", "y_pred")

    # byte for byte as before classifiers: repr of floats, the error computed from them
    lines = (logs_dir / "metric_log.csv").read_text().splitlines(keepends=True)
    assert lines[0] == HEADER_LINE
    for line in lines[1:]:
        id, y_true, y_pred, _ = line.split(",")
        y_true, y_pred = float(y_true), float(y_pred)
        assert line == f"{id},{y_true!r},{y_pred!r},{abs(y_true - y_pred)!r}\n"
    assert "1700000002.25,90.0,97.125,7.125\n" in lines
    events = {json.loads(body)["id"]: body for body, _ in drain(amqp_url, "metric_added")}
    assert events["1700000002.25"] == b'{"id":"1700000002.25","y_true":90.0,"y_pred":97.125,"absolute_error":7.125}'
    event = json.loads(events["1700000000.123456"])
    assert list(event) == ["id", "y_true", "y_pred", "absolute_error", "model_version"]
    assert event["y_pred"] == float(by_id["1700000000.123456"]["y_pred"])
