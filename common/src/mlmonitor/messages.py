"""One declared type per queue, and the wire format beside it.

Every message is a JSON object `{"id": ..., "body": ...}` (the course convention), UTF-8 encoded.
- `id`: a non-empty string (we send UUID4s) or a number (course producers send float timestamps).
  It is normalised to a string, so `1700000000.5` and `"1700000000.5"` name the same event.
- Numbers must be finite JSON numbers: strings, booleans, null, NaN and infinities are rejected.
- Unknown fields are ignored, so producers may add their own.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError

MAX_ID_LENGTH = 200


def _normalise_id(value: Any) -> str:
    if isinstance(value, bool):
        raise ValueError("id must be a string or a number, not a boolean")
    if isinstance(value, int):
        return str(value)
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


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class FeaturesMessage(Message):
    """Queue `features`: {"id": "…", "body": [0.03, -0.04, …]} — one sample's feature vector."""

    id: MessageId
    body: list[FiniteNumber] = Field(min_length=1)
    sent_at: FiniteNumber | None = None  # unix time the event was produced; optional, for latency figures


class TargetMessage(Message):
    """Queue `y_true`: {"id": "…", "body": 151.0} — the true target of the sample with that id."""

    id: MessageId
    body: FiniteNumber
    sent_at: FiniteNumber | None = None


class PredictionMessage(Message):
    """Queue `y_pred`: {"id": "…", "body": 148.2, "model_version": "…"} — the model's prediction."""

    id: MessageId
    body: FiniteNumber
    model_version: str | None = None
    sent_at: FiniteNumber | None = None


class MetricAdded(Message):
    """Exchange `metric_events` → queue `metric_added`: one joined pair, written to the metric log."""

    id: MessageId
    y_true: FiniteNumber
    y_pred: FiniteNumber
    absolute_error: Annotated[FiniteNumber, Field(ge=0)]
    model_version: str | None = None
    sent_at: FiniteNumber | None = None


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


def describe_validation_error(error: ValidationError) -> str:
    problems = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "message"
        problems.append(f"{location}: {item['msg']}")
    return "; ".join(problems)[:500]
