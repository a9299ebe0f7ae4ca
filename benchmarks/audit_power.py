"""Can the forgetting audit tell the Original from Retrain one forgotten user at a time? From a bench folder's saved
predictions (no model is run): for every forgotten user with at least `audit_min_prompts` forget prompts, the
audit's membership statistic (label-stratified loss-threshold AUC against a seeded sample of `audit_samples` test
predictions, the threshold 0.5 + tolerance + 1.645·SE) for the Original and for Retrain, and the forgetting effect
of Retrain against the Original (forget prompts' loss rise minus the non-members' rise, its SE and z). The
utility part of the verdict is left out here (it needs valid predictions). Usage:
python benchmarks/audit_power.py --bench runs/cpu --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from common import run
from e2urec.data.store import load_prepared
from e2urec.evaluation import mia_features
from e2urec.ops.audit import Z_ONE_SIDED, AuditConfig, Scores, forgetting_effect, label_stratified_auc


def losses(frame: pd.DataFrame) -> np.ndarray:
    return mia_features(frame["label"].to_numpy(), frame["p_yes"].to_numpy())[:, 0]


def per_user(seed_dir: Path, cfg: AuditConfig) -> list[dict]:
    samples, _ = load_prepared(seed_dir / "data")
    users = samples.set_index("sample_id")["user_id"]

    def predictions(row: str, split: str) -> pd.DataFrame:
        return pd.read_parquet(seed_dir / "eval" / f"{row}-{split}" / "predictions.parquet")

    forget = {row: predictions(row, "forget") for row in ("original", "retrain")}
    test = {row: predictions(row, "test") for row in ("original", "retrain")}
    picked = np.sort(np.random.default_rng(cfg.audit_seed).permutation(len(test["original"]))[:cfg.audit_samples])
    non = {row: frame.iloc[picked] for row, frame in test.items()}
    n_label = non["original"]["label"].to_numpy()
    owner = users.loc[forget["original"]["sample_id"]].to_numpy()
    found = []
    for user in np.unique(owner):
        mine = owner == user
        if mine.sum() < cfg.audit_min_prompts:
            continue
        f_label = forget["original"]["label"].to_numpy()[mine]
        scores = {row: Scores(losses(forget[row])[mine], losses(non[row]), None, 0) for row in forget}
        stats = {row: label_stratified_auc(s.forget_loss, f_label, s.non_member_loss, n_label)
                 for row, s in scores.items()}
        effect = forgetting_effect(scores["original"], scores["retrain"])
        threshold = {row: 0.5 + cfg.audit_tolerance + Z_ONE_SIDED * se for row, (_, se, _) in stats.items()}
        found.append({"prompts": int(mine.sum()),
                      "original_mia_auc": round(stats["original"][0], 3),
                      "retrain_mia_auc": round(stats["retrain"][0], 3),
                      "threshold": round(threshold["retrain"], 3),
                      "original_over_threshold": bool(stats["original"][0] > threshold["original"]),
                      "retrain_over_threshold": bool(stats["retrain"][0] > threshold["retrain"]),
                      "retrain_effect": round(effect["effect"], 4), "retrain_effect_z": round(effect["z"], 2)})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    def go() -> dict:
        cfg = AuditConfig()
        users = [u for seed in args.seeds for u in per_user(args.bench / f"seed-{seed}", cfg)]
        return {"benchmark": "audit_power", "bench": str(args.bench), "seeds": args.seeds, "users": users,
                "summary": {"users": len(users),
                            "original_over_threshold": sum(u["original_over_threshold"] for u in users),
                            "retrain_over_threshold": sum(u["retrain_over_threshold"] for u in users),
                            "retrain_effect_positive": sum(u["retrain_effect"] > 0 for u in users),
                            "retrain_effect_z_over_1.645": sum(u["retrain_effect_z"] > Z_ONE_SIDED for u in users),
                            "told_apart_without_utility": sum(not u["retrain_over_threshold"]
                                                              and u["retrain_effect"] > 0 for u in users)},
                "command": f"python benchmarks/audit_power.py --bench {args.bench} --seeds "
                           f"{' '.join(map(str, args.seeds))}"}

    run(go)


if __name__ == "__main__":
    main()
