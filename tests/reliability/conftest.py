"""The reliability tests' figures: whatever they appended to `figures.FIGURES` is printed in a
section of its own at the end of the run, even under `pytest -q`."""

from __future__ import annotations

import pytest
from figures import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for line in FIGURES:
        terminalreporter.line(line)
