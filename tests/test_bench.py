"""The bench end to end on a micro preset: every method row, mean ± std over two seeds, report files, and a
rerun that skips every finished stage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from e2urec.bench import ROWS, Preset, bench

MICRO = Preset(last_n=600, seeds=(0, 1), train={"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_steps": 2},
               method_options={m: {"max_steps": 1, "batch_size": 8} for m in ("e2urec", "neggrad", "label-flip",
                                                                               "badt")}
               | {"e2urec": {"max_steps": 1, "batch_size": 8, "aug_steps": 1}}, mia_samples=40)


def test_bench_writes_the_report_and_resumes(tmp_path: Path) -> None:
    lines: list[str] = []
    results = bench("ml-100k", "tiny", MICRO, tmp_path / "run", log=lines.append)
    assert [row["method"] for row in results["methods"]] == list(ROWS)
    for name in ("report.md", "results.json", "results.csv", "utility_vs_forgetting.png", "time_per_method.png"):
        assert (tmp_path / "run" / name).is_file(), name
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved) >= {"methods", "config", "machine"} and set(saved["per_seed"]) == {"0", "1"}
    retrain = next(r for r in saved["methods"] if r["method"] == "retrain")
    assert retrain["time_vs_retrain"] == 1.0 and retrain["jsd"] < 1e-6
    e2urec = next(r for r in saved["methods"] if r["method"] == "e2urec")
    assert e2urec["seeds"] == 2 and e2urec["auc_std"] is not None and 0 < e2urec["trainable_share"] < 0.05
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| e2urec |" in report and " ± " in report
    assert len(pd.read_csv(tmp_path / "run" / "results.csv")) == len(ROWS)
    assert not any("skipped" in line for line in lines)
    rerun: list[str] = []
    bench("ml-100k", "tiny", MICRO, tmp_path / "run", log=rerun.append)
    assert rerun and all("skipped" in line for line in rerun)
