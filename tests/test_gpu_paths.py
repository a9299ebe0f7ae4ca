"""The CPU side of the GPU work: the `gpu` preset, the engine's GPU speed features (forced on here), evaluation
that scores each model once, and the GPU benchmark scripts on tiny sizes. Nothing here needs a GPU. The `gpu`
preset's bench on a micro slice and the GPU measurement's results file: tests/test_bench.py (one bench run serves
both)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import e2urec.evaluation.evaluator as evaluation
from e2urec.bench import PRESETS
from e2urec.data.roles import rows_for
from e2urec.engine import TrainConfig, fit, make_accelerator, trainable_state
from e2urec.errors import E2URecError
from e2urec.evaluation import EvalConfig, distances, evaluate, membership_auc
from e2urec.model.backbone import BACKBONES, load_backbone
from e2urec.model.scoring import PromptSet, answer_logits, per_sample_p_yes, prompt_set
from e2urec.speed import Speed, bucketed_batches
from e2urec.training import train

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_gpu_preset_is_a_valid_one_seed_smollm2_recipe() -> None:
    gpu = PRESETS["gpu"]
    recipe = TrainConfig(**{**gpu.train, "seed": 0, "max_length": gpu.max_length})
    assert gpu.backbone in BACKBONES and gpu.seeds == (0,) and gpu.last_n <= 100_000
    assert recipe.batch_size * recipe.grad_accum == 32  # the paper's batch
    assert all(p.backbone is None and p.eval_batch_size == 64 for name, p in PRESETS.items() if name != "gpu")


def test_bucketed_batches_read_every_sample_once_in_full_steps_of_similar_length() -> None:
    lengths = np.random.default_rng(0).integers(5, 300, size=203).tolist()
    batches = bucketed_batches(lengths, 4, 2, torch.Generator().manual_seed(0), window=5)
    assert sorted(i for b in batches for i in b) == list(range(203))
    steps = [batches[i] + batches[i + 1] for i in range(0, len(batches) - 1, 2)]
    assert all(len(s) == 8 for s in steps[:-1]) and len(batches[-1]) <= 4  # only the last step is short
    assert batches == bucketed_batches(lengths, 4, 2, torch.Generator().manual_seed(0), window=5)

    def padding(groups: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in g) * len(g) - sum(lengths[i] for i in g) for g in groups)

    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(0)).tolist()
    assert padding(batches) < padding([shuffled[i:i + 4] for i in range(0, 203, 4)]) / 3


class Recording:
    """Answer cross-entropy that records which samples each forward read, per epoch; fails in epoch
    `fail_in` (an interruption)."""

    def __init__(self, kind: str, fail_in: int | None = None):
        self.kind = kind
        self.fail_in = fail_in
        self.reads: list[tuple[int, list[int]]] = []
        self.epoch = 0

    def streams(self, epoch: int, step: int) -> tuple[str, ...]:
        self.epoch = epoch
        return ("train",)

    def loss(self, model: torch.nn.Module, batches: dict) -> torch.Tensor:
        batch = batches["train"]
        if self.epoch == self.fail_in:
            raise KeyboardInterrupt
        self.reads.append((self.epoch, batch["index"].tolist()))
        return F.cross_entropy(answer_logits(model, batch, self.kind).float(), batch["target"])


def fit_tiny(cfg: TrainConfig, speed: Speed | None, n: int = 30, checkpoint: Path | None = None,
             fail_in: int | None = None) -> tuple[dict[str, torch.Tensor], Recording]:
    backbone = load_backbone("tiny", seed=0)
    backbone.model.requires_grad_(True)
    rng = np.random.default_rng(0)
    data = PromptSet([rng.integers(10, 1000, size=k).tolist() for k in rng.integers(3, 30, size=n)],
                     np.asarray(backbone.answer_ids)[rng.integers(0, 2, size=n)])
    objective = Recording(backbone.kind, fail_in)
    fit(backbone, objective, {"train": data}, cfg, accelerator=make_accelerator(), speed=speed,
        checkpoint_dir=checkpoint, fingerprint={"test": 1})
    return trainable_state(backbone.model), objective


def test_one_forward_per_step_keeps_the_effective_batch_and_reads_each_sample_once() -> None:
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=4, grad_accum=3)  # 30 samples: steps of 12, 12, 6
    split, by_parts = fit_tiny(cfg, Speed())
    merged, by_step = fit_tiny(cfg, Speed(device_batch=12))
    assert [len(ids) for _, ids in by_step.reads] == [12, 12, 6] * 2
    parts = [i for _, ids in by_parts.reads for i in ids]
    assert [i for _, ids in by_step.reads for i in ids] == parts  # the same samples in the same steps
    for epoch in (0, 1):
        assert sorted(i for e, ids in by_step.reads if e == epoch for i in ids) == list(range(30))
    # Same gradients up to float rounding (which AdamW's normalisation lifts to ~1e-5 where gradients are ~0;
    # an lr-1e-3 step moves weights by ~1e-3), except in the short last step: the engine divides each forward's
    # loss by the forwards per step, so there 6 samples weigh 1/2 each in 2 forwards, 1 in one.
    first, _ = fit_tiny(replace(cfg, epochs=1, max_steps=2), Speed())
    again, _ = fit_tiny(replace(cfg, epochs=1, max_steps=2), Speed(device_batch=12))
    assert all(torch.allclose(first[k], again[k], atol=1e-4) for k in first)
    assert split.keys() == merged.keys()


def test_bucketing_reads_each_sample_once_per_epoch_in_steps_of_the_recipe() -> None:
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=4, grad_accum=2)
    _, record = fit_tiny(cfg, Speed(bucket=True, device_batch=4))
    for epoch in (0, 1):
        reads = [ids for e, ids in record.reads if e == epoch]
        assert sorted(i for ids in reads for i in ids) == list(range(30))
        assert [len(ids) for ids in reads] == [4] * 7 + [2]


def test_device_batch_must_divide_the_step() -> None:
    with pytest.raises(E2URecError, match="must divide"):
        fit_tiny(TrainConfig(epochs=1, batch_size=4, grad_accum=2), Speed(device_batch=3))


def test_cpu_default_is_the_plain_loop_and_fused_adamw_resumes(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=8)
    assert Speed.auto(torch.device("cpu"), cfg) == Speed()
    assert Speed.auto(torch.device("cuda"), replace(cfg, grad_accum=2)).device_batch == 16
    default, _ = fit_tiny(cfg, None)
    plain, _ = fit_tiny(cfg, Speed())
    assert all(torch.equal(default[k], plain[k]) for k in default)
    fused = Speed(fused=True, sync_every=50)
    whole, _ = fit_tiny(cfg, fused)
    assert all(torch.allclose(whole[k], plain[k], atol=1e-5) for k in whole)
    with pytest.raises(KeyboardInterrupt):
        fit_tiny(cfg, fused, checkpoint=tmp_path / "ckpt", fail_in=1)  # interrupted in epoch 2...
    resumed, record = fit_tiny(cfg, fused, checkpoint=tmp_path / "ckpt")  # ...resumes after epoch 1
    assert {e for e, _ in record.reads} == {1}
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_evaluate_scores_each_model_once_per_split_with_the_same_metrics(trained: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data = trained / "data"
    train(data, "retrain", "tiny", tmp_path / "retrain", TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=2))
    cfg = EvalConfig(batch_size=16, mia_samples=20)
    counts: dict[str, int] = {}
    loaded = evaluation.load_model

    def counting(folder: Path, **kwargs):
        backbone, meta = loaded(folder, **kwargs)
        backbone.model.register_forward_hook(
            lambda m, args, kw, out: counts.__setitem__(folder.name, counts.get(folder.name, 0)
                                                        + len(kw["input_ids"])), with_kwargs=True)
        return backbone, meta

    monkeypatch.setattr(evaluation, "load_model", counting)
    metrics = evaluate(trained / "original", data, "forget", tmp_path / "e", cfg, reference=tmp_path / "retrain")
    samples = evaluation.load_prepared(data)[0]
    n, attack = len(rows_for(samples, "forget")), 20 + 2 * 20  # members + non-members
    assert counts == {"original": n + attack, "retrain": n + attack}  # one forward per sample and model

    monkeypatch.setattr(evaluation, "load_model", loaded)
    model, ref = (evaluation.load_model(p)[0] for p in (trained / "original", tmp_path / "retrain"))
    rows = rows_for(samples, "forget")
    split = prompt_set(model, rows)
    accelerator = make_accelerator()
    p, p_ref = (per_sample_p_yes(b, split, 16, accelerator) for b in (model, ref))
    expected = {**distances(model, ref, split, cfg, accelerator),
                "mia_auc": membership_auc(model, samples, rows, p, cfg, accelerator),
                "mia_auc_reference": membership_auc(ref, samples, rows, p_ref, cfg, accelerator)}
    assert {k: metrics[k] for k in expected} == expected  # bit for bit what the four-pass evaluation gave
    saved = evaluation.pd.read_parquet(tmp_path / "e" / "predictions.parquet")
    assert np.array_equal(saved["p_yes"].to_numpy(), p)


@pytest.mark.parametrize("script, args", [
    ("gpu_train.py", ["--batch-sizes", "4", "--steps", "2", "--warmup", "1", "--last-n", "400"]),
    ("gpu_eval.py", ["--prompts", "24", "--batch-sizes", "8,16", "--last-n", "400"]),
])
def test_gpu_benchmarks_run_on_tiny_sizes(script: str, args: list[str]) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--backbone", "tiny", *args],
                          env=SCRIPT_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    if script == "gpu_train.py":
        assert [r["loop"] for r in report["rows"]] == ["plain", "engine (features off)", "engine (GPU features)"]
        assert all(r["samples_per_second"] > 0 and r["mfu"] is None for r in report["rows"])  # no GPU peak here
    else:
        assert [r["batch_size"] for r in report["rows"]] == [8, 8, 16]
        assert report["rows"][1]["p_yes_equal"] and report["rows"][1]["max_distance_difference"] == 0
        assert report["rows"][2]["p_yes_close"]


def test_the_gpu_loop_reads_nothing_back_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the GPU settings, the engine's own code (the loop, the divergence watch, clipping, the losses) reads
    tensor values back to the host a fixed number of times per epoch, however many steps it runs: on a GPU each
    such read waits for every queued kernel."""
    reads: list[str] = []
    own = ("engine.py", "losses.py", "resume.py", "training.py")

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith(own):
                reads.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    for name in ("item", "__int__", "__float__", "__bool__", "cpu", "numpy", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    per_epoch = []
    for n in (24, 96):  # 6 and 24 optimiser steps
        reads.clear()
        fit_tiny(TrainConfig(epochs=1, lr=1e-3, batch_size=4), Speed(bucket=True, device_batch=4, sync_every=50), n)
        per_epoch.append(len(reads))
    assert per_epoch[0] == per_epoch[1] <= 6, per_epoch  # the loss, the watch, the gradient-norm record
