"""Writing a bench run's results: one JSON file per run under the output directory."""

from __future__ import annotations

import datetime
import json
import os
import statistics
from pathlib import Path
from typing import Any


def save(report: dict[str, Any], out_dir: Path, name: str, failure: str | None) -> Path:
    """Stamps the end of the run (time, load, failure) into report and writes it as name.json."""
    report["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    report["loadavg_at_end"] = os.getloadavg()
    report["failure"] = failure
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.json"
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nresults: {out}")
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing (or b is zero)."""
    return a / b if a is not None and b else None


def median(values: list[float | None]) -> float | None:
    """The median of the values present, or None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 1) -> str:
    """A number for a results table; "-" when missing."""
    return "-" if value is None else f"{value:.{digits}f}"
