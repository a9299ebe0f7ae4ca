"""How far two trainings of one recipe are apart, at the full protocol: the floor under any forgetting audit and
under the request benchmark's utility goal.

After `benchmarks/deletion_requests.py --out runs/requests-full` (which leaves the data, the Original, the run after its
10 one-user requests and one Retrain), this trains a second Retrain on the same retained data with another seed
(`--reseed`, the same demo recipe) and a second Original on all the data with that seed, unless they are there
(~30 min each at the full protocol on one core), then, on each request's forget prompts (the 10 users
`deletion_requests.py` picked, in its order) and the audit's non-members of those requests:
- per model (Original, second Original, Retrain, second Retrain, final version): mean forget loss and the
  audit's MIA AUC;
- the *oracle* contrast an auditor holding a Retrain could use, the forgetting effect from the Original to the
  Retrain (forget prompts' loss change minus the non-members', paired per row; its z), beside the same effect
  from the second Retrain to the Retrain: seed noise alone. The oracle *beats the noise* on a user when its
  size exceeds the noise's by 1.645 SE of the difference; where it does not, no statistic of the two models on
  that user's prompts can tell memorisation from training noise;
- the audit's verdict on the second Retrain judged against the Original (as deletion_requests.py judges the Retrain);
- test AUC on all test rows for the five models, and valid AUC on the audit's valid non-members.
Prints JSON and writes benchmarks/results/retrain-noise-<date>.json; no user id is written. Usage:
python benchmarks/studies/retrain_noise.py [--out runs/requests-full] [--reseed 1000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from e2urec.bench import machine
from e2urec.checkpoint import load_model
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.ops import audit
from e2urec.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py, shared with the benchmarks
from common import demo_recipe, full_test_auc, keep, pick_users, run  # noqa: E402


def measure(out: Path, reseed: int, requests: int) -> dict:
    root = out / "run"
    paths = {"original": out / "original", "original_reseed": out / "original-reseed", "retrain": out / "retrain",
             "retrain_reseed": out / "retrain-reseed", "final_version": root / "current" / "model"}
    seconds = {}
    for name, data in (("retrain_reseed", root / "current" / "data"), ("original_reseed", out / "data")):
        if not paths[name].is_dir():
            started = time.perf_counter()
            train(data, "original", "tiny", paths[name], demo_recipe(reseed))
            seconds[name] = round(time.perf_counter() - started, 1)
    first, _ = load_prepared(out / "data")
    final, _ = load_prepared(root / "current" / "data")
    train_rows = first[first["split"] == "train"]
    forgotten = [train_rows[train_rows["user_id"] == user] for user in pick_users(first, requests)]
    if any(set(rows["user_id"]) & set(final["user_id"]) for rows in forgotten):
        raise SystemExit(f"{root}: its requests were not the users deletion_requests.py picks; rerun that script")
    cfg = audit.AuditConfig.from_run(json.loads((root / "run.json").read_text()))
    models = {name: load_model(path)[0] for name, path in paths.items()}
    users = []
    for i, rows_f in enumerate(forgotten):
        non_members = audit.non_member_rows(final, set(rows_f["user_id"]), cfg)
        labels = rows_f["label"].to_numpy(), non_members["label"].to_numpy()
        data = audit.prompts(models["original"], rows_f, non_members)
        scores = {name: audit.score(model, rows_f, non_members, data=data) for name, model in models.items()}
        sides = {name: audit.side(s, *labels) for name, s in scores.items()}
        oracle = audit.forgetting_effect(scores["original"], scores["retrain"])
        noise = audit.forgetting_effect(scores["retrain_reseed"], scores["retrain"])
        verdict = audit.judge(scores["original"], scores["retrain_reseed"], *labels, cfg)
        users.append({
            "request": i + 1, "forget_prompts": len(rows_f),
            "forget_loss": {k: round(v["forget_loss"], 4) for k, v in sides.items()},
            "mia_auc": {k: round(v["mia_auc"], 4) if v["mia_auc"] is not None else None for k, v in sides.items()},
            "valid_auc": {k: round(v["valid_auc"], 4) for k, v in sides.items()},
            "effect_original_to_retrain": oracle, "effect_reseed_to_retrain": noise,
            "oracle_beats_noise": bool(abs(oracle["effect"]) - abs(noise["effect"])
                                       > audit.Z_ONE_SIDED * math.hypot(oracle["se"], noise["se"])),
            "audit_reseed_vs_original": verdict["verdict"], "audit_reseed_reason": verdict.get("reason"),
        })
        print(users[-1])
    test = rows_for(final, "test")
    aucs = {name: round(full_test_auc(path, test), 4) for name, path in paths.items()}
    return {
        "benchmark": "retrain_noise", "date": datetime.date.today().isoformat(), "machine": machine(),
        "reseed": reseed, "reseed_seconds": seconds, "test_n_full": int(len(test)), "test_auc_full": aucs,
        "retrain_vs_reseed_test_auc": round(aucs["retrain"] - aucs["retrain_reseed"], 4),
        "original_vs_reseed_test_auc": round(aucs["original"] - aucs["original_reseed"], 4),
        "users": users,
        "oracle_beats_noise": sum(u["oracle_beats_noise"] for u in users),
        "mean_abs_effect": {"original_to_retrain": float(np.mean([abs(u["effect_original_to_retrain"]["effect"])
                                                                  for u in users])),
                            "reseed_to_retrain": float(np.mean([abs(u["effect_reseed_to_retrain"]["effect"])
                                                                for u in users]))},
        "reseed_verdicts": {v: sum(u["audit_reseed_vs_original"] == v for u in users) for v in audit.VERDICTS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/requests-full"))
    parser.add_argument("--reseed", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()

    def go() -> dict:
        report = measure(args.out, args.reseed, args.requests)
        report["command"] = f"python benchmarks/studies/retrain_noise.py --out {args.out} --reseed {args.reseed}"
        return keep(report, "retrain-noise")

    run(go)


if __name__ == "__main__":
    main()
