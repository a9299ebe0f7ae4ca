"""An unlearning that ends where it started (its stopping rule or guard kept the starting state, or it found
nothing to unlearn) forgot nothing, and every surface says so: meta.json's `unchanged`, the bench report, and a
deletion request, which is not `done` on such a result unless its audit passes."""

from __future__ import annotations

from e2urec.engine import FitResult
from e2urec.ops.escalation import unchanged_is_not_done
from e2urec.report import unchanged_seeds
from e2urec.unlearning.base import REGISTRY
from e2urec.unlearning.runner import unchanged


def result(step: int, why: str) -> FitResult:
    return FitResult(epochs_run=1, steps=10, seconds=1.0, best_valid_loss=None,
                     kept={"epoch": 0 if step == 0 else 1, "step": step, "why": why})


def test_a_kept_starting_state_is_unchanged_for_approximate_methods_only() -> None:
    e2urec = REGISTRY["e2urec"](REGISTRY["e2urec"].Config.from_options({}))
    rolled = unchanged(e2urec, result(0, "the last state the monitor approved (step 0)"))
    assert rolled is not None and "the result is the Original" in rolled and "step 0" in rolled
    assert unchanged(e2urec, result(40, "the last state the monitor approved (step 40)")) is None
    assert unchanged(e2urec, FitResult(epochs_run=0, steps=0, seconds=0.0, best_valid_loss=None)) is None  # no kept
    retrain = REGISTRY["retrain"](REGISTRY["retrain"].Config.from_options({}))
    assert unchanged(retrain, result(0, "the starting weights")) is None  # exact: trained from scratch anyway


def test_an_unchanged_result_is_not_done_unless_the_audit_passes() -> None:
    insufficient = {"verdict": "insufficient", "failed_on": [], "reason": "the version before did not fit them"}
    facts = {"unchanged": "the result is the Original: nothing to unlearn"}
    failed = unchanged_is_not_done(insufficient, facts)
    assert failed["verdict"] == "fail" and failed["failed_on"] == ["unchanged"]
    assert "ended where it started" in failed["reason"] and "nothing to unlearn" in failed["reason"]
    assert insufficient["verdict"] == "insufficient"  # the record given is not changed in place
    passed = {"verdict": "pass", "failed_on": [], "reason": "remembered before; now indistinguishable"}
    assert unchanged_is_not_done(passed, facts) is passed  # the audit passes it: done
    assert unchanged_is_not_done(insufficient, {"unchanged": None}) is insufficient  # it trained: as before


def test_the_report_names_the_seeds_where_a_method_ended_where_it_started() -> None:
    per_seed = {0: {"e2urec": {"unchanged": True}, "npo": {"unchanged": False}, "original": {"unchanged": None}},
                1: {"e2urec": {"unchanged": False}}, 2: {"e2urec": {"unchanged": True}}}
    assert unchanged_seeds(per_seed) == {"e2urec": ["0", "2"]}


def test_options_the_settings_do_not_read_are_named_and_contradictions_refused() -> None:
    import pytest

    from e2urec.errors import E2URecError

    config = REGISTRY["e2urec"].Config
    given = {"alpha": 5.0, "aug_steps": 10, "check_every": 3, "beta": 0.5}
    unread = config.from_options(given).ignored_options(set(given))
    assert set(unread) == {"alpha", "aug_steps", "beta"} and "nonmember" in unread["alpha"]
    assert "forget_only=1" in unread["beta"] and "push=label" in unread["aug_steps"]
    label = {"push": "label", "alpha_rule": "fixed", "alpha": 5.0, "aug_steps": 10, "stop": "none",
             "check_every": 3, "level": "auc"}
    unread = config.from_options(label).ignored_options(set(label))
    assert set(unread) == {"aug_steps", "check_every", "level"}
    assert config.from_options({"profile": "reference"}).ignored_options({"profile"}) == {}  # a profile's own values
    with pytest.raises(E2URecError, match="aug_steps and aug_epochs both size"):
        config.from_options({"aug_steps": 10, "aug_epochs": 2.0})
    assert REGISTRY["npo"].Config.from_options({}).ignored_options({"lr"}) == {}


def test_unlearn_warns_before_it_starts(tmp_path) -> None:
    from typer.testing import CliRunner

    from e2urec.cli import app

    result = CliRunner().invoke(app, ["unlearn", "--method", "e2urec", "--model", str(tmp_path / "none"), "--data",
                                      str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--set", "alpha=5"],
                                terminal_width=400)
    assert "warning: alpha is given but not used: alpha_rule=nonmember chooses α" in result.output
    assert result.exit_code == 2 and not (tmp_path / "out").exists()  # then the missing model stops it
