from __future__ import annotations

import pytest

from mlmonitor.tasks import classification_error, is_classification, label_key, regression_error


@pytest.mark.parametrize("label, key", [(1, "1"), (1.0, "1"), ("1", "1"), (2.5, "2.5"), ("yes", "yes"), (-3.0, "-3")])
def test_label_key_names_a_class_the_same_whatever_its_json_type(label, key):
    assert label_key(label) == key


def test_with_probabilities_the_error_is_one_minus_the_probability_of_the_true_class():
    assert classification_error("yes", "yes", {"yes": 0.75, "no": 0.25}) == pytest.approx(0.25)
    assert classification_error("no", "yes", {"yes": 0.75, "no": 0.25}) == pytest.approx(0.75)
    assert classification_error("yes", "yes", {"yes": 1.0, "no": 0.0}) == 0.0


def test_binary_zero_one_labels_give_the_distance_to_the_probability_of_one():
    p_one = 0.8
    probabilities = {"0": 1 - p_one, "1": p_one}
    for y in (0, 1):
        assert classification_error(y, 1, probabilities) == pytest.approx(abs(y - p_one))


def test_a_true_class_the_probabilities_do_not_name_counts_as_probability_zero():
    assert classification_error("maybe", "yes", {"yes": 0.6, "no": 0.4}) == 1.0


def test_without_probabilities_the_error_is_zero_or_one():
    assert classification_error(2, 2.0, None) == 0.0
    assert classification_error("2", 2, None) == 0.0
    assert classification_error("cat", "dog", None) == 1.0


def test_what_a_prediction_says_about_its_task():
    assert is_classification("yes", None)
    assert is_classification(1.0, {"0": 0.5, "1": 0.5})
    assert not is_classification(148.2, None)


def test_regression_error_is_the_absolute_difference():
    assert regression_error(151.0, 148.5) == 2.5
