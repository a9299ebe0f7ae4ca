"""The contract every registered unlearning method keeps; a method joins this matrix by being registered.

Each runs from its kind of trained model (the Original, or a shard system for the sharded family), writes a
meta.json with its costs, trains the share of parameters it claims, leaves no intermediates behind, is
scored by `evaluate`, and refuses bad options before doing any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2urec.engine import TrainConfig
from e2urec.errors import E2URecError
from e2urec.evaluation import EvalConfig, evaluate
from e2urec.unlearning.base import REGISTRY
from e2urec.unlearning.runner import unlearn
from e2urec.unlearning.sharded import train_system

TINY = TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=3, eval_batch_size=64)
QUICK = {"max_steps": 2, "batch_size": 8}  # fields every method config has
# The one-epoch fixture Original ranks the non-members better than the forget set, so E2URec's calibrated α is 0
# and it would train nothing (correctly: `unchanged`); a fixed α makes it train, which is what the contract reads.
TRAINS = {"e2urec": {"alpha_rule": "fixed"}}
META_KEYS = {"method", "unlearn_seconds", "trainable_params", "total_params", "peak_memory_bytes", "steps",
             "hyperparameters", "fit", "forget_samples"}


@pytest.fixture(scope="module")
def run(workspace: Path) -> Path:
    return workspace


def source(run: Path, name: str) -> Path:
    """What the method unlearns from: the Original, or the shard system its family needs (trained once)."""
    if REGISTRY[name].family != "sharded":
        return run / "original"
    system = run / f"{name}-system"
    if not (system / "meta.json").is_file():
        train_system(run / "data", name, "tiny", system, TINY)
    return system


@pytest.mark.parametrize("name", list(REGISTRY))
def test_method_keeps_the_contract(run: Path, name: str) -> None:
    cls = REGISTRY[name]
    out = run / name
    meta = unlearn(name, source(run, name), run / "data", out, {**QUICK, **TRAINS.get(name, {})}, overwrite=True)
    on_disk = json.loads((out / "meta.json").read_text())
    assert set(on_disk) >= META_KEYS and on_disk["method"] == name == meta["method"]
    assert on_disk["unlearn_seconds"] > 0 and on_disk["forget_samples"] > 0
    # no step only where every shard to retrain lost all its rows (training on nothing: the initial model)
    assert on_disk["steps"] > 0 or on_disk["emptied_shards"] == on_disk["retrained_shards"] != []
    assert on_disk["hyperparameters"]["max_steps"] == 2
    share = on_disk["trainable_params"] / on_disk["total_params"]
    # a LoRA student trains adapters only: on the tiny backbone (95% embeddings) the default embedding adapter makes
    # that 11.5% of the parameters; a full fine-tune trains them all
    assert (share < 0.15) if cls.lora else (share <= 1), share
    assert share > 0 or on_disk["steps"] == 0
    assert ("base" in on_disk) == (cls.lora or on_disk.get("lora") is not None or cls.family == "exact")
    assert not (run / f".{name}.work").exists(), "intermediates are purged"
    metrics = evaluate(out, run / "data", "forget", run / "eval" / name, EvalConfig(mia_samples=30),
                       reference=run / "original")
    assert metrics["n"] == on_disk["forget_samples"] and 0 <= metrics["jsd"] <= 0.6932
    assert metrics["sym_kl"] >= metrics["jsd"], "the symmetrised KL bounds the JSD from above"
    assert 0 <= metrics["auc"] <= 1 and 0 <= metrics["mia_auc"] <= 1


@pytest.mark.parametrize("name", list(REGISTRY))
@pytest.mark.parametrize("options", [{"nope": 1}, {"seed": -1}, {"max_steps": 0}, {"lr": float("nan")}])
def test_method_refuses_bad_options_before_any_work(run: Path, name: str, options: dict) -> None:
    out = run / f"refused-{name}"
    with pytest.raises(E2URecError):
        unlearn(name, run / "original", run / "data", out, options)
    assert not out.exists() and not (run / f".{out.name}.work").exists()
