"""Bad input never crashes a service or blocks its queue: it goes to `<queue>.dlq` with its reason."""

from __future__ import annotations

import json
from itertools import zip_longest

import pytest
from sklearn.datasets import load_diabetes

from broker import publish_raw
from mlmonitor.model_store import load_model
from service_harness import (assert_alive, assert_no_dead_letters, declare_topology, output_of, wait_for_dead_letters,
                             wait_for_output, wait_for_rows, wait_until_drained)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

SAMPLES = load_diabetes()
VECTOR = SAMPLES.data[0].tolist()

# (body, a fragment its rejection reason must contain); every body is distinct within its queue
NOT_AN_OBJECT = [
    (b"{not json", "Invalid JSON"),
    (b"", "Invalid JSON"),
    (b"\xff\xfe not utf-8", "Invalid JSON"),
    (b"[1, 2, 3]", "should be an object"),
    (b'"a string"', "should be an object"),
    (b"null", "should be an object"),
]


def bad_numbers(prefix: str) -> list[tuple[bytes, str]]:
    """Bad y_true/y_pred messages: a body that is neither a finite JSON number nor a label, or a bad id."""
    cases = [
        ('{"body": 151.0}', "id: Field required"),
        (f'{{"id": "{prefix}-no-body"}}', "body: Field required"),
        (f'{{"id": "{prefix}-empty-label", "body": ""}}', "String should have at least 1 character"),
        (f'{{"id": "{prefix}-control-label", "body": "yes\\nno"}}', "text must not contain control characters"),
        (f'{{"id": "{prefix}-bool", "body": true}}', "body: Input should be a valid number"),
        (f'{{"id": "{prefix}-null", "body": null}}', "body: Input should be a valid number"),
        (f'{{"id": "{prefix}-nan", "body": NaN}}', "body: Input should be a finite number"),
        (f'{{"id": "{prefix}-inf", "body": Infinity}}', "body: Input should be a finite number"),
        (f'{{"id": "{prefix}-minus-inf", "body": -Infinity}}', "body: Input should be a finite number"),
        ('{"id": true, "body": 151.0}', "id must be a string or a number, not a boolean"),
        ('{"id": NaN, "body": 151.0}', "id must be finite"),
    ]
    return NOT_AN_OBJECT + [(body.encode(), reason) for body, reason in cases]


def vector_with(index: int, raw_value: str) -> str:
    values = [json.dumps(value) for value in VECTOR]
    values[index] = raw_value
    return "[" + ", ".join(values) + "]"


BAD_FEATURES = NOT_AN_OBJECT + [(body.encode(), reason) for body, reason in [
    (f'{{"body": {json.dumps(VECTOR)}}}', "id: Field required"),
    ('{"id": "f-no-body"}', "body: Field required"),
    ('{"id": "f-null", "body": null}', "body: Input should be a list or an object"),
    ('{"id": "f-number", "body": 0.5}', "body: Input should be a list or an object"),
    ('{"id": "f-empty", "body": []}', "body: List should have at least 1 item"),
    (f'{{"id": "f-string", "body": {vector_with(3, json.dumps("0.5"))}}}', "body.3 (bp): expected a number, got a string"),
    (f'{{"id": "f-bool", "body": {vector_with(0, "true")}}}', "body.0: Input should be a valid number"),
    (f'{{"id": "f-null-item", "body": {vector_with(9, "null")}}}', "body.9 (s6): missing, and the model was trained without missing values"),
    (f'{{"id": "f-nan", "body": {vector_with(2, "NaN")}}}', "body.2: Input should be a finite number"),
    (f'{{"id": "f-inf", "body": {vector_with(5, "-Infinity")}}}', "body.5: Input should be a finite number"),
    (f'{{"id": "f-short", "body": {json.dumps(VECTOR[:9])}}}', "expected 10 features"),
    (f'{{"id": "f-long", "body": {json.dumps(VECTOR + [0.1])}}}', "expected 10 features"),
]]

BAD_EVENTS = NOT_AN_OBJECT + [(body.encode(), reason) for body, reason in [
    ('{"id": "e-no-error", "y_true": 151.0, "y_pred": 150.0}', "absolute_error: Field required"),
    ('{"id": "e-empty-label", "y_true": "", "y_pred": 150.0, "absolute_error": 1.0}',
     "y_true: Input should be a valid number or String should have at least 1 character"),
    ('{"id": "e-bool", "y_true": 151.0, "y_pred": false, "absolute_error": 1.0}',
     "y_pred: Input should be a valid number"),
    ('{"id": "e-nan", "y_true": 151.0, "y_pred": 150.0, "absolute_error": NaN}',
     "absolute_error: Input should be a finite number"),
    ('{"id": "e-inf", "y_true": 151.0, "y_pred": 150.0, "absolute_error": Infinity}',
     "absolute_error: Input should be a finite number"),
    ('{"id": "e-negative", "y_true": 151.0, "y_pred": 150.0, "absolute_error": -1.0}',
     "absolute_error: Input should be greater than or equal to 0"),
]]


def interleave(good: list, bad: list) -> list:
    return [body for pair in zip_longest(good, bad) for body in pair if body is not None]


def assert_rejected_with_reasons(amqp_url: str, queue: str, bad: list[tuple[bytes, str]]) -> None:
    rejected = wait_for_dead_letters(amqp_url, queue, len(bad))
    assert sorted(body for body, _ in rejected) == sorted(body for body, _ in bad), "each bad message, once"
    expected_fragments = dict(bad)
    for body, reason in rejected:
        assert expected_fragments[body] in reason, f"{body!r} was rejected with {reason!r}"


def test_model_dead_letters_bad_features_and_predicts_the_good_ones(pipeline, amqp_url, vhost, logs_dir,
                                                                     trained_model):
    declare_topology(amqp_url)
    pipeline.start("model")
    pipeline.start("metric")
    good_ids = [f"good-{index}" for index in range(5)]
    good = [{"id": event_id, "body": SAMPLES.data[index].tolist()} for index, event_id in enumerate(good_ids)]

    publish_raw(amqp_url, "features", interleave(good, [body for body, _ in BAD_FEATURES]))
    publish_raw(amqp_url, "y_true", [{"id": event_id, "body": float(SAMPLES.target[index])}
                                     for index, event_id in enumerate(good_ids)])

    assert_rejected_with_reasons(amqp_url, "features", BAD_FEATURES)
    rows = wait_for_rows(logs_dir, len(good_ids))
    estimator, _ = load_model(trained_model)
    predicted = estimator.predict(SAMPLES.data[:len(good_ids)])
    by_id = {row["id"]: row for row in rows}
    assert set(by_id) == set(good_ids)
    for index, event_id in enumerate(good_ids):
        assert float(by_id[event_id]["absolute_error"]) == pytest.approx(abs(SAMPLES.target[index] - predicted[index]))
    assert_alive(pipeline, "model", "metric")
    assert "Traceback" not in output_of(pipeline, "model") + output_of(pipeline, "metric")
    wait_until_drained(vhost, "features", "y_true", "y_pred")
    assert_no_dead_letters(amqp_url, "features", "y_true", "y_pred")  # no late second copies


def test_metric_dead_letters_bad_targets_and_predictions_and_joins_the_good_ones(pipeline, amqp_url, vhost,
                                                                                 logs_dir):
    declare_topology(amqp_url)
    pipeline.start("metric")
    good_ids = [f"good-{index}" for index in range(5)]
    bad_targets, bad_predictions = bad_numbers("t"), bad_numbers("p")

    publish_raw(amqp_url, "y_true", interleave([{"id": event_id, "body": 100.0 + index}
                                                for index, event_id in enumerate(good_ids)],
                                               [body for body, _ in bad_targets]))
    publish_raw(amqp_url, "y_pred", interleave([{"id": event_id, "body": 90.0}
                                                for event_id in good_ids],
                                               [body for body, _ in bad_predictions]))

    assert_rejected_with_reasons(amqp_url, "y_true", bad_targets)
    assert_rejected_with_reasons(amqp_url, "y_pred", bad_predictions)
    rows = wait_for_rows(logs_dir, len(good_ids))
    assert {row["id"]: float(row["absolute_error"]) for row in rows} == {
        event_id: 10.0 + index for index, event_id in enumerate(good_ids)}
    assert_alive(pipeline, "metric")
    assert "Traceback" not in output_of(pipeline, "metric")
    wait_until_drained(vhost, "y_true", "y_pred")
    assert_no_dead_letters(amqp_url, "y_true", "y_pred")  # no late second copies


def test_plot_dead_letters_bad_events_and_counts_the_good_ones(pipeline, amqp_url, vhost):
    declare_topology(amqp_url)
    pipeline.start("plot")
    good = [{"id": f"good-{index}", "y_true": 150.0, "y_pred": 140.0 + index, "absolute_error": 10.0 - index}
            for index in range(5)]

    publish_raw(amqp_url, "metric_added", interleave(good, [body for body, _ in BAD_EVENTS]))

    assert_rejected_with_reasons(amqp_url, "metric_added", BAD_EVENTS)
    wait_for_output(pipeline, "plot", f"{len(good)} events, mean absolute error 8.00")
    assert_alive(pipeline, "plot")
    assert "Traceback" not in output_of(pipeline, "plot")
    wait_until_drained(vhost, "metric_added")
    assert_no_dead_letters(amqp_url, "metric_added")  # no late second copies
