"""`e2urec bench`: prepare → Original → Retrain → shard systems → every unlearning method → evaluation,
over several seeds, then a report. Every stage writes its own folder and is skipped when a rerun finds
it finished, so an interrupted bench resumes where it stopped."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from e2urec.data.prepare import MANIFEST_FILE, PrepareConfig, prepare
from e2urec.engine import TrainConfig
from e2urec.errors import E2URecError
from e2urec.io import read_json
from e2urec.training import EvalConfig, evaluate, train
from e2urec.unlearning.run import unlearn
from e2urec.unlearning.sharded import train_system

APPROXIMATE = ("e2urec", "neggrad", "label-flip", "badt")
SHARDED = ("sisa", "receraser")
ROWS = ("original", "retrain", *APPROXIMATE, *SHARDED)


@dataclass
class Preset:
    """A protocol size: how much data, how long the models train, how many seeds."""

    last_n: int
    seeds: tuple[int, ...]
    train: dict
    method_options: dict = field(default_factory=dict)
    mia_samples: int = 1000
    max_length: int | None = None


PRESETS: dict[str, Preset] = {
    # ≤ 10 min on 2 CPU cores with the tiny backbone: a recent slice of ML-100K, three seeds.
    "demo": Preset(last_n=1200, seeds=(0, 1, 2), train={"epochs": 2, "lr": 1e-3, "batch_size": 16},
                   method_options={"e2urec": {"aug_steps": 20}}, mia_samples=200),
    # About an hour here (estimated from the demo's per-sample cost, not yet timed end to end): a larger slice,
    # three epochs (the tiny Original's valid loss is best at epoch 2-3 at this lr).
    "cpu": Preset(last_n=5_000, seeds=(0, 1, 2), train={"epochs": 3, "lr": 1e-3, "batch_size": 16},
                  method_options={"e2urec": {"aug_steps": 50}}, mia_samples=500),
    # DESIGN §3 in full (last 100,000 samples), the paper's Original recipe; meant for a GPU.
    "paper": Preset(last_n=100_000, seeds=(0, 1, 2), train={"epochs": 10, "lr": 5e-4, "batch_size": 32},
                    mia_samples=2000),
}


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Stages:
    """Runs a stage unless its output already holds the file that marks it finished; logs one line each."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def __call__(self, label: str, done: Path, action: Callable[[], object]) -> None:
        if done.is_file():
            self.log(f"{label}: already done, skipped")
            return
        started = time.perf_counter()
        action()
        self.log(f"{label}: done in {time.perf_counter() - started:.1f} s")


def run_seed(root: Path, dataset: str, data_dir: Path | None, backbone: str, preset: Preset, seed: int,
             stage: Stages) -> dict[str, dict]:
    """All stages for one seed; returns {row: metrics} for the report."""
    data, tag = root / "data", f"[seed {seed}]"
    cfg = PrepareConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, last_n=preset.last_n,
                        seed=seed)
    stage(f"{tag} prepare", data / MANIFEST_FILE, lambda: prepare(cfg, data, overwrite=True))
    recipe = TrainConfig(**{**preset.train, "seed": seed, "max_length": preset.max_length})
    stage(f"{tag} original", root / "original" / "meta.json",
          lambda: train(data, "original", backbone, root / "original", recipe, overwrite=True))
    for system in SHARDED:
        stage(f"{tag} {system} system", root / f"{system}-system" / "meta.json",
              lambda system=system: train_system(data, system, backbone, root / f"{system}-system", recipe,
                                                 overwrite=True))
    sources = {"retrain": root / "original", **{m: root / "original" for m in APPROXIMATE},
               **{m: root / f"{m}-system" for m in SHARDED}}
    for method, source in sources.items():
        options = {**preset.method_options.get(method, {}), "seed": seed}
        stage(f"{tag} unlearn {method}", root / method / "meta.json",
              lambda method=method, source=source, options=options: unlearn(
                  method, source, data, root / method, options, overwrite=True))
    # Retrain's own attack score comes from its own row, so no other row repeats that attack.
    evals = EvalConfig(mia_samples=preset.mia_samples, seed=seed, max_length=preset.max_length, reference_mia=False)
    results: dict[str, dict] = {}
    for row in ROWS:
        model = root / row
        test_dir, forget_dir = root / "eval" / f"{row}-test", root / "eval" / f"{row}-forget"
        stage(f"{tag} evaluate {row} test", test_dir / "metrics.json",
              lambda model=model, test_dir=test_dir: evaluate(model, data, "test", test_dir, evals))
        stage(f"{tag} evaluate {row} forget", forget_dir / "metrics.json",
              lambda model=model, forget_dir=forget_dir: evaluate(model, data, "forget", forget_dir, evals,
                                                                  reference=root / "retrain"))
        meta = read_json(model / "meta.json")
        test, forget = read_json(test_dir / "metrics.json"), read_json(forget_dir / "metrics.json")
        results[row] = {
            "auc": test["auc"], "acc": test["acc"], "logloss": test["logloss"],
            "forget_auc": forget["auc"], "jsd": forget["jsd"], "l2": forget["l2"],
            "jsd_yesno": forget["jsd_yesno"], "l2_yesno": forget["l2_yesno"], "mia_auc": forget["mia_auc"],
            "unlearn_seconds": meta.get("unlearn_seconds"),
            "trainable_params": meta.get("trainable_params"), "total_params": meta.get("total_params"),
            "peak_memory_bytes": meta.get("peak_memory_bytes"),
        }
    retrain_s = results["retrain"]["unlearn_seconds"]
    for values in results.values():
        values["mia_auc_retrain"] = results["retrain"]["mia_auc"]
        seconds = values["unlearn_seconds"]
        values["time_vs_retrain"] = seconds / retrain_s if seconds is not None and retrain_s else None
    return results


def bench(dataset: str, backbone: str, preset: str | Preset, out: Path, data_dir: Path | None = None,
          seeds: tuple[int, ...] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the comparison and write report.md, results.json, results.csv and plots into `out`; `preset` is a
    name from PRESETS or a Preset of one's own (reported as "custom")."""
    from e2urec.report import write_report

    preset_name = preset if isinstance(preset, str) else "custom"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise E2URecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if seeds:
        preset = replace(preset, seeds=tuple(seeds))
    out = Path(out)
    stage = Stages(log)
    per_seed = {seed: run_seed(out / f"seed-{seed}", dataset, data_dir, backbone, preset, seed, stage)
                for seed in preset.seeds}
    config = {"dataset": dataset, "backbone": backbone, "preset": preset_name, **asdict(preset)}
    return write_report(out, per_seed, config, machine())
