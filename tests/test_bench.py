"""The bench end to end on a micro preset: every method row on one seed, report files, gap
closure, and reruns that skip exactly the stages whose inputs did not change. The same run serves the CPU
side of the `gpu` preset: its own backbone replacing bench's, its evaluation batch, and the GPU measurement's
results file built from the bench folder (nothing here needs a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from e2urec.bench import APPROXIMATE, PRESETS, ROWS, TEACHER_ROW, VARIANTS, bench, closure
from e2urec.checkpoint import read_meta
from e2urec.evaluation import jsd_yes_no
from e2urec.report import power

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"max_steps": 1, "batch_size": 8}
# The `gpu` preset on a micro slice (one bench run is the file's whole cost, so every test below reads it): its
# own backbone (tiny in place of SmolLM2, which bench is asked for) and evaluation batch, the micro recipe.
MICRO = replace(PRESETS["gpu"], backbone="tiny", last_n=300, seeds=(0,),
                train={"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_steps": 2},
                method_options={m: QUICK for m in APPROXIMATE}
                | {m: {**QUICK, "aug_steps": 1} for m in ("e2urec", *VARIANTS)}, mia_samples=40, eval_batch_size=32)
# The same preset without a backbone of its own: bench's `backbone` argument is used.
PLAIN = replace(MICRO, backbone=None)


@pytest.fixture(scope="module")
def micro_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str], Path]:
    """The micro bench, run once: its results, its log lines and its folder (`<E2>/bench`, as the GPU measurement
    lays it out)."""
    out = tmp_path_factory.mktemp("e2") / "bench"
    lines: list[str] = []
    results = bench("ml-100k", "smollm2-135m", MICRO, out, log=lines.append)
    return results, lines, out


def test_gap_closure() -> None:
    assert closure(0.9, 0.85, 0.8) == pytest.approx(0.5)
    assert closure(0.9, 0.7, 0.8) == pytest.approx(2.0)  # beyond Retrain: over-forgetting
    assert closure(0.9, 0.95, 0.8) == pytest.approx(-0.5)
    assert closure(0.9, 0.85, 0.9) is None and closure(None, 0.85, 0.8) is None


def test_gpu_preset_runs_every_method_with_the_tiny_backbone(micro_bench: tuple[dict, list[str], Path]) -> None:
    """The preset's own code paths (its backbone replacing bench's, its evaluation batch) on a micro slice, then
    the GPU measurement's results file built from the bench folder."""
    results, lines, out = micro_bench
    assert results["config"]["backbone"] == "tiny" and results["config"]["eval_batch_size"] == 32
    assert set(ROWS) <= {row["method"] for row in results["methods"]}
    assert any("backbone tiny (instead of smollm2-135m)" in line for line in lines)
    e2 = out.parent
    measured = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_measure.sh"), "summary"], cwd=ROOT,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "E2": str(e2),
                                  "OUT": str(e2 / "out"), "PYTHON": sys.executable},
                             capture_output=True, text=True, timeout=120)
    assert measured.returncode == 0, measured.stderr[-2000:]
    [path] = (e2 / "out").glob("gpu-*.json")
    report = json.loads(path.read_text())
    assert set(ROWS) <= {row["method"] for row in report["bench"]["methods"]}
    assert set(ROWS) <= set(report["bench"]["rows"])
    assert report["bench"]["rows"]["e2urec"]["forget"]["jsd"] is not None
    assert report["versions"]["torch"] and report["bench"]["exit_status"] == -1  # no status file: bench not run here


def test_bench_writes_the_report(micro_bench: tuple[dict, list[str], Path]) -> None:
    results, lines, out = micro_bench
    expected = list(ROWS)
    expected.insert(expected.index("e2urec") + 1, TEACHER_ROW)
    assert [row["method"] for row in results["methods"]] == expected
    for name in ("report.md", "results.json", "results.csv", "utility_vs_forgetting.png", "time_per_method.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) >= {"methods", "config", "machine"} and set(saved["per_seed"]) == {"0"}
    retrain = next(r for r in saved["methods"] if r["method"] == "retrain")
    assert retrain["time_vs_retrain"] == 1.0 and retrain["jsd"] < 1e-6
    for rows in saved["per_seed"].values():  # closure is undefined when two micro models tie on forget AUC
        if rows["original"]["forget_auc"] != rows["retrain"]["forget_auc"]:
            assert rows["retrain"]["closure_auc"] == 1.0 and rows["original"]["closure_auc"] == 0.0
    reseeded = {row: read_meta(out / "seed-0" / row) for row in ("original-reseed", "retrain-reseed")}
    assert reseeded["retrain-reseed"]["role"] == "retrain" and reseeded["original-reseed"]["role"] == "original"
    assert reseeded["retrain-reseed"]["config"]["seed"] == reseeded["original-reseed"]["config"]["seed"] == 1000
    floor = next(r for r in saved["methods"] if r["method"] == "retrain-reseed")
    assert floor["jsd"] > 0 and floor["forget_auc"] is not None  # another exact Retrain is not this one
    # The same two-token distance on the test samples of users nobody forgot, from the stored predictions
    samples = pd.read_parquet(out / "seed-0" / "data" / "samples.parquet")
    test = samples[samples["split"] == "test"]
    others = test.loc[~test["user_id"].isin(samples.loc[samples["forget"], "user_id"]), "sample_id"]
    assert 0 < len(others) <= len(test)
    p = {row: pd.read_parquet(out / "seed-0" / "eval" / f"{row}-test" / "predictions.parquet")
         .set_index("sample_id").loc[others, "p_yes"].to_numpy() for row in ("retrain", "retrain-reseed")}
    assert floor["jsd_yesno_others"] == pytest.approx(jsd_yes_no(p["retrain-reseed"], p["retrain"]), rel=1e-9)
    assert floor["jsd_yesno_excess"] == pytest.approx(floor["jsd_yesno"] - floor["jsd_yesno_others"])
    assert retrain["jsd_yesno_others"] < 1e-6 and abs(retrain["jsd_yesno_excess"]) < 1e-6
    teacher = next(r for r in saved["methods"] if r["method"] == TEACHER_ROW)
    assert 0 <= teacher["forget_auc"] <= 1 and teacher.get("auc") is None
    e2urec = next(r for r in saved["methods"] if r["method"] == "e2urec")
    assert e2urec["seeds"] == 1 and e2urec["auc_std"] == 0.0 and 0 < e2urec["trainable_share"] < 0.15  # adapters
    report = (out / "report.md").read_text()
    assert "| e2urec |" in report  # mean ± std over seeds: tests/test_objectives.py
    assert len(pd.read_csv(out / "results.csv")) == len(expected)
    assert not any("skipped" in line for line in lines)
    # Power: the Original–Retrain gap against the reseed floor, per seed, from the same per-seed rows
    rows = saved["per_seed"]["0"]
    gap = abs(rows["original"]["forget_auc"] - rows["retrain"]["forget_auc"])
    floor = max(abs(rows["original-reseed"]["forget_auc"] - rows["original"]["forget_auc"]),
                abs(rows["retrain-reseed"]["forget_auc"] - rows["retrain"]["forget_auc"]))
    assert saved["power"]["metric"] == "forget_auc"
    assert saved["power"]["per_seed"]["0"]["gap"] == pytest.approx(gap)
    assert saved["power"]["per_seed"]["0"]["floor"] == pytest.approx(floor)
    assert "Power on forget_auc" in report
    # Provenance: the version, and the commit of this checkout (the tests run from one)
    assert saved["config"]["e2urec_version"] and saved["config"]["command"] is None  # called from Python
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        assert saved["config"]["commit"] == head.stdout.strip() and isinstance(saved["config"]["dirty"], bool)


def test_power_is_the_gap_over_the_larger_reseed_move() -> None:
    rows = {"original": {"m": 0.9}, "retrain": {"m": 0.3}, "original-reseed": {"m": 0.88},
            "retrain-reseed": {"m": 0.35}}
    result = power({0: rows, 1: {**rows, "original-reseed": {"m": 0.9}, "retrain-reseed": {"m": 0.3}}}, "m")
    assert result["per_seed"]["0"] == pytest.approx({"gap": 0.6, "floor": 0.05, "ratio": 12.0})
    assert result["per_seed"]["1"]["ratio"] is None  # a zero floor: no ratio, and enough under a nonzero gap
    assert result["min_ratio"] == pytest.approx(12.0) and result["powered"]
    assert power({0: {**rows, "retrain-reseed": {"m": None}}}, "m") is None
    weak = power({0: {**rows, "retrain-reseed": {"m": 0.45}}}, "m")  # floor 0.15 under a 0.6 gap: 4×
    assert weak["min_ratio"] == pytest.approx(4.0) and not weak["powered"]
    assert not power({0: {**rows, "retrain": {"m": 0.9}, "retrain-reseed": {"m": 0.9},
                          "original-reseed": {"m": 0.9}}}, "m")["powered"]  # no gap at all


def test_bench_resumes_and_redoes_only_changed_stages(micro_bench: tuple[dict, list[str], Path]) -> None:
    """Runs last (it rewrites the folder): the same stages through bench's own `backbone` argument are all
    skipped; a changed method option redoes that method's stages only."""
    _, _, out = micro_bench
    rerun: list[str] = []
    bench("ml-100k", "tiny", PLAIN, out, log=rerun.append)
    assert rerun and all("skipped" in line for line in rerun)
    changed = replace(PLAIN, method_options={**PLAIN.method_options, "neggrad": {**QUICK, "gamma": 0.5}})
    again: list[str] = []
    bench("ml-100k", "tiny", changed, out, log=again.append)
    redone = [line for line in again if "skipped" not in line]
    assert redone == [line for line in redone if "neggrad" in line] and len(redone) == 3, redone


def test_a_diverging_method_is_a_failed_row_and_the_others_still_report(
        micro_bench: tuple[dict, list[str], Path]) -> None:
    """After the rerun test: E2URec at lr 10 diverges; its row is empty and says why, every other row is there."""
    _, _, out = micro_bench
    lines: list[str] = []
    broken = {**PLAIN.method_options["e2urec"], "lr": 10.0, "max_steps": 6, "stop": "none", "alpha_rule": "fixed"}
    results = bench("ml-100k", "tiny", replace(PLAIN, method_options={**PLAIN.method_options, "e2urec": broken}),
                    out, log=lines.append)
    row = results["per_seed"]["0"]["e2urec"]
    assert "e2urec: training diverged" in row["failed"] and row["auc"] is None and row["closure_auc"] is None
    assert all(r["auc"] is not None for m, r in results["per_seed"]["0"].items() if m != "e2urec")
    assert "**e2urec failed**" in (out / "report.md").read_text()
    assert any("e2urec: FAILED" in line for line in lines)
