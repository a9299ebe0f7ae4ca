"""What a deletion request costs at the full ML-100K protocol, with its forgetting audit, against one Retrain.

One run (real ML-100K, `--last-n` samples of the DESIGN §3 protocol, 100,000 = all of it; tiny backbone; the
Original trained with the demo recipe): `--requests` one-user requests in a row through `e2urec forget`'s code
path, users of different sizes (spread over the quantiles of training prompts per user), each audited and
escalated as a run does by default. Then one Retrain on the retained data (the Original's recipe), timed; the
audit's statistic for the Original and for that Retrain on each request's forget prompts (does the audit tell
them apart?); test AUC of the Original, the final version and the Retrain on the same full test rows.
Prints JSON and writes it to benchmarks/results/requests-<date>[-last-n-N].json. No user id is written. Usage:
python benchmarks/deletion_requests.py [--out runs/requests] [--last-n 100000] [--requests 10] [--test-samples 1000]
[--original-only | --reuse-original]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from common import demo_recipe, full_test_auc, keep, pick_users, run
from e2urec.bench import PRESETS, machine
from e2urec.checkpoint import load_model
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import TrainConfig
from e2urec.ops import audit
from e2urec.ops.forget import forget
from e2urec.ops.request import read_request
from e2urec.ops.run import init_run
from e2urec.training import train


def original_model(out: Path, last_n: int, seed: int, recipe: TrainConfig, reuse: bool) -> float:
    """Prepare the data and train the Original into `out` (seconds), or, with `reuse`, keep the ones an earlier
    run of the same settings left there (its recorded seconds): at the full protocol the Original takes ~25 min.
    retrain_noise.py's second Original (`original-reseed`) depends on the same data and a seed only: kept too."""
    stamp = out / "original-seconds.json"
    settings = json.loads(json.dumps({"last_n": last_n, "seed": seed, "recipe": asdict(recipe)}))
    if reuse and stamp.is_file() and json.loads(stamp.read_text())["settings"] == settings:
        for path in out.iterdir():
            if path.name not in ("data", "original", "original-reseed", stamp.name):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return json.loads(stamp.read_text())["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    prepare(PrepareConfig("ml-100k", last_n=last_n, seed=seed), out / "data")
    started = time.perf_counter()
    train(out / "data", "original", "tiny", out / "original", recipe)
    seconds = time.perf_counter() - started
    stamp.write_text(json.dumps({"settings": settings, "seconds": seconds}))
    return seconds


def measure(out: Path, last_n: int, requests: int, test_samples: int | None, seed: int,
            reuse_original: bool = False) -> dict:
    recipe = demo_recipe(seed)
    original_seconds = original_model(out, last_n, seed, recipe, reuse_original)
    settings = {"test_samples": test_samples}
    root = init_run(out / "run", out / "data", out / "original", {"seed": seed}, audit=settings,
                    key_file=out / "run.key")
    samples, _ = load_prepared(root / "current" / "data")
    users = pick_users(samples, requests)
    forgotten, rows = [], []
    for i, user in enumerate(users):
        samples, _ = load_prepared(root / "current" / "data")
        forgotten.append(samples[(samples["split"] == "train") & (samples["user_id"] == user)])
        started = time.perf_counter()
        record = forget(root, read_request(users=[str(user)]), log=lambda _: None)
        wall = time.perf_counter() - started
        verdict = record["metrics"]["audit"]
        rows.append({
            "request": i + 1, "train_prompts_of_user": len(forgotten[-1]),
            "forget_prompts": record["row_counts"]["forget_prompts"], "seconds": round(wall, 2),
            "ledger_seconds": record["seconds"], "unlearn_seconds": record["metrics"]["unlearn_seconds"],
            "status": record["status"], "verdict": verdict["verdict"],
            "attempts": [a["method"] for a in verdict.get("attempts", [])],
            "mia_auc_before": verdict.get("before", {}).get("mia_auc"),
            "mia_auc_after": verdict.get("after", {}).get("mia_auc"), "threshold": verdict.get("threshold"),
            "forgetting_effect": verdict.get("forgetting_effect"), "reason": verdict.get("reason"),
            "test_auc": record["metrics"]["auc"], "test_n": record["metrics"]["test_n"],
        })
        print(rows[-1])
    final, _ = load_prepared(root / "current" / "data")
    started = time.perf_counter()
    train(root / "current" / "data", "original", "tiny", out / "retrain", recipe)
    retrain_seconds = time.perf_counter() - started

    # Does the audit tell the Original (which trained on each forget set) from the Retrain (which never did)?
    cfg = audit.AuditConfig(**settings)
    original, _ = load_model(out / "original")
    retrain, _ = load_model(out / "retrain")
    told = []
    for rows_f in forgotten:
        non_members = audit.non_member_rows(final, set(rows_f["user_id"]), cfg)
        labels = rows_f["label"].to_numpy(), non_members["label"].to_numpy()
        data = audit.prompts(original, rows_f, non_members)
        was = audit.score(original, rows_f, non_members, data=data)
        of_original = audit.judge(was, was, *labels, cfg)
        of_retrain = audit.judge(was, audit.score(retrain, rows_f, non_members, data=data), *labels, cfg)
        told.append({"original": of_original["verdict"], "original_mia_auc": of_original["after"]["mia_auc"],
                     "retrain": of_retrain["verdict"], "retrain_mia_auc": of_retrain["after"]["mia_auc"],
                     "threshold": of_retrain["threshold"], "retrain_reason": of_retrain.get("reason"),
                     "retrain_effect": of_retrain.get("forgetting_effect"),
                     "retrain_valid_auc_drop": of_retrain.get("valid_auc_drop"),
                     "retrain_valid_auc_drop_allowed": of_retrain.get("valid_auc_drop_allowed"),
                     "told_apart": of_original["verdict"] == "fail" and of_retrain["verdict"] == "pass"})
    test = rows_for(final, "test")
    models = {"original": out / "original", "final_version": root / "current" / "model", "retrain": out / "retrain"}
    aucs = {name: full_test_auc(model, test) for name, model in models.items()}
    seconds = np.array([r["seconds"] for r in rows])
    return {
        "benchmark": "requests", "date": datetime.date.today().isoformat(), "machine": machine(), "seed": seed,
        "last_n": last_n, "samples": int(len(load_prepared(out / "data")[0])), "recipe": PRESETS["demo"].train,
        "audit_settings": cfg.as_dict(), "original_seconds": round(original_seconds, 1),
        "retrain_seconds": round(retrain_seconds, 1), "requests": rows,
        "median_request_seconds": round(float(np.median(seconds)), 2),
        "median_request_over_retrain": round(float(np.median(seconds)) / retrain_seconds, 4),
        "every_audit_passed": all(r["verdict"] == "pass" for r in rows),
        "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in audit.VERDICTS},
        "test_auc_full": {k: round(v, 4) for k, v in aucs.items()}, "test_n_full": int(len(test)),
        "test_auc_drop_after_all": round(aucs["original"] - aucs["final_version"], 4),
        "audit_original_vs_retrain": told, "told_apart": sum(t["told_apart"] for t in told),
        "goals": {"median_request_le_0.02_retrain": bool(np.median(seconds) <= 0.02 * retrain_seconds),
                  "every_audit_passing": all(r["verdict"] == "pass" for r in rows),
                  "test_auc_within_0.01": bool(aucs["original"] - aucs["final_version"] <= 0.01),
                  "told_apart_ge_9_of_10": sum(t["told_apart"] for t in told) >= 9},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/requests"))
    parser.add_argument("--last-n", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--test-samples", type=lambda v: None if v == "none" else int(v),
                        default=audit.AuditConfig().test_samples, help="test prompts a request scores (run default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse-original", action="store_true",
                        help="keep the data and Original an earlier run with the same settings left in --out")
    parser.add_argument("--original-only", action="store_true", help="prepare and train the Original, then stop")
    args = parser.parse_args()

    if args.original_only:
        recipe = demo_recipe(args.seed)
        print(json.dumps({"original_seconds": original_model(args.out, args.last_n, args.seed, recipe,
                                                             args.reuse_original)}))
        return

    def go() -> dict:
        report = measure(args.out, args.last_n, args.requests, args.test_samples, args.seed, args.reuse_original)
        report["command"] = (f"python benchmarks/deletion_requests.py --last-n {args.last_n} --requests "
                             f"{args.requests} --test-samples {args.test_samples or 'none'} --seed {args.seed}")
        size = "" if args.last_n >= 100_000 else f"-last-n-{args.last_n}"  # the full protocol has no suffix
        return keep(report, "requests", size)

    run(go)


if __name__ == "__main__":
    main()
