"""`e2urec forget`: honour a deletion request on a run, end to end.

Validate the ids → record the request (keyed hashes) → rebuild the data without the forgotten rows (later
prompts' histories included) → E2URec from the current version on (forget = every training prompt that
showed the forgotten rows, retain = the rebuilt training set) → audit the forgetting (`e2urec.ops.audit`) and,
when it fails, escalate as the run says (stronger E2URec, exact Retrain, or keep as `unverified`) → merge the
adapter, score a test sample → write the new version and swap `current` → purge the old version, the
augmented model, caches and scratch data.
A request that was interrupted (even by kill -9) is finished by the next call; a finished one is a no-op.

This module orders those steps and owns the run's lock, ledger updates and version swap; the request's ids are
`e2urec.ops.request`, the data rebuild `e2urec.data.rebuild`, the unlearning and its escalation
`e2urec.ops.escalation`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from e2urec.checkpoint import load_model, save_model
from e2urec.data.rebuild import job_samples, rebuild
from e2urec.data.store import load_prepared, load_tables, write_prepared
from e2urec.errors import E2URecError
from e2urec.evaluation import utility_metrics
from e2urec.io import atomic_dir, write_json_atomic
from e2urec.model.backbone import Backbone
from e2urec.model.lora import full_weights
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.ops import audit
from e2urec.ops.escalation import escalate
from e2urec.ops.ledger import FINAL, Ledger
from e2urec.ops.request import Request, failure, match, narrowed
from e2urec.ops.run import (
    VERSION_FILE,
    Run,
    data_dir,
    model_checksums,
    model_dir,
    read_reference,
    verify_version,
    version_meta,
    write_reference,
)


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


def forget(root: str | Path, request: Request, request_id: str | None = None,
           log: Callable[[str], object] = print) -> dict:
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
          request: Request, rid: str, log: Callable[[str], object]) -> tuple[Path, dict, dict]:
    """Build the next version beside the current one (complete before anyone points at it)."""
    retained, new_tables, forget_rows, counts = rebuild(samples, tables, match(tables["events"], request),
                                                        manifest["config"], whole_users=request.kind == "users")
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
            student, facts, verdict = escalate(run.config.get("method", "e2urec"), run.config.get("options", {}),
                                               model_dir(current), work, before, forget_rows, retained, settings,
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
