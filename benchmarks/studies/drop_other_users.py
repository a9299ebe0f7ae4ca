"""Is a Retrain's utility gap about *which* users left, or about training on any slightly different data?

At the full protocol both Retrains (data without `deletion_requests.py`'s 10 users) scored 0.03–0.04 test AUC below
both Originals (`retrain_noise.py`). This trains the same recipe (seed 0, like the Original and the first
Retrain) on the data without 10 *other* train users, drawn with `--seed` among users of the same sizes (each
forgotten user's size quantile ± 1 user), and scores all test rows of the run's final data beside the Original
and the Retrain. Prints JSON and writes benchmarks/results/drop-other-users-<date>.json; no user id is
written. Usage: python benchmarks/studies/drop_other_users.py [--out runs/requests-full] [--seed 7]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

from e2urec.bench import machine
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared, load_tables, write_prepared
from e2urec.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py, shared with the benchmarks
from common import demo_recipe, full_test_auc, keep, pick_users, run  # noqa: E402


def measure(out: Path, seed: int, requests: int) -> dict:
    samples, manifest = load_prepared(out / "data")
    final, _ = load_prepared(out / "run" / "current" / "data")
    forgotten = pick_users(samples, requests)
    train_users = samples.loc[samples["split"] == "train", "user_id"]
    counts = train_users.value_counts().sort_values(kind="stable")
    order = list(counts.index)
    rng = np.random.default_rng(seed)
    others = []
    for user in forgotten:  # a neighbour in size, not forgotten, not picked yet
        at = order.index(user)
        near = [u for u in order[max(0, at - 3): at + 4] if u not in forgotten and u not in others]
        others.append(near[rng.integers(len(near))])
    folder = out / "data-other-users"
    kept = samples[~samples["user_id"].isin(others)].assign(forget=False)
    write_prepared(folder, kept, load_tables(out / "data"), manifest, overwrite=True)
    model = out / "retrain-other-users"
    started = time.perf_counter()
    train(folder, "original", "tiny", model, demo_recipe(0), overwrite=True)  # a rerun replaces its own outputs
    seconds = round(time.perf_counter() - started, 1)
    test = rows_for(final[~final["user_id"].isin(others)], "test")
    aucs = {name: round(full_test_auc(path, test), 4) for name, path in
            {"original": out / "original", "retrain": out / "retrain", "retrain_other_users": model}.items()}
    return {"benchmark": "drop_other_users", "date": datetime.date.today().isoformat(), "machine": machine(),
            "seed": seed, "dropped_prompts": int(train_users.isin(others).sum()),
            "forgotten_prompts": int(train_users.isin(forgotten).sum()),
            "train_seconds": seconds, "test_n": int(len(test)), "test_auc": aucs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/requests-full"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()

    def go() -> dict:
        report = measure(args.out, args.seed, args.requests)
        report["command"] = f"python benchmarks/studies/drop_other_users.py --out {args.out} --seed {args.seed}"
        return keep(report, "drop-other-users")

    run(go)


if __name__ == "__main__":
    main()
