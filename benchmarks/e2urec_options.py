"""E2URec under given options on every seed of an existing bench folder: where the forget set ends (gap
closure against the bench's Original and Retrain), what utility does (test AUC, valid AUC), JSD to Retrain,
steps run and the stopping rule's checks. For studying the method, not for choosing defaults (that reads
Retrain and test data; `studies/e2urec_sweep.py` chooses on validation data only). Usage:
python benchmarks/e2urec_options.py --bench runs/demo --name forget-only --options '{"forget_only": 1.0}'
Writes BENCH/seed-S/options/NAME/ (the model) and prints JSON (also BENCH/options-NAME.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common import run, save, scores
from e2urec.bench import PRESETS, machine
from e2urec.evaluation import EvalConfig
from e2urec.io import read_json
from e2urec.unlearning.runner import unlearn


def measure(bench: Path, preset: str, name: str, options: dict, seeds: list[int]) -> dict:
    rows = []
    for seed in seeds:
        seed_dir = bench / f"seed-{seed}"
        cfg = EvalConfig(mia_samples=PRESETS[preset].mia_samples, seed=seed)
        original = scores(seed_dir / "original", seed_dir, cfg)
        out = seed_dir / "options" / name
        if not (out / "meta.json").is_file():
            unlearn("e2urec", seed_dir / "original", seed_dir / "data", out, {**options, "seed": seed}, overwrite=True)
        meta = read_json(out / "meta.json")
        result = scores(out, seed_dir, cfg, original)
        schedule = meta.get("schedule", {})
        rows.append({"seed": seed, **{k: result[k] for k in ("closure_auc", "forget_auc", "test_auc", "valid_auc",
                                                             "jsd_to_retrain")},
                     "original": {k: original[k] for k in ("forget_auc", "test_auc", "valid_auc", "jsd_to_retrain")},
                     "steps": meta["steps"], "stopped_at": schedule.get("stopped_at"),
                     "unlearn_seconds": meta["unlearn_seconds"], "checks": schedule.get("checks", [])})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "checks"}))

    def mean_std(values: list[float]) -> list[float]:
        return [float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0]

    report = {"benchmark": "e2urec_options", "machine": machine(), "bench": str(bench), "name": name,
              "options": options, "seeds": rows,
              "closure_auc": mean_std([r["closure_auc"] for r in rows]),
              "test_auc_change": mean_std([r["test_auc"] - r["original"]["test_auc"] for r in rows]),
              "jsd_change": mean_std([r["jsd_to_retrain"] - r["original"]["jsd_to_retrain"] for r in rows])}
    return save(bench / f"options-{name}.json", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("runs/demo"))
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    parser.add_argument("--name", required=True)
    parser.add_argument("--options", type=json.loads, default={}, help="E2URec options as a JSON object")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    run(lambda: measure(args.bench, args.preset, args.name, args.options, seeds))


if __name__ == "__main__":
    main()
