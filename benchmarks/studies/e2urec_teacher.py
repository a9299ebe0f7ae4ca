"""Is E2URec's forgetting teacher closer to Retrain than the Original is, sample by sample? (For study: reads
the bench's Retrain.) On one seed of an existing bench folder, the Original and the augmented model (the paper's
push) are rebuilt with E2URec's options, and on the forget set:
- the augmented push (how far it lowers the true answer's logit, before α: ReLU(z_aug − z_orig)) is correlated
  with the Original's memorisation as Retrain reveals it (the Original's log-odds of the true answer minus
  Retrain's) and with how wrong the Original was (1 − its P(true answer)): training on a sample moves it most
  where the loss is high;
- two-token JSD to Retrain of teacher variants, each with α set so its mean forget loss equals a target: the
  non-member loss level, or Retrain's own (an oracle level, to separate the level from the shape); and with α set
  so its forget AUC equals the Original's AUC on those non-members (E2URec's default `level=auc`).
  Variants: `augmented` (push=augmented: z_orig − α·ReLU(z_aug − z_orig)), `shrink` (the Original's log-odds
  pulled towards their mean over the forget set: less confident, ranks kept), `label` (push=label, the default:
  every true answer's log-odds lowered by α).
(The JSONs of 2026-11-27 have `teacher` and `plain` instead of `augmented`: the teacher with and without a control
model, removed with the `aug_contrast` option after 0.1.0.)
Usage: python benchmarks/studies/e2urec_teacher.py --bench runs/cpu --seeds 0 1 2 [--options JSON]
Prints JSON (also BENCH/teacher.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import brentq

from e2urec.bench import machine
from e2urec.data.roles import rows_for
from e2urec.engine import make_accelerator
from e2urec.evaluation import jsd_yes_no, utility_metrics
from e2urec.model.scoring import answer_logits, per_sample
from e2urec.unlearning.base import Job
from e2urec.unlearning.e2urec import E2URec
from e2urec.unlearning.e2urec_rules import answer_losses, misfit, teacher_pairs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py, shared with the benchmarks
from common import run, save  # noqa: E402


def log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def refit_loss(yes: np.ndarray, p: np.ndarray) -> float:
    """Mean answer loss after the best shift of every log-odds by one constant (the intercept that makes the mean
    P(yes) the share of yes): what is left of the loss once base rate and calibration are set aside."""
    z = log_odds(p)
    shift = brentq(lambda b: float(np.mean(1 / (1 + np.exp(-(z + b)))) - yes.mean()), -20, 20)
    q = 1 / (1 + np.exp(-(z + shift)))
    return float(-np.mean(np.where(yes, np.log(q), np.log(1 - q))))


def logits(seed_dir: Path, options: dict) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """[N, 4] answer logits (No, Yes) of the Original and the augmented model; the forget rows; the Original's mean
    loss, best-intercept loss and AUC on E2URec's non-member pool."""
    accelerator = make_accelerator()
    with tempfile.TemporaryDirectory() as scratch:
        job = Job(seed_dir / "original", seed_dir / "data", Path(scratch) / "out", Path(scratch) / "work",
                  accelerator)
        method = E2URec(E2URec.Config.from_options(options))
        torch.manual_seed(method.cfg.seed)
        student = method.student(job)
        forget = method.prompt_sets(job, student)["forget"]
        teachers = [job.load_original(), method.augmented(job, forget)]
        pair = list(student.answer_ids)
        z = per_sample(student, forget, lambda b: torch.cat([answer_logits(t.model, b, t.kind)[:, pair]
                                                            for t in teachers], 1), 64, accelerator,
                       progress=False)
        non_members, _ = method.non_members(job, student)
        losses, p_non = answer_losses(student, teachers[0].model, non_members, accelerator)
        yes = non_members.targets == student.answer_ids[1]
        pool = {"loss": float(losses.mean()), "refit_loss": refit_loss(yes, p_non),
                "auc": 1 - misfit("auc", p_non, yes), "samples": len(yes)}
    return z, rows_for(job.samples, "forget"), pool


def study(seed_dir: Path, options: dict) -> dict:
    z, forget, pool = logits(seed_dir, options)
    nonmember_loss, nonmember_auc = pool["loss"], pool["auc"]
    y = forget["label"].to_numpy()
    retrain = pd.read_parquet(seed_dir / "eval" / "retrain-forget" / "predictions.parquet")
    p_retrain = retrain.set_index("sample_id").loc[forget["sample_id"], "p_yes"].to_numpy()
    z_orig, z_aug = z[:, :2], z[:, 2:4]

    def p_yes(zz: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(zz[:, 0] - zz[:, 1]))

    def loss(p: np.ndarray) -> float:
        return misfit("loss", p, y)

    p_orig = p_yes(z_orig)
    sign = np.where(y == 1, 1.0, -1.0)
    memorised = sign * (log_odds(p_orig) - log_odds(p_retrain))
    push = np.maximum(z_aug - z_orig, 0)[np.arange(len(y)), y]
    p_true = np.where(y == 1, p_orig, 1 - p_orig)
    centre = log_odds(p_orig).mean()
    variants: dict[str, Callable[[float], np.ndarray]] = {
        "augmented": lambda a: p_yes(teacher_pairs("augmented", z_orig, y, z_aug)(a)),
        "shrink": lambda a: 1 / (1 + np.exp(-(centre + (log_odds(p_orig) - centre) / (1 + a)))),
        "label": lambda a: p_yes(teacher_pairs("label", z_orig, y)(a)),
    }

    def at_level(make: Callable[[float], np.ndarray], target: float, level: str = "loss") -> dict:
        def worse(a: float) -> float:
            return misfit(level, make(a), y)

        alpha = 0.0  # the misfit grows with α; bisection to the target (200 where even that is not enough)
        if worse(0.0) < target:
            low, high = 0.0, 200.0
            for _ in range(60):
                mid = (low + high) / 2
                low, high = (mid, high) if worse(mid) < target else (low, mid)
            alpha = (low + high) / 2
        p = make(alpha)
        return {"alpha": round(alpha, 3), "loss": round(loss(p), 4), "auc": round(utility_metrics(y, p)["auc"], 4),
                "jsd_to_retrain": round(jsd_yes_no(p, p_retrain), 5), "p_yes_std": round(float(p.std()), 3)}

    retrain_loss = loss(p_retrain)
    return {
        "forget_samples": int(len(y)),
        "original": {"loss": round(loss(p_orig), 4), "auc": round(utility_metrics(y, p_orig)["auc"], 4),
                     "jsd_to_retrain": round(jsd_yes_no(p_orig, p_retrain), 5),
                     "p_yes_std": round(float(p_orig.std()), 3)},
        "retrain": {"loss": round(retrain_loss, 4), "auc": round(utility_metrics(y, p_retrain)["auc"], 4),
                    "p_yes_std": round(float(p_retrain.std()), 3)},
        "correlation": {"push_vs_memorised": round(float(np.corrcoef(push, memorised)[0, 1]), 3),
                        "push_vs_original_error": round(float(np.corrcoef(push, 1 - p_true)[0, 1]), 3),
                        "original_confidence_vs_memorised": round(float(np.corrcoef(p_true, memorised)[0, 1]), 3)},
        "at_nonmember_level": {name: at_level(make, nonmember_loss) for name, make in variants.items()},
        "at_retrain_level": {name: at_level(make, retrain_loss) for name, make in variants.items()},
        "at_nonmember_auc": {name: at_level(make, 1 - nonmember_auc, "auc") for name, make in variants.items()
                             if name != "shrink"},  # shrinking keeps the ranks: no α moves its AUC
        "nonmember_loss": round(nonmember_loss, 4), "nonmember_auc": round(nonmember_auc, 4),
        "nonmember_refit_loss": round(pool["refit_loss"], 4), "nonmember_samples": pool["samples"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("runs/cpu"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--options", default="{}", help="E2URec options as JSON")
    args = parser.parse_args()

    def go() -> dict:
        options = json.loads(args.options)
        report = {"benchmark": "e2urec_teacher", "machine": machine(), "bench": str(args.bench), "options": options,
                  "seeds": {seed: study(args.bench / f"seed-{seed}", {**options, "seed": seed})
                            for seed in args.seeds},
                  "command": f"python benchmarks/studies/e2urec_teacher.py --bench {args.bench} --seeds "
                             f"{' '.join(map(str, args.seeds))} --options '{args.options}'"}
        return save(args.bench / "teacher.json", report)

    run(go)


if __name__ == "__main__":
    main()
