"""Every unlearning method end to end on a tiny ML-100K slice: runs, writes meta, evaluates; plus E2URec's
guarantees (frozen backbone, purged intermediates) and the shard systems' retrain-only-what-holds-forget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from e2urec.checkpoint import load_model
from e2urec.cli import app
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.roles import rows_for
from e2urec.data.sources import fetch
from e2urec.data.store import load_prepared
from e2urec.engine import Check, TrainConfig
from e2urec.evaluation import evaluate
from e2urec.model.scoring import score
from e2urec.unlearning import METHODS
from e2urec.unlearning.e2urec_rules import NonMemberStop
from e2urec.unlearning.runner import unlearn, unlearn_model
from e2urec.unlearning.sharded import train_system

runner = CliRunner()
TINY = TrainConfig(epochs=1, lr=1e-3, batch_size=16, max_steps=3, eval_batch_size=64)
QUICK = {"max_steps": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def run(workspace: Path) -> Path:
    return workspace


def test_e2urec_changes_only_adapters_and_purges_forget_derived_files(run: Path) -> None:
    out = run / "e2urec-kept"
    augmented = {**QUICK, "push": "augmented", "alpha_rule": "fixed", "aug_steps": 2}
    meta = unlearn("e2urec", run / "original", run / "data", out, augmented, keep_intermediates=True, overwrite=True)
    work = run / ".e2urec-kept.work"
    assert (work / "augmented" / "model.safetensors").is_file(), "--keep-intermediates keeps the augmented model"
    assert meta["trainable_params"] < 0.15 * meta["total_params"]  # adapters only (the tiny model is 95% embeddings)
    original = load_file(run / "original" / "model.safetensors")
    student, _ = load_model(out)
    changed_adapters = 0
    for name, value in student.model.named_parameters():
        if "lora_" in name:
            changed_adapters += int("lora_B" in name and bool(value.abs().sum() > 0))
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(original[plain], value.detach()), f"{plain} is no longer the Original's"
    assert changed_adapters > 0, "LoRA B matrices start at zero; training must have moved them"
    assert set(load_file(out / "adapter_model.safetensors")) and not (out / "model.safetensors").exists()
    unlearn("e2urec", run / "original", run / "data", run / "e2urec-purged", augmented)
    assert not (run / ".e2urec-purged.work").exists()
    leftovers = [p for p in (run / "e2urec-purged").rglob("*") if "augment" in p.name or "teacher" in p.name]
    assert leftovers == []


def test_unlearn_model_keeps_the_student_in_memory_and_no_scratch(run: Path) -> None:
    """The in-memory core that a deletion request escalates with: nothing is written, the forget-derived scratch is
    purged before it returns, and the student scores as the folder `unlearn` writes from the same inputs."""
    trains = {**QUICK, "alpha_rule": "fixed", "stop": "none"}  # a student that moves: not the Original itself
    done = unlearn_model("e2urec", run / "original", run / "data", run / "in-memory", trains)
    assert not (run / "in-memory").exists() and not (run / ".in-memory.work").exists()
    assert "base" not in done.meta and done.meta["method"] == "e2urec" and done.meta["steps"] == 2
    written = unlearn("e2urec", run / "original", run / "data", run / "written", trains, overwrite=True)
    assert "model" in written["base"] and not (run / ".written.work").exists()
    prompts = rows_for(load_prepared(run / "data")[0], "forget")["prompt"].tolist()[:16]
    assert abs(score(done.model, prompts) - score(load_model(run / "written")[0], prompts)).max() < 1e-5


def test_registry_lists_every_method() -> None:
    assert set(METHODS) == {"e2urec", "retrain", "neggrad", "badt", "label-flip", "npo", "simnpo", "sisa",
                            "receraser"}
    result = runner.invoke(app, ["methods"], terminal_width=400)
    assert result.exit_code == 0 and "e2urec" in result.output and "alpha=2.0" in result.output
    assert "forget_only=1.0" in result.output and "share of the steps" in result.output
    one = runner.invoke(app, ["methods", "e2urec"], terminal_width=400).output
    assert "profiles (default | reference)" in one and "push: default=label  reference=augmented" in one
    assert "\n    lr: default" not in one  # only where the profiles differ


def test_profiles_list_the_same_options_and_the_default_is_the_configs_own() -> None:
    """One PROFILES table: `reference` pins every value it sets, `default` sets the same options to the config's
    own defaults, so `profile=default` and no profile are one configuration."""
    from dataclasses import asdict

    from e2urec.unlearning.e2urec import PROFILES, E2URecConfig

    assert set(PROFILES["default"]) == set(PROFILES["reference"])
    plain = asdict(E2URecConfig())
    assert {k: plain[k] for k in PROFILES["default"]} == PROFILES["default"]
    assert asdict(E2URecConfig.from_options({"profile": "default"})) == plain
    reference = asdict(E2URecConfig.from_options({"profile": "reference"}))
    assert {k: reference[k] for k in PROFILES["reference"]} == PROFILES["reference"]


def test_e2urec_stopping_rule_teacher_and_alpha_are_recorded(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the forget set "already looks like non-members" wherever the rule is scored: it stops at min_steps
    scored = NonMemberStop.__call__

    def reached(*args: object) -> Check:
        check = scored(*args)
        return replace(check, stop=check.stop or "forget_loss" in check.record)

    monkeypatch.setattr(NonMemberStop, "__call__", reached)
    meta = unlearn("e2urec", run / "original", run / "data", run / "e2urec-stop",
                   {"batch_size": 8, "min_steps": 2, "check_every": 1, "level": "loss"}, overwrite=True)
    schedule = meta["schedule"]
    assert schedule["stopped_at"] == 2 and meta["steps"] == 2 < schedule["total_steps"]
    assert [c["step"] for c in schedule["checks"]] == [0, 1, 2]
    # the loss rule is scored only once it may stop the run (from min_steps); the utility guard at every check
    assert set(schedule["checks"][0]) >= {"valid_auc"} and "forget_loss" not in schedule["checks"][0]
    assert {"forget_loss", "nonmember_loss", "valid_auc"} <= set(schedule["checks"][-1])
    assert 0 <= meta["teacher"]["auc"] <= 1 and meta["teacher"]["n"] == meta["forget_samples"]
    assert meta["alpha"]["rule"] == "nonmember" and 0 <= meta["alpha"]["alpha"] <= 50
    assert meta["fit"]["loop_seconds"] <= meta["unlearn_seconds"]
    reference = unlearn("e2urec", run / "original", run / "data", run / "e2urec-ref",
                        {"profile": "reference", "aug_steps": 2, "max_steps": 3}, overwrite=True)
    assert reference["hyperparameters"]["alpha_rule"] == "fixed" and "alpha" not in reference
    assert reference["schedule"]["checks"] == [] and reference["steps"] == 3


def test_label_push_needs_no_augmented_model_and_compares_aucs(run: Path) -> None:
    """push=label: no augmented or control model is tuned, the teacher lowers every true answer (α = 2 log-odds
    ranks the forget set's negatives above its positives); level=auc: the stopping rule compares AUCs, and the
    calibrated teacher ranks the forget set no better than the Original ranks the non-members."""
    options = {"batch_size": 8, "min_steps": 2, "check_every": 1, "max_steps": 3}  # the default: label, auc
    fixed = unlearn("e2urec", run / "original", run / "data", run / "e2urec-label",
                    {**options, "alpha_rule": "fixed", "alpha": 2.0}, overwrite=True, keep_intermediates=True)
    assert not (run / ".e2urec-label.work" / "augmented").exists() and "augmented" not in fixed
    assert fixed["teacher"]["auc"] < 0.5
    assert {"forget_auc", "nonmember_auc"} <= set(fixed["schedule"]["checks"][-1])
    calibrated = unlearn("e2urec", run / "original", run / "data", run / "e2urec-label-auc", options, overwrite=True)
    alpha = calibrated["alpha"]
    assert alpha["level"] == "auc" and 0 <= alpha["alpha"] < 50
    assert calibrated["teacher"]["auc"] <= alpha["target_auc"] + 2e-3  # α = 0 when already ranked worse


@pytest.mark.parametrize("options", [{"epochs": -1}, {"alpha": float("nan")}, {"forget_only": 2.0},
                                     {"lora_targets": "everything"}, {"nope": 1}])
def test_bad_options_are_refused_before_any_work(run: Path, options: dict) -> None:
    from e2urec.errors import E2URecError

    with pytest.raises(E2URecError):
        unlearn("e2urec", run / "original", run / "data", run / "refused", options)
    assert not (run / "refused").exists() and not (run / ".refused.work").exists()


@pytest.mark.parametrize("targets", ["all-linear", "all-linear+embeddings"])
def test_lora_targets_reach_more_of_the_model(run: Path, targets: str) -> None:
    attention = unlearn("e2urec", run / "original", run / "data", run / "lora-attn",
                        {"max_steps": 1, "stop": "none", "lora_targets": "attention"}, overwrite=True)
    wider = unlearn("e2urec", run / "original", run / "data", run / f"lora-{targets}",
                    {"max_steps": 1, "stop": "none", "lora_targets": targets}, overwrite=True)
    assert wider["trainable_params"] > attention["trainable_params"]
    adapters = load_file(run / f"lora-{targets}" / "adapter_model.safetensors")
    assert any("mlp" in k for k in adapters)
    assert any("embed" in k for k in adapters) == (targets == "all-linear+embeddings")


@pytest.fixture(scope="module")
def one_user_run(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Forget one user: their rows sit in one RecEraser shard (user groups) but not in every SISA shard."""
    samples, _ = load_prepared(run / "data")
    train_rows = rows_for(samples, "train")
    user = train_rows["user_id"].value_counts().index[-1]
    root = tmp_path_factory.mktemp("one-user")
    prepare(PrepareConfig("ml-100k", data_dir=str(fetch("ml-100k").path), last_n=300, forget_users=[str(user)]),
            root / "data")
    return root


@pytest.mark.parametrize("system", ["sisa", "receraser"])
def test_shard_systems_retrain_exactly_the_shards_holding_forget_rows(one_user_run: Path, system: str) -> None:
    root = one_user_run
    train_system(root / "data", system, "tiny", root / system, TINY)
    samples, _ = load_prepared(root / "data")
    column = f"{system}_shard"
    expected = sorted(int(s) for s in samples.loc[samples["forget"], column].unique())
    meta = unlearn(system, root / system, root / "data", root / f"{system}-u", {"max_steps": 2}, overwrite=True)
    assert meta["retrained_shards"] == expected and len(expected) < meta["shards"]
    for s in range(meta["shards"]):
        before = (root / system / f"shard-{s}" / "model.safetensors").read_bytes()
        after = (root / f"{system}-u" / f"shard-{s}" / "model.safetensors").read_bytes()
        assert (before != after) == (s in expected), f"shard {s}"
    if system == "receraser":
        assert (root / f"{system}-u" / "aggregator.safetensors").is_file()
    metrics = evaluate(root / f"{system}-u", root / "data", "test", root / f"{system}-eval")
    assert metrics["n"] == len(rows_for(samples, "test"))


def test_unlearn_cli_reports_and_rejects_bad_options(run: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["unlearn", "--method", "neggrad", "--model", str(run / "original"), "--data",
                                 str(run / "data"), "--out", str(tmp_path / "n"), "--max-steps", "1",
                                 "--set", "gamma=0.5"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "n" / "meta.json").read_text())["hyperparameters"]["gamma"] == 0.5
    for args, message in ((["--method", "nope"], "unknown method"), (["--method", "neggrad", "--set", "alpha=1"],
                                                                      "alpha"),
                          (["--method", "sisa"], "needs a sisa system")):
        bad = runner.invoke(app, ["unlearn", "--model", str(run / "original"), "--data", str(run / "data"),
                                  "--out", str(tmp_path / "x"), *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output


def test_unlearn_refuses_an_original_trained_on_other_rows(run: Path, tmp_path: Path) -> None:
    from e2urec.errors import E2URecError

    other = tmp_path / "other-data"
    prepare(PrepareConfig("ml-100k", data_dir=str(fetch("ml-100k").path), last_n=320, forget_fraction=0.2), other)
    with pytest.raises(E2URecError, match="not trained on the train rows"):
        unlearn("neggrad", run / "original", other, tmp_path / "x", QUICK)
    assert not (tmp_path / "x").exists()
