"""How unlearning time grows: E2URec against Retrain on real ML-100K with the tiny backbone.

Two sweeps, each measured in this one run:
- forget fraction 5%, 10%, 20%, 40% of train users on one slice (one Original serves every point: user-level
  forgetting does not change the training rows or prompts the Original saw);
- retain size: slices of growing length with about the same number of forgotten users.

E2URec's work is proportional to the forget set (its retain sample is sized from the forget set), Retrain's to
the retained data. Prints JSON and writes a plot. Usage:
python benchmarks/scaling.py [--out runs/scaling] [--fractions 0.05,0.1,0.2,0.4] [--sizes 1500,3000,6000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import run, save  # noqa: E402
from e2urec.bench import machine  # noqa: E402
from e2urec.data.prepare import PrepareConfig, prepare  # noqa: E402
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared  # noqa: E402
from e2urec.engine import TrainConfig  # noqa: E402
from e2urec.io import read_json  # noqa: E402
from e2urec.training import train  # noqa: E402
from e2urec.unlearning.runner import unlearn  # noqa: E402

RECIPE = {"epochs": 2, "lr": 1e-3, "batch_size": 16}
E2UREC = {"aug_steps": 20}


def point(folder: Path, last_n: int, fraction: float, original: Path, seed: int) -> dict:
    """Prepare one slice, train the Original unless already there, then time Retrain and E2URec on it."""
    data = folder / "data"
    if not (data / "manifest.json").is_file():
        prepare(PrepareConfig(dataset="ml-100k", last_n=last_n, forget_fraction=fraction, seed=seed), data,
                overwrite=True)
    if not (original / "meta.json").is_file():
        train(data, "original", "tiny", original, TrainConfig(**RECIPE, seed=seed), overwrite=True)
    samples, _ = load_prepared(data)
    seconds = {}
    for method, options in (("retrain", {}), ("e2urec", E2UREC)):
        out = folder / method
        if not (out / "meta.json").is_file():
            unlearn(method, original, data, out, {**options, "seed": seed}, overwrite=True)
        seconds[method] = read_json(out / "meta.json")["unlearn_seconds"]
    forget = rows_for(samples, "forget")
    return {"last_n": last_n, "forget_fraction": fraction, "forget_users": int(forget["user_id"].nunique()),
            "forget_samples": len(forget), "retain_samples": len(rows_for(samples, "retain")),
            "retrain_seconds": seconds["retrain"], "e2urec_seconds": seconds["e2urec"],
            "e2urec_vs_retrain": round(seconds["e2urec"] / seconds["retrain"], 3)}


def plot(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, x, label in ((axes[0], "forget_sweep", "forget_samples", "forget samples"),
                              (axes[1], "retain_sweep", "retain_samples", "retained samples")):
        rows = report[key]
        for method, style in (("retrain", "o-"), ("e2urec", "s-")):
            ax.plot([r[x] for r in rows], [r[f"{method}_seconds"] for r in rows], style, label=method)
        ax.set_xlabel(label)
        ax.set_ylabel("unlearning wall time (s)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("growing forget set (one slice)")
    axes[1].set_title("growing retained data (~same forget users)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/scaling"))
    parser.add_argument("--fractions", default="0.05,0.1,0.2,0.4")
    parser.add_argument("--sizes", default="1500,3000,6000", help="slice lengths (last N samples)")
    parser.add_argument("--fraction-slice", type=int, default=3000, help="slice length of the forget sweep")
    parser.add_argument("--forget-users", type=int, default=4, help="about this many users in the retain sweep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fractions = [float(f) for f in args.fractions.split(",")]
    shared = args.out / "forget-sweep" / "original"
    forget_sweep = [point(args.out / "forget-sweep" / f"f{fraction}", args.fraction_slice, fraction, shared, args.seed)
                    for fraction in fractions]
    retain_sweep = []
    for size in (int(s) for s in args.sizes.split(",")):
        probe = args.out / "retain-sweep" / f"n{size}"
        if not (probe / "data" / "manifest.json").is_file():
            prepare(PrepareConfig(dataset="ml-100k", last_n=size, seed=args.seed), probe / "data", overwrite=True)
        train_users = read_json(probe / "data" / "manifest.json")["counts"]["train_users"]
        fraction = min(0.9, args.forget_users / train_users)
        folder = args.out / "retain-sweep" / f"n{size}-f{fraction:.4f}"
        retain_sweep.append(point(folder, size, fraction, folder / "original", args.seed))
    report = {"machine": machine(),
              "backbone": "tiny", "recipe": RECIPE, "e2urec_options": E2UREC,
              "forget_sweep": forget_sweep, "retain_sweep": retain_sweep}
    plot(report, args.out / "scaling.png")
    return save(args.out / "scaling.json", report)


if __name__ == "__main__":
    run(main)
