"""The bench end to end on a micro preset: every method row on one seed, report files, gap
closure, and reruns that skip exactly the stages whose inputs did not change."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from e2urec.bench import APPROXIMATE, ROWS, TEACHER_ROW, VARIANTS, Preset, bench, closure

QUICK = {"max_steps": 1, "batch_size": 8}
MICRO = Preset(last_n=600, seeds=(0,), train={"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_steps": 2},
               method_options={m: QUICK for m in APPROXIMATE}
               | {m: {**QUICK, "aug_steps": 1} for m in ("e2urec", *VARIANTS)}, mia_samples=40)


def test_gap_closure() -> None:
    assert closure(0.9, 0.85, 0.8) == pytest.approx(0.5)
    assert closure(0.9, 0.7, 0.8) == pytest.approx(2.0)  # beyond Retrain: over-forgetting
    assert closure(0.9, 0.95, 0.8) == pytest.approx(-0.5)
    assert closure(0.9, 0.85, 0.9) is None and closure(None, 0.85, 0.8) is None


def test_bench_writes_the_report_and_resumes(tmp_path: Path) -> None:
    lines: list[str] = []
    results = bench("ml-100k", "tiny", MICRO, tmp_path / "run", log=lines.append)
    expected = list(ROWS)
    expected.insert(expected.index("e2urec") + 1, TEACHER_ROW)
    assert [row["method"] for row in results["methods"]] == expected
    for name in ("report.md", "results.json", "results.csv", "utility_vs_forgetting.png", "time_per_method.png"):
        assert (tmp_path / "run" / name).is_file(), name
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved) >= {"methods", "config", "machine"} and set(saved["per_seed"]) == {"0"}
    retrain = next(r for r in saved["methods"] if r["method"] == "retrain")
    assert retrain["time_vs_retrain"] == 1.0 and retrain["jsd"] < 1e-6
    for rows in saved["per_seed"].values():  # closure is undefined when two micro models tie on forget AUC
        if rows["original"]["forget_auc"] != rows["retrain"]["forget_auc"]:
            assert rows["retrain"]["closure_auc"] == 1.0 and rows["original"]["closure_auc"] == 0.0
    teacher = next(r for r in saved["methods"] if r["method"] == TEACHER_ROW)
    assert 0 <= teacher["forget_auc"] <= 1 and teacher.get("auc") is None
    e2urec = next(r for r in saved["methods"] if r["method"] == "e2urec")
    assert e2urec["seeds"] == 1 and e2urec["auc_std"] == 0.0 and 0 < e2urec["trainable_share"] < 0.05
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| e2urec |" in report  # mean ± std over seeds: tests/test_objectives.py
    assert len(pd.read_csv(tmp_path / "run" / "results.csv")) == len(expected)
    assert not any("skipped" in line for line in lines)
    rerun: list[str] = []
    bench("ml-100k", "tiny", MICRO, tmp_path / "run", log=rerun.append)
    assert rerun and all("skipped" in line for line in rerun)
    changed = replace(MICRO, method_options={**MICRO.method_options, "neggrad": {**QUICK, "gamma": 0.5}})
    again: list[str] = []
    bench("ml-100k", "tiny", changed, tmp_path / "run", log=again.append)
    redone = [line for line in again if "skipped" not in line]
    assert redone == [line for line in redone if "neggrad" in line] and len(redone) == 3, redone
