from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mlmonitor.messages import FeaturesMessage, InvalidMessage, decode
from mlmonitor.schema import CATEGORICAL, FeatureSchema, FeatureSpec

HOUSES = FeatureSchema((
    FeatureSpec("area", allows_missing=True),
    FeatureSpec("district", CATEGORICAL, ("north", "south"), allows_missing=True),
    FeatureSpec("rooms"),
))


def values_of(schema: FeatureSchema, raw: bytes) -> list:
    return schema.values(decode(FeaturesMessage, raw).body)


def test_a_list_body_is_taken_in_the_schema_order():
    assert values_of(HOUSES, b'{"id": 1, "body": [70.5, "north", 3]}') == [70.5, "north", 3.0]


def test_an_object_body_is_put_in_the_schema_order_whatever_its_key_order():
    assert values_of(HOUSES, b'{"id": 1, "body": {"rooms": 3, "district": "south", "area": 70}}') == [70.0, "south", 3.0]


def test_null_is_a_missing_value_where_the_model_fills_it_in():
    area, district, rooms = values_of(HOUSES, b'{"id": 1, "body": {"area": null, "district": null, "rooms": 2}}')
    assert math.isnan(area) and district is None and rooms == 2.0


def test_an_unseen_category_is_accepted_where_the_encoder_ignores_it():
    assert values_of(HOUSES, b'{"id": 1, "body": [70, "east", 3]}')[1] == "east"


def test_a_number_in_a_categorical_column_is_its_label():
    assert values_of(HOUSES, b'{"id": 1, "body": [70, 7, 3]}')[1] == "7"


@pytest.mark.parametrize("body, reason", [
    ('[70, "north"]', "body: expected 3 features ('area', 'district', 'rooms'), got 2"),
    ('[70, "north", null]', "body.2 (rooms): missing, and the model was trained without missing values there"),
    ('["big", "north", 3]', "body.0 (area): expected a number, got a string"),
    ('{"area": 70, "rooms": 3}', "body: missing column 'district'"),
    ('{"area": 70, "district": "north"}', "body: missing column 'rooms'"),
    ('{"area": 70, "district": "north", "rooms": 3, "pool": 1}',
     "body: unknown column 'pool' (the model takes 'area', 'district', 'rooms')"),
    ('{"area": "70", "district": "north", "rooms": 3}', "body.area: expected a number, got a string"),
])
def test_a_body_that_does_not_fit_is_refused_with_a_reason_naming_the_field(body, reason):
    with pytest.raises(InvalidMessage) as caught:
        values_of(HOUSES, f'{{"id": 1, "body": {body}}}'.encode())
    assert caught.value.reason == reason


def test_an_unseen_category_is_refused_where_the_encoder_would_fail():
    strict = FeatureSchema((FeatureSpec("district", CATEGORICAL, ("north", "south"), unknown_categories="error"),))
    with pytest.raises(InvalidMessage) as caught:
        strict.values(["east"])
    assert caught.value.reason.startswith("body.0 (district): unseen category 'east'")
    assert "'north', 'south'" in caught.value.reason


def test_long_lists_of_names_are_cut_in_reasons():
    schema = FeatureSchema.numeric([f"f{i}" for i in range(50)])
    with pytest.raises(InvalidMessage) as caught:
        schema.values([1.0])
    assert "and 42 more" in caught.value.reason and len(caught.value.reason) < 200


def test_card_round_trip_and_cards_written_before_the_schema():
    assert FeatureSchema.from_card(HOUSES.to_card()) == HOUSES
    assert FeatureSchema.from_card([], ["age", "bmi"]) == FeatureSchema.numeric(["age", "bmi"])
    assert "categories" not in HOUSES.to_card()[0] and HOUSES.to_card()[1]["categories"] == ["north", "south"]


def test_model_input_is_a_float_array_for_numeric_features():
    schema = FeatureSchema.numeric(["a", "b"])
    matrix = schema.model_input([schema.values([1.0, 2.0]), schema.values([3.0, 4.0])])
    assert matrix.dtype == float and matrix.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_model_input_is_a_named_frame_when_a_feature_is_categorical():
    frame = HOUSES.model_input([[70.0, "north", 3.0], [math.nan, None, 2.0]])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["area", "district", "rooms"]
    assert frame["area"].dtype == float and frame["district"].tolist() == ["north", None]
    assert np.isnan(frame["area"][1])
