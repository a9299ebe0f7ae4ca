"""Can the forgetting audit tell an untouched Original from a Retrain where the forgotten data is planted? From a
planted bench folder (`e2urec bench --preset planted-flip` or `planted-shilling`), requests of one planted unit
each: one flipped user (flip) or the fake users of one attack target (shilling). For each request the audit's own
code (`e2urec.ops.audit.score` and `judge`, what `e2urec forget` runs) judges two versions against the Original
as the version before: the untouched Original (nothing was done: it must not pass) and the bench's Retrain (never
trained on any planted row, so not on the request's: it should pass). Requests are drawn with a seed over every
unit of every seed with at least `audit_min_prompts` forget prompts. Usage:
python benchmarks/planted_audit.py --bench runs/planted-flip [more bench folders] --requests 10 --out X.json
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
import pandas as pd

from common import made_by, stamp
from e2urec.checkpoint import load_model
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.ops.audit import AuditConfig, judge, non_member_rows, prompts, score


def units(samples: pd.DataFrame, manifest: dict) -> list[pd.DataFrame]:
    """The forget rows of each request: per user, or per attack target's fakes on shilling data."""
    forget = rows_for(samples, "forget")
    counts = manifest.get("counts") or {}
    if counts.get("planted") == "shilling":
        fakes = samples[samples["user_id"].isin(forget["user_id"])]
        targets = counts.get("planted_target_items") or [counts["planted_target_item"]]
        group = fakes[fakes["item_id"].isin(targets)].groupby("user_id")["item_id"].first()  # the target it rated
        return [forget[forget["user_id"].isin(group.index[group == t])] for t in targets]
    return [forget[forget["user_id"] == user] for user in sorted(forget["user_id"].unique())]


def verdicts(seed_dir: Path, rows: pd.DataFrame, samples: pd.DataFrame, models: dict, cfg: AuditConfig) -> dict:
    non = non_member_rows(samples, set(rows["user_id"]), cfg)
    data = prompts(models["original"], rows, non)
    scores = {name: score(backbone, rows, non, data=data) for name, backbone in models.items()}
    labels, non_labels = rows["label"].to_numpy(), non["label"].to_numpy()
    out = {"forget_prompts": len(rows), "users": int(rows["user_id"].nunique())}
    for name in ("original", "retrain"):
        record = judge(scores["original"], scores[name], labels, non_labels, cfg)
        out[name] = {"verdict": record["verdict"], "mia_auc": record["after"]["mia_auc"],
                     "threshold": record["threshold"], "failed_on": record["failed_on"],
                     "effect": (record.get("forgetting_effect") or {}).get("effect"),
                     "valid_auc_drop": record["valid_auc_drop"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, nargs="+", required=True, help="bench folders of one planted preset")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    made_by()  # the commit as the run starts
    cfg = AuditConfig()
    configs = {bench: json.loads((bench / "results.json").read_text())["config"] for bench in args.bench}
    if len({(c["preset"], c.get("plant")) for c in configs.values()}) != 1:
        parser.error("--bench folders must come from one planted preset")
    seed_dirs = {seed: bench / f"seed-{seed}" for bench, c in configs.items() for seed in c["seeds"]}
    candidates = []
    for seed, seed_dir in sorted(seed_dirs.items()):
        samples, manifest = load_prepared(seed_dir / "data")
        candidates += [(seed, k) for k, rows in enumerate(units(samples, manifest))
                       if len(rows) >= cfg.audit_min_prompts]
    order = np.random.default_rng(args.seed).permutation(len(candidates))[: args.requests]
    chosen = sorted(candidates[i] for i in order)
    requests = []
    for seed in sorted({s for s, _ in chosen}):
        seed_dir = seed_dirs[seed]
        samples, manifest = load_prepared(seed_dir / "data")
        found = units(samples, manifest)
        models = {name: load_model(seed_dir / name)[0] for name in ("original", "retrain")}
        for s, k in chosen:
            if s == seed:
                requests.append({"seed": seed, "unit": k, **verdicts(seed_dir, found[k], samples, models, cfg)})
    told = sum(r["original"]["verdict"] != "pass" and r["retrain"]["verdict"] == "pass" for r in requests)
    report = {"benchmark": "planted_audit", "date": datetime.date.today().isoformat(),
              "command": f"python benchmarks/planted_audit.py --bench {' '.join(map(str, args.bench))} "
                         f"--requests {args.requests} "
                         f"--seed {args.seed} --out {args.out}",
              "bench_preset": next(iter(configs.values()))["preset"], "seeds": sorted(seed_dirs),
              "plant": next(iter(configs.values())).get("plant"), "audit": cfg.as_dict(),
              "eligible_units": len(candidates), "requests": requests,
              "summary": {"requests": len(requests),
                          "original_not_passed": sum(r["original"]["verdict"] != "pass" for r in requests),
                          "retrain_passed": sum(r["retrain"]["verdict"] == "pass" for r in requests),
                          "told_apart": told}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(stamp(report), indent=2) + "\n")
    print(json.dumps(report["summary"]))


if __name__ == "__main__":
    main()
