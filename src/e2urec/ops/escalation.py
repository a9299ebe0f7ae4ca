"""What a deletion request does when its forgetting audit fails: stronger attempts of the run's method, then an
exact Retrain, as the run's settings say (`on_unverified`, `audit_retries`).

Each attempt unlearns in memory (`e2urec.unlearning.runner.unlearn_model`): only the last attempt's model is kept,
and the request writes it once, merged, as the new version. An attempt's scratch (augmented model, teacher caches)
is purged when the attempt returns, so nothing derived from the forget set waits on disk for the audit.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from e2urec.checkpoint import check_finite
from e2urec.errors import BROKEN_MODEL
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.ops import audit
from e2urec.unlearning.base import REGISTRY
from e2urec.unlearning.runner import unlearn_model


def escalate(method: str, options: dict, original: Path, work: Path, before: Backbone, forget_rows: pd.DataFrame,
             retained: pd.DataFrame, settings: audit.AuditConfig, can_retrain: bool, rid: str,
             log: Callable[[str], object], reference: tuple[pd.DataFrame, pd.DataFrame, dict]
             ) -> tuple[Backbone, dict, dict]:
    """Unlearn `work/job-data`'s forget set from the model at `original` (`before`, loaded) with `method`, audit,
    and while the audit fails follow the run's escalation: stronger attempts, then an exact Retrain
    (`on_unverified=retry`), a Retrain at once (`retrain`) or nothing more (`keep`); a version made by an older
    e2urec lacks the recipe a Retrain needs (`can_retrain` false), so it gets the retries only. A failure on the
    run's drift budget alone goes straight to the Retrain: a stronger attempt cannot give back what earlier requests
    spent. Returns the last attempt's model, its unlearning facts and the audit record (with every attempt's
    figures)."""
    non_members = audit.non_member_rows(retained, set(forget_rows["user_id"]), settings)
    labels = forget_rows["label"].to_numpy(), non_members["label"].to_numpy()
    data = audit.prompts(before, forget_rows, non_members)
    was = audit.score(before, forget_rows, non_members, data=data)
    ref, ref_rows, origin = reference
    ref_data = prompt_set(before, ref_rows) if len(ref_rows) else None
    plan = [(method, options)] + escalation_plan(method, options, settings, can_retrain)
    attempts, seconds, number = [], 0.0, 0
    while True:
        name, opts = plan[number]
        log(f"request {rid}: unlearning {len(forget_rows)} prompts with {name} (attempt {len(attempts) + 1})")
        try:
            result = unlearn_model(name, original, work / "job-data", work / f"student-{number}", opts)
            student, facts = result.model, result.meta
            seconds += facts["unlearn_seconds"]
            # Scored where `before` was, so every score the audit compares comes from the same arithmetic; a
            # diverged student is refused as loading it from disk would refuse it.
            student.model.to(before.device)
            check_finite(student.model, f"the {name} student")
            drifted = None if ref_data is None else audit.drift(
                ref, origin, per_sample_p_yes(student, ref_data, 64, progress=False), settings)
            verdict = unchanged_is_not_done(audit.judge(was, audit.score(student, forget_rows, non_members,
                                                                         data=data), *labels, settings, drifted),
                                            facts)
        except BROKEN_MODEL as exc:  # a broken attempt is a failed one: on to the next
            if number == len(plan) - 1:
                raise
            log(f"request {rid}: attempt {len(attempts) + 1} with {name} broke ({type(exc).__name__}); escalating")
            attempts.append({"method": name, "options": opts, "verdict": "broken", "error": str(exc)})
            number += 1
            continue
        attempts.append({"method": name, "options": opts, "verdict": verdict["verdict"],
                         "mia_auc": verdict["after"]["mia_auc"], "seconds": facts["unlearn_seconds"]})
        if verdict["verdict"] != "fail" or number == len(plan) - 1:
            break
        log(f"request {rid}: audit failed ({verdict['reason']}); escalating")
        del student  # the next attempt starts from `original` again; this one's weights are not needed
        spent = verdict["failed_on"] == ["drift"] and plan[-1][0] == "retrain"
        number = len(plan) - 1 if spent else number + 1
    exact = name == "retrain"  # a Retrain never saw the forgotten rows: exact, whatever the audit says
    return student, facts, {**verdict, "attempts": attempts, "exact": exact, "escalation": settings.on_unverified,
                            "unlearn_seconds": round(seconds, 3)}


def unchanged_is_not_done(verdict: dict, facts: dict) -> dict:
    """An unlearning that ended where it started (its result is the Original) is not a done request unless the
    audit passes it: an `insufficient` verdict becomes a failure, so the request escalates like any other."""
    if not facts.get("unchanged") or verdict["verdict"] != "insufficient":
        return verdict
    return {**verdict, "verdict": "fail", "failed_on": [*verdict["failed_on"], "unchanged"],
            "reason": f"{verdict['reason']}; and the unlearning ended where it started ({facts['unchanged']}), so "
                      "nothing shows the request was honoured"}


def escalation_plan(method: str, options: dict, settings: audit.AuditConfig, can_retrain: bool = True
                    ) -> list[tuple[str, dict]]:
    """The attempts after a failed audit: `audit_retries` stronger attempts of the run's method (what each is, the
    method's config says: `MethodConfig.stronger`) then Retrain; or Retrain; or none. Options go through
    unlearn()'s options; the method's code is not changed."""
    if settings.on_unverified == "keep":
        return []
    retries = []
    if settings.on_unverified == "retry":
        base = REGISTRY[method].Config.from_options(options)
        retries = [(method, {**options, **base.stronger(k)}) for k in range(1, settings.audit_retries + 1)]
    return [*retries, ("retrain", {})] if can_retrain else retries
