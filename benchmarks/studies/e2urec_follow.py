"""Does E2URec's student follow its forgetting teacher, and where would a rule stop it? On one seed of an
existing bench folder, the student is distilled from the teacher on the forget set alone (no stopping rule) and
scored every few steps: KL(teacher ‖ student) over the two answer tokens and the forget AUC / gap closure
against the bench's Original and Retrain (for study: they read Retrain), beside what a rule may read (forget
loss, the non-member pool's loss, valid AUC of users who are not forgotten). Usage:
python benchmarks/studies/e2urec_follow.py --bench runs/cpu --seed 0 --steps 120 --every 30 \
    --options '{"lora_targets": "attention"}'
Prints JSON (also BENCH/follow-NAME.json when --name is given).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from e2urec.bench import closure, machine
from e2urec.checkpoint import load_model
from e2urec.data.roles import rows_for
from e2urec.engine import TrainConfig, fit, make_accelerator
from e2urec.evaluation import utility_metrics
from e2urec.model.scoring import per_sample_p_yes
from e2urec.unlearning.base import Job
from e2urec.unlearning.e2urec import E2URec, E2URecObjective
from e2urec.unlearning.e2urec_rules import answer_losses

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py, shared with the benchmarks
from common import run, save  # noqa: E402


def follow(seed_dir: Path, options: dict, steps: int, every: int) -> dict:
    accelerator = make_accelerator()
    with tempfile.TemporaryDirectory() as scratch:
        job = Job(seed_dir / "original", seed_dir / "data", Path(scratch) / "out", Path(scratch) / "work",
                  accelerator)
        method = E2URec(E2URec.Config.from_options({"forget_only": 1.0, "stop": "none", **options}))
        torch.manual_seed(method.cfg.seed)
        student = method.student(job)
        data = method.prompt_sets(job, student)
        method.attach_teachers(job, student, data)
        labels = rows_for(job.samples, "forget")["label"].to_numpy()
        teacher = data["forget"].extras["fgt_p2"][:, 1].numpy().astype(float)
        retrain, _ = load_model(seed_dir / "retrain")
        retrain_auc = utility_metrics(labels, per_sample_p_yes(retrain, data["forget"], 64, accelerator,
                                                               progress=False))["auc"]
        non_members, pool = method.non_members(job, student)
        utility, utility_labels = method.utility_set(job, student)
        points: list[dict] = []

        def score(step: int) -> None:
            loss, p = answer_losses(student, student.model, data["forget"], accelerator)
            p = np.clip(p, 1e-7, 1 - 1e-7)
            kl = float(np.mean(teacher * np.log(teacher / p) + (1 - teacher) * np.log((1 - teacher) / (1 - p))))
            auc = utility_metrics(labels, p)["auc"]
            original_auc = points[0]["forget_auc"] if points else auc
            points.append({"step": step, "kl_to_teacher": kl, "forget_auc": auc,
                           "closure_auc": closure(original_auc, auc, retrain_auc),
                           "forget_loss": float(loss.mean()),
                           "nonmember_loss": float(answer_losses(student, student.model, non_members,
                                                                 accelerator)[0].mean()),
                           "valid_auc": utility_metrics(utility_labels, answer_losses(
                               student, student.model, utility, accelerator)[1])["auc"]})
            print(json.dumps(points[-1]), flush=True)

        score(0)
        objective = E2URecObjective(student, method.cfg, forget_only_steps=steps)
        per_pass = math.ceil(len(data["forget"]) / method.cfg.batch_size)
        for done in range(every, steps + 1, every):
            student.model.train()
            fit(student, objective, {"forget": data["forget"]},
                TrainConfig(epochs=math.ceil(every / per_pass) + 1, lr=method.cfg.lr,
                            batch_size=method.cfg.batch_size, max_steps=every, seed=done),
                accelerator=accelerator, desc="student")
            score(done)
    return {"benchmark": "e2urec_follow", "machine": machine(), "seed_dir": str(seed_dir), "options": options,
            "teacher_forget_auc": utility_metrics(labels, teacher)["auc"], "retrain_forget_auc": retrain_auc,
            "alpha": method.facts.get("alpha"), "non_members": pool, "points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--every", type=int, default=30)
    parser.add_argument("--options", default="{}", help="E2URec options as JSON")
    parser.add_argument("--name", help="also write BENCH/follow-NAME.json")
    args = parser.parse_args()

    def go() -> dict:
        report = follow(args.bench / f"seed-{args.seed}", {**json.loads(args.options), "seed": args.seed},
                        args.steps, args.every)
        if args.name:
            save(args.bench / f"follow-{args.name}.json", report)
        return report

    run(go)


if __name__ == "__main__":
    main()
