"""Precision is chosen by E2UREC_PRECISION (auto, fp32, bf16), so the GPU's bf16 numerics run and are tested on a
CPU: bf16 evaluation stays within a stated tolerance of full precision. The accelerator's precision is fixed per
process, so the bf16 side runs in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from e2urec.engine import make_accelerator
from e2urec.errors import E2URecError
from e2urec.evaluation import evaluate

# The tiny backbone's P(yes) under bf16 autocast vs float32 on the fixture's test split: max |Δ| 0.0011 measured.
BF16_TOLERANCE = 0.01


def test_bf16_evaluation_matches_full_precision(workspace: Path) -> None:
    full = evaluate(workspace / "original", workspace / "data", "test", workspace / "eval-fp32")
    env = {**os.environ, "E2UREC_PRECISION": "bf16", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "e2urec", "evaluate", "--model", str(workspace / "original"),
                           "--data", str(workspace / "data"), "--split", "test", "--out",
                           str(workspace / "eval-bf16")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    p32, p16 = (pd.read_parquet(workspace / f"eval-{p}" / "predictions.parquet")["p_yes"].to_numpy()
                for p in ("fp32", "bf16"))
    gap = np.abs(p32 - p16)
    assert 0 < gap.max() < BF16_TOLERANCE  # not 0: bf16 really ran
    assert full["n"] == len(p16)


def test_an_unknown_precision_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2UREC_PRECISION", "fp8")
    with pytest.raises(E2URecError, match="E2UREC_PRECISION='fp8' is not one of auto, fp32, bf16"):
        make_accelerator()


def test_a_student_kept_in_memory_loses_trainings_bf16_wrapper() -> None:
    """accelerate wraps the forward of a model it prepares in bf16 autocast; `unlearn_model` takes the wrapper off,
    so a student kept in memory (a deletion request's) scores in full precision, as the written model would."""
    script = (
        "import torch\n"
        "from e2urec.engine import make_accelerator\n"
        "from e2urec.model.backbone import load_backbone\n"
        "from e2urec.unlearning.runner import without_training_wrappers\n"
        "model = load_backbone('tiny', seed=0).model\n"
        "ids = torch.tensor([[5, 6, 7, 8]])\n"
        "full = model(input_ids=ids).logits\n"
        "accelerator = make_accelerator()\n"
        "accelerator.prepare(model, torch.optim.AdamW(model.parameters()))\n"
        "assert '_original_forward' in model.__dict__ and not torch.equal(model(input_ids=ids).logits, full)\n"
        "without_training_wrappers(model)\n"
        "assert '_original_forward' not in model.__dict__ and torch.equal(model(input_ids=ids).logits, full)\n"
    )
    env = {**os.environ, "E2UREC_PRECISION": "bf16", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
