"""No silent divergence: a non-finite loss or gradient stops training with a clear error and writes nothing; NaN
predictions are named, never a traceback; clipping is on by default and recorded; files stay strict JSON."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.engine import TrainConfig, fit
from e2urec.errors import Diverged, NonFinite
from e2urec.evaluation import utility_metrics
from e2urec.io import sha256_file, write_json_atomic
from e2urec.model.backbone import load_backbone
from e2urec.model.scoring import PromptSet, answer_logits, per_sample
from e2urec.ops.forget import forget
from e2urec.ops.request import read_request
from e2urec.ops.run import init_run
from e2urec.training import AnswerCrossEntropy, train
from e2urec.unlearning.e2urec_rules import calibrate_alpha, teacher_pairs
from e2urec.unlearning.losses import forgetting_teacher_logits, label_push_logits

runner = CliRunner()
DIVERGING_LR = "10"  # AdamW moves every weight by about lr per step: the tiny backbone overflows within 3 steps


def test_train_that_diverges_is_a_clear_error_and_writes_nothing(workspace: Path) -> None:
    out = workspace / "diverged"
    result = runner.invoke(app, ["train", "--data", str(workspace / "data"), "--out", str(out), "--epochs", "2",
                                 "--lr", DIVERGING_LR, "--batch-size", "16"])
    assert result.exit_code == 2, result.output
    assert "original: training diverged at optimiser step" in result.output
    assert "lower learning rate" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_unlearn_that_diverges_leaves_no_model_and_no_scratch(workspace: Path) -> None:
    out = workspace / "unlearned-diverged"
    result = runner.invoke(app, ["unlearn", "--method", "e2urec", "--model", str(workspace / "original"),
                                 "--data", str(workspace / "data"), "--out", str(out), "--lr", DIVERGING_LR,
                                 "--max-steps", "6", "--set", "alpha_rule=fixed", "--set", "stop=none"])
    assert result.exit_code == 2, result.output
    assert "e2urec: training diverged" in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert not (workspace / f".{out.name}.work").exists()  # nothing derived from the forget set is left


class NanAt:
    """Answer cross-entropy that turns NaN at one optimiser step (counted from 0)."""

    def __init__(self, kind: str, step: int):
        self.plain, self.step, self.calls = AnswerCrossEntropy(kind), step, 0

    def streams(self, epoch: int, step: int) -> tuple[str, ...]:
        return ("train",)

    def loss(self, model: torch.nn.Module, batches: dict) -> torch.Tensor:
        loss = self.plain.loss(model, batches)
        self.calls += 1
        return loss * float("nan") if self.calls == self.step + 1 else loss


def small_set(backbone, n: int = 24) -> PromptSet:
    ids = [backbone.tokenizer(f"user {i} liked film {i % 5}. Will they like film {i % 3}?")["input_ids"]
           for i in range(n)]
    return PromptSet(ids, np.asarray(backbone.answer_ids)[np.arange(n) % 2])


def test_the_engine_names_the_run_and_step_and_keeps_nothing() -> None:
    backbone = load_backbone("tiny", seed=0)
    backbone.model.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    with pytest.raises(Diverged, match=r"shard 3: training diverged at optimiser step 3: loss nan"):
        fit(backbone, NanAt(backbone.kind, 2), {"train": small_set(backbone)},
            TrainConfig(epochs=1, lr=1e-3, batch_size=4), desc="shard 3")
    assert any(not torch.equal(before[n], p) for n, p in backbone.model.named_parameters())  # it did train first


def test_clipping_is_on_by_default_and_recorded(tmp_path: Path, workspace: Path) -> None:
    assert TrainConfig().max_grad_norm == 1.0  # the HF Trainer's default
    tight = train(workspace / "data", "original", "tiny", tmp_path / "tight",
                  TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=3, max_grad_norm=1e-6))
    free = train(workspace / "data", "original", "tiny", tmp_path / "free",
                 TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=3, max_grad_norm=0))
    (t,), (f,) = tight["fit"]["history"], free["fit"]["history"]
    assert t["clipped_share"] == 1.0 and t["grad_norm"] > 1e-6
    assert f["clipped_share"] == 0.0
    assert math.isclose(t["grad_norm"], f["grad_norm"], rel_tol=0.2)  # the first step's norm is the same
    assert tight["config"]["max_grad_norm"] == 1e-6
    assert tight["fit"]["kept"] == {"epoch": 1, "step": 3, "why": f"lowest valid loss ({t['valid_loss']:.4f})"}


def test_a_nan_weight_is_named_when_scored(workspace: Path) -> None:
    broken = workspace / "nan-weights"
    shutil.copytree(workspace / "original", broken)
    weights = load_file(broken / "model.safetensors")
    name = next(k for k, v in weights.items() if v.dtype.is_floating_point and v.ndim == 2)
    weights[name][0, 0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    meta = json.loads((broken / "meta.json").read_text())  # as if it had been written so (checksums: below)
    meta["weights_sha256"]["model.safetensors"] = sha256_file(broken / "model.safetensors")
    (broken / "meta.json").write_text(json.dumps(meta))
    out = workspace / "eval-nan"
    result = runner.invoke(app, ["evaluate", "--model", str(broken), "--data", str(workspace / "data"),
                                 "--split", "test", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "nan-weights: 1 weight tensors hold NaN or infinity" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not out.exists()


def test_a_diverging_attempt_escalates_and_the_request_is_still_honoured(trained: Path, tmp_path: Path) -> None:
    run = init_run(tmp_path / "run", trained / "data", trained / "original",
                   {"max_steps": 6, "alpha_rule": "fixed", "lr": float(DIVERGING_LR), "stop": "none"},
                   key_file=tmp_path / "run.key", audit={"audit_retries": 1})
    user = str(_a_train_user(run))
    record = forget(run, read_request(users=[user]), log=lambda _: None)
    assert record["status"] == "done"
    attempts = record["metrics"]["audit"]["attempts"]
    assert [a["verdict"] for a in attempts[:-1]] == ["broken", "broken"]
    assert all("diverged" in a["error"] for a in attempts[:-1]) and attempts[-1]["method"] == "retrain"
    assert not re.search(rf"(?<![\w.]){user}(?![\w.])", json.dumps(record))  # the id, not a digit run inside a number


def _a_train_user(run: Path):
    from e2urec.data.store import load_prepared

    samples, _ = load_prepared(run / "current" / "data")
    return samples.loc[samples["split"] == "train", "user_id"].value_counts(ascending=True).index[0]


def test_json_files_stay_strict(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "m.json", {"loss": float("nan"), "rows": [float("inf"), 1.5], "n": np.float64("nan")})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "loss": None, "rows": [None, 1.5], "n": None}


def test_teacher_arithmetic_is_float32_and_overflow_safe() -> None:
    z = torch.tensor([[3.0, 250.0], [-1.0, 0.5]], dtype=torch.bfloat16)
    aug = z + torch.tensor([[0.0, 0.0078125], [0.0, 0.0]], dtype=torch.bfloat16)
    assert forgetting_teacher_logits(z, aug, 2.0).dtype == torch.float32
    assert label_push_logits(z, torch.tensor([1, 0]), (0, 1), 1.0).dtype == torch.float32
    logits = np.array([[-3e4, 3e4], [3e4, -3e4], [0.0, 1.0]], dtype=np.float32)
    yes = np.array([1, 0, 1])
    with np.errstate(all="raise"):  # no overflow in exp, however large the logits
        alpha = calibrate_alpha(teacher_pairs("label", logits, yes), yes, 1.0, 50.0)
    assert 0 < alpha <= 50.0


def test_a_bf16_forward_reads_the_same_answer_position(tiny) -> None:
    """bf16 autocast on CPU (E2UREC_PRECISION=bf16) gives logits close to full precision's."""
    data = small_set(tiny, 4)
    batch = {"input_ids": torch.tensor([data.ids[0]]), "attention_mask": torch.ones(1, len(data.ids[0]), dtype=int)}
    full = answer_logits(tiny.model, batch, tiny.kind).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = answer_logits(tiny.model, batch, tiny.kind).float()
    assert torch.isfinite(half).all() and (full - half).abs().max() < 0.1 * full.abs().max()


def test_nan_outputs_are_named_not_a_traceback(tiny) -> None:
    data = small_set(tiny, 6)
    with pytest.raises(NonFinite, match=r"backbone tiny: 6 of 6 samples scored NaN or infinite \(probe\)"):
        per_sample(tiny, data, lambda b: torch.full((len(b["index"]),), float("nan")), 4, desc="probe", progress=False)
    with pytest.raises(NonFinite, match="1 of 2 predictions are NaN"):
        utility_metrics(np.array([0, 1]), np.array([0.2, float("nan")]))


def test_changed_weight_bytes_are_refused_by_their_checksum(workspace: Path) -> None:
    damaged = workspace / "flipped-weights"
    shutil.copytree(workspace / "original", damaged)
    weights = damaged / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    weights.write_bytes(bytes(data))
    out = workspace / "eval-flipped"
    result = runner.invoke(app, ["evaluate", "--model", str(damaged), "--data", str(workspace / "data"),
                                 "--split", "test", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "model.safetensors: does not match the sha256 meta.json recorded" in " ".join(result.output.split())
    assert not out.exists()


def test_a_degenerate_unlearning_is_named_and_not_written(workspace: Path) -> None:
    """NegGrad at lr 1000: Adam moves every weight by ~1000 a step; after 5 steps every P(yes) is exactly 0.5,
    which every forget metric would read as perfect forgetting."""
    out = workspace / "neggrad-degenerate"
    result = runner.invoke(app, ["unlearn", "--method", "neggrad", "--model", str(workspace / "original"),
                                 "--data", str(workspace / "data"), "--out", str(out), "--lr", "1000",
                                 "--max-steps", "5"])
    assert result.exit_code == 2, result.output
    assert "neggrad: the unlearned model is degenerate" in " ".join(result.output.split())
    assert not out.exists() and not (workspace / f".{out.name}.work").exists()


def test_evaluate_flags_a_degenerate_model(tiny) -> None:
    from e2urec.evaluation.metrics import degenerate

    assert degenerate(np.full(10, 0.5), 3.0).startswith("constant predictions")
    assert degenerate(np.linspace(0.1, 0.9, 10), 2e4).startswith("exploded weights")
    assert degenerate(np.linspace(0.1, 0.9, 10), 3.0) is None
