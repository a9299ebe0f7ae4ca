"""What the benchmarks share: a prepared slice of real ML-100K, and a runner that keeps stdout for the JSON."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.store import load_prepared


def recent_samples(last_n: int = 2000) -> pd.DataFrame:
    """The samples table of the last `last_n` ML-100K samples (default protocol otherwise)."""
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig(dataset="ml-100k", last_n=last_n), Path(tmp) / "data")
        return load_prepared(Path(tmp) / "data")[0]


RESULTS = Path(__file__).parent / "results"


def keep(report: dict, name: str, suffix: str = "") -> dict:
    """Write `report` to benchmarks/results/<name>-<date><suffix>.json (temp file, then rename); return it."""
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"{name}-{report['date']}{suffix}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(target)
    return report


def run(measure: Callable[[], dict]) -> None:
    """Run a benchmark with every log line sent to stderr, then print its JSON report alone on stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        report = measure()
    print(json.dumps(report, indent=2))
