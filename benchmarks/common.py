"""What the benchmarks and the studies in studies/ share: a prepared slice of real ML-100K, a runner that keeps
stdout for the JSON, where results are kept and how every written report records the command and commit that
produced it, what the full-protocol request benchmarks reuse (the users they forget, the Original's recipe, test
AUC of a saved model), and the scores of a model in a bench seed that the E2URec option runs compare."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from e2urec.bench import PRESETS, closure, provenance
from e2urec.checkpoint import load_model
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import TrainConfig, make_accelerator
from e2urec.evaluation import EvalConfig, distances, mia_features, utility_metrics
from e2urec.io import write_json_atomic
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.unlearning.e2urec import E2URec


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


@cache
def made_by() -> dict:
    """How this script was started (`python` and its arguments, shell-quoted) and the git commit of the checkout
    with its dirty flag (e2urec.bench.provenance): read once, when the first report asks, so a run reports the
    code it started with, not edits made while it ran."""
    found = provenance("python " + shlex.join(sys.argv))
    return {key: found[key] for key in ("command", "commit", "dirty")}


def stamp(report: dict) -> dict:
    """`report` with `command`, `commit` and `dirty` added (a command the script wrote itself, e.g. with its
    defaults spelled out, is kept), so that every kept JSON says what produced it."""
    for key, value in made_by().items():
        report.setdefault(key, value)
    return report


def save(path: Path, report: dict) -> dict:
    """Write `report`, stamped, to `path` (temp file, then rename); return it."""
    write_json_atomic(path, stamp(report))
    return report


def keep(report: dict, name: str, suffix: str = "") -> dict:
    """Write `report`, stamped, to benchmarks/results/<name>-<date><suffix>.json (temp file, then rename)."""
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / f"{name}-{report['date']}{suffix}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp(report), indent=2) + "\n")
    tmp.replace(target)
    return report


def run(measure: Callable[[], dict]) -> None:
    """Run a benchmark with every log line sent to stderr, then print its JSON report, stamped, alone on stdout."""
    made_by()  # the commit as the run starts
    with contextlib.redirect_stdout(sys.stderr):
        report = measure()
    print(json.dumps(stamp(report), indent=2))


def scores(model: Path, seed_dir: Path, cfg: EvalConfig, original: dict | None = None,
           non_members: bool = False) -> dict:
    """A model of one bench seed on its valid rows (what a validation-only choice may read), and on its test and
    forget rows and against the seed's Retrain (reported only); with `original` (this function's result for the
    Original), the gap closure on forget AUC. With `non_members`, also the model's loss and AUC on E2URec's
    non-member pool, the level its rules aim the forget set at."""
    samples, manifest = load_prepared(seed_dir / "data")
    backbone, _ = load_model(model)
    retrain, _ = load_model(seed_dir / "retrain")
    accelerator = make_accelerator()

    def p_of(who: Backbone, rows: pd.DataFrame) -> np.ndarray:
        return per_sample_p_yes(who, prompt_set(who, rows), cfg.batch_size, accelerator)

    def loss(rows: pd.DataFrame, p: np.ndarray) -> float:
        return float(mia_features(rows["label"].to_numpy(), p)[:, 0].mean())

    valid, test, forget = (rows_for(samples, s) for s in ("valid", "test", "forget"))
    p_valid, p_test, p_forget = p_of(backbone, valid), p_of(backbone, test), p_of(backbone, forget)
    out = {
        "valid_auc": utility_metrics(valid["label"].to_numpy(), p_valid)["auc"],
        "forget_loss": loss(forget, p_forget),
        "test_auc": utility_metrics(test["label"].to_numpy(), p_test)["auc"],
        "forget_auc": utility_metrics(forget["label"].to_numpy(), p_forget)["auc"],
        "jsd_to_retrain": distances(backbone, retrain, prompt_set(backbone, forget), cfg, accelerator)["jsd"],
    }
    if non_members:
        job = SimpleNamespace(samples=samples, data=seed_dir / "data", manifest=manifest)
        pool, out["non_members"] = E2URec(E2URec.Config()).non_member_rows(job)
        p_pool = p_of(backbone, pool)
        out["non_member_loss"] = loss(pool, p_pool)
        out["non_member_auc"] = utility_metrics(pool["label"].to_numpy(), p_pool)["auc"]
    if original is not None:
        retrain_auc = utility_metrics(forget["label"].to_numpy(), p_of(retrain, forget))["auc"]
        out["closure_auc"] = closure(original["forget_auc"], out["forget_auc"], retrain_auc)
    return out
