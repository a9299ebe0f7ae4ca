"""Validation-only tuning of E2URec on a finished bench: which α, β, lr, epochs (steps) and augmented-model lr
forget best without hurting utility, chosen the way a deployment must choose it: without Retrain or test data.

Criterion: among configurations whose valid AUC is at least the Original's minus 0.01, the one whose forget set
looks least like training data to a membership attack trained on retained (members) vs valid (non-members)
samples, i.e. the lowest forget-set MIA AUC. Test AUC, forget AUC and JSD to the bench's Retrain are reported
for every configuration, but only for information; the chosen configuration then runs on the other seeds.
Prints JSON (also written to BENCH/sweep.json). Usage:
python benchmarks/e2urec_sweep.py --bench runs/cpu [--tune-seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import run
from e2urec.bench import PRESETS, machine
from e2urec.checkpoint import load_model
from e2urec.data.store import load_prepared
from e2urec.engine import make_accelerator
from e2urec.evaluation import utility_metrics
from e2urec.io import read_json, write_json_atomic
from e2urec.training import EvalConfig, distances, membership_auc, per_sample_p_yes, prompt_set, rows_for
from e2urec.unlearning.run import unlearn

# One factor at a time around the reference, then the factors that help together.
GRID = {
    "reference": {},
    "alpha=5": {"alpha": 5.0},
    "beta=0.8": {"beta": 0.8},
    "lr=5e-3": {"lr": 5e-3},
    "epochs=10": {"epochs": 10},
    "aug_lr=1e-3": {"aug_lr": 1e-3},
    "combined": {"aug_lr": 1e-3, "alpha": 5.0, "beta": 0.8, "epochs": 10},
    # The far end: the forgetting loss alone (no retain terms), pushed hard; shows what E2URec's teacher can do.
    "forget-only": {"aug_lr": 1e-3, "alpha": 5.0, "beta": 1.0, "epochs": 10},
}


def scores(model: Path, seed_dir: Path, cfg: EvalConfig) -> dict:
    """Validation metrics (used to choose) and test/Retrain metrics (reported only)."""
    samples, _ = load_prepared(seed_dir / "data")
    backbone, _ = load_model(model)
    accelerator = make_accelerator()

    def p_of(split: str):
        rows = rows_for(samples, split)
        return rows, per_sample_p_yes(backbone, prompt_set(backbone, rows), cfg.batch_size, accelerator)

    (valid, p_valid), (test, p_test), (forget, p_forget) = p_of("valid"), p_of("test"), p_of("forget")
    retrain, _ = load_model(seed_dir / "retrain")
    return {
        "valid_auc": utility_metrics(valid["label"].to_numpy(), p_valid)["auc"],
        "forget_mia_valid": membership_auc(backbone, samples, forget, p_forget, cfg, accelerator, "valid"),
        "test_auc": utility_metrics(test["label"].to_numpy(), p_test)["auc"],
        "forget_auc": utility_metrics(forget["label"].to_numpy(), p_forget)["auc"],
        "jsd_to_retrain": distances(backbone, retrain, prompt_set(backbone, forget), cfg, accelerator)["jsd"],
    }


def config_run(seed_dir: Path, name: str, options: dict, seed: int) -> Path:
    out = seed_dir / "sweep" / name
    if not (out / "meta.json").is_file():
        unlearn("e2urec", seed_dir / "original", seed_dir / "data", out, {**options, "seed": seed}, overwrite=True)
    return out


def measure(bench: Path, tune_seed: int) -> dict:
    config = read_json(bench / "results.json")["config"]
    base = PRESETS[config["preset"]].method_options.get("e2urec", {}) if config["preset"] in PRESETS else {}
    cfg = EvalConfig(mia_samples=config["mia_samples"], seed=tune_seed)
    tune_dir = bench / f"seed-{tune_seed}"
    original = scores(tune_dir / "original", tune_dir, cfg)
    rows = []
    for name, options in GRID.items():
        model = config_run(tune_dir, name, {**base, **options}, tune_seed)
        rows.append({"config": name, "options": {**base, **options}, **scores(model, tune_dir, cfg),
                     "unlearn_seconds": read_json(model / "meta.json")["unlearn_seconds"]})
        print(rows[-1])
    eligible = [r for r in rows if r["valid_auc"] >= original["valid_auc"] - 0.01]
    chosen = min(eligible, key=lambda r: r["forget_mia_valid"]) if eligible else None
    report = {"benchmark": "e2urec_sweep", "machine": machine(), "bench": str(bench), "tune_seed": tune_seed,
              "criterion": "valid AUC >= Original - 0.01, then lowest forget MIA AUC (attack: retain vs valid)",
              "original": original, "configs": rows, "chosen": chosen and chosen["config"]}
    if chosen:
        per_seed = {}
        for seed in config["seeds"]:
            seed_dir = bench / f"seed-{seed}"
            model = config_run(seed_dir, chosen["config"], chosen["options"], seed)
            seed_cfg = EvalConfig(mia_samples=config["mia_samples"], seed=seed)
            per_seed[seed] = {who: scores(path, seed_dir, seed_cfg) for who, path in
                              (("original", seed_dir / "original"), ("retrain", seed_dir / "retrain"),
                               ("chosen", model))}
        report["chosen_over_seeds"] = {
            who: {key: f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}"
                  for key in per_seed[config["seeds"][0]][who]
                  for v in [[per_seed[s][who][key] for s in per_seed]]}
            for who in ("original", "retrain", "chosen")}
    write_json_atomic(bench / "sweep.json", report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--tune-seed", type=int, default=0)
    args = parser.parse_args()
    run(lambda: measure(args.bench, args.tune_seed))


if __name__ == "__main__":
    main()
