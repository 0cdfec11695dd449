from __future__ import annotations

import json

import pytest

from mlmonitor.messages import (
    FeaturesMessage,
    InvalidMessage,
    MetricAdded,
    MetricAddedBatch,
    PredictionBatch,
    PredictionMessage,
    PredictionWithInputs,
    TargetMessage,
    decode,
    encode_batches,
    with_inputs,
)


def test_decodes_a_features_message():
    message = decode(FeaturesMessage, b'{"id": "a1", "body": [0.03, -0.04, 1], "sent_at": 1700000000.5}')
    assert message == FeaturesMessage(id="a1", body=[0.03, -0.04, 1.0], sent_at=1700000000.5)


def test_decodes_a_target_message():
    assert decode(TargetMessage, b'{"id": "a1", "body": 151}') == TargetMessage(id="a1", body=151.0)


def test_decodes_a_prediction_message():
    message = decode(PredictionMessage, b'{"id": "a1", "body": 148.2, "model_version": "abc123"}')
    assert (message.id, message.body, message.model_version) == ("a1", 148.2, "abc123")


def test_decodes_a_metric_added_event():
    raw = b'{"id": "a1", "y_true": 151, "y_pred": 148.5, "absolute_error": 2.5}'
    assert decode(MetricAdded, raw) == MetricAdded(id="a1", y_true=151.0, y_pred=148.5, absolute_error=2.5)


def test_integer_id_becomes_a_string():
    assert decode(TargetMessage, b'{"id": 42, "body": 1}').id == "42"


def test_float_timestamp_id_and_its_string_name_the_same_event():
    from_number = decode(TargetMessage, b'{"id": 1700000000.123456, "body": 1}')
    from_string = decode(PredictionMessage, b'{"id": "1700000000.123456", "body": 1}')
    assert from_number.id == from_string.id == "1700000000.123456"


def test_extra_fields_are_ignored():
    message = decode(TargetMessage, b'{"id": "a1", "body": 1, "producer": "course", "extra": {"x": 1}}')
    assert message == TargetMessage(id="a1", body=1.0)


@pytest.mark.parametrize("message", [
    FeaturesMessage(id="a1", body=[0.5, -1.25], sent_at=1700000000.25),
    TargetMessage(id="1700000000.123456", body=151.0),
    PredictionMessage(id="a,\"1", body=148.2, model_version="abc123"),
    MetricAdded(id="a1", y_true=151.0, y_pred=148.2, absolute_error=2.8, model_version="v", sent_at=1.5),
])
def test_encode_round_trips(message):
    encoded = message.encode()
    assert isinstance(encoded, bytes)
    assert decode(type(message), encoded) == message


def test_encode_leaves_out_unset_optional_fields():
    assert json.loads(TargetMessage(id="a1", body=1.0).encode()) == {"id": "a1", "body": 1.0}


@pytest.mark.parametrize("raw, reason_mentions", [
    (b'{"id": "a1", "body": ', "Invalid JSON"),
    (b"\xff\xfe", "Invalid JSON"),
    (b"[1, 2]", "object"),
    (b'"a1"', "object"),
    (b'{"body": 1}', "id"),
    (b'{"id": "a1"}', "body"),
    (b'{"id": true, "body": 1}', "boolean"),
    (b'{"id": "", "body": 1}', "id"),
    (b'{"id": "a\\nb", "body": 1}', "control characters"),
    (b'{"id": "a\\u0000b", "body": 1}', "control characters"),
    (b'{"id": null, "body": 1}', "id"),
    (b'{"id": "a1", "body": null}', "body"),
    (b'{"id": "a1", "body": ""}', "body"),
    (b'{"id": "a1", "body": [151]}', "body"),
    (b'{"id": "a1", "body": true}', "body"),
    (b'{"id": "a1", "body": NaN}', "finite"),
    (b'{"id": "a1", "body": Infinity}', "finite"),
    (b'{"id": "a1", "body": -Infinity}', "finite"),
    (b'{"id": "a1", "body": 1e400}', "finite"),
])
def test_rejects_bad_target_messages_with_a_one_line_reason(raw, reason_mentions):
    with pytest.raises(InvalidMessage) as caught:
        decode(TargetMessage, raw)
    reason = caught.value.reason
    assert reason_mentions in reason
    assert "\n" not in reason
    assert str(caught.value) == reason


@pytest.mark.parametrize("raw, reason_mentions", [
    (b'{"id": "a1", "body": []}', "at least 1"),
    (b'{"id": "a1", "body": [1, NaN]}', "body.1"),
    (b'{"id": "a1", "body": [1, true]}', "body.1"),
    (b'{"id": "a1", "body": [1, [2]]}', "body.1"),
    (b'{"id": "a1", "body": {"age": 1, "city": {"name": "Oslo"}}}', "body.city"),
    (b'{"id": "a1", "body": {}}', "at least 1"),
    (b'{"id": "a1", "body": 0.5}', "list or an object"),
])
def test_rejects_bad_feature_vectors(raw, reason_mentions):
    with pytest.raises(InvalidMessage) as caught:
        decode(FeaturesMessage, raw)
    assert reason_mentions in caught.value.reason


def test_rejection_reason_stays_short_for_a_huge_message():
    raw = json.dumps({"id": "a1", "body": [True] * 10_000}).encode()
    with pytest.raises(InvalidMessage) as caught:
        decode(FeaturesMessage, raw)
    assert len(caught.value.reason) <= 500


@pytest.mark.parametrize("sent_at", ["NaN", "Infinity", "1e400", '"1700000000.5"', "true"])
def test_rejects_a_sent_at_that_is_not_a_finite_number(sent_at):
    with pytest.raises(InvalidMessage) as caught:
        decode(TargetMessage, f'{{"id": "a1", "body": 1, "sent_at": {sent_at}}}'.encode())
    assert "sent_at" in caught.value.reason


def test_sent_at_may_be_null():
    assert decode(TargetMessage, b'{"id": "a1", "body": 1, "sent_at": null}').sent_at is None


def test_a_features_body_may_be_an_object_with_numbers_strings_and_nulls():
    message = decode(FeaturesMessage, b'{"id": "a1", "body": {"age": 51, "city": "Oslo", "income": null}}')
    assert message.body == {"age": 51.0, "city": "Oslo", "income": None}


def test_a_class_label_may_be_a_string_and_a_prediction_may_carry_probabilities():
    message = decode(PredictionMessage, b'{"id": "a1", "body": "yes", "probabilities": {"no": 0.25, "yes": 0.75}}')
    assert (message.body, message.probabilities) == ("yes", {"no": 0.25, "yes": 0.75})
    assert decode(TargetMessage, b'{"id": "a1", "body": "no"}').body == "no"


@pytest.mark.parametrize("probabilities, reason_mentions", [
    ('{"no": 0.25, "yes": 0.5}', "add up to 1"),
    ('{"no": -0.5, "yes": 1.5}', "probabilities.no"),
    ('{"no": NaN, "yes": 1}', "probabilities.no"),
    ('{}', "at least 1"),
    ('[0.5, 0.5]', "probabilities"),
])
def test_rejects_bad_probabilities(probabilities, reason_mentions):
    with pytest.raises(InvalidMessage) as caught:
        decode(PredictionMessage, f'{{"id": "a1", "body": "yes", "probabilities": {probabilities}}}'.encode())
    assert reason_mentions in caught.value.reason


@pytest.mark.parametrize("message_type, raw, place", [
    (TargetMessage, b'{"id": "a1", "body": "yes\\nno"}', "body"),
    (FeaturesMessage, b'{"id": "a1", "body": {"city": "Oslo\\u0000"}}', "body.city"),
    (PredictionMessage, b'{"id": "a1", "body": "y", "probabilities": {"y\\n": 1}}', "probabilities"),
])
def test_labels_and_categories_with_control_characters_are_refused_in_one_line(message_type, raw, place):
    with pytest.raises(InvalidMessage) as caught:
        decode(message_type, raw)
    assert caught.value.reason.startswith(place) and "control characters" in caught.value.reason
    assert "\n" not in caught.value.reason and "\x00" not in caught.value.reason


def test_batches_are_cut_under_the_cap_and_hold_every_item_once_in_order():
    items = [PredictionWithInputs(id=f"p{index}", body=float(index), features=[0.5] * 10).encode()
             for index in range(500)]
    batches = encode_batches("predictions", items, max_bytes=4096)
    assert len(batches) > 1 and all(len(body) <= 4096 for body, _ in batches)
    decoded = [decode(PredictionBatch, body).predictions for body, _ in batches]
    assert [len(predictions) for predictions in decoded] == [count for _, count in batches]
    assert [prediction.id for predictions in decoded for prediction in predictions] == [f"p{index}" for index in range(500)]
    assert decoded[0][3].features == [0.5] * 10


@pytest.mark.parametrize("prediction, features", [
    (PredictionMessage(id="a1", body=148.25, model_version="v1", sent_at=1700000000.5), [0.03, -0.04, 1.0]),
    (PredictionMessage(id="a2", body="yes", probabilities={"no": 0.25, "yes": 0.75}),
     {"city": "Tromsø", "age": None, "income": 5.5e4}),
    (PredictionMessage(id="a3", body=1.0), [None, "a \"quoted\" text", -0.0]),
])
def test_a_prediction_with_its_inputs_appended_is_what_encoding_the_whole_message_gives(prediction, features):
    whole = PredictionWithInputs(**prediction.model_dump(), features=features)
    assert with_inputs(prediction.encode(), features) == whole.encode()
    assert decode(PredictionWithInputs, with_inputs(prediction.encode(), features)) == whole


def test_an_item_over_the_cap_goes_alone_and_an_empty_batch_is_refused():
    big = MetricAdded(id="big", y_true="x" * 150, y_pred=1.0, absolute_error=1.0).encode()
    small = MetricAdded(id="small", y_true=1.0, y_pred=1.0, absolute_error=0.0).encode()
    batches = encode_batches("events", [small, big, small], max_bytes=len(big))
    assert [count for _, count in batches] == [1, 1, 1]
    assert decode(MetricAddedBatch, batches[1][0]).events[0].id == "big"
    with pytest.raises(InvalidMessage, match="events: List should have at least 1 item"):
        decode(MetricAddedBatch, b'{"events": []}')
