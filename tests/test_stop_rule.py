"""E2URec's stopping rule and utility guard, on scripted model outputs (no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import e2urec.unlearning.e2urec_rules as e2urec_module
from e2urec.evaluation import paired_auc_change
from e2urec.model.scoring import PromptSet
from e2urec.unlearning.e2urec import E2URec, E2URecConfig
from e2urec.unlearning.e2urec_rules import NonMemberStop


def test_paired_auc_change_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    base = np.array([0.1, 0.4, 0.35, 0.8])  # 3 of 4 (negative, positive) pairs ordered: AUC 0.75
    better = np.array([0.1, 0.2, 0.35, 0.8])  # all 4: AUC 1
    change, se = paired_auc_change(labels, better, base)
    assert change == pytest.approx(0.25) and se > 0
    assert paired_auc_change(labels, base, base) == (0.0, 0.0)
    assert paired_auc_change(np.ones(4, dtype=int), better, base) == (None, 0.0)


def test_paired_standard_error_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)

    def se(n: int) -> float:
        labels = rng.integers(0, 2, n)
        base = rng.random(n) + 0.5 * labels
        return paired_auc_change(labels, base + rng.normal(0, 0.2, n), base)[1]

    assert se(2000) < se(100) / 2


class Scripted:
    """Stands in for the model: each check returns the next scripted P(yes) for the utility set and fixed
    losses for the forget and non-member sets."""

    def __init__(self, utility: PromptSet, p_utility: list[np.ndarray], forget_loss: float, nonmember_loss: float):
        self.utility, self.p_utility = utility, iter(p_utility)
        self.forget_loss, self.nonmember_loss = forget_loss, nonmember_loss

    def __call__(self, backbone, model, data: PromptSet, accelerator):
        if data is self.utility:
            return np.zeros(len(data)), next(self.p_utility)
        loss = self.forget_loss if len(data) == 3 else self.nonmember_loss
        return np.full(len(data), loss), np.full(len(data), 0.5)


def guard_run(monkeypatch: pytest.MonkeyPatch, drop: float, z: float) -> list:
    """Three checks: the Original, then the same predictions with `drop` of the positives ranked lower."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 400)
    base = rng.random(400) + 0.6 * labels
    worse = base.copy()
    positives = np.flatnonzero(labels == 1)
    hit = positives[: int(drop * len(positives))]
    worse[hit] -= 0.6  # these positives lose their lead: the AUC falls
    utility = PromptSet([[1]] * 400, np.zeros(400, dtype=int))
    forget, non_members = PromptSet([[1]] * 3, np.zeros(3, dtype=int)), PromptSet([[1]] * 5, np.zeros(5, dtype=int))
    monkeypatch.setattr(e2urec_module, "answer_losses", Scripted(utility, [base, worse, worse], 0.6, 0.7))
    cfg = E2URecConfig(min_steps=1, utility_tolerance=0.01, utility_z=z, utility_cap=0.1)
    stop = NonMemberStop(None, forget, non_members, utility, labels, cfg)
    return [stop(None, None, step) for step in (0, 10, 20)]


def test_guard_keeps_a_drop_the_valid_samples_cannot_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = guard_run(monkeypatch, drop=0.03, z=1.645)
    change, se = checks[1].record["valid_auc_change"], checks[1].record["valid_auc_change_se"]
    assert -0.01 - 1.645 * se < change < -0.01  # beyond the bare tolerance, within the sampling margin
    assert all(c.keep and not c.stop for c in checks)
    assert checks[2].record["forget_loss"] == pytest.approx(0.6) and checks[2].record["nonmember_loss"] == 0.7
    bare = guard_run(monkeypatch, drop=0.03, z=0.0)  # the same drop against the bare tolerance stops the run
    assert not bare[1].keep and bare[1].stop and "forget_loss" not in bare[1].record


def test_guard_stops_a_drop_beyond_the_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = guard_run(monkeypatch, drop=0.5, z=1.645)
    assert checks[0].keep and not checks[1].keep and checks[1].stop


def test_guard_caps_the_allowed_drop_whatever_its_standard_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop inside 0.01 + z·SE only because the damage also widened the SE (here z = 20) is still refused
    beyond `utility_cap`."""
    checks = guard_run(monkeypatch, drop=0.5, z=20.0)
    change, se = checks[1].record["valid_auc_change"], checks[1].record["valid_auc_change_se"]
    assert change < -0.1 and change > -(0.01 + 20.0 * se)
    assert not checks[1].keep and checks[1].stop


def test_loss_rule_stops_once_the_forget_set_looks_like_non_members(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 50)
    p = rng.random(50)
    utility = PromptSet([[1]] * 50, np.zeros(50, dtype=int))
    forget, non_members = PromptSet([[1]] * 3, np.zeros(3, dtype=int)), PromptSet([[1]] * 5, np.zeros(5, dtype=int))
    monkeypatch.setattr(e2urec_module, "answer_losses", Scripted(utility, [p, p], 0.71, 0.7))
    stop = NonMemberStop(None, forget, non_members, utility, labels, E2URecConfig(min_steps=5))
    early, late = stop(None, None, 0), stop(None, None, 5)
    assert early.keep and not early.stop and "forget_loss" not in early.record  # before min_steps: never
    assert late.keep and late.stop


def test_auc_rule_stops_once_the_forget_set_ranks_no_better_than_non_members(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """level=auc compares ranks, not losses: a forget set still ranked perfectly goes on; once its AUC is down to
    the non-members' (0.75 here), it stops, whatever the losses say."""
    utility = PromptSet([[1]] * 4, np.zeros(4, dtype=int))
    forget, non_members = PromptSet([[1]] * 4, np.array([1, 1, 0, 0])), PromptSet([[1]] * 4, np.array([1, 0, 1, 0]))
    p_non = np.array([0.9, 0.8, 0.6, 0.2])  # yes, no, yes, no: 3 of 4 pairs ordered, AUC 0.75
    p_forget = iter([np.array([0.9, 0.8, 0.3, 0.2]), np.array([0.9, 0.3, 0.4, 0.2])])  # AUC 1, then 0.75

    def scripted(backbone, model, data: PromptSet, accelerator):
        p = np.full(4, 0.5) if data is utility else next(p_forget) if data is forget else p_non
        return np.full(len(data), 0.9 if data is forget else 0.1), p  # losses that alone would stop it

    monkeypatch.setattr(e2urec_module, "answer_losses", scripted)
    backbone = type("Backbone", (), {"answer_ids": (0, 1)})()
    stop = NonMemberStop(backbone, forget, non_members, utility, np.array([0, 1, 0, 1]), E2URecConfig(min_steps=1),
                         level="auc")
    stop(None, None, 0)  # the first check is the Original's utility: the reference of the paired change
    going, done = stop(None, None, 10), stop(None, None, 20)
    assert not going.stop and going.record["forget_auc"] == 1.0 and going.record["nonmember_auc"] == 0.75
    assert done.stop and done.record["forget_auc"] == 0.75


@pytest.mark.parametrize(("n_forget", "expected"), [(5, 256), (34, 272), (100, 800), (500, 1024)])
def test_checks_score_fewer_samples_for_small_forget_sets(n_forget: int, expected: int) -> None:
    """A one-user request spends most of its time scoring checks: the non-member and utility samples follow the
    forget set (8 per prompt, at least 256), up to `monitor_samples`; every bench slice (≥ 128 prompts) keeps it."""
    samples = pd.DataFrame({"split": ["train"] * (n_forget + 3) + ["valid"],
                            "forget": [True] * n_forget + [False] * 4})
    method = E2URec(E2URecConfig())
    assert method.monitor_size(type("Job", (), {"samples": samples})()) == expected
    assert E2URec(E2URecConfig(monitor_samples=100)).monitor_size(type("Job", (), {"samples": samples})()) == 100


def test_nothing_to_unlearn_when_the_calibrated_teacher_is_the_original() -> None:
    """α = 0 from the non-member rule: the Original already loses as much on the forget set as on non-members,
    the teacher equals it, and the student is not trained (training towards the Original only adds noise)."""
    method = E2URec(E2URecConfig())
    assert not method.nothing_to_unlearn()  # no teacher yet
    method.facts["alpha"] = {"rule": "nonmember", "alpha": 0.0}
    assert method.nothing_to_unlearn()
    method.facts["alpha"] = {"rule": "nonmember", "alpha": 0.4}
    assert not method.nothing_to_unlearn()
    make = e2urec_module.teacher_pairs("augmented", np.array([[0.0, 0.0]]), np.array([1]), np.array([[0.0, 2.0]]))
    assert e2urec_module.calibrate_alpha(make, np.array([1]), target=0.5, alpha_max=50) == 0.0  # log 2 ≥ 0.5


def test_non_members_are_held_out_users_of_the_training_period(tmp_path) -> None:
    """Prepare's held-out users come first: unseen users of the same period, what the forgotten users are to
    Retrain. Without them (holdout_fraction 0) the forgotten users' later samples are used, as before."""
    from e2urec.data.prepare import PrepareConfig, prepare
    from e2urec.data.sources import fetch
    from e2urec.data.store import load_prepared

    method = E2URec(E2URecConfig())
    for fraction, pool in ((0.1, "held-out users' training-period samples"), (0.0, "forgotten users' valid samples")):
        folder = tmp_path / str(fraction)
        prepare(PrepareConfig("ml-100k", data_dir=str(fetch("ml-100k").path), last_n=3000, seed=1,
                              holdout_fraction=fraction), folder)
        samples = load_prepared(folder)[0]
        rows, name = method.non_member_rows(type("Job", (), {"samples": samples, "data": folder})())
        assert name == pool
        if fraction:
            held = samples[samples["split"] == "holdout"]
            assert len(rows) == min(len(held), method.monitor_size(type("Job", (), {"samples": samples})()))
            assert set(rows["sample_id"]) <= set(held["sample_id"])
