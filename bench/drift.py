"""`make bench-drift`: false alarms, detection delay, CPU and memory of the drift detectors
(drift/src/detectors.py), side by side with river's ADWIN and PageHinkley and alibi-detect's
CVMDriftOnline on the same streams.

    .venv/bin/python bench/drift.py [--quick] [--seed 0] [--no-anchors] [--normal-scores]

Streams replay the training population, seeded: rows of learn_model's training split of the
diabetes data drawn with replacement, the model's (learn_model's Ridge) prediction for each, and
y_true = prediction + a residual drawn with replacement from those the card's reference
summarises (the held-out rows' and the training rows' out of fold), so that the errors are the
reference's. The performance detector takes the signed residual y − ŷ (detectors_for(...,
residuals=True), as the drift service runs it). A second stationary stream replays what `make run`
does: all 442 rows with their own y. A change starts at event CHANGE_AT:
- a mean shift of one feature (bmi) by 0.25, 0.5 and 1 reference σ (the model then sees it too);
- a shift of three features (bmi, bp, s5) by 0.5 σ at once;
- a concept change: y_true moves by 0.5 and 1 residual σ, the features stay put.
Every detector of learn_model's card (10 features, prediction, target, performance) runs on every
stream, calibrated together to 1 false alarm per 100,000 events, at reference margins of 0, 0.5
and 1 standard error (the default is the smallest whose stationary rates stay within half the
budget; see detectors.py). The delay is counted in events
after the change starts, to the first raise of the detector that watches what changed (the
feature's, or performance), and to the first raise of any detector; a stream with no raise within
HORIZON events is a miss.

Side by side, on univariate streams (the bmi stream standardised by its reference, and N(0, 1) as
in the issue): our detector alone, river's ADWIN and PageHinkley at their defaults, a two-sided
CUSUM (k = 0.5, h = 5), and alibi-detect's CVMDriftOnline. river and alibi-detect run in venvs the
bench makes (bench/.venv-anchors, bench/.venv-alibi: alibi-detect needs numpy < 2), in a
subprocess that reads the streams from .npy files: this same script with --anchor.

On every scenario of the full set, the anchors watch what changed (the shifted feature, the earliest
of three for several; the residual for a concept change), side by side with our 13 detectors at
the default budget and calibrated to each anchor's own measured rate (all 13 together).

CPU is measured on one stream as the service feeds it: each detector's update_batch over batches
of 1, 10, 100 and 1000 events, and a DetectorSet per stream (features and prediction; target and
performance) over the same batches.

Results go to bench/drift_results/results.{md,json}. The bench reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small solves and small arrays: one thread is fastest

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "drift_results"
ANCHOR_VENVS = {"river": (ROOT / "bench" / ".venv-anchors", ["river", "numpy"]),
                "alibi": (ROOT / "bench" / ".venv-alibi", ["numpy<2", "alibi-detect"])}
CHANGE_AT = 1000  # events before the change: the anchors learn their baseline from the stream itself
HORIZON = 5000  # events after the change; no raise by then is a miss
FEATURE = "bmi"
SEVERAL = ("bmi", "bp", "s5")
SHIFTS = (0.25, 0.5, 1.0)
CONCEPT = (0.5, 1.0)
MARGINS = (0.0, 0.5, 1.0)  # reference margins measured, in standard errors
BATCH_SIZES = (1, 10, 100, 1000)
BUDGET = 1.0  # false alarms per 100k events, all detectors together
OPEN_AT_CHANGE = -1  # a stream whose alert, false, was still open when the change started


# --- the data -------------------------------------------------------------------------------------

class Population:
    """learn_model's training split of the diabetes data, its model and card reference."""

    def __init__(self):
        sys.path[:0] = [str(ROOT / "learn_model" / "src"), str(ROOT / "drift" / "src")]
        from learn_model import REGRESSION, Settings, out_of_fold, train
        import pandas as pd
        from mlmonitor.reference import numeric_stats
        from sklearn.datasets import load_diabetes
        from sklearn.model_selection import train_test_split

        settings = Settings(data=None, target=None, seed=42, holdout_fraction=0.2, alpha=0.1, task="auto",
                            estimator=None, estimator_params=None)
        trained = train(settings)
        self.reference = trained.card.reference
        self.model = trained.model
        data = load_diabetes()
        self.names = list(data.feature_names)
        x_train, x_holdout, y_train, y_holdout = train_test_split(data.data, data.target, test_size=0.2, random_state=42)
        self.x_train = x_train
        # What older cards held: the predictions of the 89 held-out rows alone (their mean 2.1
        # standard errors off the training population's), and no residuals; the bench reports
        # what that reference costs in false alarms.
        self.old_reference = {key: value for key, value in self.reference.items() if key != "residuals"}
        self.old_reference["predictions"] = numeric_stats(self.model.predict(x_holdout))
        # The residuals the card summarises: the held-out rows', then the training rows' out of fold
        # (learn_model's reference_folds), so that a stationary stream's errors are the reference's.
        oof = out_of_fold(REGRESSION, self.model, x_train, pd.Series(y_train), settings)
        self.residuals = np.concatenate([y_holdout - self.model.predict(x_holdout), y_train - oof.predicted])
        self.residual_std = float(self.residuals.std())
        self.std = {name: self.reference["features"][name]["std"] for name in self.names}
        self.mean = {name: self.reference["features"][name]["mean"] for name in self.names}

    def streams(self, rng: np.random.Generator, streams: int, events: int, shift: dict[str, float] | None = None,
                concept: float = 0.0, change_at: int = CHANGE_AT) -> dict[str, np.ndarray]:
        """{detector name: values (events × streams)}, the change (feature shifts in σ, or a concept
        change in residual σ) from `change_at` on."""
        rows = self.x_train[rng.integers(0, len(self.x_train), (events, streams))]
        for name, sigmas in (shift or {}).items():
            rows[change_at:, :, self.names.index(name)] += sigmas * self.std[name]
        predicted = self.model.predict(rows.reshape(-1, rows.shape[-1])).reshape(events, streams)
        truth = predicted + self.residuals[rng.integers(0, len(self.residuals), (events, streams))]
        truth[change_at:] += concept * self.residual_std
        return stream_values(self.names, rows, predicted, truth)


def stream_values(names: list[str], rows: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    values = {f"feature.{name}": rows[:, :, index] for index, name in enumerate(names)}
    values.update({"prediction": predicted, "target": truth, "performance": truth - predicted,
                   ABSOLUTE_ERROR: np.abs(truth - predicted)})
    return values


ABSOLUTE_ERROR = "performance.absolute_error"


def column_of(detector) -> str:
    """The values a detector takes: the performance detector takes y − ŷ, or |y − ŷ| when it was
    built from a card without residuals."""
    return ABSOLUTE_ERROR if detector.kind == "performance" and not detector.takes_residuals else detector.name


# --- our detectors on many streams ------------------------------------------------------------------

def run_ours(detectors: list, values: dict[str, np.ndarray], change_at: int = CHANGE_AT) -> dict[str, np.ndarray]:
    """{detector name: the event (1-based) of each stream's first raise at or after `change_at`, or 0},
    plus "__false__": raises before `change_at`, per stream."""
    events, streams = next(iter(values.values())).shape
    running = [(detector.name, detector.copy_for(streams)) for detector in detectors]
    first = {name: np.zeros(streams, dtype=np.int64) for name, _ in running}
    false = np.zeros(streams, dtype=np.int64)
    for t in range(events):
        for name, detector in running:
            raised = detector.update_many(values[column_of(detector)][t]) == 1
            if t < change_at:
                false += raised
            else:
                first[name] = np.where((first[name] == 0) & raised, t + 1, first[name])
            if t == change_at - 1:
                first[name][detector.raised] = OPEN_AT_CHANGE
    first["__false__"] = false
    return first


def delays(first: np.ndarray, change_at: int = CHANGE_AT) -> dict:
    """Mean and median delay (events after the change starts; the first changed event counts 1)
    and miss rate, over the streams without a (false) alert still open when the change starts:
    for those, ours raises nothing new, and there is no delay to measure."""
    counted = first[first != OPEN_AT_CHANGE]
    caught = counted[counted > 0] - change_at
    return {"mean": float(caught.mean()) if caught.size else None,
            "median": float(np.median(caught)) if caught.size else None,
            "miss_rate": float(1 - caught.size / counted.size) if counted.size else None,
            "streams": int(counted.size), "open_at_change": int(first.size - counted.size)}


def earliest(first: dict[str, np.ndarray], names) -> np.ndarray:
    """Per stream, the first raise among the named detectors' (OPEN_AT_CHANGE if one was open)."""
    stacked = np.array([np.where(first[name] > 0, first[name], np.iinfo(np.int64).max) for name in names])
    best = stacked.min(axis=0)
    best = np.where(best == np.iinfo(np.int64).max, 0, best)
    was_open = np.array([first[name] == OPEN_AT_CHANGE for name in names]).any(axis=0)
    return np.where(was_open, OPEN_AT_CHANGE, best)


def false_alarm_rate(detectors: list, population: Population, rng, streams: int, events: int,
                     replay=None) -> dict:
    """Raises per 100k events of stationary streams, all detectors together, and which raised."""
    values = replay(rng, streams, events) if replay else population.streams(rng, streams, events)
    first_any = run_ours_counting(detectors, values)
    total = sum(first_any.values())
    return {"events": streams * events, "raises": int(total), "per_100k": total / (streams * events) * 1e5,
            "by_detector": {name: int(count) for name, count in first_any.items() if count}}


def run_ours_counting(detectors: list, values: dict[str, np.ndarray]) -> dict[str, int]:
    events, streams = next(iter(values.values())).shape
    running = [(detector.name, detector.copy_for(streams)) for detector in detectors]
    counts = {name: 0 for name, _ in running}
    for t in range(events):
        for name, detector in running:
            counts[name] += int((detector.update_many(values[column_of(detector)][t]) == 1).sum())
    return counts


def full_data_replay(population: Population):
    """What `make run` replays: all 442 rows of the diabetes data with their own targets (89 of
    them held out from training, so the live population differs from the reference sample)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()

    def replay(rng, streams, events):
        picks = rng.integers(0, len(data.target), (events, streams))
        rows, truth = data.data[picks], data.target[picks]
        predicted = population.model.predict(rows.reshape(-1, rows.shape[-1])).reshape(events, streams)
        return stream_values(population.names, rows, predicted, truth)

    return replay


# --- univariate comparisons -----------------------------------------------------------------------

def standard_normal_stats() -> dict:
    """Reference statistics of N(0, 1) itself (a sample large enough to be the population)."""
    from mlmonitor.reference import numeric_stats

    return numeric_stats(np.random.default_rng(12345).standard_normal(1_000_000))


def univariate_detector(stats: dict, false_alarms_per_100k: float, margin: float):
    import detectors as ours

    detector = ours.NumericDetector("univariate", ours.FEATURE_DRIFT, stats, feature="x", watch_missing=False)
    ours.calibrate([detector], false_alarms_per_100k, margin)
    return detector


def run_univariate(detector, streams: np.ndarray, change_at: int = CHANGE_AT) -> tuple[np.ndarray, int]:
    """(first raise at or after change_at per stream, raises before it)."""
    running = detector.copy_for(streams.shape[1])
    first = np.zeros(streams.shape[1], dtype=np.int64)
    false = 0
    for t, row in enumerate(streams):
        raised = running.update_many(row) == 1
        if t < change_at:
            false += int(raised.sum())
        else:
            first = np.where((first == 0) & raised, t + 1, first)
        if t == change_at - 1:
            first[running.raised] = OPEN_AT_CHANGE
    return first, false


def classic_cusum(streams: np.ndarray, k: float = 0.5, h: float = 5.0, change_at: int = CHANGE_AT):
    """The issue's two-sided CUSUM on the standardised stream, restarted after each alarm."""
    up = np.zeros(streams.shape[1])
    down = np.zeros(streams.shape[1])
    first = np.zeros(streams.shape[1], dtype=np.int64)
    false = 0
    for t, row in enumerate(streams):
        up = np.maximum(0, up + row - k)
        down = np.maximum(0, down - row - k)
        alarm = (up >= h) | (down >= h)
        up[alarm], down[alarm] = 0, 0
        if t < change_at:
            false += int(alarm.sum())
        else:
            first = np.where((first == 0) & alarm, t + 1, first)
    return first, false


def stationary_rate(run, streams: np.ndarray) -> float:
    """Raises per 100k events of a stream with no change."""
    _, false = run(streams, change_at=streams.shape[0])
    return false / streams.size * 1e5


# --- the anchors, in their own venvs ----------------------------------------------------------------

def ensure_venv(name: str) -> Path | None:
    """The anchor's venv, made with pip on first use; None (and why, on stderr) if it can't be."""
    venv, packages = ANCHOR_VENVS[name]
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    print(f"making {venv.relative_to(ROOT)} ({', '.join(packages)}) …", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], check=True)
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"can't make the {name} venv: {error}", file=sys.stderr)
        return None
    marker.touch()
    return python


def run_anchor(detector: str, stream_sets: list[tuple[np.ndarray, int]], options: dict | None = None) -> list[dict]:
    """Runs `detector` in its venv over each (streams, change_at): one subprocess, so that
    CVMDriftOnline fits its thresholds once. One --anchor output per set, or [{"error"}]."""
    python = ensure_venv("alibi" if detector == "cvm" else "river")
    if python is None:
        return [{"error": "its venv could not be made (see stderr)"}]
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for number, (streams, _) in enumerate(stream_sets):
            paths.append(str(Path(folder) / f"streams{number}.npy"))
            np.save(paths[-1], streams)
        command = [str(python), __file__, "--anchor", detector, "--streams", ",".join(paths),
                   "--change-at", ",".join(str(change_at) for _, change_at in stream_sets),
                   "--options", json.dumps(options or {})]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return [{"error": reason}]
    return json.loads(done.stdout.strip().splitlines()[-1])


def anchor_main(detector: str, paths: str, changes: str, options: dict) -> None:
    """In the anchor's venv: feed each stream (a column) of each file to a fresh detector; print
    JSON, per file: each stream's first detection at or after its change, detections before it,
    µs per update and the memory traced over the last stream."""
    make = _anchor_factory(detector, options)
    print(json.dumps([_anchor_run(detector, make, np.load(path), int(change_at), options)
                      for path, change_at in zip(paths.split(","), changes.split(","))]))


def _anchor_run(detector: str, make, streams: np.ndarray, change_at: int, options: dict) -> dict:
    first, false, seconds, updates, memory = [], 0, 0.0, 0, None
    for column in range(streams.shape[1]):
        last = column == streams.shape[1] - 1
        if last:
            tracemalloc.start()
        model = make()
        found = 0
        started = time.perf_counter()
        for t, value in enumerate(streams[:, column].tolist()):
            updates += 1
            if _anchor_update(detector, model, value):
                if t < change_at:
                    false += 1
                elif not found:
                    found = t + 1
                    break  # the delay is known; the rest of the stream only costs time
        seconds += time.perf_counter() - started
        if last:
            memory = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
        first.append(found)
    return {"first": first, "false": false, "us_per_update": seconds / updates * 1e6, "memory_bytes": memory,
            "events": int(streams.shape[0])}


def _anchor_factory(detector: str, options: dict):
    if detector == "adwin":
        from river.drift import ADWIN
        return ADWIN
    if detector == "page_hinkley":
        from river.drift import PageHinkley
        return PageHinkley
    from alibi_detect.cd import CVMDriftOnline

    reference = np.load(options["reference"]).reshape(-1, 1)
    fitted = CVMDriftOnline(reference, ert=options["ert"], window_sizes=options["windows"],
                            n_bootstraps=options["bootstraps"], verbose=False)

    def fresh():
        fitted.reset_state()
        return fitted

    return fresh


def _anchor_update(detector: str, model, value: float) -> bool:
    if detector == "cvm":
        return bool(model.predict(np.array([value]))["data"]["is_drift"])
    model.update(value)
    return bool(model.drift_detected)


# --- CPU and memory of ours -----------------------------------------------------------------------

def cpu_per_event(detectors: list, values: dict[str, np.ndarray], events: int) -> dict:
    """The service's path, one stream: µs per event for all the detectors, fed batches of each size
    per detector (update_batch; a batch of 1 is update()), and per stream as a DetectorSet."""
    import detectors as ours

    columns = {name: values[name][:, 0].tolist() for name in values}
    table = {"detectors": len(detectors), "per_detector": {}, "set": {}}
    for size in BATCH_SIZES:
        fresh = [type(detector).from_state(detector.to_state()) for detector in detectors]
        feeds = [(detector, columns[column_of(detector)]) for detector in fresh]
        started = time.process_time()
        for start in range(0, events, size):
            for detector, column in feeds:
                detector.update_batch(column[start:start + size])
        table["per_detector"][str(size)] = (time.process_time() - started) / events * 1e6
        fresh = [type(detector).from_state(detector.to_state()) for detector in detectors]
        sets = [ours.DetectorSet(detector for detector in fresh if (detector.kind in INPUT_KINDS) == inputs)
                for inputs in (True, False)]
        feeds = [(group, {detector.name: columns[column_of(detector)] for detector in group.detectors}) for group in sets]
        started = time.process_time()
        for start in range(0, events, size):
            for group, stream in feeds:
                group.update_batch({name: column[start:start + size] for name, column in stream.items()})
        table["set"][str(size)] = (time.process_time() - started) / events * 1e6
    return table


INPUT_KINDS = ("feature_drift", "prediction_drift")  # the predictions stream's; the rest take the outcomes


def memory_after(detector, column: np.ndarray, events: int, rng) -> dict:
    """One detector fed `events` values of its column in batches of 100: the memory traced from
    before the first batch to after the last, and the size of its JSON state, after 1,000 events
    and after all."""
    fresh = type(detector).from_state(detector.to_state())
    values = column[rng.integers(0, len(column), events)].tolist()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for start in range(0, events, 100):
        fresh.update_batch(values[start:start + 100])
        if start + 100 == 1000:
            early_state = len(json.dumps(fresh.to_state()))
            early = tracemalloc.get_traced_memory()[0] - before
    after = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"events": events, "traced_bytes_after_1k": early, "traced_bytes_after_all": after,
            "state_bytes_after_1k": early_state, "state_bytes_after_all": len(json.dumps(fresh.to_state()))}


# --- the report -----------------------------------------------------------------------------------

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer streams and events (about a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-anchors", action="store_true", help="skip river and alibi-detect")
    parser.add_argument("--no-cvm", action="store_true", help="skip alibi-detect's CVMDriftOnline (3 ms per event)")
    parser.add_argument("--normal-scores", action="store_true",
                        help="also measure the normal-scores scale (detectors.py's method='normal_scores')")
    parser.add_argument("--anchor", help=argparse.SUPPRESS)
    parser.add_argument("--streams", help=argparse.SUPPRESS)
    parser.add_argument("--change-at", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.anchor:
        return anchor_main(args.anchor, args.streams, args.change_at, json.loads(args.options))

    sizes = dict(streams=40, stationary_streams=200, stationary_events=5000, univariate_streams=100,
                 stationary_univariate=2000, anchor_streams=40, cvm_streams=5, cpu_events=4000,
                 memory_events=100_000) if args.quick else \
        dict(streams=100, stationary_streams=400, stationary_events=5000, univariate_streams=200,
             stationary_univariate=10_000, anchor_streams=200, cvm_streams=10, cpu_events=20_000,
             memory_events=1_000_000)
    started = time.time()
    results = {"seed": args.seed, "quick": args.quick, "sizes": sizes, "change_at": CHANGE_AT, "horizon": HORIZON,
               "budget_per_100k": BUDGET, "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                                     f"Python {platform.python_version()}"}
    rng = np.random.default_rng(args.seed)
    population = Population()
    import detectors as ours

    def calibrated(**options):
        import calibration

        calibration._threshold.cache_clear()  # the time it takes at a service's start, cache cold
        began = time.perf_counter()
        built = ours.detectors_for(population.reference, false_alarms_per_100k=BUDGET, residuals=True, **options)
        return built, time.perf_counter() - began

    configurations = {margin_label(margin, ours.DEFAULT_REFERENCE_MARGIN): dict(reference_margin=margin)
                      for margin in sorted({*MARGINS, ours.DEFAULT_REFERENCE_MARGIN})}
    if args.normal_scores:
        configurations["normal scores, default margin"] = dict(method="normal_scores")
    old_card = ours.detectors_for(population.old_reference, false_alarms_per_100k=BUDGET)
    results["old_card"] = false_alarm_rate(old_card, population, rng, sizes["stationary_streams"] // 2,
                                           sizes["stationary_events"])
    results["default_margin"] = ours.DEFAULT_REFERENCE_MARGIN
    results["ours"] = {}
    for label, options in configurations.items():
        detectors, seconds = calibrated(**options)
        names = [detector.name for detector in detectors]
        print(f"{label}: calibrated {len(detectors)} detectors in {seconds:.2f} s", flush=True)
        entry = results["ours"][label] = {"calibration_seconds": seconds, "detectors": len(detectors)}
        entry["stationary"] = false_alarm_rate(detectors, population, rng, sizes["stationary_streams"],
                                               sizes["stationary_events"])
        entry["stationary_full_data"] = false_alarm_rate(detectors, population, rng, sizes["stationary_streams"],
                                                         sizes["stationary_events"], full_data_replay(population))
        entry["scenarios"] = {}
        events = CHANGE_AT + HORIZON
        scenarios = [(f"{FEATURE} +{shift} σ", {FEATURE: shift}, 0.0, [f"feature.{FEATURE}"]) for shift in SHIFTS]
        scenarios.append((f"{', '.join(SEVERAL)} +0.5 σ", dict.fromkeys(SEVERAL, 0.5), 0.0,
                          [f"feature.{name}" for name in SEVERAL]))
        scenarios += [(f"concept: y_true +{shift} residual σ", None, shift, ["performance"]) for shift in CONCEPT]
        for name, shift, concept, watched in scenarios:
            values = population.streams(rng, sizes["streams"], events, shift, concept)
            first = run_ours(detectors, values)
            entry["scenarios"][name] = {"watched": delays(earliest(first, watched)),
                                        "any": delays(earliest(first, names)),
                                        "false_before_change": int(first["__false__"].sum())}
            print(f"  {name}: {entry['scenarios'][name]['watched']}", flush=True)
        if label.endswith("(default)"):
            values = population.streams(rng, 1, sizes["cpu_events"])
            entry["cpu"] = cpu_per_event(detectors, values, sizes["cpu_events"])
            entry["memory"] = memory_after(detectors[names.index(f"feature.{FEATURE}")],
                                           population.x_train[:, population.names.index(FEATURE)],
                                           sizes["memory_events"], rng)
            entry["budget_delays"] = budget_delays(population, ours)

    results["univariate"] = univariate(population, ours, rng, sizes, anchors=not args.no_anchors, cvm=not args.no_cvm)
    if not args.no_anchors:
        results["set_vs_anchors"] = set_vs_anchors(population, ours, rng, sizes, results, cvm=not args.no_cvm)
    results["seconds"] = time.time() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "results.md").write_text(report(results))
    print(report(results))


def margin_label(margin: float, default: float) -> str:
    return f"standardised, margin {margin:g} SE" + (" (default)" if margin == default else "")


def budget_delays(population: Population, ours) -> dict:
    """The delay a budget buys: zero-state ARL of the bmi detector inside the card's set, computed
    (Markov chain) for shifts of 0.25, 0.5 and 1 σ at several budgets."""
    from calibration import run_length

    table = {}
    for budget in (0.1, 1.0, 10.0):
        detectors = ours.detectors_for(population.reference, false_alarms_per_100k=budget, residuals=True)
        detector = detectors[[d.name for d in detectors].index(f"feature.{FEATURE}")]
        scores, _ = detector.in_control(detector.charts[0])
        up_charts = [(chart, h) for chart, h in zip(detector.charts, detector.thresholds)
                     if chart.channel == "value" and chart.sign > 0 and math.isfinite(h)]
        row = {str(shift): min(run_length(scores.values + shift - chart.k, scores.weights, h) for chart, h in up_charts)
               for shift in SHIFTS}
        table[str(budget)] = row
    return table


SCENARIOS = [(f"{FEATURE} +{shift} σ", {FEATURE: shift}, 0.0, [f"feature.{FEATURE}"]) for shift in SHIFTS] + \
    [(f"{', '.join(SEVERAL)} +0.5 σ", dict.fromkeys(SEVERAL, 0.5), 0.0, [f"feature.{name}" for name in SEVERAL])] + \
    [(f"concept: y_true +{shift} residual σ", None, shift, ["performance"]) for shift in CONCEPT]


def set_vs_anchors(population: Population, ours, rng, sizes: dict, results: dict, cvm: bool) -> dict:
    """Every scenario of the full set, side by side: our 13 detectors together (the default budget,
    and calibrated to each anchor's own measured rate, all 13 together), and each anchor watching
    what changed, standardised by its reference: the shifted feature (of several, the earliest of
    its detections on each), or the residual y − ŷ. The anchors' false-alarm rates are those they
    measured on one stationary stream (section "One stream"); watching three, they raise about 3×."""
    univariate_rows = results["univariate"]
    rates = {"river page_hinkley": univariate_rows[f"{FEATURE} (standardised)"].get("river page_hinkley", {}),
             "alibi-detect CVMDriftOnline": univariate_rows["N(0,1)"].get("alibi-detect CVMDriftOnline", {})}
    scale = {name: (population.mean[name[len("feature."):]], population.std[name[len("feature."):]])
             for name in (f"feature.{feature}" for feature in SEVERAL)}
    scale["performance"] = (0.0, population.residual_std)
    events = CHANGE_AT + HORIZON
    streams = {name: population.streams(rng, sizes["streams"], events, shift, concept) for name, shift, concept, _ in SCENARIOS}
    out = {"ours": {}, "anchors": {}, "ours_stationary": {}}
    budgets = {f"ours, all 13, {BUDGET:g}/100k": BUDGET}
    for anchor, row in rates.items():
        if row.get("false_per_100k"):
            budgets[f"ours, all 13, at {anchor}'s rate ({row['false_per_100k']:.0f}/100k)"] = row["false_per_100k"]
    for label, budget in budgets.items():
        print(f"set vs anchors: {label}", flush=True)
        detectors = ours.detectors_for(population.reference, false_alarms_per_100k=budget, residuals=True)
        out["ours_stationary"][label] = false_alarm_rate(detectors, population, rng, sizes["stationary_streams"] // 2,
                                                         sizes["stationary_events"], full_data_replay(population))
        out["ours"][label] = {}
        for name, _, _, watched in SCENARIOS:
            out["ours"][label][name] = delays(earliest(run_ours(detectors, streams[name]), watched))
    anchors = [("river adwin", "adwin", sizes["anchor_streams"], 0), ("river page_hinkley", "page_hinkley",
                                                                      sizes["anchor_streams"], 0)]
    if cvm:
        anchors.append(("alibi-detect CVMDriftOnline", "cvm", sizes["cvm_streams"], 200))
    watches = sorted({watch for _, _, _, watched in SCENARIOS for watch in watched})
    references = {watch: population.x_train[:, population.names.index(watch[len("feature."):])]
                  if watch.startswith("feature.") else population.residuals for watch in watches}
    for label, anchor, count, lead in anchors:
        print(f"set vs anchors: {label}", flush=True)
        firsts = {}  # (scenario, watch) -> first detections
        for watch in watches:  # one subprocess per watched stream: CVMDriftOnline fits its thresholds once
            mean, std = scale[watch]
            names = [name for name, _, _, watched in SCENARIOS if watch in watched]
            begin = CHANGE_AT - lead if lead else 0  # CVMDriftOnline starts shortly before the change
            sets = [((streams[name][watch][begin:, :count] - mean) / std, lead or CHANGE_AT) for name in names]
            with tempfile.TemporaryDirectory() as folder:
                options = None
                if anchor == "cvm":
                    np.save(Path(folder) / "reference.npy", (references[watch] - mean) / std)
                    options = {"reference": str(Path(folder) / "reference.npy"), "ert": 10_000,
                               "windows": [10, 20, 50], "bootstraps": 20_000}
                runs = run_anchor(anchor, sets, options)
            for name, run in zip(names, runs if "error" not in runs[0] else [runs[0]] * len(names)):
                firsts[name, watch] = run if "error" in run else \
                    np.where(np.array(run["first"]) > 0, np.array(run["first"]) - lead + CHANGE_AT if lead else
                             np.array(run["first"]), 0)
        out["anchors"][label] = {}
        for name, _, _, watched in SCENARIOS:
            found = [firsts[name, watch] for watch in watched]
            if any(isinstance(first, dict) for first in found):
                out["anchors"][label][name] = next(first for first in found if isinstance(first, dict))
                continue
            stacked = np.array([np.where(first > 0, first, np.iinfo(np.int64).max) for first in found]).min(axis=0)
            out["anchors"][label][name] = delays(np.where(stacked == np.iinfo(np.int64).max, 0, stacked))
    return out


def univariate(population: Population, ours, rng, sizes: dict, anchors: bool, cvm: bool) -> dict:
    """Ours alone and the anchors on the same univariate streams: N(0, 1), and the bmi stream
    standardised by its reference."""
    bmi_stats = population.reference["features"][FEATURE]
    column = population.x_train[:, population.names.index(FEATURE)]
    sources = {  # (reference stats, reference margin, a sample for CVMDriftOnline, the streams)
        "N(0,1)": (standard_normal_stats(), 0.0, rng.standard_normal(len(column)),
                   lambda count, events, shift: _normal_streams(rng, count, events, shift)),
        f"{FEATURE} (standardised)": (bmi_stats, ours.DEFAULT_REFERENCE_MARGIN, (column - bmi_stats["mean"]) / bmi_stats["std"],
                                      lambda count, events, shift: _feature_streams(population, rng, count, events, shift)),
    }
    out = {}
    events = CHANGE_AT + HORIZON
    for source, (stats, margin, cvm_reference, make) in sources.items():
        print(f"univariate: {source}", flush=True)
        section = out[source] = {}
        stationary = make(sizes["univariate_streams"], sizes["stationary_univariate"], 0.0)
        shifted = {shift: make(sizes["univariate_streams"], events, shift) for shift in SHIFTS}
        alone = univariate_detector(stats, BUDGET, margin)
        scale = ours.StandardisedScores(stats)
        to_z = (lambda values: values) if source == "N(0,1)" else (lambda values: (values - scale.mean) / scale.std)
        section[f"ours, alone, {BUDGET:g}/100k"] = _row(
            lambda streams, change_at=CHANGE_AT: run_univariate(alone, streams, change_at), stationary, shifted)
        section["CUSUM k=0.5 h=5"] = _row(
            lambda streams, change_at=CHANGE_AT: classic_cusum(to_z(streams), change_at=change_at), stationary, shifted)
        if anchors:
            for detector in ("adwin", "page_hinkley"):
                section[f"river {detector}"] = _anchor_row(detector, to_z, stationary, shifted, sizes["anchor_streams"])
            if cvm and source == "N(0,1)":
                section["alibi-detect CVMDriftOnline"] = _cvm_row(cvm_reference, to_z, stationary, shifted,
                                                                  sizes["cvm_streams"])
            # ours at each anchor's measured rate: the same false-alarm rate, side by side
            for anchor in ("river page_hinkley", "CUSUM k=0.5 h=5"):
                rate = section.get(anchor, {}).get("false_per_100k")
                if rate:
                    matched = univariate_detector(stats, rate, margin)
                    section[f"ours at {anchor}'s rate ({rate:.0f}/100k)"] = _row(
                        lambda streams, change_at=CHANGE_AT: run_univariate(matched, streams, change_at),
                        stationary, shifted)
        cpu = _cpu_of_one(alone, rng)
        section[f"ours, alone, {BUDGET:g}/100k"]["us_per_update"] = cpu
    return out


def _normal_streams(rng, count, events, shift):
    streams = rng.standard_normal((events, count))
    streams[CHANGE_AT:] += shift
    return streams


def _feature_streams(population: Population, rng, count, events, shift):
    index = population.names.index(FEATURE)
    streams = population.x_train[rng.integers(0, len(population.x_train), (events, count)), index]
    streams[CHANGE_AT:] += shift * population.std[FEATURE]
    return streams


def _row(run, stationary: np.ndarray, shifted: dict) -> dict:
    row = {"false_per_100k": stationary_rate(run, stationary)}
    for shift, streams in shifted.items():
        first, _ = run(streams)
        row[str(shift)] = delays(first)
    return row


def _anchor_row(detector: str, to_z, stationary: np.ndarray, shifted: dict, count: int) -> dict:
    sets = [(to_z(stationary[:, :count]), stationary.shape[0])]
    sets += [(to_z(streams[:, :count]), CHANGE_AT) for streams in shifted.values()]
    runs = run_anchor(detector, sets)
    if "error" in runs[0]:
        return runs[0]
    calm = runs[0]
    row = {"false_per_100k": calm["false"] / (stationary.shape[0] * min(count, stationary.shape[1])) * 1e5,
           "us_per_update": calm["us_per_update"], "memory_bytes_after": calm["memory_bytes"],
           "memory_events": stationary.shape[0]}
    for shift, run in zip(shifted, runs[1:]):
        row[str(shift)] = delays(np.array(run["first"]))
    return row


def _cvm_row(reference: np.ndarray, to_z, stationary: np.ndarray, shifted: dict, count: int) -> dict:
    """CVMDriftOnline on a reference sample of the stream's population (353 values, as many as the
    training split), windows of 10, 20 and 50, expected run time 10,000 (its false-alarm rate is
    about 1/ert by design). It costs milliseconds per event, so it runs on fewer streams, from 200
    events before the change (its windows hold at most 50)."""
    lead = 200
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "reference.npy"
        np.save(path, reference)
        options = {"reference": str(path), "ert": 10_000, "windows": [10, 20, 50], "bootstraps": 20_000}
        calm = to_z(stationary[:2000, :count])
        sets = [(calm, calm.shape[0])]
        sets += [(to_z(streams[CHANGE_AT - lead:, :count]), lead) for streams in shifted.values()]
        runs = run_anchor("cvm", sets, options)
    if "error" in runs[0]:
        return runs[0]
    row = {"false_per_100k": runs[0]["false"] / calm.size * 1e5, "us_per_update": runs[0]["us_per_update"],
           "note": f"{count} streams; false alarms over {calm.size:,} events; ert 10,000"}
    for shift, run in zip(shifted, runs[1:]):
        first = np.array(run["first"])
        row[str(shift)] = delays(np.where(first > 0, first - lead + CHANGE_AT, 0))
    return row


def _cpu_of_one(detector, rng) -> float:
    fresh = type(detector).from_state(detector.to_state())
    values = rng.standard_normal(20_000).tolist()
    started = time.process_time()
    for value in values:
        fresh.update(value)
    return (time.process_time() - started) / len(values) * 1e6


def report(results: dict) -> str:
    lines = ["# Drift detectors: false alarms, delay, cost", "",
             f"`make bench-drift` ({'--quick, ' if results['quick'] else ''}seed {results['seed']}); "
             f"{results['machine']}; {results['seconds']:.0f} s. Change at event {results['change_at']}, "
             f"a miss when nothing is raised within {results['horizon']} events after it. Delays in events "
             f"after the change starts (the first changed event counts 1).", ""]
    lines += ["## All detectors of the diabetes card together (10 features, prediction, target, performance)", "",
              f"Budget {results['budget_per_100k']:g} false alarm per 100k events for the 13 detectors together; "
              "the performance detector takes y − ŷ and watches a bias either way besides the absolute error.", ""]
    lines += _margin_table(results)
    for label, entry in results["ours"].items():
        lines += [f"### {label}", "",
                  f"Calibration: {entry['calibration_seconds']:.2f} s.", "",
                  "| stream | events | raises | per 100k events | raised by |", "|---|---:|---:|---:|---|"]
        for key, title in (("stationary", "stationary, training population"),
                           ("stationary_full_data", "stationary, all 442 rows with their own y (as `make run`)")):
            fa = entry[key]
            lines.append(f"| {title} | {fa['events']:,} | {fa['raises']} | {fa['per_100k']:.2f} | "
                         f"{', '.join(f'{k} {v}' for k, v in fa['by_detector'].items()) or '-'} |")
        lines += ["", "| change | watched detector: mean / median delay | miss | any detector: mean / median | "
                      "raises before the change |", "|---|---:|---:|---:|---:|"]
        for name, scenario in entry["scenarios"].items():
            watched, first = scenario["watched"], scenario["any"]
            lines.append(f"| {name} | {_fmt(watched['mean'])} / {_fmt(watched['median'])} | "
                         f"{watched['miss_rate']:.0%} | {_fmt(first['mean'])} / {_fmt(first['median'])} | "
                         f"{scenario['false_before_change']} |")
        if "cpu" in entry:
            cpu, memory = entry["cpu"], entry["memory"]
            lines += ["", f"CPU, µs per event for all {cpu['detectors']} detectors, one stream, as the service feeds "
                          "them (process time; the machine is shared, so expect ±30 %):", "",
                      "| batch of | " + " | ".join(f"{size:,}" for size in BATCH_SIZES) + " |",
                      "|---|" + "---:|" * len(BATCH_SIZES),
                      "| each detector's update_batch (a batch of 1: update) | " +
                      " | ".join(f"{cpu['per_detector'][str(size)]:.1f}" for size in BATCH_SIZES) + " |",
                      "| a DetectorSet per stream (11 detectors on predictions, 2 on outcomes) | " +
                      " | ".join(f"{cpu['set'][str(size)]:.1f}" for size in BATCH_SIZES) + " |", "",
                      f"Memory: one detector after {memory['events']:,} events holds {memory['traced_bytes_after_all']:,} "
                      f"traced bytes more than before its first event ({memory['traced_bytes_after_1k']:,} after 1,000); "
                      f"its JSON state is {memory['state_bytes_after_all']:,} bytes (after 1,000: "
                      f"{memory['state_bytes_after_1k']:,}).", "",
                      "The delay a budget buys (bmi's detector in the set; zero-state ARL of its up-charts, Markov chain):", "",
                      "| false alarms per 100k | " + " | ".join(f"{s} σ" for s in SHIFTS) + " |",
                      "|---:|" + "---:|" * len(SHIFTS)]
            for budget, row in entry["budget_delays"].items():
                lines.append(f"| {budget} | " + " | ".join(f"{row[str(s)]:.0f}" for s in SHIFTS) + " |")
        lines.append("")
    old = results["old_card"]
    lines += ["With an older card's reference (the predictions of the 89 held-out rows alone, their mean 2.1 standard "
              "errors off the training population's; no residuals) the default configuration raises "
              f"{old['per_100k']:.1f} per 100k events on the training population "
              f"({', '.join(f'{k} {v}' for k, v in old['by_detector'].items()) or 'none'}; {old['events']:,} events).", ""]
    lines += _standing(results)
    lines += _set_vs_anchors(results)
    lines += ["## One stream, side by side with the anchors", ""]
    for source, section in results["univariate"].items():
        lines += [f"### {source}", "", "| detector | false alarms per 100k | " +
                  " | ".join(f"{s} σ: mean / median (miss)" for s in SHIFTS) + " | µs per update |",
                  "|---|---:|" + "---:|" * len(SHIFTS) + "---:|"]
        for name, row in section.items():
            if "error" in row:
                lines.append(f"| {name} | not run: {row['error']} |" + " |" * (len(SHIFTS) + 1))
                continue
            cells = []
            for shift in SHIFTS:
                cell = row.get(str(shift), {})
                cells.append(_delay_cell(cell))
            cpu = row.get("us_per_update")
            lines.append(f"| {name} | {row['false_per_100k']:.1f} | " + " | ".join(cells) +
                         f" | {'' if cpu is None else f'{cpu:.1f}'} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _margin_table(results: dict) -> list[str]:
    """The margins side by side: the false-alarm rates on both stationary streams and the delays."""
    scenarios = list(next(iter(results["ours"].values()))["scenarios"])
    lines = ["What the reference margin buys (mean delay of the watched detector, in events):", "",
             "| configuration | per 100k, training population | per 100k, as `make run` | " +
             " | ".join(scenarios) + " |", "|---|---:|---:|" + "---:|" * len(scenarios)]
    for label, entry in results["ours"].items():
        cells = [_fmt(entry["scenarios"][name]["watched"]["mean"]) +
                 (f" ({entry['scenarios'][name]['watched']['miss_rate']:.0%} missed)"
                  if entry["scenarios"][name]["watched"]["miss_rate"] else "") for name in scenarios]
        lines.append(f"| {label} | {entry['stationary']['per_100k']:.2f} | {entry['stationary_full_data']['per_100k']:.2f} | "
                     + " | ".join(cells) + " |")
    within = [label for label, entry in results["ours"].items()
              if max(entry["stationary"]["per_100k"], entry["stationary_full_data"]["per_100k"]) <= results["budget_per_100k"]]
    return lines + ["", f"Configurations whose measured rate on both stationary streams is within the budget "
                        f"({results['budget_per_100k']:g} per 100k): {', '.join(within) or 'none'}.", ""]


def _standing(results: dict) -> list[str]:
    """The bar: the full set (default) on the bmi shifts against the anchors on the same bmi stream."""
    default = next((entry for label, entry in results["ours"].items() if label.endswith("(default)")), None)
    section = results.get("univariate", {}).get(f"{FEATURE} (standardised)", {})
    if default is None:
        return []
    worst = max(default["stationary"]["per_100k"], default["stationary_full_data"]["per_100k"])
    lines = [f"## Where we stand: {FEATURE} shifted, the full set against the anchors", "",
             "| detector | false alarms per 100k | " + " | ".join(f"{s} σ: mean / median (miss)" for s in SHIFTS) + " |",
             "|---|---:|" + "---:|" * len(SHIFTS),
             f"| ours, all 13 detectors, default | {worst:.2f} (all 13) | " +
             " | ".join(_delay_cell(default["scenarios"][f"{FEATURE} +{shift} σ"]["watched"]) for shift in SHIFTS) + " |"]
    for name in ("river adwin", "river page_hinkley"):
        row = section.get(name)
        if row and "error" not in row:
            lines.append(f"| {name} (one stream) | {row['false_per_100k']:.1f} | " +
                         " | ".join(_delay_cell(row.get(str(shift), {})) for shift in SHIFTS) + " |")
    return lines + ["", "ADWIN and PageHinkley watch the bmi stream alone; ours is bmi's detector inside the whole set, "
                        "its false-alarm rate that of all 13 detectors together (the worse of the two stationary streams).", ""]


def _set_vs_anchors(results: dict) -> list[str]:
    """Every scenario: our full set (at the default budget and at each anchor's rate) against the anchors."""
    table = results.get("set_vs_anchors")
    if not table:
        return []
    names = [name for name, _, _, _ in SCENARIOS]
    lines = ["## Every scenario: the full set against the anchors", "",
             "Mean / median delay in events (miss rate). Ours: the watched detector inside all 13, its false-alarm "
             "rate that of all 13 together, measured on the stationary stream as `make run` replays it. Anchors: one "
             "detector on what changed, standardised (of several features, the earliest of three, one on each; the "
             "residual y − ŷ for a concept change), at the rate it measured on one stationary stream.", "",
             "| detector | false alarms per 100k | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    univariate_rows = results["univariate"]
    anchor_rates = {"river adwin": univariate_rows[f"{FEATURE} (standardised)"].get("river adwin", {}),
                    "river page_hinkley": univariate_rows[f"{FEATURE} (standardised)"].get("river page_hinkley", {}),
                    "alibi-detect CVMDriftOnline": univariate_rows["N(0,1)"].get("alibi-detect CVMDriftOnline", {})}
    for label, row in table["ours"].items():
        rate = table["ours_stationary"][label]["per_100k"]
        lines.append(f"| {label} | {rate:.2f} (all 13) | " + " | ".join(_delay_cell(row[name]) for name in names) + " |")
    for label, row in table["anchors"].items():
        rate = anchor_rates.get(label, {}).get("false_per_100k")
        lines.append(f"| {label} | {'' if rate is None else f'{rate:.1f}'} (one stream) | " +
                     " | ".join(_delay_cell(row[name]) if "error" not in row[name] else "not run" for name in names) + " |")
    return lines + [""]


def _delay_cell(cell: dict) -> str:
    if cell.get("miss_rate") is None:
        return "-"
    opened = f" [{cell['open_at_change']} open]" if cell.get("open_at_change") else ""
    return f"{_fmt(cell['mean'])} / {_fmt(cell['median'])} ({cell['miss_rate']:.0%}){opened}"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


if __name__ == "__main__":
    main()
