"""Figures recorded by the reliability tests, printed at the end of the run (see conftest.py).

A test appends one line per measurement to `FIGURES`, naming the backend and the sizes, so the
counts behind each guarantee show in the output of any pytest run (quiet or not).
"""

from __future__ import annotations

FIGURES: list[str] = []
