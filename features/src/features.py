"""Streams samples of a table: the features to queue `features` and the true target to queue
`y_true`, both under one UUID.

Without `--data`, the table is scikit-learn's diabetes data and a body is the list of its ten
features. `--data PATH --target COLUMN` replays the user's CSV or Parquet table instead: the body is
an object {column: value} of every other column (numbers as floats, text as strings, a missing value
as null), the target a number or a class label (a boolean as "True"/"False"). Rows without a target
are skipped. `--order shuffled` (the default) draws a new permutation, seeded by `--seed`, every
pass over the table; `--order in-order` replays it row by row. Both loop over the table for as long
as `--count` asks.

`--rate R` publishes R events a second (0: as fast as the pipeline keeps up); `--count N` stops
after N events whose two messages the broker has both confirmed, then exits 0. Events not yet
confirmed when the connection drops are published again after reconnecting (downstream is
idempotent per id).

Backpressure: features polls the ready messages of `features`, `y_true` and `y_pred` every 0.1 s
and publishes no more new events than keep the deepest of them within `--max-backlog`. A pipeline
slower than the source, or one with a service down, so builds a bounded backlog, not an endless one.

Simulated drift, to watch an alert fire: `--drift-features bmi,bp --drift-sigma 1 --drift-from 1000`
adds 1 standard deviation (of each feature's values in the table replayed) to those features of
every event after the first 1000; numeric features only. `--concept-shift 1 --concept-from 1000`
changes the concept instead, the features staying put: a regressor's y_true moves by 1 residual
standard deviation (`--concept-sigma`, by default the held-out RMSE from the model card's reference
errors in MODELS_DIR); for a classifier it is the share of labels, 0 to 1, replaced by another
class of the table (drawn with `--seed`).

`--confirmed-ids-file PATH` appends `id,y_true` for each event once both its messages are
confirmed, one write and fsync per batch of confirms: the fault-injection suite's record of what
was published. A SIGKILL between a confirm and that fsync can leave a confirmed id out of the file.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Protocol

import numpy as np
from prometheus_client import Gauge
from pydantic import Field

from mlmonitor.amqp import Session, run_worker
from mlmonitor.datasets import DatasetError, load_table
from mlmonitor.logs import EventLog
from mlmonitor.messages import MAX_TEXT_LENGTH, FeaturesMessage, TargetMessage
from mlmonitor.service import start_service
from mlmonitor.settings import ServiceSettings
from mlmonitor.topology import FEATURES, INPUTS_EXCHANGE, Y_PRED, Y_TRUE

log = logging.getLogger("features")

BACKLOG_QUEUES = (FEATURES, Y_TRUE, Y_PRED)
BACKLOG_POLL_SECONDS = 0.1
PAUSED = Gauge("mlmonitor_features_paused", "1 while a pipeline queue is at --max-backlog and features waits.")


class Settings(ServiceSettings):
    rate: float = Field(1.0, ge=0, description="Events per second; 0 publishes as fast as the pipeline keeps up.")
    count: int | None = Field(None, ge=1, description="Stop after this many confirmed events (default: endless).")
    max_unconfirmed: int = Field(2000, ge=1, description="Events in flight before waiting for confirms.")
    max_backlog: int = Field(5000, ge=0, description="Most ready messages features lets build up in features, "
                                                     "y_true or y_pred; 0 turns backpressure off.")
    seed: int | None = Field(None, description="Seed for the sample order (default: random).")
    data: Path | None = Field(None, description="CSV or Parquet table to replay (default: the diabetes data).")
    target: str | None = Field(None, description="With --data: the column sent to y_true; the others are the features.")
    order: Literal["shuffled", "in-order"] = Field(
        "shuffled", description="shuffled: a new seeded permutation every pass; in-order: the table's row order.")
    confirmed_ids_file: Path | None = Field(
        None, description="Append 'id,y_true' of each confirmed event to this file, fsynced per batch of confirms.")
    drift_features: str = Field("", description="Simulated drift: comma-separated numeric features to shift "
                                                "(e.g. bmi,bp), by --drift-sigma from event --drift-from on.")
    drift_sigma: float = Field(1.0, allow_inf_nan=False,
                               description="The shift, in standard deviations of each feature in the table replayed.")
    drift_from: int = Field(0, ge=0, description="Events sent unchanged before the shift starts.")
    concept_shift: float = Field(
        0.0, allow_inf_nan=False, description="Simulated concept change, the features unchanged: a regressor's "
        "y_true moves by this many residual standard deviations; for a classifier, this share of labels (0 to 1) "
        "is replaced by another class of the table.")
    concept_from: int = Field(0, ge=0, description="Events sent unchanged before the concept change starts.")
    concept_sigma: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Residual standard deviation for --concept-shift (default: "
        "the held-out RMSE, from the reference errors of the model card in --models-dir).")
    models_dir: Path = Field(Path("models"), description="Where the model card is: the task and the residual "
                                                         "standard deviation for --concept-shift.")


@dataclass
class Event:
    features: FeaturesMessage
    target: TargetMessage
    unconfirmed_parts: int = 2


class BacklogBudget:
    """New events that may be published before the next depth poll: `max_backlog` less the deepest
    pipeline queue at the last poll. Counting the events published since that poll keeps the queues
    within `max_backlog` (plus what is in flight) however fast features runs."""

    def __init__(self, max_backlog: int):
        self.max_backlog = max_backlog
        self.remaining: float = 0 if max_backlog else math.inf  # nothing until the first poll
        self.paused_since: float | None = None  # time.monotonic() when a poll found a queue full
        self.paused_by = ("", 0)  # that queue and its depth

    def update(self, deepest: int) -> None:
        self.remaining = max(0, self.max_backlog - deepest)

    def take(self) -> None:
        self.remaining -= 1

    @property
    def exhausted(self) -> bool:
        return self.remaining <= 0


class ConfirmedIdsFile:
    """Appends `id,y_true` lines; `flush()` writes the lines added since the last one and fsyncs."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lines: list[str] = []

    def add(self, event: Event) -> bool:
        """Returns True for the first line after a flush, so the caller schedules one flush per batch."""
        self._lines.append(f"{event.features.id},{event.target.body!r}\n")
        return len(self._lines) == 1

    def flush(self) -> None:
        if self._lines:
            view = memoryview("".join(self._lines).encode())
            self._lines.clear()
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)


Body = list[float] | dict[str, Any]
Label = float | str


class Table(Protocol):
    description: str
    names: list[str]  # the features, in body order

    def __len__(self) -> int: ...

    def sample(self, index: int) -> tuple[Body, Label]: ...

    def std(self, name: str) -> float | None:
        """The feature's standard deviation in the table; None for a text column."""

    def labels(self) -> list[Label]:
        """The distinct targets."""


class DiabetesTable:
    """scikit-learn's bundled diabetes data; a body is the list of its ten features (the course format)."""

    description = "the diabetes data"

    def __init__(self):
        from sklearn.datasets import load_diabetes  # only here: sklearn costs memory a replay doesn't need

        data = load_diabetes()
        self._features, self._targets = data.data, data.target
        self.names = list(data.feature_names)

    def __len__(self) -> int:
        return len(self._targets)

    def sample(self, index: int) -> tuple[list[float], float]:
        return self._features[index].tolist(), float(self._targets[index])

    def std(self, name: str) -> float:
        return float(self._features[:, self.names.index(name)].std())

    def labels(self) -> list[float]:
        return sorted(set(self._targets.tolist()))


class UserTable:
    """The user's rows, compactly: the numeric columns as one float array (NaN where missing), each
    text column as a list of shared strings. A row becomes python values only when it is sent, as
    the object body {column: value} in the table's column order."""

    def __init__(self, names: list[str], numeric: list[bool], numbers: np.ndarray, texts: list[list[str | None]],
                 targets: list[Label], description: str):
        self.names = names
        self.description = description
        self._numeric = numeric  # per column: taken from `numbers` (in turn) or from `texts` (in turn)
        self._numbers = numbers
        self._texts = texts
        self._targets = targets

    def __len__(self) -> int:
        return len(self._targets)

    def sample(self, index: int) -> tuple[dict[str, Any], Label]:
        numbers = iter(self._numbers[index].tolist())
        texts = (column[index] for column in self._texts)
        body = {}
        for name, numeric in zip(self.names, self._numeric):
            value = next(numbers) if numeric else next(texts)
            body[name] = None if value != value else value  # NaN != NaN: a missing number
        return body, self._targets[index]

    def std(self, name: str) -> float | None:
        column = self.names.index(name)
        if not self._numeric[column]:
            return None
        values = self._numbers[:, sum(self._numeric[:column])]
        return float(np.nanstd(values)) if np.isfinite(values).any() else 0.0

    def labels(self) -> list[Label]:
        return sorted(set(self._targets), key=lambda label: (isinstance(label, str), label))


def read_user_table(path: Path, target: str) -> tuple[UserTable, int]:
    """The table at `path` without its rows whose target is missing, and how many those were.
    Raises DatasetError with a one-line reason."""
    frame = load_table(path, target)
    features = frame.drop(columns=[target])
    names = [str(name) for name in features.columns]
    if not names:
        raise DatasetError(f"{path} has no feature columns besides the target {target!r}")
    for name in names:
        if not name:
            raise DatasetError(f"{path} has a column without a name")
        _check_text(name, f"{path}: column name")
    targets = target_values(frame[target], f"{path}: target {target!r}")
    kept = [index for index, value in enumerate(targets) if value is not None]
    if not kept:
        raise DatasetError(f"{path}: every row's target {target!r} is missing")
    numeric = [_is_numeric(features[name]) for name in features.columns]
    numbers = numeric_matrix(features.loc[:, numeric], path)[kept]
    texts = [text_values(features[name], f"{path}: column {name!r}")
             for name, is_numeric in zip(features.columns, numeric) if not is_numeric]
    skipped = len(targets) - len(kept)
    if skipped:
        texts = [[column[index] for index in kept] for column in texts]
        targets = [targets[index] for index in kept]
    return UserTable(names, numeric, numbers, texts, targets, f"{path} with target {target!r}"), skipped


def numeric_matrix(frame, path: Path) -> np.ndarray:
    """The numeric columns as one float array, NaN where missing; raises DatasetError on an infinity."""
    numbers = frame.to_numpy(dtype="float64", na_value=np.nan)
    rows, columns = np.nonzero(np.isinf(numbers))
    if rows.size:
        raise DatasetError(f"{path}: column {str(frame.columns[columns[0]])!r} is infinite in data row "
                           f"{rows[0] + 1}, and JSON has no infinity")
    return numbers


def text_values(column, where: str) -> list[str | None]:
    """A text column's values as strings (one string object per distinct value), None where missing."""
    seen: dict[str, str] = {}
    texts = []
    for value, missing in zip(column.tolist(), column.isna().tolist()):
        if missing:
            texts.append(None)
            continue
        text = str(value)
        known = seen.get(text)
        if known is None:
            _check_text(text, where)
            known = seen[text] = text
        texts.append(known)
    return texts


def target_values(column, where: str) -> list[Label | None]:
    """The targets: numbers as floats, anything else (booleans included: "True"/"False") as strings;
    None where missing, an empty string included."""
    if not _is_numeric(column):
        return [text or None for text in text_values(column, where)]
    values = column.to_numpy(dtype="float64", na_value=np.nan)
    if np.isinf(values).any():
        raise DatasetError(f"{where} is infinite in data row {np.flatnonzero(np.isinf(values))[0] + 1}, "
                           f"and JSON has no infinity")
    return [None if value != value else value for value in values.tolist()]


def _is_numeric(column) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return is_numeric_dtype(column.dtype) and not is_bool_dtype(column.dtype)


def _check_text(text: str, where: str) -> None:
    if len(text) > MAX_TEXT_LENGTH:
        raise DatasetError(f"{where}: {text[:20]!r}… is longer than {MAX_TEXT_LENGTH} characters")


def row_order(rows: int, order: str, seed: int | None) -> Iterator[int]:
    """Row indices, endlessly: the table's order, or a new seeded permutation every pass."""
    rng = np.random.default_rng(seed)
    while True:
        yield from range(rows) if order == "in-order" else rng.permutation(rows)


def sample_events(table: Table, order: str = "shuffled", seed: int | None = None) -> Iterator[tuple[Body, Label]]:
    """Endless (body, target) pairs drawn from the table."""
    for index in row_order(len(table), order, seed):
        yield table.sample(index)


@dataclass(frozen=True)
class DriftSimulation:
    """What `simulate` changes: `shifts` {feature name: amount added} from event `shift_from` on (the
    first event is 0); from event `concept_from` on, y_true + `concept_delta` (a regression) or, with
    probability `flip_share`, another label of `classes` (a classification)."""

    names: tuple[str, ...] = ()  # the features in body order, to find a list body's positions
    shifts: tuple[tuple[str, float], ...] = ()
    shift_from: int = 0
    concept_delta: float = 0.0
    flip_share: float = 0.0
    classes: tuple[Label, ...] = ()
    concept_from: int = 0

    @property
    def changes_concept(self) -> bool:
        return bool(self.concept_delta or self.flip_share)


def simulate(samples: Iterator[tuple[Body, Label]], simulation: DriftSimulation, seed: int | None = None
             ) -> Iterator[tuple[Body, Label]]:
    """The samples, with the simulation's shifts and concept change applied from their events on."""
    rng = np.random.default_rng(seed)
    positions = [(simulation.names.index(name), name, amount) for name, amount in simulation.shifts]
    for event, (body, label) in enumerate(samples):
        if positions and event >= simulation.shift_from:
            body = shifted(body, positions)
        if simulation.changes_concept and event >= simulation.concept_from:
            label = changed_label(label, simulation, rng)
        yield body, label


def shifted(body: Body, positions: list[tuple[int, str, float]]) -> Body:
    body = list(body) if isinstance(body, list) else dict(body)
    for position, name, amount in positions:
        key = position if isinstance(body, list) else name
        if body[key] is not None:  # a missing value stays missing
            body[key] = body[key] + amount
    return body


def changed_label(label: Label, simulation: DriftSimulation, rng: np.random.Generator) -> Label:
    if simulation.concept_delta:
        return label + simulation.concept_delta
    others = [other for other in simulation.classes if other != label]
    if others and rng.random() < simulation.flip_share:
        return others[int(rng.integers(len(others)))]
    return label


def plan_simulation(settings: Settings, table: Table) -> tuple[DriftSimulation, list[str]] | None:
    """The simulation the settings ask for and one line per change it makes, or None when they ask
    for none. Raises DatasetError, with a one-line reason, for what can't be simulated."""
    names = [name.strip() for name in settings.drift_features.split(",") if name.strip()]
    if not names and not settings.concept_shift:
        return None
    said, shifts = [], []
    for name in names:
        if name not in table.names:
            raise DatasetError(f"--drift-features: {name!r} is not a feature of {table.description} "
                               f"(its features: {', '.join(table.names)})")
        std = table.std(name)
        if std is None:
            raise DatasetError(f"--drift-features: {name!r} is a text (categorical) feature; only numeric "
                               f"features can be shifted")
        shifts.append((name, settings.drift_sigma * std))
        said.append(f"{name} + {settings.drift_sigma * std:.4g} ({settings.drift_sigma:g} std of {std:.4g}) "
                    f"from event {settings.drift_from}")
    simulation = DriftSimulation(names=tuple(table.names), shifts=tuple(shifts), shift_from=settings.drift_from,
                                 concept_from=settings.concept_from)
    if settings.concept_shift:
        simulation, line = plan_concept_shift(settings, table, simulation)
        said.append(line)
    return simulation, said


def plan_concept_shift(settings: Settings, table: Table, simulation: DriftSimulation) -> tuple[DriftSimulation, str]:
    card = _card_or_none(settings.models_dir)
    labels = table.labels()
    classifies = card.task == "classification" if card else any(isinstance(label, str) for label in labels)
    shift = settings.concept_shift
    if classifies:
        if not 0 < shift <= 1:
            raise DatasetError(f"--concept-shift {shift:g}: for a classifier it is the share of labels replaced "
                               f"by another class, between 0 and 1")
        return (replace(simulation, flip_share=shift, classes=tuple(labels)),
                f"{shift:.0%} of the labels replaced by another class from event {settings.concept_from}")
    sigma, source = settings.concept_sigma, "--concept-sigma"
    if sigma is None:
        sigma, source = _residual_std(card), "the held-out errors in the model card"
    if sigma is None:
        raise DatasetError(f"--concept-shift needs --concept-sigma, or a model card with reference errors in "
                           f"{settings.models_dir}")
    return (replace(simulation, concept_delta=shift * sigma),
            f"y_true + {shift * sigma:.4g} ({shift:g} residual std of {sigma:.4g}, from {source}) "
            f"from event {settings.concept_from}")


def _card_or_none(models_dir: Path):
    from mlmonitor.model_store import ModelCorrupt, ModelNotReady, read_card

    try:
        return read_card(models_dir)
    except (ModelNotReady, ModelCorrupt):
        return None


def _residual_std(card) -> float | None:
    """The residuals' standard deviation from the held-out absolute errors: their root mean square,
    √(mean² + std²), which is the held-out RMSE."""
    errors = (card.reference or {}).get("errors") if card else None
    if not errors or errors.get("mean") is None or errors.get("std") is None:
        return None
    return math.hypot(errors["mean"], errors["std"]) or None


class FeatureStreamer:
    def __init__(self, settings: Settings, samples: Iterator[tuple[Body, Label]],
                 confirmed_ids: ConfirmedIdsFile | None = None):
        self._settings = settings
        self._confirmed_ids = confirmed_ids
        self._samples = samples
        self._in_flight: dict[str, Event] = {}
        self._created = 0
        self._confirmed = 0
        self._session: Session | None = None
        self._next_due = 0.0
        self._pump_scheduled = False
        self._budget = BacklogBudget(settings.max_backlog)
        self._events = EventLog(log, "events published")
        self._pauses = EventLog(log, "pauses for the backlog")

    @property
    def confirmed(self) -> int:
        return self._confirmed

    def on_connected(self, session: Session) -> None:
        self._session = session
        if self._in_flight:
            log.info("publishing again %d events not confirmed before the reconnect", len(self._in_flight))
            for event in self._in_flight.values():
                event.unconfirmed_parts = 2
                self._publish(event)
        self._next_due = time.monotonic()
        session.every(1.0, self._events.flush)
        session.every(1.0, self._pauses.flush)
        if self._settings.max_backlog:
            session.watch_queue_depths(BACKLOG_QUEUES, BACKLOG_POLL_SECONDS, self._on_queue_depths)
        self._pump()

    def on_disconnected(self) -> None:
        self._flush_confirmed_ids()
        self._session = None
        self._pump_scheduled = False
        self._budget = BacklogBudget(self._settings.max_backlog)  # the next session polls afresh

    def _on_queue_depths(self, depths: dict[str, int]) -> None:
        deepest = max(depths, key=depths.get)
        budget = self._budget
        was_exhausted = budget.exhausted
        budget.update(depths[deepest])
        now = time.monotonic()
        if budget.exhausted and budget.paused_since is None:
            budget.paused_since, budget.paused_by = now, (deepest, depths[deepest])
            PAUSED.set(1)
        elif not budget.exhausted and budget.paused_since is not None:
            self._pauses.event("paused %.1fs: %s held %d ready messages (--max-backlog %d)",
                               now - budget.paused_since, *budget.paused_by, budget.max_backlog)
            budget.paused_since = None
            PAUSED.set(0)
        if was_exhausted and not budget.exhausted:
            self._next_due = max(self._next_due, now)  # what the backlog held back is not made up in a burst
            if not self._pump_scheduled:
                self._pump()

    def _finished_creating(self) -> bool:
        return self._settings.count is not None and self._created >= self._settings.count

    def _pump(self) -> None:
        """Publishes the events that are due, within the window of unconfirmed events."""
        self._pump_scheduled = False
        session = self._session
        if session is None or not session.is_open:
            return
        rate = self._settings.rate
        now = time.monotonic()
        while not self._finished_creating() and len(self._in_flight) < self._settings.max_unconfirmed:
            if (rate and self._next_due > now) or self._budget.exhausted:
                break
            self._budget.take()
            self._publish(self._create_event())
            if rate:
                # stay on schedule, but never burst more than a second's worth after a stall
                self._next_due = max(self._next_due + 1 / rate, now - 1.0)
        if self._finished_creating() or len(self._in_flight) >= self._settings.max_unconfirmed:
            return  # confirms call _pump again
        if self._budget.exhausted:
            return  # the next depth poll calls _pump again
        self._pump_scheduled = True
        session.call_later(max(0.0, self._next_due - time.monotonic()) if rate else 0, self._pump)

    def _create_event(self) -> Event:
        features, target = next(self._samples)
        event_id = str(uuid.uuid4())
        sent_at = time.time()
        self._created += 1
        event = Event(FeaturesMessage(id=event_id, body=features, sent_at=sent_at),
                      TargetMessage(id=event_id, body=target, sent_at=sent_at))
        self._in_flight[event_id] = event
        return event

    def _publish(self, event: Event) -> None:
        session = self._session

        def part_confirmed():
            event.unconfirmed_parts -= 1
            if event.unconfirmed_parts == 0:
                self._on_event_confirmed(event)

        # through our own exchange: features' broker user may write to it and to no queue directly
        session.publish(INPUTS_EXCHANGE, FEATURES, event.features.encode(), on_confirmed=part_confirmed)
        session.publish(INPUTS_EXCHANGE, Y_TRUE, event.target.encode(), on_confirmed=part_confirmed)

    def _on_event_confirmed(self, event: Event) -> None:
        if self._in_flight.pop(event.features.id, None) is None:
            return
        self._confirmed += 1
        if self._confirmed_ids is not None and self._confirmed_ids.add(event):
            self._session.call_later(0, self._flush_confirmed_ids)  # after this batch of confirms
        self._events.event("published event %s (y_true %s)", event.features.id, _shown(event.target.body))
        count = self._settings.count
        if count is not None and self._confirmed >= count:
            log.info("all %d events published and confirmed; exiting", count)
            self._session.stop(0)
        elif not self._pump_scheduled:
            self._pump()

    def _flush_confirmed_ids(self) -> None:
        if self._confirmed_ids is not None:
            self._confirmed_ids.flush()


def _shown(label: Label) -> str:
    return f"{label:.1f}" if isinstance(label, float) else repr(label)


def open_table(settings: Settings) -> Table:
    """The diabetes data, or the user's table; raises DatasetError with a one-line reason."""
    if settings.data is None and settings.target is None:
        return DiabetesTable()
    if settings.data is None:
        raise DatasetError("--target needs --data, the table it is a column of")
    if settings.target is None:
        raise DatasetError(f"--data {settings.data} needs --target, the column to send to {Y_TRUE}")
    table, skipped = read_user_table(settings.data, settings.target)
    if skipped:
        log.warning("skipping %d rows of %s whose target %r is missing", skipped, settings.data, settings.target)
    return table


def main(argv: list[str] | None = None) -> int:
    settings = start_service("features", Settings, argv)
    try:
        table = open_table(settings)
    except DatasetError as error:
        print(f"features: error: {error}", file=sys.stderr)
        return 2
    try:
        planned = plan_simulation(settings, table)
    except DatasetError as error:
        print(f"features: error: {error}", file=sys.stderr)
        return 2
    samples = sample_events(table, settings.order, settings.seed)
    if planned is not None:
        simulation, said = planned
        samples = simulate(samples, simulation, settings.seed)
        log.info("simulating drift: %s", "; ".join(said))
    confirmed_ids = ConfirmedIdsFile(settings.confirmed_ids_file) if settings.confirmed_ids_file else None
    streamer = FeatureStreamer(settings, samples, confirmed_ids)
    log.info("streaming %s events of %s (%d rows, %s) at %s to %s and %s",
             settings.count or "endless", table.description, len(table), settings.order,
             f"{settings.rate:g}/s" if settings.rate else "full speed", FEATURES, Y_TRUE)
    exit_code = run_worker(streamer, settings.amqp_url, tls=settings.amqp_tls, queue_type=settings.queue_type)
    log.info("stopped after %d confirmed events", streamer.confirmed)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
