"""Writing a bench run's results: one JSON file per run under the output directory."""

from __future__ import annotations

import datetime
import json
import os
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
