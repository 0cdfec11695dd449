"""scripts/dead_letters.py against the real broker and the real model service: `list` shows dead letters
without taking them, `replay --grep` moves exactly the chosen ones back to their source queue, once,
without the rejection headers, and what was not chosen stays in the DLQ in its order."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from broker import drain, publish_raw, queue_depth
from mlmonitor.amqp import ORIGINAL_SIZE_HEADER
from mlmonitor.topology import FEATURES, REASON_HEADER, SOURCE_QUEUE_HEADER
from run_pipeline import ROOT
from service_harness import declare_topology, terminate, wait_for_consumers
from waiting import wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

DLQ = f"{FEATURES}.dlq"
TOO_SHORT = [json.dumps({"id": f"short-{index}", "body": [0.1, 0.2]}).encode() for index in range(3)]
NOT_JSON = [b"{not json", b"\xff not utf-8 either"]


def dead_letters(amqp_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "dead_letters.py"), *args, "--amqp-url", amqp_url],
                          capture_output=True, text=True, timeout=60, check=True)


@pytest.fixture
def refused_by_model(pipeline, amqp_url, trained_model) -> list[bytes]:
    """Features the real model refused (3 too short, 2 not JSON), interleaved; the model is stopped
    afterwards, so nothing takes replayed messages off `features`."""
    declare_topology(amqp_url)
    pipeline.start("model")
    wait_for_consumers(amqp_url, FEATURES)
    bodies = [TOO_SHORT[0], NOT_JSON[0], TOO_SHORT[1], NOT_JSON[1], TOO_SHORT[2]]
    publish_raw(amqp_url, FEATURES, bodies)
    wait_until(lambda: queue_depth(amqp_url, DLQ) == len(bodies), 30, message="5 features dead-lettered")
    assert terminate(pipeline, "model") == 0
    return bodies


def test_list_shows_the_first_dead_letters_and_leaves_them_in_place(amqp_url, refused_by_model):
    listing = dead_letters(amqp_url, "list", "--queue", DLQ, "--show", "2").stdout.splitlines()

    assert listing[0] == f"{DLQ}: 5"
    assert len(listing) == 3
    assert "reason: body: expected 10 features" in listing[1] and "from: features" in listing[1]
    assert "reason: message: Invalid JSON" in listing[2] and repr(NOT_JSON[0]) in listing[2]
    assert [body for body, _ in drain(amqp_url, DLQ)] == refused_by_model, "all still there, in their order"


def test_replay_moves_back_exactly_the_chosen_ones_once_and_keeps_the_rest(amqp_url, refused_by_model):
    dry_run = dead_letters(amqp_url, "replay", "--queue", DLQ, "--grep", "expected 10 features", "--dry-run")
    assert dry_run.stdout.splitlines()[-1] == f"{DLQ}: would replay 3 of 5 dead letters looked at"
    assert queue_depth(amqp_url, DLQ) == 5 and queue_depth(amqp_url, FEATURES) == 0

    replayed = dead_letters(amqp_url, "replay", "--queue", DLQ, "--grep", "expected 10 features")

    assert replayed.stdout.strip() == f"{DLQ}: replayed 3 of 5 dead letters looked at"
    back = drain(amqp_url, FEATURES)
    assert [body for body, _ in back] == TOO_SHORT, "each chosen one once, in its order"
    assert all(not {REASON_HEADER, SOURCE_QUEUE_HEADER} & set(headers) for _, headers in back)
    assert [body for body, _ in drain(amqp_url, DLQ)] == NOT_JSON, "the others stay, in their order"


def test_replay_stops_at_the_limit_and_never_replays_a_copy_cut_at_the_size_cap(amqp_url):
    declare_topology(amqp_url)
    cut = (b'{"id": "huge", "body": [0.1', {REASON_HEADER: "message of 5000000 bytes is over MAX_MESSAGE_BYTES",
                                           SOURCE_QUEUE_HEADER: FEATURES, ORIGINAL_SIZE_HEADER: 5_000_000})
    whole = [(f"whole-{index}".encode(), {REASON_HEADER: "a bug", SOURCE_QUEUE_HEADER: FEATURES, "x-mine": index})
             for index in range(3)]
    for body, headers in [cut, *whole]:
        publish_raw(amqp_url, DLQ, [body], headers=headers)

    replayed = dead_letters(amqp_url, "replay", "--queue", DLQ, "--limit", "2")

    assert replayed.stdout.strip() == (f"{DLQ}: replayed 2 of 3 dead letters looked at; 1 skipped: cut short at the "
                                       "size cap; the rest of the body was never kept")
    assert drain(amqp_url, FEATURES) == [(b"whole-0", {"x-mine": 0}), (b"whole-1", {"x-mine": 1})]
    assert [body for body, _ in drain(amqp_url, DLQ)] == [cut[0], b"whole-2"]
