"""What one deletion request costs the model's utility, by E2URec setting, at the full protocol.

From the Original `benchmarks/deletion_requests.py` left in `--out` (data and model): one user of its picks
(`--request`, 1-based, its order) is unlearned from the Original once per `--options` set (JSON objects of
E2URec options; `{}` = the run default), each audited as a request is; then every student and the Original
score all test rows, and the paired test-AUC change against the Original (bootstrap SE) says how much utility
that one request took. Sequential requests add these up (deletion_requests.py: −0.018 after 10 requests at the
default). Prints JSON and writes benchmarks/results/request-damage-<date>.json; no user id is written. Usage:
python benchmarks/studies/request_damage.py --request 9 --options '{}' '{"forget_only": 0.8}'
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

from e2urec.bench import machine
from e2urec.checkpoint import load_model
from e2urec.data.roles import rows_for
from e2urec.data.store import load_prepared, load_tables, write_prepared
from e2urec.evaluation import paired_auc_change, utility_metrics
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from e2urec.ops import audit
from e2urec.unlearning.runner import unlearn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py, shared with the benchmarks
from common import keep, pick_users, run  # noqa: E402


def measure(out: Path, request: int, option_sets: list[dict], requests: int) -> dict:
    samples, manifest = load_prepared(out / "data")
    user = pick_users(samples, requests)[request - 1]
    forget_rows = samples[(samples["split"] == "train") & (samples["user_id"] == user)]
    retained = samples[samples["user_id"] != user]
    cfg = audit.AuditConfig()
    non_members = audit.non_member_rows(retained, {user}, cfg)
    labels = forget_rows["label"].to_numpy(), non_members["label"].to_numpy()
    test = rows_for(retained, "test")
    original, _ = load_model(out / "original")
    data = audit.prompts(original, forget_rows, non_members)
    was = audit.score(original, forget_rows, non_members, data=data)
    test_prompts = prompt_set(original, test)
    base_p = per_sample_p_yes(original, test_prompts, 64, progress=False)
    y = test["label"].to_numpy()
    rows = []
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        job = Path(tmp) / "job-data"
        flagged = samples.assign(forget=(samples["split"] == "train").to_numpy() & (samples["user_id"] == user))
        write_prepared(job, flagged, load_tables(out / "data"), manifest)
        for i, options in enumerate(option_sets):
            facts = unlearn("e2urec", out / "original", job, Path(tmp) / f"student-{i}", options)
            student, _ = load_model(Path(tmp) / f"student-{i}")
            verdict = audit.judge(was, audit.score(student, forget_rows, non_members, data=data), *labels, cfg)
            change, se = paired_auc_change(y, per_sample_p_yes(student, test_prompts, 64, progress=False), base_p)
            checks = facts.get("fit", {}).get("checks", [])
            rows.append({"options": options, "unlearn_seconds": facts["unlearn_seconds"],
                         "steps": facts.get("fit", {}).get("steps"),
                         "last_check": checks[-1] if checks else None,
                         "verdict": verdict["verdict"], "mia_auc_before": verdict["before"]["mia_auc"],
                         "mia_auc_after": verdict["after"]["mia_auc"],
                         "forgetting_effect": verdict.get("forgetting_effect"),
                         "test_auc_change": change, "test_auc_change_se": se})
            print(rows[-1])
            del student
            shutil.rmtree(Path(tmp) / f"student-{i}")
    return {"benchmark": "request_damage", "date": datetime.date.today().isoformat(), "machine": machine(),
            "request": request, "forget_prompts": int(len(forget_rows)), "test_n": int(len(test)),
            "test_auc_original": utility_metrics(y, base_p)["auc"], "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/requests-full"))
    parser.add_argument("--request", type=int, default=9, help="which of deletion_requests.py's users (1-based)")
    parser.add_argument("--requests", type=int, default=10, help="how many users deletion_requests.py picked")
    parser.add_argument("--options", nargs="+", type=json.loads, default=[{}])
    args = parser.parse_args()

    def go() -> dict:
        report = measure(args.out, args.request, args.options, args.requests)
        report["command"] = (f"python benchmarks/studies/request_damage.py --out {args.out} --request {args.request} "
                             f"--options " + " ".join(f"'{json.dumps(o)}'" for o in args.options))
        return keep(report, "request-damage")

    run(go)


if __name__ == "__main__":
    main()
