"""What the benchmarks share: a prepared slice of real ML-100K, a runner that keeps stdout for the JSON, where
results are kept, and what the full-protocol request benchmarks reuse (the users they forget, the Original's
recipe, test AUC of a saved model)."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.bench import PRESETS
from e2urec.checkpoint import load_model
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.store import load_prepared
from e2urec.engine import TrainConfig
from e2urec.evaluation import utility_metrics
from e2urec.model.scoring import per_sample_p_yes, prompt_set


def recent_samples(last_n: int = 2000) -> pd.DataFrame:
    """The samples table of the last `last_n` ML-100K samples (default protocol otherwise)."""
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig(dataset="ml-100k", last_n=last_n), Path(tmp) / "data")
        return load_prepared(Path(tmp) / "data")[0]


RESULTS = Path(__file__).parent / "results"


def pick_users(samples: pd.DataFrame, n: int) -> list:
    """`n` train users spread over the quantiles of their training prompt counts (small to large)."""
    counts = samples.loc[samples["split"] == "train", "user_id"].value_counts().sort_values(kind="stable")
    positions = np.unique(np.linspace(0, len(counts) - 1, n + 2).round().astype(int)[1:-1])
    return list(counts.index[positions])


def full_test_auc(model: Path, rows: pd.DataFrame) -> float:
    backbone, _ = load_model(model)
    return utility_metrics(rows["label"].to_numpy(), per_sample_p_yes(backbone, prompt_set(backbone, rows), 64,
                                                                      progress=False))["auc"]


def demo_recipe(seed: int) -> TrainConfig:
    """The demo preset's training recipe at `seed`: every Original and Retrain of the request benchmarks."""
    return TrainConfig(**{**PRESETS["demo"].train, "seed": seed})


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
