"""`e2urec forget`: honour a deletion request on a run, end to end.

Validate the ids → record the request (keyed hashes) → rebuild the data without the forgotten rows (later
prompts' histories included) → E2URec from the current version on (forget = every training prompt that
showed the forgotten rows, retain = the rebuilt training set) → audit the forgetting (`e2urec.ops.audit`) and,
when it fails, escalate as the run says (stronger E2URec, exact Retrain, or keep as `unverified`) → merge the
adapter, score a test sample → write the new version and swap `current` → purge the old version, the
augmented model, caches and scratch data.
A request that was interrupted (even by kill -9) is finished by the next call; a finished one is a no-op.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.checkpoint import load_model, save_model
from e2urec.data.prepare import SampleBuilder, cast_known, match_interactions, read_interactions
from e2urec.data.store import load_prepared, load_tables, write_prepared
from e2urec.errors import BROKEN_MODEL, E2URecError, UnknownIds
from e2urec.evaluation import utility_metrics
from e2urec.io import atomic_dir, write_json_atomic
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.ops import audit
from e2urec.ops.ledger import FINAL, Ledger
from e2urec.ops.run import (
    VERSION_FILE,
    Run,
    data_dir,
    full_weights,
    model_checksums,
    model_dir,
    read_reference,
    verify_version,
    version_meta,
    write_reference,
)
from e2urec.unlearning.base import REGISTRY
from e2urec.unlearning.runner import unlearn

KEY = ["user_id", "item_id", "timestamp"]


@dataclass
class Request:
    """A request as given: its kind and normalised keys (what the ledger hashes), and the ids to check."""

    kind: str  # "users" or "interactions"
    keys: list[str]
    users: list[str] | None = None
    interactions: pd.DataFrame | None = None


def read_request(users: list[str] | None = None, interactions: Path | pd.DataFrame | None = None) -> Request:
    """Normalise a request (ids stripped, sorted, unique) so repeating it gives the same ledger fingerprint."""
    if (users is None) == (interactions is None):
        raise E2URecError("give exactly one of --users or --interactions")
    if users is not None:
        keys = sorted({str(u).strip() for u in users if str(u).strip()})
        if not keys:
            raise E2URecError("--users is empty: name at least one user id")
        return Request("users", keys, users=keys)
    table = interactions if isinstance(interactions, pd.DataFrame) else read_interactions(Path(interactions))
    table = table.astype(str).apply(lambda c: c.str.strip()).drop_duplicates()
    return Request("interactions", sorted("|".join(row) for row in table.itertuples(index=False)),
                   interactions=table)


def match(events: pd.DataFrame, request: Request) -> np.ndarray:
    """Mask of the events a request names; an id not in the run's data is an error and nothing changes."""
    if request.kind == "users":
        wanted, unknown = cast_known(request.users, events["user_id"], "--users")
        if unknown:
            raise UnknownIds("--users", users=unknown)
        return events["user_id"].isin(wanted).to_numpy()
    return match_interactions(request.interactions, events, "--interactions")


def rebuild(samples: pd.DataFrame, tables: dict[str, pd.DataFrame], request: Request, config: dict
            ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame, dict]:
    """The retained data and the training prompts to forget.

    Returns (samples, tables, forget_rows, counts). Forget rows are every training prompt the current model
    saw that shows a forgotten event: the deleted samples themselves and the old text of prompts whose
    history contained one. Affected users' remaining samples get their history rebuilt from retained events;
    a sample left with fewer than `min_history` earlier events is dropped, as prepare would have.
    """
    events = tables["events"]
    mask = match(events, request)
    kept = events[~mask].reset_index(drop=True)
    gone = events.loc[mask, KEY]
    users = tables["users"]
    if request.kind == "users":
        users = users[~users["user_id"].isin(gone["user_id"])].reset_index(drop=True)
    affected = samples["user_id"].isin(gone["user_id"].unique()).to_numpy()
    deleted = samples[KEY].merge(gone.drop_duplicates(), on=KEY, how="left", indicator=True)["_merge"].eq("both")
    deleted = deleted.to_numpy()

    # The affected users' other samples, rebuilt as prepare builds them, with the deleted events hidden.
    old = samples[affected & ~deleted]
    positions = old[KEY].merge(events[KEY].reset_index(), on=KEY, how="left")["index"].to_numpy()
    builder = SampleBuilder(events, tables["items"], users, config["dataset"], int(config["history"]),
                            int(config["min_history"]))
    redo, eligible = builder.build(old, positions, hidden=mask)
    changed = (old["prompt"].to_numpy() != redo["prompt"].to_numpy()) | ~eligible
    dropped = redo[~eligible]
    redo = redo[eligible]

    in_train = (samples["split"] == "train").to_numpy()
    forget_rows = pd.concat([samples[deleted & in_train], old[changed & (old["split"] == "train").to_numpy()]])
    retained = pd.concat([samples[~affected], redo]).sort_values("sample_id").reset_index(drop=True)
    retained["prompt_original"] = None
    counts = {
        "events_deleted": int(mask.sum()),
        "samples_deleted": int(deleted.sum()),
        "samples_dropped_short_history": int(len(dropped)),
        "prompts_rebuilt": int(changed.sum() - len(dropped)),
        "forget_prompts": int(len(forget_rows)),
        **{f"{split}_samples_removed": int(((samples["split"] == split).to_numpy() & deleted).sum()
                                           + (dropped["split"] == split).sum())
           for split in ("train", "valid", "test", "holdout")},
    }
    return retained, {**tables, "events": kept, "users": users}, forget_rows, counts


def job_samples(retained: pd.DataFrame, forget_rows: pd.DataFrame) -> pd.DataFrame:
    """Samples for the unlearning job: the retained data, plus the forget prompts flagged `forget` (old texts
    get fresh sample ids, since their rebuilt versions keep theirs)."""
    forget_rows = forget_rows.assign(split="train", forget=True)
    forget_rows["sample_id"] = np.arange(len(forget_rows)) + int(retained["sample_id"].max()) + 1
    return pd.concat([retained.assign(forget=False), forget_rows], ignore_index=True)


def narrowed(request: Request, keys: list[str]) -> Request:
    """The part of a request still to do: only `keys` (ids that earlier requests have not forgotten)."""
    if request.kind == "users":
        return Request("users", keys, users=keys)
    table = request.interactions
    rows = table.apply(lambda row: "|".join(row), axis=1)
    return Request("interactions", keys, interactions=table[rows.isin(keys).to_numpy()])


def submit(ledger: Ledger, request: Request, events: pd.DataFrame) -> tuple[dict, bool, Request]:
    """Validate a request against the data and record it as queued; returns (record, already_done, the part
    still to do). Ids that finished requests forgot count as done, so an identical or overlapping request
    is never refused for naming ids that are gone from the data already."""
    hashes = ledger.hash_ids(request.keys)
    prior = ledger.find(ledger.fingerprint(request.kind, hashes))
    if prior and prior["status"] in FINAL:
        return prior, True, narrowed(request, [])
    forgotten = ledger.forgotten(request.kind)
    todo = [key for key in request.keys if ledger.hash_id(key) not in forgotten]
    if not todo:
        return ledger.add(request.kind, hashes), True, narrowed(request, [])
    rest = narrowed(request, todo)
    match(events, rest)
    return ledger.add(request.kind, hashes), False, rest  # an identical unfinished request is reused, not doubled


def redact(text: str, request: Request) -> str:
    """`text` with every id the request names replaced by `<id>`: failure messages from deep inside a library
    may quote a row or a key, and they are stored in the ledger, returned by the service and logged."""
    ids = sorted({part for key in request.keys for part in key.split("|") if part}, key=len, reverse=True)
    if not ids:
        return text
    pattern = re.compile(r"(?<![\w.])(?:" + "|".join(map(re.escape, ids)) + r")(?![\w.])")
    return pattern.sub("<id>", text)


def failure(exc: BaseException, request: Request) -> str:
    """What the ledger records about a failed request: the error's type and its message, ids redacted."""
    return redact(f"{type(exc).__name__}: {exc}", request)


def forget(root: str | Path, request: Request, request_id: str | None = None, log=print) -> dict:
    """Honour one deletion request on the run at `root`; returns its ledger record (`noop` is true when an
    identical request had been honoured already). Requests are serialised by the run's lock; `request_id`
    names a record made by `submit` (the service queues requests that way)."""
    run = Run(root)
    ledger = run.ledger()
    with run.lock():
        try:
            recover(run, ledger)
            current = run.current()
            verify_version(current)
            tables = load_tables(data_dir(current))
            samples, manifest = load_prepared(data_dir(current))
            record, done, rest = submit(ledger, request, tables["events"])
        except E2URecError as exc:
            if request_id:  # a queued request that can no longer run fails instead of waiting forever
                ledger.update(request_id, status="failed", error=failure(exc, request))
            raise
        rid = request_id or record["request_id"]
        if done:
            if record["status"] not in FINAL or rid != record["request_id"]:
                ledger.update(rid, status="done", version=current.name, seconds=0.0,
                              metrics={"noop": "every id was forgotten by earlier requests"})
            return {**ledger.get(rid), "noop": True}
        ledger.update(rid, status="running", error=None)
        started = time.perf_counter()
        try:
            version, metrics, counts = apply(run, current, samples, manifest, tables, rest, rid, log)
        except BaseException as exc:
            ledger.update(rid, status="failed", error=failure(exc, request))
            shutil.rmtree(run.work / rid, ignore_errors=True)  # scratch data holds the forgotten rows
            raise
        seconds = round(time.perf_counter() - started, 3)
        run.set_current(version)
        status = version_meta(version)["status"]
        ledger.update(rid, status=status, version=version.name, metrics=metrics, row_counts=counts, seconds=seconds)
        run.sweep()
        log(f"request {rid}: {status} in {seconds:.1f} s → {version.name} (test AUC {metrics['auc']}, audit "
            f"{metrics['audit']['verdict']})")
        return {**ledger.get(rid), "noop": False}


def apply(run: Run, current: Path, samples: pd.DataFrame, manifest: dict, tables: dict[str, pd.DataFrame],
          request: Request, rid: str, log) -> tuple[Path, dict, dict]:
    """Build the next version beside the current one (complete before anyone points at it)."""
    retained, new_tables, forget_rows, counts = rebuild(samples, tables, request, manifest["config"])
    settings = audit.AuditConfig.from_run(run.config)
    version = run.next_version()
    work = run.scratch(rid)  # fresh, and owned: a later `forget` or service start sweeps it if this process dies
    before, parent = load_model(model_dir(current))
    reference = reference_for(current, before, retained, settings)
    with atomic_dir(version) as tmp:
        write_prepared(tmp / "data", retained, new_tables, {**manifest, "parent_samples_sha256":
                                                            manifest["samples_sha256"]})
        facts: dict = {}
        if len(forget_rows):
            write_prepared(work / "job-data", job_samples(retained, forget_rows), new_tables, manifest)
            student, facts, verdict = escalate(run, current, work, before, forget_rows, retained, settings,
                                               "config" in parent, rid, log, reference)
            shutil.rmtree(work / "job-data")
        else:
            student, verdict = before, audit.nothing_to_audit(settings)
        del before
        if verdict.get("exact"):  # a Retrain is the run's new exact model: its predictions start a new budget
            rows = audit.reference_rows(retained, settings)
            reference = audit.reference_scores(student, rows), rows, {"version": version.name, "kind": "retrain"}
        kept = write_reference(tmp, reference[0], reference[2])
        status = "unverified" if verdict["verdict"] == "fail" and not verdict.get("exact") else "done"
        save_model(full_weights(student), tmp / "model",
                   {"role": "version", "version": version.name, "request_id": rid, "parent": current.name,
                    "backbone": run.config.get("backbone"),
                    **{k: parent[k] for k in ("config", "lora") if k in parent},  # the recipe a Retrain reuses
                    # what the unlearning did (α and its level, the teacher's forget metrics, every stopping-rule
                    # check), so a request can be inspected after the merge; numbers and pool names, no ids
                    **{k: facts[k] for k in ("unlearn_seconds", "hyperparameters", "trainable_params", "alpha",
                                             "teacher", "schedule") if k in facts}})
        metrics = score_test(student, retained, settings)
        del student
        metrics["unlearn_seconds"] = verdict.pop("unlearn_seconds", 0.0)
        metrics["audit"] = verdict
        write_json_atomic(tmp / VERSION_FILE, {"version": version.name, "request_id": rid, "parent": current.name,
                                               "created": time.time(), "status": status, "metrics": metrics,
                                               "reference": kept,
                                               "counts": counts, "model_sha256": model_checksums(tmp / "model")})
    return version, metrics, counts


def reference_for(current: Path, before: Backbone, retained: pd.DataFrame, settings: audit.AuditConfig
                  ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(the last exact model's predictions on the reference rows still unchanged, those rows, where they come
    from). A version made before the drift check has none: the version before stands in (kind `version`)."""
    found = read_reference(current)
    if found is None:
        rows = audit.reference_rows(retained, settings)
        return audit.reference_scores(before, rows), rows, {"version": current.name, "kind": "version"}
    frame, origin = found
    kept, rows = audit.still_there(frame, retained)
    return kept, rows, {"version": origin["version"], "kind": origin["kind"]}


def escalate(run: Run, current: Path, work: Path, before: Backbone, forget_rows: pd.DataFrame,
             retained: pd.DataFrame, settings: audit.AuditConfig, can_retrain: bool, rid: str, log,
             reference: tuple[pd.DataFrame, pd.DataFrame, dict]) -> tuple[Backbone, dict, dict]:
    """Unlearn, audit, and while the audit fails follow the run's escalation: stronger E2URec attempts, then an
    exact Retrain (`on_unverified=retry`), a Retrain at once (`retrain`) or nothing more (`keep`); a version made
    by an older e2urec lacks the recipe a Retrain needs, so it gets the retries only. A failure on the run's drift
    budget alone goes straight to the Retrain: a stronger E2URec cannot give back what earlier requests spent.
    Returns the last attempt's model, its unlearning facts and the audit record (with every attempt's figures)."""
    non_members = audit.non_member_rows(retained, set(forget_rows["user_id"]), settings)
    labels = forget_rows["label"].to_numpy(), non_members["label"].to_numpy()
    data = audit.prompts(before, forget_rows, non_members)
    was = audit.score(before, forget_rows, non_members, data=data)
    ref, ref_rows, origin = reference
    ref_data = prompt_set(before, ref_rows) if len(ref_rows) else None
    method, options = run.config.get("method", "e2urec"), run.config.get("options", {})
    plan = [(method, options)] + escalation_plan(method, options, settings, can_retrain)
    attempts, seconds, number = [], 0.0, 0
    while True:
        name, opts = plan[number]
        log(f"request {rid}: unlearning {len(forget_rows)} prompts with {name} (attempt {len(attempts) + 1})")
        out = work / f"student-{number}"
        try:
            facts = unlearn(name, model_dir(current), work / "job-data", out, opts)
            seconds += facts["unlearn_seconds"]
            student, _ = load_model(out)
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
            shutil.rmtree(out, ignore_errors=True)
            number += 1
            continue
        attempts.append({"method": name, "options": opts, "verdict": verdict["verdict"],
                         "mia_auc": verdict["after"]["mia_auc"], "seconds": facts["unlearn_seconds"]})
        if verdict["verdict"] != "fail" or number == len(plan) - 1:
            break
        log(f"request {rid}: audit failed ({verdict['reason']}); escalating")
        shutil.rmtree(out, ignore_errors=True)
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


def score_test(model: Backbone, retained: pd.DataFrame, settings: audit.AuditConfig) -> dict:
    """Test AUC, accuracy and log-loss of the new version on a seeded test sample (`test_samples`; all if none)."""
    rows = audit.test_rows(retained, settings)
    if rows.empty:
        return {"auc": None, "acc": None, "logloss": None, "test_n": 0}
    p = per_sample_p_yes(model, prompt_set(model, rows), 64, progress=False)
    found = utility_metrics(rows["label"].to_numpy(), p)
    return {**{k: found[k] for k in ("auc", "acc", "logloss")}, "test_n": found["n"]}


def recover(run: Run, ledger: Ledger, sweep: bool = True) -> list[str]:
    """After a crash: finish the ledger of a request whose version was already swapped in, mark requests whose
    process died `failed`, and (with the lock held) drop leftovers; returns the ids of the requests failed."""
    meta = version_meta(run.current())
    rid = meta.get("request_id")
    if rid:
        record = ledger.get(rid)
        if record and record["status"] not in FINAL:
            ledger.update(rid, status=meta.get("status", "done"), version=meta["version"], metrics=meta.get("metrics"),
                          row_counts=meta.get("counts"))
    orphans = ledger.fail_orphans()
    if sweep:
        run.sweep()
    return orphans
