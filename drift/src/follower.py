"""Which model version the drift service watches: the first card, then each new one.

On a thread of its own, ModelFollower waits for the model card, hands the worker its first monitor
(carrying on from the snapshot when it is for this version and calibration, else afresh, said in one
line), then looks at the card every few seconds and hands over the detectors of each new version,
calibrated on this thread, for the worker to swap in between two batches.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Mapping, Protocol

from detectors import Detector
from mlmonitor.files import FileSignature
from mlmonitor.model_store import ModelCard, ModelCorrupt, ModelNotReady, card_signature, read_card
from monitor import OUTCOMES, PREDICTIONS, DriftMonitor, NoReference, build_detectors, reference_fingerprint
from state_store import StateStore

log = logging.getLogger("drift")



class Worker(Protocol):
    def offer_monitor(self, monitor: DriftMonitor, store: StateStore) -> None: ...

    def offer_version(self, card: ModelCard, detectors: list[Detector]) -> None: ...




def start_monitor(card: ModelCard, store: StateStore, calibration: Mapping[str, float]) -> tuple[DriftMonitor, str]:
    """The monitor to start with, and one line saying whether it carries on from the snapshot."""
    state, counted, problem = store.load()
    where = store.state_path
    if state is not None:
        try:
            if (state.get("model_version") == card.version and state.get("calibration") == dict(calibration)
                    and state.get("reference") == reference_fingerprint(card)):
                monitor = DriftMonitor.from_state(state, card, counted)
                return monitor, (f"carrying on from {where} (saved {state.get('saved_at')}): "
                                 f"{monitor.events(PREDICTIONS)} predictions and {monitor.events(OUTCOMES)} "
                                 f"outcomes counted, {len(monitor.open_alerts)} open alert(s)")
            if state.get("model_version") != card.version:
                problem = f"{where} is for model {state.get('model_version')}, the card for {card.version}"
            elif state.get("reference") != reference_fingerprint(card):
                problem = f"{where} was built from other reference statistics than the card's (retrained?)"
            else:
                problem = f"{where} was calibrated with {state.get('calibration')}, the settings ask {dict(calibration)}"
        except (ValueError, KeyError, TypeError) as error:
            problem = f"{where} can't be restored ({type(error).__name__}: {error})"
    monitor = DriftMonitor(card, build_detectors(card, calibration), calibration, counted)
    resolved = monitor.inherit(state or {}, f"detectors restarted: {problem}")
    closing = f"; resolving its {len(resolved)} open alerts" if resolved else ""
    return monitor, (f"starting afresh for model {card.version}: {problem}{closing}; "
                     f"{monitor.events(PREDICTIONS)} predictions and {monitor.events(OUTCOMES)} outcomes counted")


class ModelFollower:
    def __init__(self, models_dir: Path, poll_seconds: float, calibration: Mapping[str, float], store: StateStore,
                 worker: Worker, should_stop: Callable[[], bool], give_up: Callable[[int], None] = lambda code: None):
        self._models_dir = Path(models_dir)
        self._poll_seconds = poll_seconds
        self._calibration = dict(calibration)
        self._store = store
        self._worker = worker
        self._should_stop = should_stop
        self._give_up = give_up  # ends the service with an exit code (ServiceRunner.request_stop)
        self._stopped = threading.Event()
        self._settled: FileSignature | None = None  # the card last taken, refused or found unchanged
        self._version: str | None = None
        self._reference: str | None = None  # the fingerprint of the card's reference being watched
        self._reported: str | None = None
        self._thread = threading.Thread(target=self._run, name="drift-model-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)

    def _stopping(self) -> bool:
        return self._stopped.is_set() or self._should_stop()

    def _run(self) -> None:
        started = False
        try:
            started = self._start_first()
            if not started:
                return
            while not self._stopped.wait(self._poll_seconds):
                self.check()
        except Exception:
            if started:
                log.exception("bug while following the model card; drift keeps the version it watches")
                return
            # Without a first monitor drift would hold its deliveries and watch nothing: better a
            # restart (compose's restart policy, or the operator) than a silent monitor.
            log.exception("bug while building the first monitor; drift stops with exit code 1")
            self._give_up(1)

    def _start_first(self) -> bool:
        while not self._stopping():
            signature = card_signature(self._models_dir)
            try:
                card = read_card(self._models_dir)
                monitor, how = start_monitor(card, self._store, self._calibration)
            except (ModelNotReady, ModelCorrupt, NoReference) as problem:
                self._report(f"waiting for the model: {problem}")
            except OSError as error:  # e.g. the logs folder not writable
                self._report(f"waiting for the model card and the drift state to be readable: {error}")
            except (ValueError, KeyError, TypeError) as error:  # a reference the detectors can't be built from
                self._report(f"waiting for a usable model card: its reference can't be used "
                             f"({type(error).__name__}: {error})")
            else:
                log.info("%s", how)
                self._settled, self._version, self._reference = signature, card.version, reference_fingerprint(card)
                self._worker.offer_monitor(monitor, self._store)
                return True
            self._stopped.wait(self._poll_seconds)
        return False

    def check(self) -> None:
        """A new version's detectors, handed to the worker; the same version rewritten changes nothing."""
        signature = card_signature(self._models_dir)
        if signature is None or signature == self._settled:
            return
        try:
            card = read_card(self._models_dir)
        except (ModelNotReady, ModelCorrupt) as problem:
            self._report(f"new model card not readable yet: {problem}; still watching model {self._version}")
            return
        if card_signature(self._models_dir) != signature:
            return  # replaced while we read it: take the newer one next time
        self._settled = signature
        if card.version == self._version and reference_fingerprint(card) == self._reference:
            return
        try:
            detectors = build_detectors(card, self._calibration)
        except (NoReference, ValueError, KeyError, TypeError) as problem:
            log.error("can't watch the new model version %s: %s; still watching model %s", card.version,
                      problem, self._version)
            return
        self._version, self._reference = card.version, reference_fingerprint(card)
        self._worker.offer_version(card, detectors)

    def _report(self, problem: str) -> None:
        if problem != self._reported:
            self._reported = problem
            log.warning("%s", problem)
