"""`e2urec bench`: prepare → Original → Retrain → shard systems → every unlearning method → evaluation,
over several seeds, then a report. Every stage writes its own folder and is skipped when a rerun finds
it finished, so an interrupted bench resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import torch

from e2urec import __version__
from e2urec.checkpoint import read_meta
from e2urec.data.prepare import MANIFEST_FILE, PrepareConfig, prepare
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import TrainConfig
from e2urec.errors import BROKEN_MODEL, E2URecError
from e2urec.evaluation import EvalConfig, evaluate, jsd_yes_no, planted_row
from e2urec.io import read_json, write_json_atomic
from e2urec.presets import PRESETS, Preset
from e2urec.training import train
from e2urec.unlearning.base import REGISTRY
from e2urec.unlearning.runner import unlearn
from e2urec.unlearning.sharded import train_system

# Rows from the registry: a newly registered method joins the bench by its family.
APPROXIMATE = tuple(name for name, cls in REGISTRY.items() if cls.family == "approximate")
SHARDED = tuple(name for name, cls in REGISTRY.items() if cls.family == "sharded")
[EXACT] = (name for name, cls in REGISTRY.items() if cls.family == "exact")
# Extra rows: a registered method under other options, reported as its own row. `e2urec-reference`: the paper's
# method as its reference code runs it (E2URec's `reference` profile), the baseline every departure is judged by.
VARIANTS = {"e2urec-reference": ("e2urec", {"profile": "reference"})}
# Noise floors, each trained again with another seed on the same data: the Original (forget set included)
# says how far two trainings differ on the forget set by chance, under every gap closure; Retrain (forget set
# excluded: exact unlearning itself) says how close to *this* Retrain's distributions (JSD, L2) any model can
# be expected to come.
RESEEDED, RESEED_OFFSET = {"original-reseed": "original", "retrain-reseed": "retrain"}, 1000
ROWS = ("original", *RESEEDED, EXACT, *APPROXIMATE, *VARIANTS, *SHARDED)
TEACHER_ROW = "e2urec teacher"


def provenance(command: str | None) -> dict:
    """What produced a bench: the package version, the command that reruns it (None when called from Python), and
    the git commit of the source tree when the package runs from a checkout (None otherwise, e.g. a wheel), with
    `dirty` true when tracked files differed from that commit."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changes = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"e2urec_version": __version__, "commit": commit, "dirty": None if changes is None else bool(changes),
            "command": command}


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpus": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


STAGE_FILE = "stage.json"


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


class Stages:
    """Runs a stage unless its output holds the file that marks it finished *and* a `stage.json` whose
    fingerprint matches the stage's inputs (dataset, backbone, preset values, seed, method options): a rerun
    after any of those changed redoes the stage. Logs one line each."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def __call__(self, label: str, done: Path, action: Callable[[], object], inputs: dict) -> None:
        stamp = done.parent / STAGE_FILE
        key = fingerprint(inputs)
        if done.is_file() and stamp.is_file() and read_json(stamp).get("fingerprint") == key:
            self.log(f"{label}: already done, skipped")
            return
        started = time.perf_counter()
        action()
        write_json_atomic(stamp, {"fingerprint": key, "inputs": inputs})
        self.log(f"{label}: done in {time.perf_counter() - started:.1f} s")


def closure(original: float | None, method: float | None, retrain: float | None) -> float | None:
    """Share of the Original→Retrain gap a method closes: 1 like Retrain, 0 nothing forgotten, > 1 beyond."""
    if None in (original, method, retrain) or original == retrain:
        return None
    return (original - method) / (original - retrain)


def others_distance(test_dir: Path, retrain_dir: Path, others: pd.Index) -> float | None:
    """Two-token JSD to Retrain on `others`, the test samples of users nobody forgot. Neither model trained on
    them, so this is how far two trainings differ anyway; a forget-set distance above it is what the forget set
    adds."""
    if others.empty:
        return None
    own = pd.read_parquet(test_dir / "predictions.parquet").set_index("sample_id")["p_yes"]
    ref = pd.read_parquet(retrain_dir / "predictions.parquet").set_index("sample_id")["p_yes"]
    return jsd_yes_no(own.loc[others].to_numpy(), ref.loc[others].to_numpy())


def run_seed(root: Path, dataset: str, data_dir: Path | None, backbone: str, preset: Preset, seed: int,
             stage: Stages, rows: tuple[str, ...] = ROWS) -> dict[str, dict]:
    """The stages `rows` need for one seed; returns {row: metrics} for the report."""
    data, tag = root / "data", f"[seed {seed}]"
    cfg = PrepareConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, last_n=preset.last_n,
                        seed=seed, holdout_fraction=preset.holdout_fraction, plant=preset.plant)
    base = {"dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "last_n": preset.last_n,
            "seed": seed, **({"holdout_fraction": cfg.holdout_fraction} if cfg.holdout_fraction else {}),
            **({"plant": preset.plant} if preset.plant else {})}
    stage(f"{tag} prepare", data / MANIFEST_FILE, lambda: prepare(cfg, data, overwrite=True), base)
    recipe = TrainConfig(**{**preset.train, "seed": seed, "max_length": preset.max_length})
    trained = {**base, "backbone": backbone, "recipe": asdict(recipe)}
    stage(f"{tag} original", root / "original" / "meta.json",
          lambda: train(data, "original", backbone, root / "original", recipe, overwrite=True), trained)
    reseeded = replace(recipe, seed=seed + RESEED_OFFSET)
    samples = load_prepared(data)[0]
    test = rows_for(samples, "test")
    others = pd.Index(test.loc[~test["user_id"].isin(rows_for(samples, "forget")["user_id"]), "sample_id"])
    runs = {EXACT: (EXACT, root / "original", {}),
            **{m: (m, root / "original", {}) for m in APPROXIMATE},
            **{row: (m, root / "original", options) for row, (m, options) in VARIANTS.items()},
            **{m: (m, root / f"{m}-system", {}) for m in SHARDED}}

    def build(row: str) -> None:
        if row in RESEEDED:
            role = RESEEDED[row]
            stage(f"{tag} {row}", root / row / "meta.json",
                  lambda: train(data, role, backbone, root / row, reseeded, overwrite=True),
                  {**trained, "recipe": asdict(reseeded)})
            return
        if row in SHARDED:
            stage(f"{tag} {row} system", root / f"{row}-system" / "meta.json",
                  lambda: train_system(data, row, backbone, root / f"{row}-system", recipe, overwrite=True),
                  {**trained, "system": row})
        if row in runs:
            method, source, variant = runs[row]
            options = {**variant, **preset.method_options.get(row, {}), "seed": seed}
            stage(f"{tag} unlearn {row}", root / row / "meta.json",
                  lambda: unlearn(method, source, data, root / row, options, overwrite=True),
                  {**trained, "method": method, "config": asdict(REGISTRY[method].Config.from_options(options))})

    # Retrain's own attack score comes from its own row, so no other row repeats that attack.
    evals = EvalConfig(batch_size=preset.eval_batch_size, mia_samples=preset.mia_samples, seed=seed,
                       max_length=preset.max_length, reference_mia=False, promotion_prompts=preset.promotion_prompts)
    results: dict[str, dict] = {}
    # Each row is evaluated as soon as its model exists (Retrain first: the forget metrics compare with it), so
    # a run stopped part-way, e.g. by a time limit, has finished rows; the extra trainings come last.
    late = (*RESEEDED, *SHARDED)
    order = [EXACT, *(r for r in rows if r not in (EXACT, *late)), *(r for r in late if r in rows)]
    failed: dict[str, str] = {}
    for row in order:
        model = root / row
        test_dir, forget_dir = root / "eval" / f"{row}-test", root / "eval" / f"{row}-forget"
        try:
            build(row)
            evaluated = {**trained, "row": row, "eval": asdict(evals),
                         "model": read_json(model / STAGE_FILE).get("fingerprint") if (model / STAGE_FILE).is_file()
                         else None}
            stage(f"{tag} evaluate {row} test", test_dir / "metrics.json",
                  lambda model=model, test_dir=test_dir: evaluate(model, data, "test", test_dir, evals), evaluated)
            stage(f"{tag} evaluate {row} forget", forget_dir / "metrics.json",
                  lambda model=model, forget_dir=forget_dir: evaluate(model, data, "forget", forget_dir, evals,
                                                                      reference=root / EXACT), evaluated)
        except BROKEN_MODEL as exc:  # one broken method is a result; the other rows still run
            if row in ("original", EXACT):
                raise
            stage.log(f"{tag} {row}: FAILED: {exc}")
            failed[row] = str(exc)
            continue
        meta = read_meta(model)
        test, forget = read_json(test_dir / "metrics.json"), read_json(forget_dir / "metrics.json")
        results[row] = {
            "auc": test["auc"], "acc": test["acc"], "logloss": test["logloss"],
            "forget_auc": forget["auc"], "forget_logloss": forget["logloss"],
            "forget_within_user_auc": forget.get("within_user_auc"),
            "jsd": forget["jsd"], "l2": forget["l2"], "jsd_yesno": forget["jsd_yesno"],
            "l2_yesno": forget["l2_yesno"], "sym_kl": forget.get("sym_kl"), "mia_auc": forget["mia_auc"],
            "jsd_yesno_others": others_distance(test_dir, root / "eval" / f"{EXACT}-test", others),
            "unlearn_seconds": meta.get("unlearn_seconds"),
            "loop_seconds": (meta.get("fit") or {}).get("loop_seconds") if "unlearn_seconds" in meta else None,
            "trainable_params": meta.get("trainable_params"), "total_params": meta.get("total_params"),
            "peak_memory_bytes": meta.get("peak_memory_bytes"), **planted_row(test, forget), "failed": None,
            # an unlearning that ended where it started (rolled back, nothing to unlearn) forgot nothing: say so
            "unchanged": bool(meta.get("unchanged")) if "unlearn_seconds" in meta else None,
        }
        if row == "e2urec" and meta.get("teacher"):
            results[TEACHER_ROW] = {"forget_auc": meta["teacher"]["auc"],
                                    "forget_logloss": meta["teacher"]["logloss"],
                                    "forget_within_user_auc": meta["teacher"]["within_user_auc"]}
    for row, message in failed.items():
        results[row] = {**{key: None for key in results[EXACT]}, "failed": message}
    ranked = [r for row in rows for r in ((row, TEACHER_ROW) if row == "e2urec" else (row,))]
    results = {row: results[row] for row in ranked if row in results}
    retrain, original = results[EXACT], results["original"]
    retrain_s = retrain["unlearn_seconds"]
    for values in results.values():
        values["mia_auc_retrain"] = retrain["mia_auc"]
        seconds = values.get("unlearn_seconds")
        values["time_vs_retrain"] = seconds / retrain_s if seconds is not None and retrain_s else None
        values["closure_auc"] = closure(original["forget_auc"], values["forget_auc"], retrain["forget_auc"])
        others = values.get("jsd_yesno_others")
        values["jsd_yesno_excess"] = None if others is None else values["jsd_yesno"] - others
        values["closure_logloss"] = closure(original["forget_logloss"], values["forget_logloss"],
                                            retrain["forget_logloss"])
        # Shilling: the share of the Original→Retrain gap in the target's hit rate a method closes.
        values["closure_promotion"] = closure(original.get("promotion_hr10"), values.get("promotion_hr10"),
                                              retrain.get("promotion_hr10"))
    return results


def bench(dataset: str, backbone: str, preset: str | Preset, out: Path, data_dir: Path | None = None,
          seeds: tuple[int, ...] | None = None, log: Callable[[str], None] = print,
          rows: tuple[str, ...] | None = None, holdout_fraction: float | None = None,
          command: str | None = None) -> dict:
    """Run the comparison and write report.md, results.json, results.csv and plots into `out`; `preset` is a
    name from PRESETS or a Preset of one's own (reported as "custom"); `rows` limits the report to some rows
    (Original and Retrain are always in: every other row is measured against them)."""
    from e2urec.report import write_report

    preset_name = preset if isinstance(preset, str) else "custom"
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise E2URecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    if seeds:
        preset = replace(preset, seeds=tuple(seeds))
    if holdout_fraction is not None:
        preset = replace(preset, holdout_fraction=holdout_fraction)
    if preset.backbone and preset.backbone != backbone:
        log(f"preset {preset_name}: backbone {preset.backbone} (instead of {backbone})")
        backbone = preset.backbone
    unknown = sorted(set(rows or ()) - set(ROWS))
    if unknown:
        raise E2URecError(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    wanted = rows or tuple(r for r in ROWS if r not in preset.skip_rows)
    chosen = tuple(r for r in ROWS if r in {"original", EXACT, *wanted})
    out = Path(out)
    made_by = provenance(command)  # the code as it is when the run starts
    stage = Stages(log)
    per_seed = {seed: run_seed(out / f"seed-{seed}", dataset, data_dir, backbone, preset, seed, stage, chosen)
                for seed in preset.seeds}
    config = {**asdict(preset), "dataset": dataset, "backbone": backbone, "preset": preset_name, "rows": chosen,
              **made_by}
    return write_report(out, per_seed, config, machine())
