"""Which non-member pool gives E2URec the level Retrain reaches? (For study: reads the bench's Retrain.)

E2URec calibrates its teacher and stops its student when the forget set's misfit (answer loss, or 1 − AUC)
under the model reaches that of a non-member pool under the Original. A pool is right when the Original's misfit
on it equals Retrain's misfit on the forget set. On each seed of a bench folder this scores the Original on every
candidate pool, Retrain and the Original on the forget set, and reports each pool's implied gap closure:
(Original's forget misfit − pool's) / (Original's forget misfit − Retrain's), 1 = the pool aims exactly at
Retrain, > 1 = it aims past it (over-forgetting), < 1 = short of it. Candidates: held-out users' training-period
samples (prepare's holdout), the forgotten users' own valid samples (a later period), unseen users' valid samples.
(The 2026-11-27 JSONs also hold `offset_*` and `closure_*_history`: a difficulty offset, removed with the
`difficulty` option after 0.1.0.)
Usage: python benchmarks/studies/nonmember_pools.py --bench runs/cpu --seeds 0 1 2
Prints JSON (also BENCH/nonmember-pools.json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.bench import machine
from e2urec.checkpoint import load_model
from e2urec.data.roles import prompts_seen_by_original, rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import make_accelerator
from e2urec.model.scoring import prompt_set
from e2urec.unlearning.e2urec import non_member_pools
from e2urec.unlearning.e2urec_rules import answer_losses, misfit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py, shared with the benchmarks
from common import run, save  # noqa: E402

LEVELS = ("loss", "auc")


def levels(backbone, model, rows: pd.DataFrame, accelerator, prompts: list[str] | None = None) -> dict:
    data = prompt_set(backbone, rows, None, prompts)
    _, p_yes = answer_losses(backbone, model, data, accelerator)
    yes = rows["label"].to_numpy() == 1
    return {"samples": len(rows), "loss": misfit("loss", p_yes, yes), "auc_misfit": misfit("auc", p_yes, yes)}


def seed_report(seed_dir: Path) -> dict:
    accelerator = make_accelerator()
    samples, _ = load_prepared(seed_dir / "data")
    original, _ = load_model(seed_dir / "original")
    retrain, _ = load_model(seed_dir / "retrain")
    forget = rows_for(samples, "forget")
    out = {"original_forget": levels(original, original.model, forget, accelerator, prompts_seen_by_original(forget)),
           "retrain_forget": levels(retrain, retrain.model, forget, accelerator)}
    for name, rows in non_member_pools(samples).items():
        if len(rows) == 0:
            continue
        pool = levels(original, original.model, rows, accelerator)
        for level, key in (("loss", "loss"), ("auc", "auc_misfit")):
            gap = out["retrain_forget"][key] - out["original_forget"][key]
            pool[f"closure_{level}"] = (pool[key] - out["original_forget"][key]) / gap if gap else None
        out[name] = pool
    return out


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="a bench folder with seed-N/{data,original,retrain}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    seeds = {str(s): seed_report(args.bench / f"seed-{s}") for s in args.seeds}
    summary = {}
    for name in non_member_pools(load_prepared(args.bench / f"seed-{args.seeds[0]}" / "data")[0]):
        for key in (f"closure_{level}" for level in LEVELS):
            values = [r[name][key] for r in seeds.values()
                      if name in r and r[name][key] is not None and not np.isnan(r[name][key])]
            if values:
                std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
                summary[f"{name} {key}"] = {"mean": float(np.mean(values)), "std": std, "per_seed": values}
    result = {"bench": str(args.bench), "machine": machine(), "seeds": seeds, "summary": summary}
    return save(args.bench / "nonmember-pools.json", result)


if __name__ == "__main__":
    run(main)
