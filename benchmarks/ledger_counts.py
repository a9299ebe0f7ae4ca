"""How many ML-100K users the counts of a one-user deletion request single out: as `e2urec ledger` and the service's
`/jobs` showed them until 2026-12-07 (exact), as orders of magnitude (two designs measured and rejected), and as
they are shown now (`e2urec.ops.ledger.coarse`: no count; the audit's verdict and reason still tell whether the
request had no forget prompt, too few to judge, or enough).

The data is what e2urec's reader and `prepare` make of the real ML-100K files, at each `--last-n` (100,000 = the
full protocol `e2urec init` deploys); for every user, the counts a request for that user alone records are computed
by the request's own code (`e2urec.data.rebuild.rebuild`), with the audit's counts of the forget prompts
(`forget_prompts`, `forget_yes`). Users are then grouped by what a reader of each view sees: a user alone in a
group is identified by it (anyone holding the public dataset can compute the same table). No user id is written.
Prints JSON and writes benchmarks/results/ledger-counts-<date>.json. Usage:
python benchmarks/ledger_counts.py [--last-n 100000 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from common import keep
from e2urec.bench import machine
from e2urec.data.prepare import PrepareConfig, prepare
from e2urec.data.rebuild import rebuild
from e2urec.data.store import load_prepared, load_tables
from e2urec.ops.audit import AuditConfig, nothing_to_audit
from e2urec.ops.ledger import bucket, coarse
from e2urec.ops.request import match, read_request

View = Callable[[dict], tuple]


def user_counts(last_n: int, seed: int) -> list[dict]:
    """Per user (in no particular order, no id kept): the ledger's row counts and the audit's counts of a
    request that forgets that user alone."""
    with tempfile.TemporaryDirectory() as tmp:
        prepare(PrepareConfig("ml-100k", last_n=last_n, seed=seed), Path(tmp) / "data")
        samples, manifest = load_prepared(Path(tmp) / "data")
        tables = load_tables(Path(tmp) / "data")
    found = []
    for user in tables["events"]["user_id"].drop_duplicates():
        mask = match(tables["events"], read_request(users=[str(user)]))
        _, _, forget_rows, counts = rebuild(samples, tables, mask, manifest["config"], whole_users=True)
        found.append({"row_counts": counts, "audit": {"forget_prompts": int(len(forget_rows)),
                                                      "forget_yes": int(forget_rows["label"].sum())}})
    return found


def shown(record: dict) -> tuple:
    """What `e2urec ledger` and `/jobs` show of a request with these counts now, through the shipped `coarse`: its
    row counts and its audit record (the reason for too few prompts is the audit's own wording; the verdict of a
    request with enough prompts depends on the model, not on the counts, so it is left out here)."""
    n, settings = record["audit"]["forget_prompts"], AuditConfig()
    audit = nothing_to_audit(settings) if n == 0 else {**record["audit"], "verdict": "insufficient", "reason": (
        f"{n} forget prompts comparable with non-members; the audit needs {settings.audit_min_prompts}"
        if n < settings.audit_min_prompts else "enough prompts")}
    seen = coarse({"row_counts": record["row_counts"], "metrics": {"audit": audit, "test_n": n}})
    return json.dumps(seen["row_counts"]), json.dumps(seen["metrics"], sort_keys=True)


def category(n: int) -> str:
    return "none" if n == 0 else "too few" if n < AuditConfig().audit_min_prompts else "enough"


VIEWS: dict[str, tuple[str, View]] = {
    "exact_all": ("every exact count the ledger showed (row counts and the audit's forget_prompts, forget_yes)",
                  lambda r: (*r["row_counts"].values(), *r["audit"].values())),
    "exact_events_and_train": ("events_deleted and train_samples_removed (the pair quoted in issue #31)",
                               lambda r: (r["row_counts"]["events_deleted"], r["row_counts"]["train_samples_removed"])),
    "exact_events_deleted": ("events_deleted alone", lambda r: (r["row_counts"]["events_deleted"],)),
    "exact_forget_prompts": ("forget_prompts alone (the `n=` of `e2urec ledger`'s audit line)",
                             lambda r: (r["audit"]["forget_prompts"],)),
    "bucketed_all": ("rejected: every count as its order of magnitude",
                     lambda r: (*map(bucket, r["row_counts"].values()), *map(bucket, r["audit"].values()))),
    "bucketed_events_and_audit": ("rejected: events_deleted as its order of magnitude, with what the audit's "
                                  "verdict tells (no, too few or enough forget prompts)",
                                  lambda r: (bucket(r["row_counts"]["events_deleted"]),
                                             category(r["audit"]["forget_prompts"]))),
    "shown_now": ("what `e2urec ledger` and `/jobs` show now (`coarse`): no count; the audit's verdict and reason "
                  "still tell no, too few or enough forget prompts", shown),
}


def anonymity(records: list[dict], view: View) -> dict:
    """How users fall into groups of identical views: unique users, users in groups under 5 and under 10, the
    smallest group and the group size the median user is in."""
    keys = [view(r) for r in records]
    sizes = Counter(keys)
    per_user = sorted(sizes[k] for k in keys)
    return {"groups": len(sizes), "unique_users": sum(1 for s in per_user if s == 1),
            "unique_share": round(sum(1 for s in per_user if s == 1) / len(per_user), 4),
            "users_in_groups_under_5": sum(1 for s in per_user if s < 5),
            "users_in_groups_under_10": sum(1 for s in per_user if s < 10),
            "smallest_group": min(per_user), "median_users_sharing_a_view": per_user[len(per_user) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--last-n", type=int, nargs="+", default=[100_000, 10_000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    protocols = {}
    for last_n in args.last_n:
        records = user_counts(last_n, args.seed)
        pair = Counter((r["row_counts"]["events_deleted"], r["row_counts"]["train_samples_removed"]) for r in records)
        protocols[str(last_n)] = {
            "users": len(records),
            "views": {name: {"what": what, **anonymity(records, view)} for name, (what, view) in VIEWS.items()},
            "users_with_events_107_and_train_14": pair[(107, 14)],
            "orders_of_magnitude_of_events_deleted": dict(Counter(bucket(r["row_counts"]["events_deleted"])
                                                                  for r in records)),
        }
    report = {
        "benchmark": "ledger-counts", "date": datetime.date.today().isoformat(), "machine": machine(),
        "dataset": "ml-100k", "seed": args.seed, "audit_min_prompts": AuditConfig().audit_min_prompts,
        "last_n": protocols, "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(["python benchmarks/ledger_counts.py", *sys.argv[1:]]),
    }
    keep(report, "ledger-counts")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
