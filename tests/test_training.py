"""The one training engine and the train/evaluate commands on a small real ML-100K slice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from e2urec.checkpoint import load_model
from e2urec.cli import app
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.roles import rows_for
from e2urec.data.sources import fetch
from e2urec.data.store import load_prepared
from e2urec.engine import TrainConfig, fit, trainable_state
from e2urec.errors import E2URecError
from e2urec.evaluation import EvalConfig, evaluate, utility_metrics
from e2urec.model.backbone import load_backbone
from e2urec.model.scoring import prompt_set
from e2urec.training import AnswerCrossEntropy, train

runner = CliRunner()
FAST = TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=6, eval_batch_size=64)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "prep"
    prepare(PrepareConfig("ml-100k", data_dir=str(fetch("ml-100k").path), last_n=400), out)
    return out


@pytest.fixture(scope="module")
def original(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models") / "original"
    train(data, "original", "tiny", out, FAST)
    return out


def test_utility_metrics_against_hand_computed_values() -> None:
    labels = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = utility_metrics(labels, p)
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 positive/negative pairs ordered right
    assert m["acc"] == pytest.approx(0.75)
    expected = -np.mean([np.log(0.9), np.log(0.6), np.log(0.35), np.log(0.8)])
    assert m["logloss"] == pytest.approx(expected)
    assert utility_metrics(np.array([1, 1]), np.array([0.2, 0.9]))["auc"] is None


def test_train_writes_safetensors_and_meta_then_evaluates(data: Path, original: Path, tmp_path: Path) -> None:
    files = {p.name for p in original.iterdir()}
    assert "model.safetensors" in files and "meta.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    meta = json.loads((original / "meta.json").read_text())
    samples, manifest = load_prepared(data)
    assert meta["data"]["samples_sha256"] == manifest["samples_sha256"]
    assert meta["trainable_params"] == meta["total_params"] > 0
    assert meta["train_seconds"] > 0 and meta["fit"]["steps"] == 6
    assert set(meta["valid"]) >= {"auc", "acc", "logloss", "n"}
    metrics = evaluate(original, data, "test", tmp_path / "eval")
    preds = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    test_rows = rows_for(samples, "test")
    assert metrics["n"] == len(test_rows) == len(preds)
    assert sorted(preds["sample_id"]) == sorted(test_rows["sample_id"])
    assert ((preds["p_yes"] > 0) & (preds["p_yes"] < 1)).all()
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["auc"] == pytest.approx(metrics["auc"])


def test_retrain_excludes_the_forget_set_and_lora_trains_only_adapters(data: Path, tmp_path: Path) -> None:
    meta = train(data, "retrain", "tiny", tmp_path / "retrain", FAST, lora=True)
    samples, _ = load_prepared(data)
    assert meta["train_samples"] == len(rows_for(samples, "retain")) < len(rows_for(samples, "train"))
    assert 0 < meta["trainable_params"] < 0.2 * meta["total_params"]
    assert (tmp_path / "retrain" / "adapter_model.safetensors").is_file()
    backbone, _ = load_model(tmp_path / "retrain")
    fresh = dict(load_backbone("tiny", seed=0).model.named_parameters())
    adapters = 0
    for name, value in backbone.model.named_parameters():
        if "lora_" in name:
            adapters += 1
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(fresh[plain], value), f"frozen backbone tensor {plain} changed"
    assert adapters > 0


def test_training_is_deterministic_and_resumes_after_an_interruption(data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=32, eval_batch_size=64)
    samples, _ = load_prepared(data)
    rows = rows_for(samples, "train").head(96)  # 3 steps an epoch: determinism and resume do not need more

    def run(ckpt: Path | None, fail_in_epoch: int | None = None) -> dict[str, torch.Tensor]:
        backbone = load_backbone("tiny", seed=0)
        backbone.model.requires_grad_(True)
        objective = AnswerCrossEntropy(backbone.kind)
        real_loss = objective.loss

        def loss(model: torch.nn.Module, batches: dict) -> torch.Tensor:
            if fail_in_epoch is not None and calls.setdefault("epoch", 0) == fail_in_epoch:
                raise KeyboardInterrupt
            return real_loss(model, batches)

        calls: dict = {}
        objective.loss = loss
        objective.streams = lambda epoch, step: (calls.__setitem__("epoch", epoch), ("train",))[1]
        fit(backbone, objective, {"train": prompt_set(backbone, rows)}, cfg, checkpoint_dir=ckpt)
        return trainable_state(backbone.model)

    straight = run(None)
    again = run(None)
    assert all(torch.equal(straight[k], again[k]) for k in straight), "same seed, same weights"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "ckpt", fail_in_epoch=1)
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["epoch"] == 0
    resumed = run(tmp_path / "ckpt")
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight), "resume = uninterrupted"


def test_early_stopping_restores_the_best_epoch(data: Path) -> None:
    backbone = load_backbone("tiny", seed=0)
    backbone.model.requires_grad_(True)
    samples, _ = load_prepared(data)
    losses = iter([1.0, 0.5, 0.9, 0.8, 0.7, 0.1])
    snapshots: list[dict] = []

    def valid(model: torch.nn.Module, accelerator: object) -> float:
        snapshots.append(trainable_state(model))
        return next(losses)

    cfg = TrainConfig(epochs=6, lr=1e-3, batch_size=64, patience=3, max_steps=None)
    result = fit(backbone, AnswerCrossEntropy(backbone.kind),
                 {"train": prompt_set(backbone, rows_for(samples, "train").head(64))}, cfg, valid_loss=valid)
    assert result.epochs_run == 5 and result.best_valid_loss == 0.5
    final = trainable_state(backbone.model)
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)


def test_keep_last_runs_every_epoch_and_keeps_the_last(data: Path) -> None:
    """keep=last: a worse validation loss neither stops training nor picks the weights; the loss is still
    recorded, the best one reported, and `kept` says why the last epoch was kept."""
    backbone = load_backbone("tiny", seed=0)
    backbone.model.requires_grad_(True)
    samples, _ = load_prepared(data)
    losses = iter([1.0, 0.5, 0.9, 0.8, 0.7])
    snapshots: list[dict] = []

    def valid(model: torch.nn.Module, accelerator: object) -> float:
        snapshots.append(trainable_state(model))
        return next(losses)

    cfg = TrainConfig(epochs=5, lr=1e-3, batch_size=64, patience=1, keep="last")
    result = fit(backbone, AnswerCrossEntropy(backbone.kind),
                 {"train": prompt_set(backbone, rows_for(samples, "train").head(64))}, cfg, valid_loss=valid)
    assert result.epochs_run == 5 and result.best_valid_loss == 0.5
    assert [r["valid_loss"] for r in result.history] == [1.0, 0.5, 0.9, 0.8, 0.7]
    assert result.kept["epoch"] == 5 and "keep=last" in result.kept["why"]
    final = trainable_state(backbone.model)
    assert all(torch.equal(final[k], snapshots[-1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[1][k]) for k in final), "not the best epoch's weights"
    with pytest.raises(E2URecError, match="--keep"):
        TrainConfig(keep="newest")


def test_planted_pickle_is_refused_and_corrupt_safetensors_is_a_clear_error(original: Path, tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    for item in original.iterdir():
        (planted / item.name).write_bytes(item.read_bytes())
    (planted / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(E2URecError, match="pickle"):
        load_model(planted)
    (planted / "pytorch_model.bin").unlink()
    (planted / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(E2URecError):
        load_model(planted)


def test_cli_train_and_evaluate(data: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--backbone",
                                 "tiny-t5", "--max-steps", "3", "--batch-size", "16", "--epochs", "1", "--keep",
                                 "last"])
    assert result.exit_code == 0, result.output
    assert "valid AUC" in result.output and "the last epoch (keep=last)" in result.output
    bad = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "m2"), "--keep", "newest"])
    assert bad.exit_code == 2 and not (tmp_path / "m2").exists()
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m"), "--data", str(data),
                                 "--split", "forget", "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["split"] == "forget"
    bad = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "m"), "--data", str(data),
                              "--split", "nope", "--out", str(tmp_path / "e2")])
    assert bad.exit_code == 2 and "'nope' is not one of" in bad.output


def test_two_processes_train_and_count_every_sample_once(data: Path, tmp_path: Path) -> None:
    """2 real CPU processes (torchrun; `accelerate launch --cpu` starts one with accelerate 1.15): DDP training,
    then sharded evaluation equal to 1 process."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "e2urec"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    model = tmp_path / "ddp"
    done = subprocess.run(launch + ["train", "--data", str(data), "--out", str(model), "--max-steps", "4",
                                    "--epochs", "1", "--batch-size", "8"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(launch + ["evaluate", "--model", str(model), "--data", str(data), "--split", "test",
                                    "--batch-size", "7", "--out", str(tmp_path / "e2")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    single = evaluate(model, data, "test", tmp_path / "e1", EvalConfig(batch_size=7))
    two = pd.read_parquet(tmp_path / "e2" / "predictions.parquet").set_index("sample_id")
    one = pd.read_parquet(tmp_path / "e1" / "predictions.parquet").set_index("sample_id")
    assert len(two) == single["n"] and two.index.is_unique
    assert np.allclose(two.loc[one.index, "p_yes"], one["p_yes"], atol=1e-5)


def test_cli_anchor_prints_and_writes_its_metrics(data: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["anchor", "--data", str(data), "--split", "test", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["split"] == "test" and 0 <= saved["auc"] <= 1
    again = runner.invoke(app, ["anchor", "--data", str(data), "--out", str(tmp_path / "a")])
    assert again.exit_code == 2 and "--overwrite" in again.output  # an existing evaluation is not replaced silently
    inside = runner.invoke(app, ["anchor", "--data", str(data), "--out", str(data / "x")])
    assert inside.exit_code == 2 and not (data / "x").exists()  # never inside its input
