"""The real pretrained backbone learns the task: LoRA-tuning SmolLM2-135M on ~200 real ML-100K samples beats
the untuned model's test AUC. Slow (minutes on 2 CPU cores): run with `pytest -m slow`."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import TrainConfig
from e2urec.evaluation import EvalConfig, evaluate, utility_metrics
from e2urec.model.backbone import load_backbone
from e2urec.model.scoring import score
from e2urec.training import train


@pytest.mark.slow
def test_lora_tuned_smollm2_beats_the_untuned_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    prepare(PrepareConfig(dataset="ml-100k", last_n=500), data)
    samples, _ = load_prepared(data)
    test = rows_for(samples, "test")
    untuned = utility_metrics(test["label"].to_numpy(), score(load_backbone("smollm2-135m"), test["prompt"].tolist(),
                                                              batch_size=16))
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=8, max_steps=25, eval_batch_size=16)
    meta = train(data, "original", "smollm2-135m", tmp_path / "model", cfg, lora=True)
    assert meta["fit"]["steps"] == 25 and meta["trainable_params"] < 0.01 * meta["total_params"]
    tuned = evaluate(tmp_path / "model", data, "test", tmp_path / "eval", EvalConfig(batch_size=16))
    assert tuned["n"] == len(test)
    assert tuned["auc"] > untuned["auc"], (tuned["auc"], untuned["auc"])
