"""Deletion requests one after another on a demo-sized run: does utility hold, and does each request cost the same?

One run (real ML-100K, the demo slice, tiny backbone): 10 requests, each forgetting 1% of the train users
(at least one) with `e2urec forget`'s code path. After each request: the version's test AUC, the Original's test
AUC on the same (shrinking) test rows, a Retrain on the cumulative retained data (the Original's recipe), JSD to
that Retrain on every training prompt forgotten so far (and the Original's JSD there, the starting point), the
request's seconds and its audit verdict (exact: ended by the escalation's Retrain; attempts; the parts that failed;
the valid-AUC drift from the last exact model). Prints JSON. Usage:
python benchmarks/sequential.py [--out runs/sequential] [--requests 10] [--fraction 0.01] [--last-n 1300]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from common import run
from e2urec.bench import PRESETS, machine
from e2urec.checkpoint import load_model
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import TrainConfig, make_accelerator
from e2urec.evaluation import EvalConfig, distances, utility_metrics
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.ops.forget import forget
from e2urec.ops.request import read_request
from e2urec.ops.run import init_run
from e2urec.training import train


def test_auc(model: Path, samples: pd.DataFrame) -> float:
    backbone, _ = load_model(model)
    rows = rows_for(samples, "test")
    return utility_metrics(rows["label"].to_numpy(), per_sample_p_yes(backbone, prompt_set(backbone, rows), 64))["auc"]


def jsd_to(model: Path, reference: Path, forgotten: pd.DataFrame) -> float:
    backbone, _ = load_model(model)
    ref, _ = load_model(reference)
    return distances(backbone, ref, prompt_set(backbone, forgotten), EvalConfig(), make_accelerator())["jsd"]


def measure(out: Path, requests: int, fraction: float, last_n: int, seed: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    preset = PRESETS["demo"]
    recipe = TrainConfig(**{**preset.train, "seed": seed})
    prepare(PrepareConfig("ml-100k", last_n=last_n, seed=seed), out / "data")
    train(out / "data", "original", "tiny", out / "original", recipe)
    options = {**preset.method_options.get("e2urec", {}), "seed": seed}
    root = init_run(out / "run", out / "data", out / "original", options)
    samples, _ = load_prepared(root / "current" / "data")
    users = np.sort(samples.loc[samples["split"] == "train", "user_id"].unique())
    per_request = max(1, round(fraction * len(users)))
    order = np.random.default_rng([seed, 31]).permutation(users)[: per_request * requests]
    forgotten = []
    rows = []
    for i in range(requests):
        chosen = order[i * per_request:(i + 1) * per_request]
        samples, _ = load_prepared(root / "current" / "data")
        forgotten.append(samples[(samples["split"] == "train") & samples["user_id"].isin(chosen)])
        record = forget(root, read_request(users=[str(u) for u in chosen]))
        samples, _ = load_prepared(root / "current" / "data")
        retrain = out / "retrain"
        train(root / "current" / "data", "original", "tiny", retrain, recipe, overwrite=True)
        gone = pd.concat(forgotten)
        current = root / "current" / "model"
        rows.append({
            "request": i + 1, "users": len(chosen), "forget_prompts": record["row_counts"]["forget_prompts"],
            "seconds": record["seconds"], "unlearn_seconds": record["metrics"]["unlearn_seconds"],
            "auc": round(record["metrics"]["auc"], 4),
            "verdict": record["metrics"]["audit"]["verdict"], "exact": record["metrics"]["audit"].get("exact", False),
            "attempts": [a["method"] for a in record["metrics"]["audit"].get("attempts", [])],
            "failed_on": record["metrics"]["audit"].get("failed_on"),
            "drift": {k: (round(v, 4) if isinstance(v, float) else v)
                      for k, v in (record["metrics"]["audit"].get("drift") or {}).items()},
            "original_auc": round(test_auc(out / "original", samples), 4),
            "retrain_auc": round(test_auc(retrain, samples), 4),
            "forgotten_prompts_total": len(gone),
            "jsd_to_retrain": round(jsd_to(current, retrain, gone), 4),
            "original_jsd_to_retrain": round(jsd_to(out / "original", retrain, gone), 4),
        })
        print(rows[-1])
    seconds = np.array([r["seconds"] for r in rows])
    # Users differ in activity, so requests differ in size: fit seconds = a + b·forget_prompts + c·request to
    # see whether later requests cost more at equal size (c ≈ 0 means flat).
    design = np.c_[np.ones(len(rows)), [r["forget_prompts"] for r in rows], [r["request"] for r in rows]]
    a, b, c = np.linalg.lstsq(design, seconds, rcond=None)[0]
    last = rows[-1]
    return {
        "benchmark": "sequential", "machine": machine(), "seed": seed, "last_n": last_n,
        "requests": rows,
        "auc_drop_after_all": round(last["original_auc"] - last["auc"], 4),
        "auc_within_0.01_of_original": bool(last["original_auc"] - last["auc"] <= 0.01),
        "seconds_fit": {"fixed": round(float(a), 2), "per_forget_prompt": round(float(b), 3),
                        "per_earlier_request": round(float(c), 2)},
        "seconds_mean": round(float(seconds.mean()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sequential"))
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--last-n", type=int, default=1300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(lambda: measure(args.out, args.requests, args.fraction, args.last_n, args.seed))


if __name__ == "__main__":
    main()
