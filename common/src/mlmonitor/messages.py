"""One declared type per queue, and the wire format beside it.

Every message is a JSON object `{"id": ..., "body": ...}` (the course convention), UTF-8 encoded.
- `id`: a non-empty string (we send UUID4s) or a number (course producers send float timestamps).
  It is normalised to a string, so `1700000000.5` and `"1700000000.5"` name the same event.
- Numbers must be finite JSON numbers: booleans, NaN and infinities are rejected.
- A target or a prediction is a number (regression) or a class label (classification: a string or
  a number). A prediction may carry `probabilities`, the model's probability of each class keyed by
  the class label as a string. A features body is a list in the model card's feature order or an
  object {name: value}, with numbers, strings (categorical values) or null (missing); whether it
  fits the model is checked against the card by `mlmonitor.schema`, not here.
- Unknown fields are ignored, so producers may add their own.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Strict, StringConstraints, Tag, ValidationError
from pydantic_core import to_json

MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 200  # a class label or a categorical value
MAX_CLASSES = 1000


def _normalise_id(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError("id must be a string or a number, not a boolean")
    if isinstance(value, int):
        if value.bit_length() > 3 * MAX_ID_LENGTH:  # over 200 digits, without printing a huge number
            raise ValueError(f"id must be 1 to {MAX_ID_LENGTH} characters")
        text = str(value)
        if len(text) > MAX_ID_LENGTH:
            raise ValueError(f"id must be 1 to {MAX_ID_LENGTH} characters")
        return text
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("id must be finite")
        return repr(value)
    if isinstance(value, str):
        if not value or len(value) > MAX_ID_LENGTH:
            raise ValueError(f"id must be 1 to {MAX_ID_LENGTH} characters")
        if not value.isprintable():
            raise ValueError("id must not contain control characters")
        return value
    raise ValueError("id must be a string or a number")


MessageId = Annotated[str, BeforeValidator(_normalise_id)]
FiniteNumber = Annotated[float, Strict(), Field(allow_inf_nan=False)]
def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("text must not contain control characters")
    return value


# a class label or a categorical value: a control character would break the CSV's one row per line
Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_LENGTH), AfterValidator(_printable)]
Label = FiniteNumber | Text  # a regression target, or a class label
FeatureValue = FiniteNumber | Annotated[str, StringConstraints(max_length=MAX_TEXT_LENGTH), AfterValidator(_printable)] | None
Probability = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]
PROBABILITY_SUM_TOLERANCE = 1e-3


def _check_probabilities(probabilities: dict[str, float] | None) -> dict[str, float] | None:
    if probabilities is not None:
        total = math.fsum(probabilities.values())
        if abs(total - 1.0) > PROBABILITY_SUM_TOLERANCE:
            raise ValueError(f"probabilities must add up to 1, not {total:.6g}")
    return probabilities


def _body_shape(value: Any) -> str | None:
    return "list" if isinstance(value, list) else "object" if isinstance(value, dict) else None


# A list or an object, told apart by the input's type, so an error speaks of the shape that was sent.
FeaturesBody = Annotated[
    Annotated[list[FeatureValue], Field(min_length=1), Tag("list")]
    | Annotated[dict[Text, FeatureValue], Field(min_length=1), Tag("object")],
    Discriminator(_body_shape, custom_error_type="body_shape",
                  custom_error_message="Input should be a list or an object"),
]

Probabilities = Annotated[dict[Text, Probability], Field(min_length=1, max_length=MAX_CLASSES),
                          AfterValidator(_check_probabilities)]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class FeaturesMessage(Message):
    """Queue `features`: {"id": "…", "body": [0.03, -0.04, …]} or {"id": "…", "body": {"age": 51, "city": "Oslo"}}
    — one sample's features, in the card's order or by name."""

    id: MessageId
    body: FeaturesBody
    sent_at: FiniteNumber | None = None  # unix time the event was produced; optional, for latency figures


class TargetMessage(Message):
    """Queue `y_true`: {"id": "…", "body": 151.0} — the true target (or class label) of the sample with that id."""

    id: MessageId
    body: Label
    sent_at: FiniteNumber | None = None


class PredictionMessage(Message):
    """Queue `y_pred`: {"id": "…", "body": 148.2, "model_version": "…"} — the model's prediction; a
    classifier's is a class label, optionally with {"probabilities": {"no": 0.2, "yes": 0.8}}."""

    id: MessageId
    body: Label
    probabilities: Probabilities | None = None
    model_version: str | None = None
    sent_at: FiniteNumber | None = None


class PredictionWithInputs(PredictionMessage):
    """A PredictionMessage with `features`, the inputs it was made from (a features body): what model
    publishes, and what a model served elsewhere sends to the `predictions` exchange, so that the
    drift monitor sees them. metric reads it as a PredictionMessage, leaving the inputs undecoded."""

    features: FeaturesBody | None = None


def with_inputs(encoded_prediction: bytes, features: list | dict) -> bytes:
    """The PredictionWithInputs of an encoded PredictionMessage and a features body already checked
    (a decoded FeaturesMessage's): the same bytes as building and encoding one, without validating
    and encoding the prediction a second time; model does this for every prediction."""
    return encoded_prediction[:-1] + b',"features":' + to_json(features) + b"}"


class MetricAdded(Message):
    """Exchange `metric_events` → queue `metric_added`: one joined pair, written to the metric log.
    For a classifier, y_true and y_pred are labels and absolute_error is 1 − p(true class)
    (see mlmonitor.tasks); `probabilities` is the prediction's, when it had them."""

    id: MessageId
    y_true: Label
    y_pred: Label
    absolute_error: Annotated[FiniteNumber, Field(ge=0)]
    probabilities: Probabilities | None = None
    model_version: str | None = None
    sent_at: FiniteNumber | None = None


# Batches: the drift monitor's copies of our own services' high-rate streams, many events a message, as
# the broker's cost is per message. A producer splits a batch so that each message stays under this.
MAX_BATCH_BYTES = 128 * 1024


class PredictionBatch(Message):
    """Exchange `prediction_batches` → queue `prediction_batches.drift`: {"predictions": [...]}, the
    predictions of one of model's batches, each a PredictionWithInputs (with the inputs it was made from)."""

    ITEMS: ClassVar[str] = "predictions"
    predictions: Annotated[list[PredictionWithInputs], Field(min_length=1)]


class MetricAddedBatch(Message):
    """Exchange `metric_batches` → queue `metric_batches.drift`: {"events": [...]}, the MetricAdded
    events of one of metric's group commits."""

    ITEMS: ClassVar[str] = "events"
    events: Annotated[list[MetricAdded], Field(min_length=1)]


def encode_batches(field: str, items: list[bytes], max_bytes: int = MAX_BATCH_BYTES) -> list[tuple[bytes, int]]:
    """The encoded `items` as JSON objects {field: [...]}, as few as fit in `max_bytes` each (an item
    bigger than that alone in its own), each with how many items it holds; in order."""
    head, tail = b'{"' + field.encode() + b'":[', b"]}"
    batches, chunk, size = [], [], len(head) + len(tail)
    for item in items:
        if chunk and size + len(item) + 1 > max_bytes:
            batches.append((head + b",".join(chunk) + tail, len(chunk)))
            chunk, size = [], len(head) + len(tail)
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        batches.append((head + b",".join(chunk) + tail, len(chunk)))
    return batches


class MonitorAlert(Message):
    """Exchange `monitor_alerts`, routing key `<kind>.<state>` (e.g. `feature_drift.raised`), and one
    line of `logs/alerts.jsonl`: a drift or degradation alert raised, or resolved, by the drift service.

    `episode` names the alert from its raise to its resolve (model version / detector / events at the
    raise / a random part); `events` is how many events (one per id) the detector had taken in on its stream when it
    decided, so the delay of an alert is `events` less the event its change began at; `score` is the
    detector's statistic over its threshold (it raises at `score` >= `threshold`); `explanation` says
    why: the chart that fired, the reference, the values since the change began and recent ones.
    `feature` is the feature's name for feature drift, null otherwise.
    """

    episode: str
    kind: Literal["feature_drift", "prediction_drift", "target_drift", "performance"]
    feature: str | None = None
    state: Literal["raised", "resolved"]
    time: str  # ISO 8601, UTC
    events: int
    score: float
    threshold: float
    model_version: str
    detector: str
    explanation: dict[str, Any] = Field(default_factory=dict)

    @property
    def routing_key(self) -> str:
        return f"{self.kind}.{self.state}"

    def encode(self) -> bytes:
        return self.model_dump_json().encode()  # `feature: null` stays: every line has the same fields


class InvalidMessage(ValueError):
    """The message can't be processed; `reason` says why, in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


MessageT = TypeVar("MessageT", bound=Message)


def decode(message_type: type[MessageT], body: bytes) -> MessageT:
    try:
        return message_type.model_validate_json(body)
    except ValidationError as error:
        raise InvalidMessage(describe_validation_error(error)) from None


# Parts of pydantic's error locations that name a branch of a union, not a place in the message.
_BRANCH = re.compile(r"^(float|str|constrained-str|list|object|nullable\[.*|list\[.*|dict\[.*|union\[.*|"
                     r"function-(after|before|wrap|plain)\[.*)$")


def _shown(part: str | int) -> str:
    """A place in the message; a key the sender made up is escaped, so the reason stays one line."""
    text = str(part)
    return text if text.isprintable() else repr(text)


def describe_validation_error(error: ValidationError) -> str:
    """One line: each place in the message that is wrong, e.g. `body.3: Input should be a valid
    number or Input should be a valid string`, the alternatives of a union joined by `or`."""
    problems: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        parts = [_shown(part) for part in item["loc"] if not (isinstance(part, str) and _BRANCH.match(part))]
        messages = problems.setdefault(".".join(parts) or "message", [])
        if item["msg"] not in messages:
            messages.append(item["msg"])
    return "; ".join(f"{location}: {' or '.join(messages)}" for location, messages in problems.items())[:500]
