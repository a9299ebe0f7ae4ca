"""Validation-only choice of E2URec's defaults on one seed of a bench preset, the way a deployment must choose:
without Retrain and without test data.

Criterion: among configurations whose valid AUC is at least the Original's minus 0.01, the one whose forget set
ends closest to the non-member level, ties broken by time. The level is the one E2URec's stopping rule reads
under its defaults (`level`: AUC, or mean answer loss), the same yardstick for every configuration: each model's
misfit on E2URec's non-member pool (held-out users' training-period samples where prepare held users out, else
the forgotten users' own valid samples, else unseen users' valid samples). Test AUC, forget AUC, gap closure and
JSD to the bench's Retrain are reported for every configuration, but only for information. Needs the seed's
prepare/original/retrain stages (e.g. from `e2urec bench`). Prints JSON (also written to BENCH/sweep.json).
Usage: python benchmarks/studies/e2urec_sweep.py --bench runs/cpu --preset cpu [--tune-seed 0]
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict
from pathlib import Path

from e2urec.bench import PRESETS, machine
from e2urec.evaluation import EvalConfig
from e2urec.io import read_json
from e2urec.unlearning.e2urec import E2URec
from e2urec.unlearning.runner import unlearn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py, shared with the benchmarks
from common import run, save, scores  # noqa: E402

# The reference profile, the defaults, then one factor at a time around them (and the previous defaults).
GRID = {
    "reference profile": {"profile": "reference"},
    "defaults": {},
    "lora attention (q/v)": {"lora_targets": "attention"},
    "lora all-linear": {"lora_targets": "all-linear"},
    "forget_only=0.8": {"forget_only": 0.8},
    "joint throughout, beta 0.8": {"forget_only": 0.0, "beta": 0.8},
    "3 passes": {"epochs": 3},
    "utility_z=0 (bare 0.01 guard)": {"utility_z": 0.0},
    "level=loss": {"level": "loss"},
    "push=augmented": {"push": "augmented"},
    "previous defaults (push=augmented, level=loss)": {"push": "augmented", "level": "loss"},
}


def gap(result: dict, level: str) -> float:
    """How far the forget set is from the non-member level, in the level's misfit (loss, or 1 − AUC): positive
    while the forget set is still fitted better than the non-members. Loss where an AUC is undefined (one class),
    as E2URec itself falls back."""
    if level == "auc" and None not in (result["forget_auc"], result["non_member_auc"]):
        return result["forget_auc"] - result["non_member_auc"]
    return result["non_member_loss"] - result["forget_loss"]


# What a run from before these options existed did, in their terms.
BEFORE_OPTIONS = {"push": "augmented", "level": "loss", "utility_cap": 1.0}


def config_run(seed_dir: Path, name: str, options: dict, seed: int) -> Path:
    """The configuration's model, trained unless a run with the very same settings is there (a row whose
    settings changed, e.g. "defaults" after the defaults moved, is trained again)."""
    out = seed_dir / "sweep" / re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
    settings = asdict(E2URec.Config.from_options({**options, "seed": seed}))
    done = (out / "meta.json").is_file() and {**BEFORE_OPTIONS, **read_json(out / "meta.json")["hyperparameters"]}
    if done != settings:
        unlearn("e2urec", seed_dir / "original", seed_dir / "data", out, {**options, "seed": seed}, overwrite=True)
    return out


def measure(bench: Path, preset: str, tune_seed: int) -> dict:
    base = PRESETS[preset].method_options.get("e2urec", {})
    cfg = EvalConfig(mia_samples=PRESETS[preset].mia_samples, seed=tune_seed)
    tune_dir = bench / f"seed-{tune_seed}"
    level = E2URec.Config().level
    original = scores(tune_dir / "original", tune_dir, cfg, non_members=True)
    original["gap"] = gap(original, level)
    rows = []
    for name, options in GRID.items():
        model = config_run(tune_dir, name, {**base, **options}, tune_seed)
        meta = read_json(model / "meta.json")
        result = scores(model, tune_dir, cfg, original, non_members=True)
        rows.append({"config": name, "options": {**base, **options}, **result, "gap": gap(result, level),
                     "unlearn_seconds": meta["unlearn_seconds"], "alpha": (meta.get("alpha") or {}).get("alpha"),
                     "steps": meta["steps"]})
        print(rows[-1])
    eligible = [r for r in rows if r["valid_auc"] >= original["valid_auc"] - 0.01]
    chosen = min(eligible, key=lambda r: (round(abs(r["gap"]), 3), r["unlearn_seconds"])) if eligible else None
    report = {"benchmark": "e2urec_sweep", "machine": machine(), "bench": str(bench), "preset": preset,
              "tune_seed": tune_seed, "level": level,
              "criterion": f"valid AUC >= Original - 0.01, then the forget set's {level} closest to the non-members'",
              "original": original, "configs": rows, "chosen": chosen and chosen["config"]}
    return save(bench / "sweep.json", report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--tune-seed", type=int, default=0)
    args = parser.parse_args()
    run(lambda: measure(args.bench, args.preset, args.tune_seed))


if __name__ == "__main__":
    main()
