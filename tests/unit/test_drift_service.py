"""The drift service's pure parts, with a fake session: what each stream feeds, one count per id, the
alert line and its routing key, the snapshot round trip (an open alert is not raised again after a
restart), the files' durability rules, and acks only after the snapshot and the alert announcement."""

from __future__ import annotations

import json
import queue
import sys
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "drift" / "src"))

from drift import DriftWorker, Settings, describe_alert  # noqa: E402
from follower import ModelFollower, start_monitor  # noqa: E402
from mlmonitor.ids import IdSet  # noqa: E402
from mlmonitor.messages import (InvalidMessage, MetricAdded, MetricAddedBatch, MonitorAlert, PredictionBatch,  # noqa: E402
                                PredictionWithInputs)
from mlmonitor.model_store import CARD_NAME, ModelCard  # noqa: E402
from mlmonitor.reference import build_reference, numeric_stats  # noqa: E402
from mlmonitor.schema import FeatureSchema, FeatureSpec  # noqa: E402
from mlmonitor.topology import DRIFT_EVENTS, DRIFT_PREDICTION_BATCHES, DRIFT_PREDICTIONS, MONITOR_ALERTS_EXCHANGE  # noqa: E402
from monitor import OUTCOMES, PREDICTIONS, DriftMonitor, build_detectors, calibration_of  # noqa: E402
from state_store import StateStore, parse_ids  # noqa: E402
from fakes import FakeDelivery  # noqa: E402

CALIBRATION = calibration_of(1.0, 1.0)
RNG = np.random.default_rng(7)
AREA = RNG.normal(100, 20, 2000)
ROOMS = RNG.normal(3, 1, 2000)
CITY = RNG.choice(["Oslo", "Bergen", "Trondheim"], 2000, p=[0.5, 0.3, 0.2])
TARGET = AREA * 3 + RNG.normal(0, 10, 2000)
ERRORS = np.abs(RNG.normal(0, 10, 500))
SCHEMA = FeatureSchema((FeatureSpec("area"), FeatureSpec("rooms"),
                        FeatureSpec("city", "categorical", ("Bergen", "Oslo", "Trondheim"))))


def card_for(version: str = "v1") -> ModelCard:
    reference = build_reference({"area": ("numeric", AREA), "rooms": ("numeric", ROOMS), "city": ("categorical", CITY)},
                                target=numeric_stats(TARGET), predictions=numeric_stats(TARGET[:500]), errors=ERRORS)
    return ModelCard(version=version, trained_at="2026-01-01T00:00:00+00:00", estimator="Ridge",
                     feature_names=SCHEMA.names, holdout_mae=8.0, holdout_rmse=10.0, holdout_r2=0.9, train_rows=2000,
                     holdout_rows=500, sklearn_version="test", features=SCHEMA.to_card(), reference=reference)


def new_monitor(version: str = "v1") -> DriftMonitor:
    card = card_for(version)
    return DriftMonitor(card, build_detectors(card, CALIBRATION), CALIBRATION)


def prediction(id: str, area: float = 100.0, city: str = "Oslo", body: float | str = 300.0, as_object=True):
    features = {"area": area, "rooms": 3.0, "city": city} if as_object else [area, 3.0, city]
    return PredictionWithInputs(id=id, body=body, features=features, model_version="v1")


def outcome(id: str, y_true: float = 300.0, error: float = 5.0) -> MetricAdded:
    return MetricAdded(id=id, y_true=y_true, y_pred=y_true + error, absolute_error=error)


def reference_rows(count: int, start: int = 0, area_shift: float = 0.0):
    """Predictions drawn from the reference population itself, `area` moved by `area_shift`."""
    rng = np.random.default_rng(start)
    rows = rng.integers(len(AREA), size=count)
    bodies = rng.choice(TARGET[:500], count)
    return [prediction(f"id-{start + n}", float(AREA[row] + area_shift), str(CITY[row]), float(body))
            for n, (row, body) in enumerate(zip(rows, bodies))]


def feed(monitor: DriftMonitor, messages) -> list[MonitorAlert]:
    return monitor.take([monitor.observe_prediction(message) for message in messages])


def raise_area_alert(monitor: DriftMonitor) -> MonitorAlert:
    for start in range(0, 5000, 100):
        alerts = feed(monitor, reference_rows(100, start, area_shift=60))  # 3 standard deviations
        if alerts:
            assert [(alert.detector, alert.state) for alert in alerts] == [("feature.area", "raised")]
            return alerts[0]
    raise AssertionError("no alert for area after 5000 shifted events")


# --- what each stream feeds, once per id ---------------------------------------------------------------

def test_inputs_come_in_card_order_from_a_list_or_an_object():
    monitor = new_monitor()
    assert monitor.feature_values([1.5, None, "Oslo"]) == [1.5, None, "Oslo"]
    assert monitor.feature_values({"city": 3.0, "area": 2.0, "rooms": 1.0}) == [2.0, 1.0, "3"]  # a number as its label


@pytest.mark.parametrize("features, reason", [
    ([1.0, 2.0], "features: expected 3 features ('area', 'rooms', 'city'), got 2"),
    ({"area": 1.0, "city": "Oslo"}, "features: missing column 'rooms'"),
    ({"area": 1.0, "rooms": 2.0, "city": "Oslo", "pool": True and 1.0}, "features: unknown column 'pool'"),
    (["big", 2.0, "Oslo"], "features.0 (area): expected a number, got a string"),
    ({"area": 1.0, "rooms": "two", "city": "Oslo"}, "features.rooms: expected a number, got a string"),
])
def test_inputs_that_do_not_fit_the_card_are_refused_with_the_field(features, reason):
    monitor = new_monitor()
    with pytest.raises(InvalidMessage) as refused:
        monitor.observe_prediction(PredictionWithInputs(id="1", body=1.0, features=features))
    assert refused.value.reason.startswith(reason)
    assert monitor.events(PREDICTIONS) == 0


def test_a_text_label_for_a_regressor_is_refused():
    with pytest.raises(InvalidMessage, match="body: expected a number"):
        new_monitor().observe_prediction(PredictionWithInputs(id="1", body="yes"))


def test_each_id_counts_once_per_stream_and_the_streams_apart():
    monitor = new_monitor()
    feed(monitor, [prediction("a"), prediction("b"), prediction("a")])
    feed(monitor, [prediction("b")])  # a redelivery in a later batch
    monitor.take([monitor.observe_outcome(outcome("a"))])
    area = next(detector for detector in monitor.detectors if detector.feature == "area")
    target = next(detector for detector in monitor.detectors if detector.kind == "target_drift")
    assert (monitor.events(PREDICTIONS), monitor.events(OUTCOMES)) == (2, 1)
    assert (area.events, target.events) == (2, 1)
    assert monitor.take_unsaved_ids() == [(PREDICTIONS, "a"), (PREDICTIONS, "b"), (OUTCOMES, "a")]


def test_a_prediction_without_its_inputs_feeds_only_the_predictions_detector():
    monitor = new_monitor()
    feed(monitor, [PredictionWithInputs(id="x", body=300.0)])
    events = {detector.name: detector.events for detector in monitor.detectors}
    assert events["prediction"] == 1 and events["feature.area"] == 0


# --- alerts ----------------------------------------------------------------------------------------------

def test_a_shift_raises_one_alert_with_the_fields_and_the_explanation():
    monitor = new_monitor()
    alert = raise_area_alert(monitor)
    line = json.loads(alert.encode())
    assert {"episode", "kind", "feature", "state", "time", "events", "score", "threshold", "model_version",
            "detector", "explanation"} <= set(line)
    assert (line["kind"], line["feature"], line["state"], line["model_version"]) == ("feature_drift", "area", "raised", "v1")
    assert line["episode"].startswith(f"v1/feature.area/{line['events']}/")
    assert line["score"] >= line["threshold"]
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
    assert line["explanation"]["reference"]["mean"] == pytest.approx(AREA.mean())
    assert line["explanation"]["since"]["mean"] > AREA.mean() + 40
    assert alert.routing_key == "feature_drift.raised"
    assert MonitorAlert.model_validate_json(alert.encode()) == alert
    assert monitor.open_alerts["feature.area"] == alert and list(monitor.outbox.values()) == [alert]
    assert "raised feature_drift alert for area after" in describe_alert(alert)


def test_an_open_alert_is_not_raised_again_and_resolves_in_the_same_episode():
    monitor = new_monitor()
    raised = raise_area_alert(monitor)
    assert feed(monitor, reference_rows(300, 10_000, area_shift=60)) == []  # still drifting: no second raise
    alerts = []
    for start in range(20_000, 30_000, 200):
        alerts += feed(monitor, reference_rows(200, start))
        if alerts:
            break
    assert [(alert.state, alert.episode, alert.routing_key) for alert in alerts] == [
        ("resolved", raised.episode, "feature_drift.resolved")]
    assert "feature.area" not in monitor.open_alerts


# --- snapshots ---------------------------------------------------------------------------------------------

def restored(monitor: DriftMonitor, card: ModelCard | None = None) -> DriftMonitor:
    state = json.loads(json.dumps(monitor.to_state()))
    counted = {stream: IdSet(ids) for stream, ids in monitor.counted.items()}  # as read back from the ids log
    return DriftMonitor.from_state(state, card or card_for(monitor.version), counted)


def test_a_snapshot_round_trip_carries_on_exactly_where_it_was():
    monitor = new_monitor()
    feed(monitor, reference_rows(300, 0))
    copy = restored(monitor)
    assert [detector.score for detector in copy.detectors] == pytest.approx([d.score for d in monitor.detectors])
    later = reference_rows(3000, 1000, area_shift=30)
    decided = [alert.model_dump(exclude={"time", "episode"}) for alert in feed(monitor, later)]
    assert decided and [alert.model_dump(exclude={"time", "episode"}) for alert in feed(copy, later)] == decided


def test_after_a_restart_an_open_alert_is_not_raised_again():
    monitor = new_monitor()
    raised = raise_area_alert(monitor)
    copy = restored(monitor)
    assert copy.open_alerts == {"feature.area": raised}
    assert feed(copy, reference_rows(500, 40_000, area_shift=60)) == []


def test_a_snapshot_keeps_the_alerts_not_yet_announced():
    monitor = new_monitor()
    raised = raise_area_alert(monitor)
    assert list(restored(monitor).outbox.values()) == [raised]
    monitor.announced((raised.episode, "raised"))
    assert restored(monitor).outbox == {}


def test_a_new_version_resolves_the_open_alerts_and_keeps_the_counted_ids():
    monitor = new_monitor()
    raised = raise_area_alert(monitor)
    counted = monitor.events(PREDICTIONS)
    resolved = monitor.switch_model(card_for("v2"), build_detectors(card_for("v2"), CALIBRATION), "model v2 replaced v1")
    assert [(alert.episode, alert.state, alert.explanation) for alert in resolved] == [
        (raised.episode, "resolved", {"reason": "model v2 replaced v1"})]
    assert monitor.version == "v2" and monitor.open_alerts == {} and monitor.events(PREDICTIONS) == counted
    assert all(detector.events == 0 for detector in monitor.detectors)


# --- the files ----------------------------------------------------------------------------------------------

def test_the_store_keeps_what_a_snapshot_covers_and_cuts_the_ids_log_back_to_it(tmp_path):
    store = StateStore(tmp_path)
    assert store.load() == (None, {PREDICTIONS: set(), OUTCOMES: set()}, f"no {tmp_path / 'drift_state.json'}")
    uuid = "8d3e0a6e-1b7c-4bb5-9a4f-7f1d1c2a3b4c"
    store.save({"model_version": "v1"}, [(PREDICTIONS, uuid), (OUTCOMES, "42")], [])
    with open(tmp_path / "drift_ids.log", "a") as log:  # ids of events a crash left out of every snapshot
        log.write("p not-in-a-snapshot\n")
    state, counted, problem = StateStore(tmp_path).load()
    assert state["model_version"] == "v1" and problem is None
    assert (set(counted[PREDICTIONS]), set(counted[OUTCOMES])) == ({uuid}, {"42"})
    assert (tmp_path / "drift_ids.log").read_text() == f"p {uuid}\no 42\n"


def test_ids_read_back_as_compact_sets():
    ids = [f"{n:08x}-1b7c-4bb5-9a4f-7f1d1c2a3b4c" for n in range(1000)]
    counted = parse_ids("".join(f"p {id}\n" for id in ids).encode() + b"o 1700000000.5\n")
    assert len(counted[PREDICTIONS]) == 1000 and ids[500] in counted[PREDICTIONS]
    assert "1700000000.5" in counted[OUTCOMES] and ids[0] not in counted[OUTCOMES]


def test_an_alert_line_is_written_once_whatever_the_number_of_snapshots(tmp_path):
    monitor = new_monitor()
    alert = raise_area_alert(monitor)
    store = StateStore(tmp_path)
    store.load()
    store.save(monitor.to_state(), monitor.take_unsaved_ids(), [alert])
    store.save(monitor.to_state(), [], [alert])
    again = StateStore(tmp_path)  # a restart before the announcement was confirmed
    again.load()
    again.save(monitor.to_state(), [], [alert])
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert [MonitorAlert.model_validate_json(line) for line in lines] == [alert]


def test_a_failed_write_leaves_the_files_as_they_were_and_the_next_save_writes_the_ids(tmp_path, monkeypatch):
    store = StateStore(tmp_path)
    store.load()
    store.save({"n": 1}, [(PREDICTIONS, "a")], [])
    real_fsync = __import__("os").fsync
    monkeypatch.setattr("state_store.os.fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        store.save({"n": 2}, [(PREDICTIONS, "b")], [])
    assert (tmp_path / "drift_ids.log").read_text() == "p a\n"
    assert json.loads((tmp_path / "drift_state.json").read_text())["n"] == 1
    monkeypatch.setattr("state_store.os.fsync", real_fsync)
    store.save({"n": 3}, [(PREDICTIONS, "c")], [])
    assert (tmp_path / "drift_ids.log").read_text() == "p a\np b\np c\n"
    assert json.loads((tmp_path / "drift_state.json").read_text())["ids_bytes"] == 12


def test_start_carries_on_from_the_snapshot_of_the_same_version(tmp_path):
    monitor = new_monitor()
    raise_area_alert(monitor)
    store = StateStore(tmp_path)
    store.load()
    store.save(monitor.to_state(), monitor.take_unsaved_ids(), [])
    carried, line = start_monitor(card_for("v1"), StateStore(tmp_path), CALIBRATION)
    assert line.startswith(f"carrying on from {tmp_path / 'drift_state.json'}")
    assert set(carried.open_alerts) == {"feature.area"}
    assert carried.events(PREDICTIONS) == monitor.events(PREDICTIONS)


def test_start_is_afresh_for_another_version_and_resolves_the_alerts_it_had_open(tmp_path):
    monitor = new_monitor()
    raised = raise_area_alert(monitor)
    store = StateStore(tmp_path)
    store.load()
    store.save(monitor.to_state(), monitor.take_unsaved_ids(), [raised])
    fresh, line = start_monitor(card_for("v2"), StateStore(tmp_path), CALIBRATION)
    assert line.startswith(f"starting afresh for model v2: {tmp_path / 'drift_state.json'} is for model v1")
    assert fresh.open_alerts == {} and fresh.events(PREDICTIONS) == monitor.events(PREDICTIONS)
    assert [(alert.episode, alert.state) for alert in fresh.outbox.values()] == [
        (raised.episode, "raised"), (raised.episode, "resolved")]  # the raise still owes its announcement


def test_start_is_afresh_when_a_retrain_kept_the_version_but_changed_the_reference(tmp_path):
    monitor = new_monitor()
    store = StateStore(tmp_path)
    store.load()
    store.save(monitor.to_state(), monitor.take_unsaved_ids(), [])
    retrained = card_for("v1")
    retrained.reference["predictions"] = numeric_stats(TARGET)  # same weights, a fuller reference
    fresh, line = start_monitor(retrained, StateStore(tmp_path), CALIBRATION)
    assert line.startswith("starting afresh for model v1:") and "other reference statistics" in line


def test_start_without_a_snapshot_says_so_in_one_line(tmp_path):
    fresh, line = start_monitor(card_for("v1"), StateStore(tmp_path), CALIBRATION)
    assert line == f"starting afresh for model v1: no {tmp_path / 'drift_state.json'}; 0 predictions and 0 outcomes counted"
    assert "\n" not in line


# --- the worker: acks after effects -----------------------------------------------------------------------

class FakeSession:
    """Publishes wait for the test to confirm them; thread callbacks wait in a queue."""

    is_open = True

    def __init__(self):
        self.published: list[tuple[str, str, dict]] = []
        self.confirms: list = []
        self.dead_letters: list[tuple[bytes, str]] = []
        self.from_threads: queue.Queue = queue.Queue()
        self.timers: list = []
        self.depth_watches: list = []

    def publish(self, exchange, routing_key, body, on_confirmed=None, headers=None) -> None:
        self.published.append((exchange, routing_key, json.loads(body)))
        self.confirms.append(on_confirmed)

    def confirm_all(self) -> None:
        confirms, self.confirms = self.confirms, []
        for confirm in confirms:
            confirm()

    def dead_letter(self, delivery, reason: str) -> None:
        self.dead_letters.append((delivery.body, reason))
        delivery.ack()

    def call_threadsafe(self, callback) -> None:
        self.from_threads.put(callback)

    def run_thread_callback(self) -> None:
        self.from_threads.get(timeout=10)()

    def consume(self, queue_name, on_batch, prefetch) -> None:
        pass

    def every(self, interval, callback) -> None:
        self.timers.append(callback)

    def watch_queue_depths(self, queues, interval, on_depths) -> None:
        self.depth_watches.append((list(queues), on_depths))


@pytest.fixture
def worker(tmp_path):
    store = StateStore(tmp_path)
    store.load()
    worker = DriftWorker(Settings(_cli_parse_args=[]), store)
    session = FakeSession()
    worker.offer_monitor(new_monitor(), store)
    worker.on_connected(session)
    yield worker, session, tmp_path
    worker.close()


def test_deliveries_are_acked_once_a_snapshot_covering_them_is_durable(worker):
    worker, session, logs_dir = worker
    deliveries = [FakeDelivery(DRIFT_PREDICTIONS, message) for message in reference_rows(5)]
    deliveries.append(FakeDelivery(DRIFT_EVENTS, MetricAddedBatch(events=[outcome("id-0")])))
    worker.on_batch(deliveries)
    assert not any(delivery.acked for delivery in deliveries)
    worker._snapshot()
    session.run_thread_callback()
    assert all(delivery.acked == 1 for delivery in deliveries)
    assert json.loads((logs_dir / "drift_state.json").read_text())["ids_bytes"] > 0


def test_a_raise_is_acked_only_after_its_line_is_written_and_its_publish_confirmed(worker):
    worker, session, logs_dir = worker
    shifted = [FakeDelivery(DRIFT_PREDICTIONS, message) for message in reference_rows(400, 0, area_shift=60)]
    worker.on_batch(shifted)
    worker._snapshot()
    session.run_thread_callback()
    assert not any(delivery.acked for delivery in shifted)
    line = json.loads((logs_dir / "alerts.jsonl").read_text())
    assert session.published == [(MONITOR_ALERTS_EXCHANGE, "feature_drift.raised", line)]
    session.confirm_all()
    assert all(delivery.acked == 1 for delivery in shifted)


def test_bad_messages_are_dead_lettered_with_their_reason_and_the_rest_go_on(worker):
    worker, session, _ = worker
    bad = FakeDelivery(DRIFT_PREDICTIONS, b'{"id": "1", "body": 1.0, "features": [1.0]}')
    garbled = FakeDelivery(DRIFT_EVENTS, b"not json")
    good = FakeDelivery(DRIFT_PREDICTIONS, prediction("2"))
    worker.on_batch([bad, garbled, good])
    assert session.dead_letters[0] == (bad.body, "features: expected 3 features ('area', 'rooms', 'city'), got 1")
    assert session.dead_letters[1][0] == garbled.body
    worker._snapshot()
    session.run_thread_callback()
    assert good.acked == 1


def test_each_event_of_a_batch_counts_once_and_a_batch_redelivered_counts_nothing_new(worker):
    worker, session, _ = worker
    predictions = PredictionBatch(predictions=reference_rows(50))
    outcomes = MetricAddedBatch(events=[outcome(f"id-{n}") for n in range(30)])
    batches = [FakeDelivery(DRIFT_PREDICTION_BATCHES, predictions), FakeDelivery(DRIFT_EVENTS, outcomes)]
    worker.on_batch(batches)
    worker.on_batch([FakeDelivery(DRIFT_PREDICTION_BATCHES, predictions), FakeDelivery(DRIFT_EVENTS, outcomes)])
    monitor = worker._monitor
    assert (monitor.events(PREDICTIONS), monitor.events(OUTCOMES)) == (50, 30)
    assert all(detector.events == 50 for detector in monitor.detectors if detector.name.startswith("feature."))
    worker._snapshot()
    session.run_thread_callback()
    assert [delivery.acked for delivery in batches] == [1, 1] and session.dead_letters == []


def test_a_batch_with_an_event_that_does_not_fit_counts_the_others_and_is_dead_lettered_once_they_are_durable(
        worker):
    worker, session, _ = worker
    bad = PredictionWithInputs(id="bad", body=300.0, features=[1.0])
    batch = FakeDelivery(DRIFT_PREDICTION_BATCHES, PredictionBatch(predictions=[prediction("a"), bad, prediction("b")]))
    worker.on_batch([batch])
    assert worker._monitor.events(PREDICTIONS) == 2
    assert session.dead_letters == [], "its good events are not durable yet: a crash now must redeliver it"
    worker._snapshot()
    session.run_thread_callback()
    assert session.dead_letters == [(batch.body, "predictions.1 (id bad): features: expected 3 features "
                                                 "('area', 'rooms', 'city'), got 1")]
    assert batch.acked == 1  # by the dead letter's confirm


def test_the_summary_file_shows_every_detector_against_its_threshold(worker):
    worker, session, logs_dir = worker
    worker.on_batch([FakeDelivery(DRIFT_PREDICTIONS, message) for message in reference_rows(400, 0, area_shift=60)])
    worker._snapshot()
    session.run_thread_callback()
    session.confirm_all()
    worker._tick()
    worker.close()  # waits for the summary's write
    summary = json.loads((logs_dir / "drift_summary.json").read_text())
    assert summary["model_version"] == "v1" and summary["events"] == {"predictions": 400, "outcomes": 0}
    by_name = {detector["detector"]: detector for detector in summary["detectors"]}
    assert set(by_name) == {"feature.area", "feature.rooms", "feature.city", "prediction", "target", "performance"}
    area = by_name["feature.area"]
    assert (area["kind"], area["feature"], area["stream"], area["state"]) == ("feature_drift", "area", "predictions", "raised")
    assert area["score"] >= area["threshold"] == 1.0 and len(area["history"]) == 1
    assert [alert["detector"] for alert in summary["open_alerts"]] == ["feature.area"]
    assert [alert["state"] for alert in summary["recent_alerts"]] == ["raised"]


# --- a new model version -----------------------------------------------------------------------------------

def write_card(models_dir: Path, card: ModelCard) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    temporary = models_dir / ".card.tmp"
    temporary.write_text(json.dumps(asdict(card)))
    temporary.replace(models_dir / CARD_NAME)  # as learn_model does: a new file under the card's name


class RecordingWorker:
    def __init__(self):
        self.monitors, self.versions = [], []

    def offer_monitor(self, monitor, store) -> None:
        self.monitors.append(monitor)

    def offer_version(self, card, detectors) -> None:
        self.versions.append((card.version, [detector.name for detector in detectors]))


def test_the_follower_hands_over_each_new_version_once_and_keeps_watching_through_a_bad_card(tmp_path, caplog):
    models_dir, worker = tmp_path / "models", RecordingWorker()
    write_card(models_dir, card_for("v1"))
    follower = ModelFollower(models_dir, 0.01, CALIBRATION, StateStore(tmp_path / "logs"), worker, lambda: False)
    assert follower._start_first()
    assert [monitor.version for monitor in worker.monitors] == ["v1"]
    write_card(models_dir, card_for("v1"))  # the same version saved again
    follower.check()
    write_card(models_dir, replace(card_for("v3"), reference={}))
    follower.check()
    assert worker.versions == []
    assert "can't watch the new model version v3: the card of model v3 has no reference statistics" in caplog.text
    write_card(models_dir, card_for("v2"))
    follower.check()
    follower.check()
    assert worker.versions == [("v2", ["feature.area", "feature.rooms", "feature.city", "prediction", "target",
                                       "performance"])]


def test_a_bug_before_the_first_monitor_stops_drift_with_exit_code_1(tmp_path, caplog, monkeypatch):
    """Drift without a monitor would hold its deliveries and watch nothing: it stops instead."""
    import follower as follower_module

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(follower_module, "start_monitor", broken)
    models_dir, exit_codes = tmp_path / "models", []
    write_card(models_dir, card_for("v1"))
    follower = ModelFollower(models_dir, 0.01, CALIBRATION, StateStore(tmp_path / "logs"), RecordingWorker(),
                             lambda: False, exit_codes.append)
    follower.start()
    follower._thread.join(10)
    assert exit_codes == [1]
    assert "bug while building the first monitor; drift stops with exit code 1" in caplog.text


def test_a_version_swapped_in_resolves_the_open_alerts_at_the_next_snapshot(worker):
    worker, session, logs_dir = worker
    worker.on_batch([FakeDelivery(DRIFT_PREDICTIONS, message) for message in reference_rows(400, 0, area_shift=60)])
    worker._snapshot()
    session.run_thread_callback()
    session.confirm_all()
    worker.offer_version(card_for("v2"), build_detectors(card_for("v2"), CALIBRATION))
    session.run_thread_callback()  # the swap, on the IO loop
    later = FakeDelivery(DRIFT_PREDICTIONS, prediction("after-the-swap"))
    worker.on_batch([later])
    worker._snapshot()
    session.run_thread_callback()
    assert later.acked == 0  # waits for the resolve's announcement
    session.confirm_all()
    assert later.acked == 1
    lines = [json.loads(line) for line in (logs_dir / "alerts.jsonl").read_text().splitlines()]
    assert [(line["state"], line["model_version"]) for line in lines] == [("raised", "v1"), ("resolved", "v1")]
    assert lines[1]["explanation"] == {"reason": "model v2 replaced v1"}
    assert [key for _, key, _ in session.published] == ["feature_drift.raised", "feature_drift.resolved"]
    assert json.loads((logs_dir / "drift_state.json").read_text())["model_version"] == "v2"


# --- the Prometheus rules -----------------------------------------------------------------------------------

def test_the_alerting_rules_fire_on_each_kind_s_open_alert_and_name_the_feature():
    import yaml

    rules = yaml.safe_load((ROOT / "prometheus" / "drift_rules.yml").read_text())["groups"][0]["rules"]
    by_kind = {}
    for rule in rules:
        expr = rule["expr"].replace(" ", "")
        if expr.startswith("mlmonitor_alert_active{"):
            assert expr.endswith("==1"), rule
            by_kind[expr.split('kind="')[1].split('"')[0]] = rule
    assert set(by_kind) == {"feature_drift", "prediction_drift", "target_drift", "performance"}
    assert "{{ $labels.feature }}" in by_kind["feature_drift"]["annotations"]["summary"]
    assert all(rule["labels"]["severity"] in ("warning", "critical") for rule in rules)


def test_a_regressors_performance_is_watched_on_its_signed_residual_so_a_bias_either_way_counts():
    residuals = RNG.normal(0, 10, 500)
    card = replace(card_for(), reference=build_reference(
        {"area": ("numeric", AREA), "rooms": ("numeric", ROOMS), "city": ("categorical", CITY)},
        target=numeric_stats(TARGET), predictions=numeric_stats(TARGET[:500]), errors=np.abs(residuals),
        residuals=residuals))
    monitor = DriftMonitor(card, build_detectors(card, CALIBRATION), CALIBRATION)
    under = MetricAdded(id="1", y_true=290.0, y_pred=300.0, absolute_error=10.0)
    assert monitor.observe_outcome(under).values[1] == -10.0  # the residual, not the absolute error
    alerts = monitor.take([monitor.observe_outcome(MetricAdded(id=f"u{index}", y_true=300.0, y_pred=330.0,
                                                               absolute_error=30.0)) for index in range(400)])
    assert [(alert.kind, alert.state) for alert in alerts] == [("performance", "raised")]
    assert new_monitor().observe_outcome(under).values[1] == 10.0  # a card without residuals: the error
