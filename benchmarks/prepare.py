"""Benchmark `e2urec prepare`: ML-100K wall time, an ML-1M-shaped synthetic table (wall time, peak RSS),
and the vectorised history builder against a row-by-row (iterrows) builder on the same 50,000 rows.

Each prepare runs in its own process (`python -m e2urec prepare`) so its peak RSS is its own.
Prints one JSON object. Usage: python benchmarks/prepare.py [--skip-1m]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import run
from e2urec.bench import machine
from e2urec.data.samples import history_index, order_events
from e2urec.data.sources import fetch


def run_prepare(args: list[str]) -> dict:
    """Run prepare in a child process; return its wall seconds and peak RSS (bytes)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "e2urec", "prepare", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare failed: {proc.stderr.read().decode()[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_bytes": usage.ru_maxrss * 1024}


def write_ml1m_shaped(folder: Path, n_ratings: int = 1_000_209, n_users: int = 6_040, n_items: int = 3_706,
                      seed: int = 0) -> None:
    """Synthetic ratings in MovieLens-1M's own file formats and sizes (every user ≥ 20 ratings)."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(1.2, n_users) + 1
    extra = rng.multinomial(n_ratings - 20 * n_users, weights / weights.sum())
    per_user = extra + 20
    users = np.repeat(np.arange(1, n_users + 1), per_user)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = rng.choice(np.arange(1, n_items + 1), size=n_ratings, p=popularity / popularity.sum())
    ratings = rng.choice([1, 2, 3, 4, 5], size=n_ratings, p=[0.06, 0.11, 0.26, 0.35, 0.22])
    timestamps = 956_703_932 + rng.integers(0, 90_000_000, size=n_ratings)
    frame = pd.DataFrame({"u": users, "i": items, "r": ratings, "t": timestamps})
    (folder / "ratings.dat").write_text("\n".join(frame.astype(str).agg("::".join, axis=1)) + "\n")
    genders = rng.choice(["M", "F"], n_users)
    ages = rng.choice([1, 18, 25, 35, 45, 50, 56], n_users)
    jobs = rng.integers(0, 21, n_users)
    (folder / "users.dat").write_text(
        "".join(f"{u}::{g}::{a}::{j}::55455\n" for u, g, a, j in zip(range(1, n_users + 1), genders, ages, jobs,
                                                                     strict=True)))
    (folder / "movies.dat").write_bytes(
        "".join(f"{i}::Movie {i} ({1950 + i % 50})::Drama\n" for i in range(1, n_items + 1)).encode("latin-1"))


def iterrows_history(events: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward builder with the same output contract as `history_index`: walk the events in time
    order keeping each user's earlier positions, fill row i with the last k (right-aligned, -1 padded)."""
    recent: dict = {}
    index = np.full((len(events), k), -1, dtype=np.int64)
    count = np.zeros(len(events), dtype=np.int64)
    for position, (_, row) in enumerate(events.iterrows()):
        seen = recent.setdefault(row["user_id"], [])
        shown = seen[-k:]
        if shown:
            index[position, k - len(shown):] = shown
        count[position] = len(seen)
        seen.append(position)
    return index, count


def vectorised_history(events: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    return history_index(pd.factorize(events["user_id"])[0], np.ones(len(events), dtype=bool), k)


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-1m", action="store_true", help="skip the ML-1M-shaped run")
    args = parser.parse_args()
    report: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ml100k = fetch("ml-100k").path
        report["ml100k_prepare"] = run_prepare(["--dataset", "ml-100k", "--data-dir", str(ml100k),
                                                "--out", str(tmp / "ml100k")])
        report["ml100k_prepare"]["goal_seconds"] = 10
        if not args.skip_1m:
            (tmp / "ml1m").mkdir()
            write_ml1m_shaped(tmp / "ml1m")
            report["ml1m_shaped_prepare"] = {
                **run_prepare(["--dataset", "ml-1m", "--data-dir", str(tmp / "ml1m"), "--out", str(tmp / "o1m")]),
                "ratings": 1_000_209, "users": 6_040, "items": 3_706, "goal_seconds": 60, "goal_rss_bytes": 4 << 30,
            }
        from e2urec.data.readers import read_dataset

        events = order_events(read_dataset("ml-100k", ml100k).interactions).iloc[:50_000]
        started = time.perf_counter()
        slow = iterrows_history(events, 10)
        slow_s = time.perf_counter() - started
        started = time.perf_counter()
        fast = vectorised_history(events, 10)
        fast_s = time.perf_counter() - started
        report["history_builder"] = {
            "rows": len(events), "iterrows_seconds": round(slow_s, 3), "vectorised_seconds": round(fast_s, 4),
            "speedup": round(slow_s / fast_s, 1), "goal_speedup": 20,
            "same_output": all(np.array_equal(a, b) for a, b in zip(slow, fast, strict=True)),
        }
    return report


if __name__ == "__main__":
    run(main)
