"""The forgetting audit of a deletion request: evidence, without a Retrain, that the new version no longer tells
the forgotten training prompts from data it never saw.

Statistic: a loss-threshold membership attack. On the request's forget prompts (the texts the model trained on)
and on held-out non-members (valid and test samples of users the request does not touch, seeded sample of at
most `audit_samples`), the attack's AUC is P(a forget prompt's answer loss < a non-member's), computed within
each answer label and averaged with the forget prompts' label shares: a user who answers "Yes" more often than
most would otherwise look like a member to any model, forgotten or not. 0.5: indistinguishable; above: the
forget prompts are fitted better than unseen data, i.e. still remembered.

Alone that attack has little power against one user: a user's prompts can be harder or easier than the
population's whatever the model saw, and on the `cpu` slice the Original's AUC stayed under the pass threshold
for every forgotten user (benchmarks/audit_power.py), so an untouched model would have passed. Hence: a pass
needs the version before to have *remembered* the prompts measurably (else there is nothing the audit could
show gone, and it says so), and a second, paired statistic, the *forgetting effect*: how much the forget
prompts' answer loss rose from the version before to the new one, beyond the non-members' rise on the same rows
(a difference in differences; per-prompt difficulty cancels). An untouched model has effect 0; a Retrain had a
positive one for 17 of those 20 users.

Verdict: `fail` when the new version's AUC > 0.5 + `audit_tolerance` + z·SE (SE: the AUC's sampling error
under "no difference", Hanley–McNeil's (n_f + n_n + 1) / (12·n_f·n_n) per label, one-sided z = 1.645), or its
AUC on the valid non-members dropped by more than `audit_utility_tolerance` + z·SE of that paired drop
(bootstrap over the same rows) from the version before — or by more than `audit_utility_cap` whatever that SE,
since the SE of the drop grows with the damage — or the version before *remembered* the prompts (its
AUC > 0.5 + z·SE) and the forgetting effect is not positive. Otherwise `pass` when the version before
remembered them, and `insufficient` when it did not (nothing measurable to forget: the request is done, and no
pass is claimed) or when fewer than `audit_min_prompts` forget prompts can be compared (a user with a handful
of prompts cannot be told from chance) — unless utility dropped: that part needs no forget prompts, so a small
request that broke the model fails too.

Each check above compares a version with the one before, so small losses can add up over many requests (seven
E2URec-only versions on the demo slice took test AUC 0.663 → 0.609, each inside its own bound). Hence the *drift*
part: the last exact model (the Original, or the latest Retrain) leaves its P(yes) on a seeded sample of valid
rows (`audit_drift_samples`) in every version after it, and a new version fails when its AUC on the rows still
unchanged there fell by more than `audit_drift_tolerance` + z·SE of that paired drop (or the cap) below the exact
model's: a run's budget across requests. Only an exact Retrain restores it, so a version that fails on drift alone
escalates straight to one.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from e2urec.data.roles import rows_for, sample_rows
from e2urec.errors import E2URecError
from e2urec.evaluation import allowed_drop, mia_features, paired_auc_change, utility_metrics
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, per_sample_p_yes, prompt_set
from e2urec.options import MAX_SAMPLES, MAX_SEED, check_fields, option, parse_options

VERDICTS = ("pass", "fail", "insufficient")
ESCALATIONS = ("retry", "retrain", "keep")
STATISTIC = "label-stratified loss-threshold MIA AUC: forget prompts vs held-out non-members"
Z_ONE_SIDED = 1.645  # 95% one-sided: a Retrain (true AUC 0.5) passes 19 times in 20 on sampling error alone


@dataclass
class AuditConfig:
    """A run's audit and escalation settings (`init --set key=value`); a run made before they existed gets
    these defaults."""

    on_unverified: str = option("retry", "a request failing its audit: retry (stronger E2URec, `audit_retries` "
                                 "times, then an exact Retrain) | retrain (exact Retrain at once) | keep (the "
                                 "version stays, status unverified)", choices=ESCALATIONS)
    audit_retries: int = option(1, "stronger E2URec attempts before the Retrain (on_unverified=retry)", 0, 5)
    audit_tolerance: float = option(0.05, "MIA AUC allowed above 0.5, besides the sampling error", 0, 0.49)
    audit_utility_tolerance: float = option(0.02, "valid AUC drop allowed against the version before (beyond z "
                                             "standard errors of the paired drop)", 0, 1)
    audit_utility_cap: float = option(0.1, "valid AUC drop that fails a request whatever its standard error: the "
                                      "z·SE margin grows with the damage itself (a version that no longer ranks "
                                      "like the one before has a large paired SE)", 0, 1)
    audit_drift_tolerance: float = option(0.02, "valid AUC drop allowed against the last exact model (the "
                                          "Original or the latest Retrain), beyond z standard errors of the "
                                          "paired drop: the run's budget across requests", 0, 1)
    audit_drift_samples: int = option(1000, "valid rows the last exact model's predictions are kept on for the "
                                      "drift check (at most; seeded sample)", 20, 1_000_000)
    audit_min_prompts: int = option(20, "fewer comparable forget prompts: verdict insufficient", 2, 100_000)
    audit_samples: int = option(500, "held-out non-members scored (at most; seeded sample)", 20, 1_000_000)
    test_samples: int | None = option(1000, "test prompts scored per request for the ledger's test metrics "
                                       "(seeded sample; none: all)", 1, MAX_SAMPLES)
    audit_seed: int = option(0, "seed of the non-member and test samples", 0, MAX_SEED)

    def __post_init__(self) -> None:
        check_fields(self)  # of its type, finite, in range, a known choice: run.json may hold anything

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def from_run(cls, config: dict) -> AuditConfig:
        """The settings a run records (`run.json` key `audit`); a run made before this change has none."""
        stored = config.get("audit") or {}
        if not isinstance(stored, dict) or set(stored) - cls.names():
            raise E2URecError("run.json: audit settings damaged (not an object of known settings); restore run.json")
        try:
            return cls(**stored)
        except E2URecError as exc:
            raise E2URecError(f"run.json: audit setting {exc}; restore run.json") from None

    def as_dict(self) -> dict:
        return asdict(self)


def parse_settings(pairs: dict[str, str]) -> dict[str, Any]:
    """`init --set` values for audit keys, typed and checked by `e2urec.options` like every other option (a bad
    value is refused before anything is made)."""
    typed = parse_options(pairs, AuditConfig, "init --set")
    try:
        AuditConfig(**typed)
    except E2URecError as exc:
        raise E2URecError(f"init --set {exc}") from None
    return typed


def label_stratified_auc(f_loss: np.ndarray, f_label: np.ndarray, n_loss: np.ndarray, n_label: np.ndarray
                         ) -> tuple[float | None, float | None, int]:
    """(AUC, its null standard error, forget prompts compared): P(forget loss < non-member loss) within each label
    present on both sides, weighted by the forget prompts' label counts."""
    aucs, weights, variances = [], [], []
    for label in (0, 1):
        f, n = f_loss[f_label == label], n_loss[n_label == label]
        if len(f) == 0 or len(n) == 0:
            continue
        ranks = pd.Series(np.concatenate([f, n])).rank().to_numpy()[: len(f)]  # ties: mid-rank, i.e. ½
        # Forget prompts with *lower* loss look like members, so count pairs where the non-member's loss is higher.
        aucs.append(1 - (ranks.sum() - len(f) * (len(f) + 1) / 2) / (len(f) * len(n)))
        weights.append(len(f))
        variances.append((len(f) + len(n) + 1) / (12 * len(f) * len(n)))
    if not weights:
        return None, None, 0
    w = np.asarray(weights, dtype=float) / sum(weights)
    return float(w @ aucs), float(math.sqrt(w**2 @ variances)), int(sum(weights))


def non_member_rows(samples: pd.DataFrame, touched_users: set, cfg: AuditConfig) -> pd.DataFrame:
    """Valid and test samples of users the request does not touch: held out from every version's training."""
    held = samples[samples["split"].isin(["valid", "test"]).to_numpy() & ~samples["user_id"].isin(touched_users)]
    return sample_rows(held, cfg.audit_samples, cfg.audit_seed, 41)


def test_rows(samples: pd.DataFrame, cfg: AuditConfig) -> pd.DataFrame:
    """The test prompts a request scores for the ledger (a seeded sample: a full pass would dominate its cost)."""
    rows = rows_for(samples, "test")
    return rows if cfg.test_samples is None else sample_rows(rows, cfg.test_samples, cfg.audit_seed, 42)


def reference_rows(samples: pd.DataFrame, cfg: AuditConfig) -> pd.DataFrame:
    """The valid rows an exact model leaves its predictions on (a seeded sample: every request scores them)."""
    return sample_rows(rows_for(samples, "valid"), cfg.audit_drift_samples, cfg.audit_seed, 43)


def reference_scores(backbone: Backbone, rows: pd.DataFrame, batch_size: int = 64) -> pd.DataFrame:
    """An exact model's P(yes) on `rows`, kept as (sample_id, prompt_sha256, label, p_yes): the prompt's digest
    lets a later version keep a row only while its text is unchanged (a deletion rebuilds other prompts)."""
    p = per_sample_p_yes(backbone, prompt_set(backbone, rows), batch_size, progress=False) if len(rows) else []
    return pd.DataFrame({"sample_id": rows["sample_id"].to_numpy(), "prompt_sha256": prompt_digests(rows),
                         "label": rows["label"].to_numpy(dtype=int), "p_yes": np.asarray(p, dtype=float)})


def prompt_digests(rows: pd.DataFrame) -> list[str]:
    return [hashlib.sha256(text.encode()).hexdigest() for text in rows["prompt"]]


def still_there(reference: pd.DataFrame, samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference rows, the same rows of `samples`) for the rows still in `samples` with the same prompt: a
    forgotten user's rows and prompts rebuilt without a forgotten event leave the reference."""
    rows = samples.loc[samples["sample_id"].isin(reference["sample_id"]).to_numpy()]
    rows = rows.assign(prompt_sha256=prompt_digests(rows))
    keys = ["sample_id", "prompt_sha256"]
    kept = reference.merge(rows[keys], on=keys)
    return kept, rows.set_index("sample_id").loc[kept["sample_id"]].reset_index()


def drift(reference: pd.DataFrame, origin: dict, p_after: np.ndarray, cfg: AuditConfig) -> dict:
    """Valid AUC of the last exact model − of the new version on the reference rows (paired), its bootstrap SE and
    the allowed drop; `drop` is None when those rows hold one label only (nothing to rank)."""
    labels = reference["label"].to_numpy()
    change, se = paired_auc_change(labels, p_after, reference["p_yes"].to_numpy())
    allowed = allowed_drop(cfg.audit_drift_tolerance, Z_ONE_SIDED * se, cfg.audit_utility_cap)
    found = {"reference": origin.get("version"), "kind": origin.get("kind"), "rows": int(len(labels)),
             "drop": None if change is None else -change, "se": se, "allowed": round(allowed, 4)}
    if change is not None:
        found.update(auc_reference=utility_metrics(labels, reference["p_yes"].to_numpy())["auc"],
                     auc_after=utility_metrics(labels, p_after)["auc"])
    return found


@dataclass
class Scores:
    """One model's answer losses on the audit's rows (forget prompts, then non-members)."""

    forget_loss: np.ndarray
    non_member_loss: np.ndarray
    valid_auc: float | None
    valid_n: int
    valid_p: np.ndarray | None = None  # P(yes) on the valid non-members, for the paired utility test
    valid_labels: np.ndarray | None = None


def prompts(backbone: Backbone, forget_rows: pd.DataFrame, non_members: pd.DataFrame) -> PromptSet:
    """The audit's rows tokenised (forget prompts, then non-members): once per request, since the model before
    and every attempt after are the same backbone with the same tokenizer."""
    return prompt_set(backbone, pd.concat([forget_rows, non_members]))


def score(backbone: Backbone, forget_rows: pd.DataFrame, non_members: pd.DataFrame, batch_size: int = 64,
          data: PromptSet | None = None) -> Scores:
    """Losses of one model: forget prompts as it trained on them, non-members as served (`data`: the rows as
    `prompts` tokenised them, to skip tokenising again)."""
    rows = pd.concat([forget_rows, non_members])
    data = prompts(backbone, forget_rows, non_members) if data is None else data
    p = per_sample_p_yes(backbone, data, batch_size, progress=False)
    losses = mia_features(rows["label"].to_numpy(), p)[:, 0]
    valid = (non_members["split"] == "valid").to_numpy()
    labels = non_members["label"].to_numpy()[valid]
    valid_p = p[len(forget_rows):][valid]
    auc = utility_metrics(labels, valid_p)["auc"] if valid.any() else None
    return Scores(losses[: len(forget_rows)], losses[len(forget_rows):], auc, int(valid.sum()), valid_p, labels)


def side(scores: Scores, forget_labels: np.ndarray, non_labels: np.ndarray) -> dict:
    auc, se, n = label_stratified_auc(scores.forget_loss, forget_labels, scores.non_member_loss, non_labels)
    return {"mia_auc": auc, "se": se, "compared": n,
            "forget_loss": float(scores.forget_loss.mean()) if len(scores.forget_loss) else None,
            "non_member_loss": float(scores.non_member_loss.mean()), "valid_auc": scores.valid_auc}


def forgetting_effect(before: Scores, after: Scores) -> dict:
    """Mean rise of the forget prompts' loss minus the non-members' mean rise (same rows, before → after), its
    standard error (the two means of per-row differences are independent) and z = effect / SE."""
    rise_f = after.forget_loss - before.forget_loss
    rise_n = after.non_member_loss - before.non_member_loss
    effect = float(rise_f.mean() - rise_n.mean())
    se = float(math.sqrt(rise_f.var(ddof=1) / len(rise_f) + rise_n.var(ddof=1) / len(rise_n))) \
        if len(rise_f) > 1 and len(rise_n) > 1 else 0.0
    return {"effect": effect, "se": se, "z": effect / se if se > 0 else None}


def utility_drop(before: Scores, after: Scores) -> tuple[float | None, float]:
    """Valid AUC before − after and the bootstrap SE of that paired drop (0 without per-row predictions)."""
    if before.valid_auc is None or after.valid_auc is None:
        return None, 0.0
    if before.valid_p is None or after.valid_p is None or after.valid_labels is None:
        return before.valid_auc - after.valid_auc, 0.0
    change, se = paired_auc_change(after.valid_labels, after.valid_p, before.valid_p)
    return (None, 0.0) if change is None else (-change, se)


def nothing_to_audit(cfg: AuditConfig) -> dict:
    """The audit record of a request that showed no training prompt (e.g. a user with valid/test rows only):
    nothing was trained on, nothing was unlearned, and there is nothing to test."""
    return {"statistic": STATISTIC, "forget_prompts": 0, "verdict": "insufficient", "threshold": None,
            "tolerance": cfg.audit_tolerance, "min_prompts": cfg.audit_min_prompts, "attempts": [],
            "reason": "no training prompt showed the forgotten data: nothing was unlearned, nothing to audit"}


def judge(before: Scores, after: Scores, forget_labels: np.ndarray, non_labels: np.ndarray, cfg: AuditConfig,
          drifted: dict | None = None) -> dict:
    """The audit record: figures before and after, the threshold, sample counts and the verdict (no ids);
    `drifted` is `drift`'s figures against the last exact model, when the run keeps them. `failed_on` names the
    parts that failed (mia, utility, drift, effect)."""
    b, a = side(before, forget_labels, non_labels), side(after, forget_labels, non_labels)
    record: dict[str, Any] = {
        "statistic": STATISTIC,
        "forget_prompts": int(len(forget_labels)),
        "forget_yes": int(np.sum(forget_labels == 1)),
        "non_members": int(len(non_labels)),
        "non_members_valid": before.valid_n,
        "before": b, "after": a,
        "tolerance": cfg.audit_tolerance, "z": Z_ONE_SIDED, "utility_tolerance": cfg.audit_utility_tolerance,
        "min_prompts": cfg.audit_min_prompts,
    }
    drop, drop_se = utility_drop(before, after)
    allowed = allowed_drop(cfg.audit_utility_tolerance, Z_ONE_SIDED * drop_se, cfg.audit_utility_cap)
    failed_on = ["utility"] if drop is not None and drop > allowed else []
    hurt = [f"valid AUC dropped {drop:.3f} > {allowed:.3f}"] if failed_on else []
    if drifted is not None and drifted["drop"] is not None and drifted["drop"] > drifted["allowed"]:
        failed_on.append("drift")
        hurt.append(f"valid AUC {drifted['drop']:.3f} below the last exact model's ({drifted['kind']}) > "
                    f"{drifted['allowed']:.3f} allowed across requests")
    record.update(valid_auc_drop=drop, valid_auc_drop_se=drop_se, valid_auc_drop_allowed=round(allowed, 4),
                  drift=drifted, failed_on=failed_on)
    if a["compared"] < cfg.audit_min_prompts or a["mia_auc"] is None:
        # Too few prompts to judge the forgetting, but the utility part needs none: a version that broke the
        # model is not done, however small the request.
        few = (f"{a['compared']} forget prompts comparable with non-members; the audit needs "
               f"{cfg.audit_min_prompts}")
        record.update(threshold=None, verdict="fail" if hurt else "insufficient", reason="; ".join([*hurt, few]))
        return record
    threshold = 0.5 + cfg.audit_tolerance + Z_ONE_SIDED * a["se"]
    remembered = b["mia_auc"] is not None and b["mia_auc"] > 0.5 + Z_ONE_SIDED * b["se"]
    effect = forgetting_effect(before, after)
    if a["mia_auc"] > threshold:
        failed_on.insert(0, "mia")
    reasons = [f"MIA AUC {a['mia_auc']:.3f} > {threshold:.3f}"] if a["mia_auc"] > threshold else []
    reasons += hurt
    if remembered and effect["effect"] <= 0:
        failed_on.append("effect")
        reasons.append(f"the forget prompts' loss did not rise beyond the non-members' (effect "
                       f"{effect['effect']:.4f}): no evidence that anything was unlearned")
    if reasons:
        verdict, reason = "fail", "; ".join(reasons)
    elif not remembered:
        verdict, reason = "insufficient", (
            f"the version before did not fit these prompts measurably better than unseen data (MIA AUC "
            f"{b['mia_auc']:.3f} ≤ {0.5 + Z_ONE_SIDED * b['se']:.3f}): no memory the audit could show gone; "
            "utility held")
    else:
        verdict, reason = "pass", ("remembered before; now indistinguishable from non-members and further from "
                                   "the model's knowledge than before; utility held")
    record.update(threshold=round(threshold, 4), remembered_before=remembered, forgetting_effect=effect,
                  verdict=verdict, reason=reason)
    return record
