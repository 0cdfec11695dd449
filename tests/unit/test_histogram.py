from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import pytest
from prometheus_client import REGISTRY

from mlmonitor.messages import MetricAdded
from mlmonitor.metric_log import HEADER_LINE
from mlmonitor.settings import load_settings
from plot import ErrorHistogram, HistogramPlotter, Settings, render_histogram
from fakes import FakeDelivery
from mlmonitor.topology import METRIC_ADDED


def test_counts_match_numpy_after_many_adds_that_widen_the_bins():
    rng = np.random.default_rng(7)
    errors = np.concatenate([rng.exponential(20.0, 3000), [0.0, 5.0, 200.0, 1000.0, 12345.6]])
    rng.shuffle(errors)
    histogram = ErrorHistogram(bins=40, initial_width=5.0)
    for error in errors[:1000]:
        histogram.add(float(error))
    histogram.add_many(errors[1000:])

    assert histogram.width == 5.0 * 2**6  # doubled six times to hold 12345.6 in 40 bins
    expected, _ = np.histogram(errors, bins=histogram.edges)
    np.testing.assert_array_equal(histogram.counts, expected)
    assert histogram.counts.sum() == len(errors)


def test_value_on_a_bin_edge_counts_in_the_upper_bin_like_numpy():
    histogram = ErrorHistogram(bins=4, initial_width=1.0)
    histogram.add_many(np.array([0.0, 1.0, 2.0, 3.0, 3.5]))
    np.testing.assert_array_equal(histogram.counts, [1, 1, 1, 2])
    histogram.add(4.0)  # exactly the top edge: the bins widen to [0, 2, 4, 6, 8)
    assert histogram.width == 2.0
    np.testing.assert_array_equal(histogram.counts, [2, 3, 1, 0])


def test_count_mean_and_max():
    histogram = ErrorHistogram()
    assert (histogram.count, histogram.mean, histogram.maximum) == (0, 0.0, 0.0)
    for error in [1.0, 2.5, 8.5]:
        histogram.add(error)
    assert (histogram.count, histogram.mean, histogram.maximum) == (3, 4.0, 8.5)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_rejects_negative_and_non_finite_errors_and_stays_unchanged(bad):
    histogram = ErrorHistogram()
    histogram.add(3.0)
    with pytest.raises(ValueError):
        histogram.add(bad)
    with pytest.raises(ValueError):
        histogram.add_many(np.array([1.0, bad]))
    assert (histogram.count, histogram.counts.sum(), histogram.total) == (1, 1, 3.0)


def test_odd_bin_count_is_refused():
    with pytest.raises(ValueError):
        ErrorHistogram(bins=41)


def test_state_stays_the_same_size_however_long_the_history():
    histogram = ErrorHistogram(bins=40)
    rng = np.random.default_rng(1)
    for error in rng.exponential(50.0, 5_000):
        histogram.add(float(error))
    histogram.add(1e9)
    assert histogram.counts.shape == (40,)
    assert histogram.edges.shape == (41,)
    assert histogram.count == 5_001
    assert not [name for name, value in vars(histogram).items() if isinstance(value, (list, dict, set))]


def test_render_writes_a_png_that_decodes_and_leaves_no_temporary_file(tmp_path):
    histogram = ErrorHistogram()
    histogram.add_many(np.array([1.0, 4.0, 4.5, 30.0]))
    path = tmp_path / "error_distribution.png"
    render_histogram(histogram, path)
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (500, 800)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_render_of_an_empty_histogram_works(tmp_path):
    path = tmp_path / "error_distribution.png"
    render_histogram(ErrorHistogram(), path)
    assert matplotlib.image.imread(path).size > 0


@pytest.fixture
def plotter(tmp_path):
    rendered = []
    settings = load_settings(Settings, ["--logs-dir", str(tmp_path)])
    plotter = HistogramPlotter(settings, render=lambda histogram, path: rendered.append(histogram.count))
    plotter.rendered = rendered
    return plotter


def test_restore_counts_each_id_in_the_log_once(tmp_path, plotter):
    csv_path = tmp_path / "metric_log.csv"
    csv_path.write_text(HEADER_LINE + "a,10.0,12.0,2.0\nb,10.0,17.0,7.0\na,10.0,50.0,40.0\n"
                        "\"c,1\",1.0,1.5,0.5\nb,10.0,17.0,7.0\nd,1.0,2")
    plotter.restore(csv_path)
    assert plotter.counted_ids == {"a", "b", "c,1"}
    assert plotter.histogram.count == 3
    assert plotter.histogram.total == pytest.approx(9.5)
    assert plotter.rendered == [3]


def test_restore_from_a_missing_log_draws_an_empty_histogram(tmp_path, plotter):
    plotter.restore(tmp_path / "metric_log.csv")
    assert plotter.histogram.count == 0
    assert plotter.rendered == [0]


def test_events_for_ids_already_counted_are_acked_but_not_counted_again(tmp_path, plotter):
    csv_path = tmp_path / "metric_log.csv"
    csv_path.write_text(HEADER_LINE + "a,10.0,12.0,2.0\n")
    plotter.restore(csv_path)
    deliveries = [FakeDelivery(METRIC_ADDED, MetricAdded(id=id, y_true=1.0, y_pred=1.0 + error, absolute_error=error))
                  for id, error in [("a", 2.0), ("b", 3.0), ("b", 3.0)]]
    plotter.on_batch(deliveries)
    assert plotter.histogram.count == 2
    assert [d.acked for d in deliveries] == [0, 0, 0]  # not before a PNG that includes them exists
    plotter.redraw_if_changed()
    assert plotter.rendered == [1, 2]
    assert [d.acked for d in deliveries] == [1, 1, 1]


def test_redrawing_one_figure_shows_the_new_counts_and_matches_a_fresh_drawing(tmp_path):
    from plot import HistogramFigure

    histogram = ErrorHistogram()
    histogram.add_many(np.array([1.0, 4.0, 4.5, 30.0] * 10))
    figure = HistogramFigure()
    figure.render(histogram, tmp_path / "first.png")
    histogram.add_many(np.array([12.0] * 5))  # same axis limits: only the bars and the text change
    figure.render(histogram, tmp_path / "blitted.png")
    render_histogram(histogram, tmp_path / "fresh.png")
    first, blitted, fresh = (matplotlib.image.imread(tmp_path / f"{name}.png") for name in ("first", "blitted", "fresh"))
    assert np.abs(blitted - first).sum() > 0
    changed = np.abs(blitted - fresh).max(axis=2) > 0.05
    assert changed.mean() < 0.005, "a redrawn figure differs from a fresh one beyond the clock in its text box"


def test_the_figure_names_both_kinds_of_error():
    from plot import HistogramFigure

    axes = HistogramFigure().axes
    assert "|y_true − y_pred|" not in axes.get_title()
    assert axes.get_xlabel() == "absolute error (|y_true − y_pred|, or 1 − p(true class) for a classifier)"


def test_a_classifier_s_log_restores_and_draws_its_errors_in_0_to_1(tmp_path):
    csv_path = tmp_path / "metric_log.csv"
    csv_path.write_text(HEADER_LINE + "a,yes,yes,0.25\nb,no,yes,0.75\nc,1,0,1.0\n\"d,1\",\"no, thanks\",yes,0.0\n")
    plotter = HistogramPlotter(load_settings(Settings, ["--logs-dir", str(tmp_path)]))
    plotter.restore(csv_path)
    assert plotter.counted_ids == {"a", "b", "c", "d,1"}
    assert (plotter.histogram.count, plotter.histogram.total, plotter.histogram.maximum) == (4, 2.0, 1.0)
    assert matplotlib.image.imread(plotter.png_path).shape[:2] == (500, 800)
    summary = json.loads(plotter.png_path.with_suffix(".json").read_text())
    assert (summary["count"], summary["max"]) == (4, 1.0)


class FakeTimerSession:
    def __init__(self):
        self.timers = []

    def call_later(self, delay, callback):
        self.timers.append((delay, callback))

    def fire(self):
        delay, callback = self.timers.pop(0)
        callback()
        return delay


def test_redraws_are_coalesced_but_an_event_after_a_quiet_spell_is_drawn_at_once(plotter):
    session = FakeTimerSession()
    plotter._session = session
    event = lambda id: FakeDelivery(METRIC_ADDED, MetricAdded(id=id, y_true=1.0, y_pred=2.0, absolute_error=1.0))
    plotter.on_batch([event("a")])
    plotter.on_batch([event("b")])
    assert [delay for delay, _ in session.timers] == [0.0]  # one redraw scheduled, right away
    session.fire()
    assert plotter.rendered == [2]
    plotter.on_batch([event("c")])
    delay = session.fire()
    assert 0.2 < delay <= 0.25  # the next one waits out redraw_seconds (0.25)
    assert plotter.rendered == [2, 3] and not session.timers


def test_each_redraw_reports_its_duration_and_the_oldest_event_wait(plotter, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("plot.time.monotonic", lambda: clock[0])
    sample = lambda name: REGISTRY.get_sample_value(name) or 0.0
    before = {name: sample(name) for name in ("mlmonitor_plot_redraw_seconds_count",
                                              "mlmonitor_plot_event_wait_seconds_count",
                                              "mlmonitor_plot_event_wait_seconds_sum")}
    event = lambda id: FakeDelivery(METRIC_ADDED, MetricAdded(id=id, y_true=1.0, y_pred=2.0, absolute_error=1.0))
    plotter.on_batch([event("a")])
    clock[0] += 0.2
    plotter.on_batch([event("b")])  # waits less than "a": the oldest one is what the redraw reports
    clock[0] += 0.1
    plotter.redraw_if_changed()
    assert sample("mlmonitor_plot_redraw_seconds_count") == before["mlmonitor_plot_redraw_seconds_count"] + 1
    assert sample("mlmonitor_plot_event_wait_seconds_count") == before["mlmonitor_plot_event_wait_seconds_count"] + 1
    assert sample("mlmonitor_plot_event_wait_seconds_sum") == pytest.approx(
        before["mlmonitor_plot_event_wait_seconds_sum"] + 0.3)
    plotter.on_batch([event("c")])
    clock[0] += 0.05
    plotter.redraw_if_changed()  # the wait restarts with the first event after a redraw
    assert sample("mlmonitor_plot_event_wait_seconds_sum") == pytest.approx(
        before["mlmonitor_plot_event_wait_seconds_sum"] + 0.35)


def test_a_failed_redraw_is_tried_again_after_redraw_seconds(plotter):
    session = FakeTimerSession()
    plotter._session = session
    failures = [OSError(28, "No space left on device")]

    def render(histogram, path):
        if failures:
            raise failures.pop()
        plotter.rendered.append(histogram.count)

    plotter._render = render
    delivery = FakeDelivery(METRIC_ADDED, MetricAdded(id="a", y_true=1.0, y_pred=2.0, absolute_error=1.0))
    plotter.on_batch([delivery])
    session.fire()
    assert delivery.acked == 0 and len(session.timers) == 1
    session.fire()
    assert delivery.acked == 1 and plotter.rendered == [1]


def test_a_classifiers_errors_spread_over_the_bins_and_a_regressors_end_as_with_bins_of_5():
    rng = np.random.default_rng(5)
    classifier = ErrorHistogram()
    classifier.add_many(rng.uniform(0, 1, 1000))
    assert np.count_nonzero(classifier.counts) >= 20 and classifier.width < 0.05
    regression_errors = rng.uniform(0, 160, 1000)
    adaptive, coarse = ErrorHistogram(), ErrorHistogram(initial_width=5.0)
    for error in regression_errors:
        adaptive.add(float(error))
        coarse.add(float(error))
    assert adaptive.width == coarse.width and adaptive.counts.tolist() == coarse.counts.tolist()
