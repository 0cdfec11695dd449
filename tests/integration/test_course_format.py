"""A student's producer: plain pika, the course's `{"id": <float timestamp>, "body": ...}` messages."""

from __future__ import annotations

import json

import pika
import pytest
from sklearn.datasets import load_diabetes

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
    connection.close()

    rows = wait_for_rows(logs_dir, 2)
    estimator, _ = load_model(trained_model)
    predicted = float(estimator.predict([vector])[0])
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == {"1700000000.123456", "1700000001.5"}
    assert float(by_id["1700000000.123456"]["y_true"]) == 151.0
    assert float(by_id["1700000000.123456"]["y_pred"]) == pytest.approx(predicted)
    assert float(by_id["1700000000.123456"]["absolute_error"]) == pytest.approx(abs(151.0 - predicted))
    assert float(by_id["1700000001.5"]["absolute_error"]) == pytest.approx(abs(150.0 - predicted))
    wait_until_drained(vhost, "features", "y_true", "y_pred")
