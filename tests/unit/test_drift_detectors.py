"""The drift detectors (drift/src/detectors.py) against known, seeded streams."""

from __future__ import annotations

import json
import sys
from statistics import NormalDist
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "drift" / "src"))

import detectors as drift  # noqa: E402
import calibration  # noqa: E402
from calibration import ScoreDistribution, run_length, threshold  # noqa: E402
from mlmonitor.reference import build_reference, categorical_stats, numeric_stats  # noqa: E402

COLORS = {"red": 0.5, "green": 0.3, "blue": 0.2}


def population(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """The population the reference is a sample of: two numbers, one category, target, residuals."""
    residual = rng.normal(0, 10, size)
    return {"x": rng.standard_normal(size), "skewed": rng.lognormal(0, 0.5, size),
            "color": rng.choice(list(COLORS), size, p=list(COLORS.values())),
            "y": rng.normal(100, 20, size), "residual": residual, "error": np.abs(residual)}


@pytest.fixture(scope="module")
def reference() -> dict:
    sample = population(np.random.default_rng(1), 2000)
    return build_reference({"x": ("numeric", sample["x"]), "skewed": ("numeric", sample["skewed"]),
                            "color": ("categorical", sample["color"].tolist())},
                           target=numeric_stats(sample["y"]), predictions=numeric_stats(sample["y"]),
                           errors=sample["error"], residuals=sample["residual"])


@pytest.fixture(scope="module")
def detectors(reference) -> list[drift.Detector]:
    return drift.detectors_for(reference, false_alarms_per_100k=1.0)


@pytest.fixture(scope="module")
def with_residuals(reference) -> list[drift.Detector]:
    return drift.detectors_for(reference, false_alarms_per_100k=1.0, residuals=True)


def named(detectors, name: str) -> drift.Detector:
    return next(detector for detector in detectors if detector.name == name)


def stream_values(sample: dict[str, np.ndarray], name: str) -> np.ndarray:
    column = {"feature.x": "x", "feature.skewed": "skewed", "feature.color": "color", "prediction": "y",
              "target": "y", "performance": "error"}[name]
    return sample[column]


def first_raises(detector: drift.Detector, values: np.ndarray) -> np.ndarray:
    """values: events × streams; the event (1-based) of each stream's first raise, or 0."""
    running = detector.copy_for(values.shape[1])
    first = np.zeros(values.shape[1], dtype=int)
    for event, row in enumerate(values, start=1):
        raised = running.update_many(row) == 1
        first = np.where((first == 0) & raised, event, first)
    return first


def test_a_stationary_stream_raises_nothing_in_200k_events(detectors):
    # The budget is 1 per 100k events for all six detectors together: 2 expected at most, and the
    # reference margin makes the thresholds conservative for the reference's own population.
    streams, events = 200, 1000
    sample = population(np.random.default_rng(2), streams * events)
    raises = 0
    for detector in detectors:
        values = stream_values(sample, detector.name).reshape(events, streams)
        raises += int((first_raises(detector, values) > 0).sum())
    assert raises <= 1


def test_a_chart_calibrated_to_a_run_length_has_it_in_simulation():
    rng = np.random.default_rng(3)
    normal = ScoreDistribution(rng.standard_normal(20_000))
    h = threshold(normal, k=0.25, target_arl=2000)
    statistic = np.zeros(2000)
    run = np.zeros(2000, dtype=int)
    alive = np.ones(2000, dtype=bool)
    for step in range(1, 40_000):
        statistic = np.maximum(statistic + rng.standard_normal(2000) - 0.25, 0)
        stopped = alive & (statistic >= h)
        run[stopped], alive[stopped] = step, False
        if not alive.any():
            break
    assert run.mean() == pytest.approx(2000, rel=0.1)  # the mean of 2000 runs: ±2.2 % standard error


def first_raise_rate(detector: drift.Detector, rng: np.random.Generator, streams: int, events: int) -> float:
    """First raises per event at risk on N(0, 1) streams from a fresh start (each stream stops counting
    at its first raise): the maximum-likelihood rate of an exponential run length, censored at `events`."""
    running = detector.copy_for(streams)
    at_risk = np.ones(streams, dtype=bool)
    exposure = raises = 0
    for _ in range(events):
        raised = (running.update_many(rng.standard_normal(streams)) == 1) & at_risk
        exposure += int(at_risk.sum())
        raises += int(raised.sum())
        at_risk &= ~raised
    return raises / exposure


@pytest.fixture(scope="module")
def normal_stats() -> dict:
    return numeric_stats(np.random.default_rng(12345).standard_normal(200_000))  # the population itself


def test_a_detector_s_charts_calibrated_together_raise_its_share_in_simulation(normal_stats):
    # 50 per 100k for one detector: a run length of 2,000 events, which a bounded simulation can
    # measure (about 1,500 raises: ±3 %). Its six charts, correlated, raise less often than six
    # charts apart would, and the joint calibration sees it: the union bound over them sets higher
    # thresholds, which raise about 20 % less often than asked.
    detector = drift.NumericDetector("x", drift.FEATURE_DRIFT, normal_stats, watch_missing=False)
    drift.calibrate([detector], false_alarms_per_100k=50, reference_margin=0)
    rate = first_raise_rate(detector, np.random.default_rng(21), streams=400, events=8000)
    assert rate * 2000 == pytest.approx(1, abs=0.15)

    scores, _ = detector.in_control(detector.charts[0])
    spans = [drift.RUN_LENGTH_SPANS[2 * chart.k] for chart in detector.charts]
    union = 2000 * sum(1 / span for span in spans)  # each chart's run length at A = union / span
    apart = drift.NumericDetector("x", drift.FEATURE_DRIFT, normal_stats, watch_missing=False)
    apart.set_thresholds(threshold(ScoreDistribution(scores.values * chart.sign, scores.weights), chart.k, union * span)
                         for chart, span in zip(detector.charts, spans))
    assert (detector.thresholds < apart.thresholds).all()
    assert first_raise_rate(apart, np.random.default_rng(22), streams=400, events=8000) * 2000 < 0.9


def test_the_excursion_ratio_matches_a_brute_force_simulation():
    # Three up-charts on N(0, 1), each at a run length of 2,000: together they raise every ~1,110
    # events (4,000 streams run to their first raise, seeded: ±1.5 %), where the union bound says 667.
    grid = np.array([NormalDist().inv_cdf((i + 0.5) / 4000) for i in range(4000)])
    normal = ScoreDistribution(grid)
    ks = [0.125, 0.25, 0.5]
    thresholds = [threshold(normal, k, 2000) for k in ks]
    ratio = calibration.excursion_ratio(normal, ks, thresholds)
    rng = np.random.default_rng(23)
    statistic = np.zeros((4000, 3))
    at_risk = np.ones(4000, dtype=bool)
    exposure = raises = 0
    for _ in range(6000):
        statistic = np.maximum(statistic + rng.choice(grid, 4000)[:, None] - np.array(ks), 0)
        raised = at_risk & (statistic >= np.array(thresholds)).any(axis=1)
        exposure += int(at_risk.sum())
        raises += int(raised.sum())
        at_risk &= ~raised
    simulated = raises / exposure * run_length(grid - ks[0], normal.weights, thresholds[0])
    assert ratio == pytest.approx(simulated, rel=0.1)
    assert 1.5 < ratio < 2.1


def test_the_calibration_is_deterministic(reference):
    first = drift.detectors_for(reference, false_alarms_per_100k=1.0, residuals=True)
    calibration._threshold.cache_clear()
    calibration._excursion_ratio.cache_clear()
    again = drift.detectors_for(reference, false_alarms_per_100k=1.0, residuals=True)
    assert all(np.array_equal(a.thresholds, b.thresholds) for a, b in zip(first, again))


def test_the_markov_chain_gives_the_textbook_run_lengths():
    grid = np.array([NormalDist().inv_cdf((i + 0.5) / 4000) for i in range(4000)])
    weights = np.full(grid.size, 1 / grid.size)
    assert run_length(grid - 0.5, weights, 5.0) == pytest.approx(938, rel=0.02)  # k = 0.5, h = 5, in control
    assert run_length(grid + 1 - 0.5, weights, 5.0) == pytest.approx(10.4, rel=0.02)  # a 1 σ shift


def test_a_one_sigma_shift_is_caught_within_80_events(detectors, reference):
    detector = named(detectors, "feature.x")
    sample = np.random.default_rng(4).standard_normal((300, 100)) + 1.0
    first = first_raises(detector, sample)
    assert (first > 0).all() and first.max() <= 80
    assert 15 <= first.mean() <= 50


def test_a_shift_down_is_caught_too(detectors):
    first = first_raises(named(detectors, "feature.skewed"), np.random.default_rng(5).lognormal(0, 0.5, (300, 50)) - 0.7)
    assert (first > 0).all()


def test_performance_ignores_a_better_model_and_catches_a_worse_one(detectors):
    detector = named(detectors, "performance")
    rng = np.random.default_rng(6)
    better = np.abs(rng.normal(0, 5, (20_000, 20)))  # errors half as large
    assert (first_raises(detector, better) == 0).all()
    worse = np.abs(rng.normal(0, 15, (2000, 20)))
    assert (first_raises(detector, worse) > 0).all()


def test_a_category_gaining_share_is_caught_and_named(detectors):
    detector = named(detectors, "feature.color").copy_for(1)
    rng = np.random.default_rng(7)
    decision = None
    for value in rng.choice(["red", "green", "blue"], 3000, p=[0.4, 0.2, 0.4]):
        decision = decision or detector.update(str(value))
    assert decision is not None and decision.state == drift.RAISED
    since = decision.explanation["since"]
    assert since["category"] == "blue" and since["reference_frequency"] == pytest.approx(0.2, abs=0.03)
    assert since["frequency"] > 0.3


def test_an_unseen_category_and_missing_values_are_drift(detectors):
    for value in ("purple", None):
        detector = named(detectors, "feature.color").copy_for(1)
        decisions = [detector.update(value if i % 2 else "red") for i in range(300)]
        raised = [d for d in decisions if d is not None]
        assert raised and raised[0].explanation["chart"]["channel"] in (drift.UNSEEN, drift.MISSING)


def test_a_numeric_column_arriving_empty_raises_on_its_missing_rate(detectors):
    detector = named(detectors, "feature.x").copy_for(1)
    decisions = [detector.update(None if i % 3 == 0 else 0.1) for i in range(500)]
    raised = [d for d in decisions if d is not None]
    assert raised[0].explanation["chart"]["channel"] == drift.MISSING


def test_raised_once_per_episode_and_resolved_after_it(detectors):
    detector = named(detectors, "feature.x").copy_for(1)
    rng = np.random.default_rng(8)
    calm, drifted = (lambda n: rng.standard_normal(n)), (lambda n: rng.standard_normal(n) + 1.0)
    stream = np.concatenate([calm(3000), drifted(1000), calm(3000), drifted(1000), calm(3000)])
    decisions = [(event, d.state) for event, value in enumerate(stream, start=1)
                 if (d := detector.update(float(value))) is not None]
    assert [state for _, state in decisions] == [drift.RAISED, drift.RESOLVED] * 2
    (up1, _), (down1, _), (up2, _), (down2, _) = decisions
    assert 3000 < up1 < 3100 and 4000 < down1 < 4400
    assert 7000 < up2 < 7100 and 8000 < down2 < 8400


def test_a_persistent_small_shift_is_one_episode_not_a_flapping_alert(detectors):
    """Held at its threshold, a chart whose k is just under the shift drifts up only slowly, and its
    noise can take it well below: the alert resolves only once every chart is under a fifth of
    its threshold, which a shift that persists doesn't reach (at a half it flapped in 1 of these)."""
    for seed in range(6):
        detector = named(detectors, "feature.x").copy_for(1)
        values = np.random.default_rng(seed).standard_normal(30_000) + 0.3
        assert [decision.state for decision in detector.update_batch(values)] == [drift.RAISED], seed


def test_resolving_restarts_the_charts_from_zero_as_calibrated(detectors):
    """The false-alarm rate is calibrated on run lengths from 0; charts left just under half their
    thresholds after an episode would raise again sooner."""
    detector = named(detectors, "feature.x").copy_for(1)
    rng = np.random.default_rng(9)
    stream = np.concatenate([rng.standard_normal(500) + 1.0, rng.standard_normal(3000)])
    decisions = []
    for value in stream:
        if (decision := detector.update(float(value))) is not None:
            decisions.append(decision)
            if decision.state == drift.RESOLVED:
                break
    assert [decision.state for decision in decisions] == [drift.RAISED, drift.RESOLVED]
    assert decisions[1].score > 0 and detector.score == 0  # the alert tells where it stood; then 0
    streams = named(detectors, "feature.x").copy_for(3)
    outcomes = [streams.update_many(np.full(3, value)) for value in stream[:decisions[1].events]]
    assert (outcomes[-1] == -1).all() and not streams.bank.statistic.any()  # the simulations' path alike



def test_the_state_round_trips_through_json_and_gives_the_same_decisions(detectors):
    rng = np.random.default_rng(9)
    stream = np.concatenate([rng.standard_normal(2000), rng.standard_normal(2000) + 0.5, rng.standard_normal(3000)])
    original = named(detectors, "feature.x").copy_for(1)
    for value in stream[:2500]:
        original.update(float(value))
    restored = drift.Detector.from_state(json.loads(json.dumps(original.to_state())))

    def decisions(detector):
        return [(d.state, d.events, d.score) for value in stream[2500:] if (d := detector.update(float(value)))]

    assert decisions(original) == decisions(restored) != []


def test_the_state_of_a_categorical_detector_round_trips(detectors):
    original = named(detectors, "feature.color").copy_for(1)
    for value in ["red", "blue", "green", None, "purple"] * 20:
        original.update(value)
    restored = drift.Detector.from_state(json.loads(json.dumps(original.to_state())))
    assert restored.to_state() == original.to_state()


def test_many_streams_at_once_decide_as_one_stream_does(detectors):
    detector = named(detectors, "feature.x")
    values = np.random.default_rng(10).standard_normal((3000, 3)) + np.array([0.0, 0.5, 1.0])
    batch = detector.copy_for(3)
    codes = np.array([batch.update_many(row) for row in values])
    for column in range(3):
        single = detector.copy_for(1)
        expected = [0 if d is None else (1 if d.state == drift.RAISED else -1)
                    for d in (single.update(float(v)) for v in values[:, column])]
        assert codes[:, column].tolist() == expected


def test_an_alert_explains_itself(detectors):
    detector = named(detectors, "feature.x").copy_for(1)
    decision = next(d for value in np.random.default_rng(11).standard_normal(500) + 2
                    if (d := detector.update(float(value))) is not None)
    explanation = decision.explanation
    assert (decision.kind, decision.feature, decision.state) == (drift.FEATURE_DRIFT, "x", drift.RAISED)
    assert decision.score >= decision.threshold == 1.0 and decision.events == explanation["events"]
    assert explanation["chart"]["direction"] == "up" and explanation["chart"]["statistic"] >= explanation["chart"]["threshold"]
    assert {"mean", "std", "quantiles"} <= explanation["reference"].keys()
    assert explanation["since"]["events"] > 0 and explanation["since"]["mean"] > 1.0
    assert explanation["recent"]["mean"] > 0.1
    json.dumps(explanation)  # as it goes into logs/alerts.jsonl


def test_the_budget_is_shared_and_a_smaller_one_buys_higher_thresholds(reference):
    strict = drift.detectors_for(reference, false_alarms_per_100k=0.1)
    loose = drift.detectors_for(reference, false_alarms_per_100k=10)
    assert all((s.thresholds >= l.thresholds).all() for s, l in zip(strict, loose))
    assert [d.kind for d in strict] == [drift.FEATURE_DRIFT] * 3 + [drift.PREDICTION_DRIFT, drift.TARGET_DRIFT,
                                                                     drift.PERFORMANCE]


def test_a_classifier_s_classes_are_watched_as_categories():
    labels = ["yes"] * 700 + ["no"] * 300
    reference = build_reference({"x": ("numeric", np.arange(1000.0))}, target=categorical_stats(labels),
                                predictions=categorical_stats(labels), errors=[0.0] * 800 + [1.0] * 200)
    built = drift.detectors_for(reference)
    assert isinstance(named(built, "prediction"), drift.CategoricalDetector)
    assert isinstance(named(built, "target"), drift.CategoricalDetector)
    performance = named(built, "performance").copy_for(1)
    decisions = [performance.update(1.0 if i % 2 else 0.0) for i in range(400)]  # 50 % wrong instead of 20 %
    assert any(d is not None and d.state == drift.RAISED for d in decisions)


def test_a_constant_column_raises_when_it_starts_to_vary():
    reference = build_reference({"version": ("numeric", np.full(500, 3.0))}, target=numeric_stats(np.arange(500.0)),
                                predictions=numeric_stats(np.arange(500.0)), errors=np.arange(500.0))
    detector = named(drift.detectors_for(reference), "feature.version").copy_for(1)
    assert all(detector.update(3.0) is None for _ in range(5000))
    assert any(detector.update(4.0) is not None for _ in range(50))


# --- the performance detector on residuals ------------------------------------------------------------

def test_with_residuals_the_performance_detector_takes_y_minus_y_hat(with_residuals, detectors):
    performance = named(with_residuals, "performance")
    assert isinstance(performance, drift.PerformanceDetector) and performance.takes_residuals
    assert {(chart.channel, chart.direction) for chart in performance.charts} == {
        ("value", "up"), ("residual", "up"), ("residual", "down")}
    assert not named(detectors, "performance").takes_residuals  # the default: the absolute error, as before


def test_a_bias_either_way_is_caught_on_the_residual(with_residuals):
    rng = np.random.default_rng(20)
    for bias, direction in ((5.0, "up"), (-5.0, "down")):  # half a residual σ
        detector = named(with_residuals, "performance").copy_for(1)
        decision = next(d for value in rng.normal(bias, 10, 5000) if (d := detector.update(float(value))))
        assert decision.state == drift.RAISED and decision.kind == drift.PERFORMANCE
        chart = decision.explanation["chart"]
        assert (chart["channel"], chart["direction"]) == ("residual", direction)
        assert np.sign(decision.explanation["since"]["mean"]) == np.sign(bias)
        reference = decision.explanation["reference"]  # the residuals', which the chart watches
        assert abs(reference["mean"]) < 1 and reference["std"] == pytest.approx(10, rel=0.05)
        assert reference["errors"]["mean"] == pytest.approx(8, rel=0.05)  # E|N(0, 10)|


def test_a_better_model_is_still_no_alarm_with_residuals(with_residuals):
    detector = named(with_residuals, "performance")
    better = np.random.default_rng(21).normal(0, 5, (20_000, 20))  # errors half as large, no bias
    assert (first_raises(detector, better) == 0).all()
    worse = np.random.default_rng(22).normal(0, 15, (2000, 20))
    assert (first_raises(detector, worse) > 0).all()


def test_an_older_card_without_residuals_watches_the_absolute_error(reference):
    older = {key: value for key, value in reference.items() if key != "residuals"}
    performance = named(drift.detectors_for(older, residuals=True), "performance")
    assert type(performance) is drift.NumericDetector and not performance.takes_residuals


# --- batches ------------------------------------------------------------------------------------------

@pytest.fixture
def vectorised_everywhere(monkeypatch):
    """Every batch, even of one event, through the vectorised pass, cut into chunks of 256, with runs
    longer than 16 added one by one: every seam of the batch path is crossed."""
    monkeypatch.setattr(drift, "SMALL_BATCH", 1)
    monkeypatch.setattr(drift, "CHUNK", 256)
    monkeypatch.setattr(drift, "SHORT_RUN", 16)


def drifting(rng: np.random.Generator, name: str, events: int = 4000) -> list:
    """A stream for the detector `name` that drifts away and comes back, several times: calm stretches
    from the reference's population, shifted ones up and down, and (numbers) stretches with missing
    values, (categories) with an unseen one."""
    stretches = np.array_split(np.arange(events), 8)
    if name == "feature.color":
        mixes = [[0.5, 0.3, 0.2, 0, 0], [0.3, 0.3, 0.4, 0, 0], [0.5, 0.3, 0.2, 0, 0], [0.4, 0.3, 0.2, 0.05, 0.05]]
        values = []
        for number, stretch in enumerate(stretches):
            values += rng.choice(["red", "green", "blue", "purple", None], stretch.size, p=mixes[number % 4]).tolist()
        return values
    centre, spread = {"feature.x": (0, 1), "feature.skewed": (1.13, 0.6), "prediction": (100, 20), "target": (100, 20),
                      "performance": (0, 10), "feature.version": (3.0, 1.0)}[name]
    values = rng.normal(centre, spread, events) if name != "feature.version" else np.full(events, 3.0)
    for number, stretch in enumerate(stretches):
        values[stretch] += spread * [0, 1.0, 0, -0.8, 0, 0.5, 0, 0][number]
        if number == 5 and name.startswith("feature."):
            values[stretch[rng.random(stretch.size) < 0.05]] = np.nan
    return [None if np.isnan(value) else float(value) for value in values]


def in_batches(rng: np.random.Generator, values: list) -> list[list]:
    cuts, start = [], 0
    while start < len(values):
        size = int(rng.choice([1, 2, 3, 7, 50, 100, 333, 1000]))
        cuts.append(values[start:start + size])
        start += size
    return cuts


def one_at_a_time(detector: drift.Detector, values: list) -> list[drift.Decision]:
    return [decision for decision in map(detector.update, values) if decision is not None]


@pytest.mark.parametrize("method", ["standardised", "normal_scores"])
def test_a_batch_decides_exactly_as_one_event_at_a_time(reference, method, vectorised_everywhere):
    built = drift.detectors_for(reference, false_alarms_per_100k=100, method=method, residuals=True)
    constant = build_reference({"version": ("numeric", np.full(500, 3.0))}, target=numeric_stats(np.arange(500.0)),
                               predictions=numeric_stats(np.arange(500.0)), errors=np.arange(500.0))
    built.append(named(drift.detectors_for(constant), "feature.version"))
    decided_inside = states = 0
    for number, detector in enumerate(built):
        rng = np.random.default_rng(30 + number)
        values = drifting(rng, detector.name)
        sequential, batched = detector.copy_for(1), detector.copy_for(1)
        expected = one_at_a_time(sequential, values)
        got, ends = [], set()
        for batch in in_batches(rng, values):
            got += batched.update_batch(batch)
            ends.add(batched.events)
        assert got == expected, detector.name  # states, events, scores and explanations
        assert json.dumps(batched.to_state()) == json.dumps(sequential.to_state()), detector.name
        restored = drift.Detector.from_state(json.loads(json.dumps(batched.to_state())))
        assert json.dumps(restored.to_state()) == json.dumps(batched.to_state()), detector.name
        decided_inside += sum(decision.events not in ends for decision in got)
        states += len({decision.state for decision in got})
    assert decided_inside >= 30 and states == 2 * len(built)  # every detector raised and resolved, within batches


def test_a_detector_set_decides_exactly_as_its_detectors_one_event_at_a_time(with_residuals, vectorised_everywhere):
    rng = np.random.default_rng(40)
    columns = {detector.name: drifting(rng, detector.name) for detector in with_residuals}
    sequential = [detector.copy_for(1) for detector in with_residuals]
    expected = [(detector.name, decision) for detector in sequential
                for decision in one_at_a_time(detector, columns[detector.name])]
    together = drift.DetectorSet(detector.copy_for(1) for detector in with_residuals)
    got, start = [], 0
    for size in [int(size) for size in rng.choice([5, 50, 100, 333, 1000], 60)]:
        got += [(detector.name, decision) for detector, decision in
                together.update_batch({name: values[start:start + size] for name, values in columns.items()})]
        start += size
    by_detector = {name: [decision for named_, decision in got if named_ == name] for name in columns}
    assert by_detector == {name: [decision for named_, decision in expected if named_ == name] for name in columns}
    assert [json.dumps(detector.to_state()) for detector in together.detectors] == \
           [json.dumps(detector.to_state()) for detector in sequential]
    assert together._layouts and len(expected) >= 10  # the numbers went through the vectorised pass together


def test_many_streams_decide_as_one_stream_does_with_missing_values_and_categories(detectors):
    for name in ("feature.x", "feature.color"):
        detector = named(detectors, name)
        values = [drifting(np.random.default_rng(seed), name) for seed in range(3)]
        many = detector.copy_for(3)
        codes = np.array([many.update_many([column[t] for column in values]) for t in range(len(values[0]))])
        for column in range(3):
            single = detector.copy_for(1)
            expected = [0 if d is None else (1 if d.state == drift.RAISED else -1)
                        for d in map(single.update, values[column])]
            assert codes[:, column].tolist() == expected


def test_the_recent_values_are_the_last_hundred(detectors):
    detector = named(detectors, "feature.x").copy_for(1)
    detector.update_batch([0.0] * 150 + [None] * 10 + [1.0] * 50)
    assert detector.explain()["recent"] == {"mean": 0.5, "events": 100}  # missing values aren't values


def test_a_state_saved_before_batches_still_loads(detectors):
    state = named(detectors, "feature.x").copy_for(1).to_state()
    state["charts"]["statistic"][0] = 1.2345678  # not on the fixed-point grid
    state["recent"] = 0.02  # then an average
    restored = drift.Detector.from_state(json.loads(json.dumps(state)))
    assert restored.to_state()["charts"]["statistic"][0] == pytest.approx(1.2345678, abs=1e-9)
    assert restored.update_batch(np.random.default_rng(42).standard_normal(500).tolist()) == []
    assert restored.explain()["recent"]["events"] == 100
