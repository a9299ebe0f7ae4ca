"""Validation-only choice of E2URec's defaults on one seed of a bench preset, the way a deployment must choose:
without Retrain and without test data.

Criterion: among configurations whose valid AUC is at least the Original's minus 0.01, the one whose forget set
ends closest to the non-member level in mean answer loss, ties broken by time. The level is what E2URec's
stopping rule uses under its defaults, the same yardstick for every configuration: each model's loss on E2URec's
non-member pool (held-out users' training-period samples where prepare held users out, else the forgotten
users' own valid samples, else unseen users' valid samples), plus the default difficulty offset (0 unless the
default is `difficulty=history`). Test AUC,
forget AUC, gap closure and JSD to the bench's Retrain are reported for every configuration, but only for
information. Needs the seed's prepare/original/retrain stages (e.g. from `e2urec bench`). Prints JSON (also
written to BENCH/sweep.json). Usage:
python benchmarks/e2urec_sweep.py --bench runs/cpu --preset cpu [--tune-seed 0]
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from common import run
from e2urec.bench import PRESETS, closure, machine
from e2urec.checkpoint import load_model
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import make_accelerator
from e2urec.evaluation import EvalConfig, distances, mia_features, utility_metrics
from e2urec.io import read_json, write_json_atomic
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.unlearning.e2urec import E2URec
from e2urec.unlearning.runner import unlearn

# The reference profile, the defaults, then one factor at a time around them (and the previous defaults).
GRID = {
    "reference profile": {"profile": "reference"},
    "defaults": {},
    "lora attention (q/v)": {"lora_targets": "attention"},
    "lora all-linear": {"lora_targets": "all-linear"},
    "forget_only=0.8": {"forget_only": 0.8},
    "joint throughout, beta 0.8, retain_match=items": {"forget_only": 0.0, "beta": 0.8, "retain_match": "items"},
    "aug_contrast=none": {"aug_contrast": "none"},
    "distill answer": {"distill": "answer"},
    "3 passes": {"epochs": 3},
    "utility_z=0 (bare 0.01 guard)": {"utility_z": 0.0},
    "previous defaults (q/v LoRA, forget_only 0.8)": {"lora_targets": "attention", "forget_only": 0.8},
    "level=auc": {"level": "auc"},
    "push=label": {"push": "label"},
    "push=label, level=auc": {"push": "label", "level": "auc"},
    "difficulty=history": {"difficulty": "history"},
}


def scores(model: Path, seed_dir: Path, cfg: EvalConfig, original: dict | None = None) -> dict:
    """Validation metrics (used to choose) and test/Retrain metrics (reported only)."""
    samples, manifest = load_prepared(seed_dir / "data")
    backbone, _ = load_model(model)
    accelerator = make_accelerator()

    def p_of(rows):
        return p_of_model(backbone, rows, cfg, accelerator)

    def loss(rows, p) -> float:
        return float(mia_features(rows["label"].to_numpy(), p)[:, 0].mean())

    valid, test, forget = (rows_for(samples, s) for s in ("valid", "test", "forget"))
    p_valid, p_test, p_forget = p_of(valid), p_of(test), p_of(forget)
    retrain, _ = load_model(seed_dir / "retrain")
    out = {
        "valid_auc": utility_metrics(valid["label"].to_numpy(), p_valid)["auc"],
        "forget_loss": loss(forget, p_forget),
        "test_auc": utility_metrics(test["label"].to_numpy(), p_test)["auc"],
        "forget_auc": utility_metrics(forget["label"].to_numpy(), p_forget)["auc"],
        "jsd_to_retrain": distances(backbone, retrain, prompt_set(backbone, forget), cfg, accelerator)["jsd"],
    }
    job = SimpleNamespace(samples=samples, data=seed_dir / "data", manifest=manifest)
    method = E2URec(E2URec.Config())
    pool, out["non_members"] = method.non_member_rows(job)
    out["non_member_loss"] = loss(pool, p_of(pool))
    out["difficulty_offset"] = method.difficulty_offset(job, "loss", forget, pool, "sweep")
    out["loss_gap"] = out["non_member_loss"] + out["difficulty_offset"] - out["forget_loss"]
    if original is not None:
        retrain_auc = utility_metrics(forget["label"].to_numpy(), p_of_model(retrain, forget, cfg, accelerator))["auc"]
        out["closure_auc"] = closure(original["forget_auc"], out["forget_auc"], retrain_auc)
    return out


def p_of_model(backbone, rows, cfg: EvalConfig, accelerator) -> np.ndarray:
    return per_sample_p_yes(backbone, prompt_set(backbone, rows), cfg.batch_size, accelerator)


# What a run from before these options existed did, in their terms.
BEFORE_OPTIONS = {"push": "augmented", "level": "loss", "difficulty": "none", "utility_cap": 1.0}


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
    original = scores(tune_dir / "original", tune_dir, cfg)
    rows = []
    for name, options in GRID.items():
        model = config_run(tune_dir, name, {**base, **options}, tune_seed)
        meta = read_json(model / "meta.json")
        rows.append({"config": name, "options": {**base, **options}, **scores(model, tune_dir, cfg, original),
                     "unlearn_seconds": meta["unlearn_seconds"], "alpha": (meta.get("alpha") or {}).get("alpha"),
                     "steps": meta["steps"]})
        print(rows[-1])
    eligible = [r for r in rows if r["valid_auc"] >= original["valid_auc"] - 0.01]
    chosen = min(eligible, key=lambda r: (round(abs(r["loss_gap"]), 3), r["unlearn_seconds"])) if eligible else None
    report = {"benchmark": "e2urec_sweep", "machine": machine(), "bench": str(bench), "preset": preset,
              "tune_seed": tune_seed,
              "criterion": "valid AUC >= Original - 0.01, then forget loss closest to the non-member loss (plus the "
                 "default difficulty offset)",
              "original": original, "configs": rows, "chosen": chosen and chosen["config"]}
    write_json_atomic(bench / "sweep.json", report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--tune-seed", type=int, default=0)
    args = parser.parse_args()
    run(lambda: measure(args.bench, args.preset, args.tune_seed))


if __name__ == "__main__":
    main()
