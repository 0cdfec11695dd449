"""Prints the fault suite's table in pytest's summary: output written while tests run is captured."""

from __future__ import annotations

import pytest

_TABLES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def fault_tables(pytestconfig) -> list[str]:
    """Texts to print at the end of the run."""
    return pytestconfig.stash.setdefault(_TABLES, [])


def pytest_terminal_summary(terminalreporter, config):
    for text in config.stash.get(_TABLES, []):
        terminalreporter.write_sep("-", "fault injection")
        terminalreporter.write_line(text)
