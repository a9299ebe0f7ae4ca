"""Where sequential requests lose utility: `deletion_requests.py`'s 10 one-user requests again, from the same data and
Original (copied from `--from`, which is left untouched), with the test AUC on *all* test rows after every
request (the ledger scores a 1,000-row sample) and the paired change each request made (bootstrap SE), so the
run's total drop is split per request. No Retrain. Prints JSON and writes
benchmarks/results/request-chain-<date>.json; no user id is written. Usage:
python benchmarks/studies/request_chain.py [--from runs/requests-full] [--out runs/request-chain]
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from pathlib import Path

from e2urec.bench import machine
from e2urec.checkpoint import load_model
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.evaluation import paired_auc_change, utility_metrics
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.ops.forget import forget
from e2urec.ops.request import read_request
from e2urec.ops.run import init_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py, shared with the benchmarks
from common import keep, pick_users, run  # noqa: E402


def measure(source: Path, out: Path, requests: int, seed: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("data", "original"):
        shutil.copytree(source / name, out / name)
    first, _ = load_prepared(out / "data")
    users = pick_users(first, requests)
    forgotten = set(users)
    test = rows_for(first[~first["user_id"].isin(forgotten)], "test")  # rows every version is scored on
    y = test["label"].to_numpy()

    def p_yes(model: Path):
        backbone, _ = load_model(model)
        return per_sample_p_yes(backbone, prompt_set(backbone, test), 64, progress=False)

    root = init_run(out / "run", out / "data", out / "original", {"seed": seed}, key_file=out / "run.key")
    before = p_yes(out / "original")
    rows = [{"request": 0, "test_auc": utility_metrics(y, before)["auc"]}]
    for i, user in enumerate(users):
        started = time.perf_counter()
        record = forget(root, read_request(users=[str(user)]), log=lambda _: None)
        wall = time.perf_counter() - started
        after = p_yes(root / "current" / "model")
        change, se = paired_auc_change(y, after, before)
        verdict = record["metrics"]["audit"]
        rows.append({"request": i + 1, "forget_prompts": record["row_counts"]["forget_prompts"],
                     "seconds": round(wall, 2), "verdict": verdict["verdict"],
                     "test_auc": utility_metrics(y, after)["auc"], "change": change, "change_se": se,
                     "ledger_test_auc": record["metrics"]["auc"]})
        print(rows[-1])
        before = after
    return {"benchmark": "request_chain", "date": datetime.date.today().isoformat(), "machine": machine(),
            "seed": seed, "test_n": int(len(test)), "requests": rows,
            "total_change": rows[-1]["test_auc"] - rows[0]["test_auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, default=Path("runs/requests-full"))
    parser.add_argument("--out", type=Path, default=Path("runs/request-chain"))
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    def go() -> dict:
        report = measure(args.source, args.out, args.requests, args.seed)
        report["command"] = f"python benchmarks/studies/request_chain.py --from {args.source} --out {args.out}"
        return keep(report, "request-chain")

    run(go)


if __name__ == "__main__":
    main()
