"""The quick profile of the fault suite, run by `make test`; `make faults` runs the full one.

Each scenario runs the whole pipeline, injects its faults mid-stream and asserts 0 lost, 0
duplicated and every other check (see checks.py). The table is printed in pytest's summary.
"""

from __future__ import annotations

import os
import random

import pytest

from scenarios import PROFILES
from suite import Suite, machine, table

pytestmark = pytest.mark.broker

EVENTS, RATE, QUICK = PROFILES["quick"]
SEED = int(os.environ.get("FAULTS_SEED", random.randrange(1 << 30)))


@pytest.fixture(scope="module")
def suite(tmp_path_factory, fault_tables):
    suite = Suite(tmp_path_factory.mktemp("faults"), EVENTS, RATE, SEED, log=lambda line: None)
    yield suite
    suite.close()
    if suite.results:
        fault_tables.append(f"quick profile: {EVENTS} events at {RATE}/s, seed {SEED} (FAULTS_SEED={SEED} repeats "
                            f"the fault moments)\n{table(suite.results)}\n{machine()}")


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("scenario", "repeats"), QUICK, ids=[scenario.name for scenario, _ in QUICK])
def test_scenario_loses_and_duplicates_nothing(suite, scenario, repeats):
    result = suite.run(scenario, repeats)
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.valid, f"seed {SEED}, logs in {suite.workdir}:\n{table([result])}"
