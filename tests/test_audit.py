"""The forgetting audit of deletion requests (issue 12): the statistic by hand, the verdicts, the escalation paths
(retry, retrain, keep), what the ledger and the CLI show, and bad settings refused with nothing written."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from e2urec.checkpoint import load_model
from e2urec.cli import app
from e2urec.data.store import load_prepared
from e2urec.errors import E2URecError
from e2urec.evaluation import utility_metrics
from e2urec.ops import audit
from e2urec.ops.audit import AuditConfig, Scores, judge, label_stratified_auc, parse_settings
from e2urec.ops.escalation import escalation_plan
from e2urec.ops.forget import forget
from e2urec.ops.request import read_request
from e2urec.ops.run import Run, init_run
from e2urec.unlearning.base import REGISTRY, MethodConfig, RecipeOverrides
from e2urec.unlearning.e2urec import E2URecConfig

runner = CliRunner()
# the loss level: the fixture Original ranks its non-members better than the forget set, so AUC finds nothing
QUICK = {"max_steps": 2, "batch_size": 8, "level": "loss"}


# The tests that force the verdicts (`failing`) forget a light user, the fixture's second heaviest (14 training
# prompts against the heaviest's 154: far less to unlearn), with the minimum lowered below that: the audit is still
# a real comparison (not `insufficient`) before its verdict is forced.
LIGHT_MIN_PROMPTS = 10


def new_run(trained: Path, tmp_path: Path, **settings: object) -> Path:
    return init_run(tmp_path / "run", trained / "data", trained / "original", QUICK, key_file=tmp_path / "run.key",
                    audit=settings)


def train_users(run: Path) -> list[str]:
    samples, _ = load_prepared(run / "current" / "data")
    return [str(u) for u in samples.loc[samples["split"] == "train", "user_id"].value_counts().index]


def test_stratified_auc_by_hand() -> None:
    # Within each label every forget loss is below every non-member loss: a member-like set, AUC 1.
    auc, se, n = label_stratified_auc(np.array([0.1, 0.2, 1.0]), np.array([1, 1, 0]),
                                      np.array([0.5, 0.6, 2.0, 3.0]), np.array([1, 1, 0, 0]))
    assert auc == 1.0 and n == 3
    assert se == pytest.approx(math.sqrt((2 / 3) ** 2 * 5 / 48 + (1 / 3) ** 2 * 4 / 24))
    # Ties count ½; identical losses are indistinguishable.
    assert label_stratified_auc(np.ones(4), np.array([1, 1, 0, 0]), np.ones(6), np.array([1, 0] * 3))[0] == 0.5
    # A user who says Yes more than most is not a member for that: within the Yes label the losses match, so 0.5,
    # although pooled over labels (Yes answers have lower loss here) the forget set would look like members.
    f_loss, f_label = np.array([0.3, 0.5, 0.3, 0.5]), np.ones(4, dtype=int)
    n_loss, n_label = np.array([0.3, 0.5, 1.2, 1.4]), np.array([1, 1, 0, 0])
    assert label_stratified_auc(f_loss, f_label, n_loss, n_label)[0] == 0.5
    pooled = np.mean([(f < n) + 0.5 * (f == n) for f in f_loss for n in n_loss])
    assert pooled > 0.6
    # A label with no non-member is left out; nothing comparable at all gives no statistic.
    assert label_stratified_auc(np.array([0.1]), np.array([0]), np.array([0.5]), np.array([1])) == (None, None, 0)


def scores(forget_loss: np.ndarray, non_loss: np.ndarray, valid_auc: float = 0.7) -> Scores:
    return Scores(forget_loss, non_loss, valid_auc, len(non_loss))


def test_verdicts_pass_fail_insufficient() -> None:
    rng = np.random.default_rng(0)
    cfg = AuditConfig()
    f_label, n_label = rng.integers(0, 2, 200), rng.integers(0, 2, 1000)
    non = rng.gamma(2.0, 0.3, 1000)
    remembered = scores(rng.gamma(2.0, 0.3, 200) * 0.3, non)  # forget losses far below non-members'
    forgotten = scores(rng.gamma(2.0, 0.3, 200), non)         # drawn like non-members
    record = judge(remembered, forgotten, f_label, n_label, cfg)
    assert record["verdict"] == "pass" and record["before"]["mia_auc"] > 0.85
    assert record["after"]["mia_auc"] <= record["threshold"]
    assert record["threshold"] == round(0.5 + cfg.audit_tolerance + 1.645 * record["after"]["se"], 4)
    assert record["forget_prompts"] == 200 and record["non_members"] == 1000
    assert record["forgetting_effect"]["effect"] == pytest.approx(
        forgotten.forget_loss.mean() - remembered.forget_loss.mean()) and record["forgetting_effect"]["z"] > 10
    untouched = judge(remembered, remembered, f_label, n_label, cfg)
    assert untouched["verdict"] == "fail" and untouched["forgetting_effect"]["effect"] == 0
    assert untouched["remembered_before"] and "did not rise" in untouched["reason"]
    # Indistinguishable from non-members already before: nothing measurable to forget, so no pass is claimed
    # (an untouched model would get the same), and no escalation either.
    unchanged = judge(forgotten, forgotten, f_label, n_label, cfg)
    assert unchanged["after"]["mia_auc"] <= unchanged["threshold"] and unchanged["verdict"] == "insufficient"
    assert not unchanged["remembered_before"] and "no memory" in unchanged["reason"]
    # Remembered a little (above chance, under the pass threshold) and left as it was: the effect part fails it.
    slight = scores(forgotten.forget_loss * 0.8, non)
    mild = judge(slight, slight, f_label, n_label, cfg)
    assert mild["remembered_before"] and mild["after"]["mia_auc"] <= mild["threshold"], mild["after"]
    assert mild["verdict"] == "fail" and mild["forgetting_effect"]["effect"] == 0
    # Forgotten, but utility fell by more than the tolerance: fail, with the reason.
    hurt = judge(remembered, scores(forgotten.forget_loss, non, valid_auc=0.6), f_label, n_label, cfg)
    assert hurt["verdict"] == "fail" and "valid AUC dropped" in hurt["reason"]
    # A handful of prompts cannot be told from chance: insufficient, with the figures, never a pass.
    few = judge(scores(remembered.forget_loss[:8], non), scores(forgotten.forget_loss[:8], non), f_label[:8],
                n_label, cfg)
    assert few["verdict"] == "insufficient" and few["after"]["compared"] == 8 and few["threshold"] is None
    # ... but however few the prompts, a version that broke utility is not done (a one-prompt request on the demo
    # slice took valid AUC from 0.63 to 0.42 and was recorded `insufficient`, i.e. done, before this rule).
    broke = judge(scores(remembered.forget_loss[:1], non), scores(forgotten.forget_loss[:1], non, valid_auc=0.42),
                  f_label[:1], n_label, cfg)
    assert broke["verdict"] == "fail" and "valid AUC dropped" in broke["reason"] and broke["threshold"] is None
    assert broke["valid_auc_drop"] == pytest.approx(0.7 - 0.42)


def test_utility_part_allows_for_the_paired_drops_sampling_error() -> None:
    """The utility bound adds z·SE of the paired valid-AUC drop, which is large on 40 rows and small on 4,000 (a
    Retrain differs from the version before by training noise alone, and a few hundred rows cannot resolve 0.02)."""
    rng = np.random.default_rng(1)
    cfg, f_label, n_label = AuditConfig(), rng.integers(0, 2, 200), rng.integers(0, 2, 1000)
    non = rng.gamma(2.0, 0.3, 1000)
    remembered, forgotten = rng.gamma(2.0, 0.3, 200) * 0.3, rng.gamma(2.0, 0.3, 200)
    verdicts = {}
    for n in (40, 4000):
        y = rng.integers(0, 2, n)
        p_before = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, n), 0.01, 0.99)
        p_after = np.clip(p_before + rng.normal(0, 0.08, n), 0.01, 0.99)
        was = Scores(remembered, non, utility_metrics(y, p_before)["auc"], n, p_before, y)
        now = Scores(forgotten, non, utility_metrics(y, p_after)["auc"], n, p_after, y)
        verdicts[n] = judge(was, now, f_label, n_label, cfg)
        assert verdicts[n]["valid_auc_drop"] == pytest.approx(was.valid_auc - now.valid_auc)
        assert verdicts[n]["valid_auc_drop_allowed"] == pytest.approx(
            cfg.audit_utility_tolerance + 1.645 * verdicts[n]["valid_auc_drop_se"], abs=1e-4)
    assert verdicts[40]["valid_auc_drop_se"] > 3 * verdicts[4000]["valid_auc_drop_se"]
    # A version that no longer ranks like the one before has a large paired SE: on 77 valid rows a one-prompt
    # request's drop of 0.212 had SE 0.124, and 0.02 + 1.645·SE would have waved it through. The cap fails it.
    y = rng.integers(0, 2, 77)
    p_before = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 77), 0.01, 0.99)
    p_broken = rng.random(77)  # unrelated to the labels and to the version before
    was = Scores(remembered, non, utility_metrics(y, p_before)["auc"], 77, p_before, y)
    now = Scores(forgotten, non, utility_metrics(y, p_broken)["auc"], 77, p_broken, y)
    broken = judge(was, now, f_label, n_label, cfg)
    assert broken["valid_auc_drop"] > cfg.audit_utility_cap
    assert broken["valid_auc_drop_allowed"] == cfg.audit_utility_cap
    assert broken["verdict"] == "fail" and "valid AUC dropped" in broken["reason"]
    assert cfg.audit_utility_tolerance + 1.645 * broken["valid_auc_drop_se"] > cfg.audit_utility_cap  # SE alone: no
    assert audit.nothing_to_audit(cfg)["verdict"] == "insufficient"


def test_drift_against_the_last_exact_model_by_hand() -> None:
    """Each request is judged against the version before, so small losses add up; the drift part compares the new
    version with the last exact model's kept predictions and fails once the run's budget is spent, even when the
    request itself changed nothing and however few its prompts."""
    rng = np.random.default_rng(2)
    cfg, n = AuditConfig(), 400
    y = rng.integers(0, 2, n)
    p_ref = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, n), 0.01, 0.99)
    reference = pd.DataFrame({"sample_id": np.arange(n), "prompt_sha256": "-", "label": y, "p_yes": p_ref})
    origin = {"version": "v0000", "kind": "original"}
    same = audit.drift(reference, origin, p_ref, cfg)
    assert same["drop"] == 0 and same["rows"] == n and (same["reference"], same["kind"]) == ("v0000", "original")
    worse = np.clip(p_ref + rng.normal(0, 0.3, n), 0.01, 0.99)
    spent = audit.drift(reference, origin, worse, cfg)
    assert spent["drop"] == pytest.approx(utility_metrics(y, p_ref)["auc"] - utility_metrics(y, worse)["auc"])
    assert spent["drop"] == pytest.approx(spent["auc_reference"] - spent["auc_after"])
    assert spent["allowed"] == pytest.approx(cfg.audit_drift_tolerance + 1.645 * spent["se"], abs=1e-4)
    assert spent["drop"] > spent["allowed"]
    assert audit.drift(reference[y == 1], origin, p_ref[y == 1], cfg)["drop"] is None  # one label: nothing to rank
    off = audit.drift(reference, origin, 1 - p_ref, AuditConfig(audit_drift_tolerance=1.0))  # ranks inverted
    assert off["drop"] > 0.5 and off["allowed"] == 1.0, "a tolerance of 1 turns the check off, whatever the cap"

    f_label, n_label = rng.integers(0, 2, 200), rng.integers(0, 2, 1000)
    non = rng.gamma(2.0, 0.3, 1000)
    remembered, forgotten = scores(rng.gamma(2.0, 0.3, 200) * 0.3, non), scores(rng.gamma(2.0, 0.3, 200), non)
    within = judge(remembered, forgotten, f_label, n_label, cfg, same)
    assert within["verdict"] == "pass" and within["failed_on"] == [] and within["drift"] == same
    over = judge(remembered, forgotten, f_label, n_label, cfg, spent)
    assert over["verdict"] == "fail" and over["failed_on"] == ["drift"] and "last exact model" in over["reason"]
    assert over["valid_auc_drop"] == 0, "the request itself changed nothing against the version before"
    few = judge(scores(remembered.forget_loss[:3], non), scores(forgotten.forget_loss[:3], non), f_label[:3],
                n_label, cfg, spent)
    assert few["verdict"] == "fail" and few["failed_on"] == ["drift"] and few["threshold"] is None
    untouched = judge(remembered, remembered, f_label, n_label, cfg, spent)
    assert untouched["failed_on"] == ["mia", "drift", "effect"]


def test_reference_keeps_only_rows_whose_prompt_is_unchanged() -> None:
    samples = pd.DataFrame({"sample_id": [1, 2, 3, 4], "prompt": ["a", "b", "c", "d"], "label": [1, 0, 1, 0],
                            "split": "valid"})
    reference = pd.DataFrame({"sample_id": [1, 2, 3], "prompt_sha256": audit.prompt_digests(samples.iloc[:3]),
                              "label": [1, 0, 1], "p_yes": [0.9, 0.2, 0.7]})
    later = samples[samples["sample_id"] != 2].assign(prompt=["a", "c, rebuilt without a forgotten event", "d"])
    kept, rows = audit.still_there(reference, later)
    assert kept["sample_id"].tolist() == [1] and kept["p_yes"].tolist() == [0.9]
    assert rows["sample_id"].tolist() == [1] and rows["prompt"].tolist() == ["a"]


def test_settings_are_checked_and_old_runs_get_defaults() -> None:
    assert AuditConfig.from_run({}).as_dict() == AuditConfig().as_dict()  # a run made before the audit existed
    assert AuditConfig().on_unverified == "retry" and AuditConfig().audit_retries == 1
    for bad in ({"on_unverified": "maybe"}, {"audit_tolerance": 0.7}, {"audit_tolerance": float("nan")},
                {"audit_min_prompts": 1}, {"audit_retries": -1}, {"test_samples": 0}, {"audit_samples": 2.5}):
        with pytest.raises(E2URecError):
            AuditConfig(**bad)
    for damaged in ({"on_unverifed": "keep"}, [1], 5, {"audit_tolerance": 2.0}):
        with pytest.raises(E2URecError, match="run.json"):
            AuditConfig.from_run({"audit": damaged})
    assert parse_settings({"on_unverified": "keep", "audit_tolerance": "0.1", "test_samples": "none"}) == {
        "on_unverified": "keep", "audit_tolerance": 0.1, "test_samples": None}
    with pytest.raises(E2URecError, match="audit_min_prompts"):
        parse_settings({"audit_min_prompts": "1e2"})


def test_escalation_plans() -> None:
    options = {"max_steps": 2, "min_steps": 5}
    retry = escalation_plan("e2urec", options, AuditConfig(audit_retries=2))
    passes = E2URecConfig().epochs  # the default, tripled per retry
    assert retry == [("e2urec", {"max_steps": 6, "min_steps": 15, "epochs": 3 * passes, "stop": "none"}),
                     ("e2urec", {"max_steps": 18, "min_steps": 45, "epochs": 9 * passes, "stop": "none"}),
                     ("retrain", {})]
    assert escalation_plan("e2urec", options, AuditConfig(on_unverified="retrain")) == [("retrain", {})]
    assert escalation_plan("e2urec", options, AuditConfig(on_unverified="keep")) == []
    assert escalation_plan("e2urec", options, AuditConfig(), can_retrain=False)[-1][0] == "e2urec"


def test_a_methods_config_says_what_a_stronger_attempt_is() -> None:
    """`MethodConfig.stronger`: the schedule fields a config has and sets, ×3**k; E2URec's also runs to the end.
    Every stronger attempt is a valid config of its method, so an escalation is never refused midway."""
    base = E2URecConfig.from_options({"max_steps": 4})
    assert base.stronger(2) == {"epochs": 9 * base.epochs, "min_steps": 9 * base.min_steps, "max_steps": 36,
                                "stop": "none"}
    assert MethodConfig(epochs=2).stronger(1) == {"epochs": 6}  # max_steps unset: not grown
    assert RecipeOverrides().stronger(1) == {}  # Retrain's recipe is the Original's: nothing to grow
    for cls in REGISTRY.values():  # unknown options and out-of-range values are refused here
        cls.Config.from_options(cls.Config.from_options({}).stronger(1))


def failing(monkeypatch: pytest.MonkeyPatch, passes_from: int | None = None) -> list[dict]:
    """Make the audit fail (from attempt `passes_from` on it passes); returns the judged records."""
    real, seen = audit.judge, []

    def judge_(*args: object) -> dict:
        record = real(*args)
        record["verdict"] = "pass" if passes_from is not None and len(seen) + 1 >= passes_from else "fail"
        seen.append(record)
        return record

    monkeypatch.setattr(audit, "judge", judge_)
    return seen


def test_unverified_and_keep(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = new_run(trained, tmp_path, on_unverified="keep", audit_min_prompts=LIGHT_MIN_PROMPTS)
    user = train_users(run)[1]
    failing(monkeypatch)
    result = runner.invoke(app, ["forget", "--run", str(run), "--users", user])
    assert result.exit_code == 0 and "unverified" in result.output and "audit reason" in result.output, result.output
    (record,) = Run(run).ledger().requests()
    assert record["status"] == "unverified" and record["version"] == "v0001"
    assert (run / "current").resolve().name == "v0001", "kept: the version is served, flagged"
    verdict = record["metrics"]["audit"]
    assert verdict["verdict"] == "fail" and [a["method"] for a in verdict["attempts"]] == ["e2urec"]
    assert not verdict["exact"] and verdict["escalation"] == "keep" and verdict["forget_prompts"] >= LIGHT_MIN_PROMPTS
    assert {"mia_auc", "se", "forget_loss", "non_member_loss", "valid_auc"} <= set(verdict["after"])
    assert record["metrics"]["test_n"] <= AuditConfig().test_samples
    assert json.loads((run / "current" / "version.json").read_text())["status"] == "unverified"
    again = forget(run, read_request(users=[user]), log=lambda _: None)  # its data is gone: nothing more to do
    assert again["noop"] and again["status"] == "unverified" and len(Run(run).ledger().requests()) == 1
    listed = runner.invoke(app, ["ledger", "--run", str(run)])
    assert listed.exit_code == 0 and "unverified" in listed.output
    assert f"{record['request_id']}: fail AUC" in listed.output
    with sqlite3.connect(run / "ledger.sqlite") as db:
        dumped = "\n".join(db.iterdump())
    assert f'"{user}"' not in dumped and f"'{user}'" not in dumped and f" {user}," not in dumped


def test_retry_then_pass(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = new_run(trained, tmp_path, audit_min_prompts=LIGHT_MIN_PROMPTS)  # default: retry once, then Retrain
    seen = failing(monkeypatch, passes_from=2)
    record = forget(run, read_request(users=[train_users(run)[1]]), log=lambda _: None)
    attempts = record["metrics"]["audit"]["attempts"]
    assert record["status"] == "done" and [a["verdict"] for a in attempts] == ["fail", "pass"]
    assert [a["method"] for a in attempts] == ["e2urec", "e2urec"] and attempts[1]["options"]["max_steps"] == 6
    assert all(r["forget_prompts"] >= LIGHT_MIN_PROMPTS and r["after"]["mia_auc"] is not None for r in seen)
    assert record["metrics"]["unlearn_seconds"] == pytest.approx(sum(a["seconds"] for a in attempts), abs=1e-2)


def test_audit_tells_the_original_from_a_retrain(trained: Path) -> None:
    """On the fixture's heaviest user (most of its training prompts), the untouched Original fails the audit and
    a Retrain without the user, with the Original's own recipe, passes it."""
    from e2urec.engine import TrainConfig, make_accelerator
    from e2urec.training import fit_rows

    samples, manifest = load_prepared(trained / "data")
    train = samples[samples["split"] == "train"]
    user = train["user_id"].value_counts().index[0]
    forget_rows, kept = train[train["user_id"] == user], samples[samples["user_id"] != user]
    # The Retrain keeps a few dozen training prompts: its valid AUC says nothing here, so only the MIA part counts.
    cfg = AuditConfig(audit_utility_tolerance=1.0, audit_utility_cap=1.0)
    non_members = audit.non_member_rows(kept, {user}, cfg)
    original, meta = load_model(trained / "original")
    retrain, _, _ = fit_rows(kept, manifest, kept[kept["split"] == "train"], meta["backbone"],
                             TrainConfig(**meta["config"]), make_accelerator(), meta.get("lora"))
    labels = forget_rows["label"].to_numpy(), non_members["label"].to_numpy()
    was = audit.score(original, forget_rows, non_members)
    data = audit.prompts(original, forget_rows, non_members)  # tokenised once for every model (as forget does)
    again = audit.score(original, forget_rows, non_members, data=data)
    assert np.array_equal(again.forget_loss, was.forget_loss) and np.array_equal(again.non_member_loss,
                                                                                 was.non_member_loss)
    untouched = judge(was, was, *labels, cfg)
    assert untouched["verdict"] == "fail" and untouched["after"]["mia_auc"] > untouched["threshold"]
    exact = judge(was, audit.score(retrain, forget_rows, non_members, data=data), *labels, cfg)
    assert exact["verdict"] == "pass", exact["reason"]
    assert exact["after"]["mia_auc"] < untouched["after"]["mia_auc"] - 0.1


def test_retrain_is_the_last_resort_and_exact(trained: Path, tmp_path: Path) -> None:
    # Real audits: E2URec steps at a learning rate too small to move anything leave the Original as it was (fail;
    # at the default lr two steps of the wide student already pass here), the exact Retrain then passes.
    run = init_run(tmp_path / "run", trained / "data", trained / "original", {**QUICK, "lr": 1e-9},
                   key_file=tmp_path / "run.key", audit={"on_unverified": "retrain", "audit_utility_tolerance": 1.0,
                                                             "audit_drift_tolerance": 1.0, "audit_utility_cap": 1.0})
    record = forget(run, read_request(users=[train_users(run)[0]]), log=lambda _: None)
    verdict = record["metrics"]["audit"]
    assert [(a["method"], a["verdict"]) for a in verdict["attempts"]] == [("e2urec", "fail"), ("retrain", "pass")]
    assert verdict["exact"] and record["status"] == "done" and verdict["verdict"] == "pass"
    meta = json.loads((run / "current" / "model" / "meta.json").read_text())
    assert meta["config"] == json.loads((trained / "original" / "meta.json").read_text())["config"], \
        "the version keeps the Original's recipe, so the next request can fall back to Retrain too"


def test_nothing_trained_is_never_a_pass(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    samples, _ = load_prepared(run / "current" / "data")
    held_only = set(samples["user_id"]) - set(samples.loc[samples["split"] == "train", "user_id"])
    user = str(sorted(held_only)[0])  # a user with valid/test rows only: no training prompt shows them
    record = forget(run, read_request(users=[user]), log=lambda _: None)
    verdict = record["metrics"]["audit"]
    assert record["row_counts"]["forget_prompts"] == 0 and verdict["verdict"] == "insufficient"
    assert record["status"] == "done" and record["metrics"]["unlearn_seconds"] == 0.0
    small = [u for u in train_users(run)
             if 0 < (samples.loc[samples["split"] == "train", "user_id"].astype(str) == u).sum() < 20][0]
    record = forget(run, read_request(users=[small]), log=lambda _: None)
    assert record["metrics"]["audit"]["verdict"] == "insufficient"
    assert record["metrics"]["audit"]["after"]["mia_auc"] is not None, "the figures are recorded all the same"


def test_drift_reference_follows_the_last_exact_model(trained: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = new_run(trained, tmp_path)
    meta = json.loads((run / "current" / "version.json").read_text())["reference"]
    assert (meta["version"], meta["kind"]) == ("v0000", "original")
    samples, _ = load_prepared(run / "current" / "data")
    valid = samples[samples["split"] == "valid"]
    reference = pd.read_parquet(run / "current" / "reference.parquet")
    assert len(reference) == meta["rows"] == min(len(valid), AuditConfig().audit_drift_samples)
    assert set(reference["sample_id"]) <= set(valid["sample_id"])
    assert list(reference.columns) == ["sample_id", "prompt_sha256", "label", "p_yes"], "no user id is kept"

    # A request E2URec honours: the Original's predictions stay the reference, the forgotten user's rows leave it.
    user = next(u for u in train_users(run) if (valid["user_id"].astype(str) == u).any())
    mine = set(valid.loc[valid["user_id"].astype(str) == user, "sample_id"])
    failing(monkeypatch, passes_from=1)
    record = forget(run, read_request(users=[user]), log=lambda _: None)
    drifted = record["metrics"]["audit"]["drift"]
    assert (drifted["reference"], drifted["kind"]) == ("v0000", "original")
    carried = pd.read_parquet(run / "current" / "reference.parquet")
    assert drifted["rows"] == len(carried) == len(reference) - len(mine & set(reference["sample_id"]))
    assert not mine & set(carried["sample_id"])
    listed = runner.invoke(app, ["ledger", "--run", str(run)])
    assert listed.exit_code == 0 and f"drift {drifted['drop']:+.3f}≤{drifted['allowed']:.3f}" in listed.output
    assert carried.equals(reference[~reference["sample_id"].isin(mine)].reset_index(drop=True))

    # Failing on the drift budget alone skips the stronger E2URec (it cannot give back what was spent): straight
    # to the Retrain, which becomes the new reference.
    real = audit.judge

    def spent(*args: object) -> dict:
        record = real(*args)
        record.update(verdict="fail", failed_on=["drift"]) if record["drift"]["kind"] == "original" else None
        return record

    monkeypatch.setattr(audit, "judge", spent)
    record = forget(run, read_request(users=[train_users(run)[0]]), log=lambda _: None)
    verdict = record["metrics"]["audit"]
    assert [a["method"] for a in verdict["attempts"]] == ["e2urec", "retrain"] and verdict["exact"]
    meta = json.loads((run / "current" / "version.json").read_text())["reference"]
    assert (meta["version"], meta["kind"]) == (record["version"], "retrain")

    # A changed reference file is refused with its name; nothing moves.
    (run / "current" / "reference.parquet").write_bytes(b"not the kept predictions")
    with pytest.raises(E2URecError, match="reference.parquet"):
        forget(run, read_request(users=[train_users(run)[0]]), log=lambda _: None)
    assert (run / "current").resolve().name == record["version"]


def test_a_version_without_reference_uses_the_version_before(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)  # as a run made before the drift check: no reference kept
    version = run / "current" / "version.json"
    version.write_text(json.dumps({k: v for k, v in json.loads(version.read_text()).items() if k != "reference"}))
    (run / "current" / "reference.parquet").unlink()
    record = forget(run, read_request(users=[train_users(run)[1]]), log=lambda _: None)
    drifted = record["metrics"]["audit"]["drift"]
    assert (drifted["reference"], drifted["kind"]) == ("v0000", "version")
    assert json.loads((run / "current" / "version.json").read_text())["reference"]["kind"] == "version"


@pytest.mark.parametrize("setting", ["on_unverified=maybe", "audit_tolerance=0.7", "audit_tolerance=nan",
                                     "audit_min_prompts=1", "audit_retries=1.5", "test_samples=-3"])
def test_init_refuses_bad_audit_settings(trained: Path, tmp_path: Path, setting: str) -> None:
    result = runner.invoke(app, ["init", "--run", str(tmp_path / "run"), "--data", str(trained / "data"),
                                 "--model", str(trained / "original"), "--key-file", str(tmp_path / "k"),
                                 "--set", setting])
    assert result.exit_code == 2 and setting.split("=")[0] in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "k").exists()


def test_init_records_audit_settings_beside_e2urec_options(trained: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", "--run", str(tmp_path / "run"), "--data", str(trained / "data"),
                                 "--model", str(trained / "original"), "--key-file", str(tmp_path / "k"),
                                 "--set", "on_unverified=keep", "--set", "max_steps=3", "--set", "test_samples=none"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "run.json").read_text())
    assert config["options"] == {"max_steps": 3}
    assert config["audit"] == {**AuditConfig().as_dict(), "on_unverified": "keep", "test_samples": None}
