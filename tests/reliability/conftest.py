"""The reliability suite prints the figures its tests measured after the run (no ``-s``
needed) and writes them to ``$TMPDIR/hookyard-reliability-figures.json``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from reliability_kit import FIGURES

FIGURES_FILE = Path(tempfile.gettempdir()) / "hookyard-reliability-figures.json"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("hookyard reliability figures")
    for name, values in FIGURES.items():
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        terminalreporter.write_line(f"{name}: {shown}")
    FIGURES_FILE.write_text(json.dumps(FIGURES, indent=2, default=str) + "\n")
    terminalreporter.write_line(f"(also in {FIGURES_FILE})")
