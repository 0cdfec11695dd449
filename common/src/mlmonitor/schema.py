"""The model's feature schema, as the model card records it, and the check of each features body against it.

A body is a list in the schema's order (the course format) or an object {name: value}. Numeric
features take numbers; categorical ones take strings (a number is taken as its label, so 3 and "3"
are one category). null is a missing value, accepted where the model can fill it in (an imputer in
its pipeline, or an estimator that handles NaN). A categorical value not seen in training is
accepted where the encoder ignores unknown categories, refused where it would fail.

Every refusal raises InvalidMessage with a reason that names the field, e.g.
`body.bmi: expected a number, got a string` or `body: missing column 'sex'`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import numpy as np

from .messages import InvalidMessage
from .tasks import label_key

NUMERIC = "numeric"
CATEGORICAL = "categorical"
MAX_NAMES_SHOWN = 8
MAX_NAME_SHOWN = 40  # characters of one name in a reason, which must stay under 500


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: Literal["numeric", "categorical"] = NUMERIC
    categories: tuple[str, ...] = ()  # categorical: the values seen in training
    allows_missing: bool = False
    unknown_categories: Literal["ignore", "error"] = "ignore"

    def to_card(self) -> dict:
        fields = asdict(self)
        fields["categories"] = list(self.categories)
        if self.kind == NUMERIC:
            del fields["categories"], fields["unknown_categories"]
        return fields

    @classmethod
    def from_card(cls, raw: dict) -> FeatureSpec:
        return cls(name=raw["name"], kind=raw.get("kind", NUMERIC), categories=tuple(raw.get("categories", ())),
                   allows_missing=bool(raw.get("allows_missing", False)),
                   unknown_categories=raw.get("unknown_categories", "ignore"))


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[FeatureSpec, ...]
    _known: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_known", {spec.name: frozenset(spec.categories) for spec in self.features
                                            if spec.kind == CATEGORICAL and spec.unknown_categories == "error"})

    @classmethod
    def numeric(cls, names: Sequence[str]) -> FeatureSchema:
        return cls(tuple(FeatureSpec(name) for name in names))

    @classmethod
    def from_card(cls, features: list[dict], feature_names: Sequence[str] = ()) -> FeatureSchema:
        """From the card's `features`; a card written before they existed lists only numeric names."""
        if features:
            return cls(tuple(FeatureSpec.from_card(raw) for raw in features))
        return cls.numeric(feature_names)

    def to_card(self) -> list[dict]:
        return [spec.to_card() for spec in self.features]

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.features]

    @property
    def all_numeric(self) -> bool:
        return all(spec.kind == NUMERIC for spec in self.features)

    def describe(self) -> str:
        return _names(self.names)

    def values(self, body: list | dict, where: str = "body") -> list[Any]:
        """The body's values in schema order, as the model takes them: floats (NaN for a missing
        number) and strings (None for a missing category). Raises InvalidMessage naming the first
        field that doesn't fit the model."""
        return [self._value(spec, value, place) for spec, value, place in self._located(body, where)]

    def observed(self, body: list | dict, where: str = "body") -> list[Any]:
        """The body's values in schema order as a drift monitor watches them: floats, category names
        (label_key), None where missing; a missing value or an unseen category is drift to count,
        not an error. Raises InvalidMessage for a body of another shape or a string in a numeric column."""
        observed = []
        for spec, value, place in self._located(body, where):
            if value is None or spec.kind == CATEGORICAL:
                observed.append(None if value is None else label_key(value))
            elif isinstance(value, str):
                raise InvalidMessage(f"{place}: expected a number, got a string")
            else:
                observed.append(value)
        return observed

    def _located(self, body: list | dict, where: str) -> list[tuple[FeatureSpec, Any, str]]:
        """(spec, value, its place in the message) per feature; raises InvalidMessage when a list has
        another length, or an object misses a column or has one the model doesn't know."""
        if isinstance(body, dict):
            missing = [spec.name for spec in self.features if spec.name not in body]
            if missing:
                raise InvalidMessage(f"{where}: missing column{'s' * (len(missing) > 1)} {_names(missing)}")
            if len(body) != len(self.features):
                known = set(self.names)
                extra = [name for name in body if name not in known]
                raise InvalidMessage(f"{where}: unknown column{'s' * (len(extra) > 1)} {_names(extra)} "
                                     f"(the model takes {self.describe()})")
            return [(spec, body[spec.name], f"{where}.{spec.name}") for spec in self.features]
        if len(body) != len(self.features):
            raise InvalidMessage(f"{where}: expected {len(self.features)} features ({self.describe()}), got {len(body)}")
        return [(spec, value, f"{where}.{index} ({spec.name})")
                for index, (spec, value) in enumerate(zip(self.features, body))]

    def _value(self, spec: FeatureSpec, value: Any, where: str) -> Any:
        if value is None:
            if not spec.allows_missing:
                raise InvalidMessage(f"{where}: missing, and the model was trained without missing values there")
            return math.nan if spec.kind == NUMERIC else None
        if spec.kind == NUMERIC:
            if isinstance(value, str):
                raise InvalidMessage(f"{where}: expected a number, got a string")
            return value
        category = label_key(value)
        known = self._known.get(spec.name)
        if known is not None and category not in known:
            raise InvalidMessage(f"{where}: unseen category {category!r}, which the model's encoder refuses "
                                 f"(seen in training: {_names(spec.categories)})")
        return category

    def model_input(self, rows: list[list[Any]]):
        """What the estimator's predict takes: a float array when every feature is numeric, else a
        pandas DataFrame with the schema's column names (numeric columns as floats)."""
        if self.all_numeric:
            return np.array(rows, dtype=float).reshape(len(rows), len(self.features))
        import pandas as pd

        frame = pd.DataFrame(rows, columns=self.names, dtype=object)
        for spec in self.features:
            if spec.kind == NUMERIC:
                frame[spec.name] = frame[spec.name].astype(float)
        return frame


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) if len(name) <= MAX_NAME_SHOWN else repr(name[:MAX_NAME_SHOWN]) + "…"
                      for name in names[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else "")
