"""Benchmark one E2URec optimizer step against (a) a plain LoRA cross-entropy step on the same forget and
retain batches and (b) the naive step of the reference design, which runs the Original and the augmented
model forward every step to get the teachers. E2URec reads its teachers from caches computed once per
sample (top-64 + rest), so its step costs what a plain step costs.

The three steps are timed round-robin (so machine noise hits all alike); medians are compared. The one-time
caching cost is reported too, per sample and amortised over the reference schedule's epochs.

Prints one JSON object. Usage: python benchmarks/e2urec_step.py [--backbone tiny|smollm2-135m] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from common import recent_samples, run
from e2urec.bench import machine
from e2urec.data.roles import rows_for
from e2urec.engine import make_accelerator
from e2urec.model.backbone import load_backbone
from e2urec.model.scoring import answer_logits, collator, prompt_set
from e2urec.training import LORA_DEFAULTS, make_trainable
from e2urec.unlearning.base import TEACHER_TOP_K, cache_teacher, logits_of
from e2urec.unlearning.e2urec import E2URecConfig, E2URecObjective
from e2urec.unlearning.losses import forgetting_teacher_logits, soft_cross_entropy


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    args = parser.parse_args()
    torch.manual_seed(0)
    samples = recent_samples()
    n = args.batch_size * 4
    forget_rows, retain_rows = rows_for(samples, "forget").iloc[:n], rows_for(samples, "retain").iloc[:n]

    student = load_backbone(args.backbone)
    original = copy.deepcopy(student.model).eval()
    augmented = copy.deepcopy(student.model).eval()
    with torch.no_grad():  # any other weights will do for timing; make the augmented model differ
        for p in augmented.parameters():
            p.add_(0.01 * torch.randn_like(p))
    make_trainable(student, LORA_DEFAULTS)
    model, kind = student.model, student.kind
    cfg = E2URecConfig()
    forget, retain = prompt_set(student, forget_rows), prompt_set(student, retain_rows)
    accelerator = make_accelerator()
    started = time.perf_counter()
    cache_teacher(student, forget, lambda b: forgetting_teacher_logits(answer_logits(original, b, kind),
                                                                       answer_logits(augmented, b, kind), cfg.alpha),
                  "fgt", accelerator)
    cache_teacher(student, retain, logits_of(original, kind), "rem", accelerator)
    cache_seconds = time.perf_counter() - started
    first = list(range(args.batch_size))
    fb, rb = collator(student, forget)(first), collator(student, retain)(first)

    objective = E2URecObjective(student, cfg, forget_only_steps=0)
    beta = cfg.beta

    def e2urec() -> torch.Tensor:
        return objective.loss(model, {"forget": fb, "retain": rb})

    def plain() -> torch.Tensor:
        return (F.cross_entropy(answer_logits(model, fb, kind).float(), fb["target"])
                + F.cross_entropy(answer_logits(model, rb, kind).float(), rb["target"]))

    def naive() -> torch.Tensor:
        with torch.no_grad():
            z_orig_f, z_aug_f = answer_logits(original, fb, kind), answer_logits(augmented, fb, kind)
            z_orig_r = answer_logits(original, rb, kind)
        fgt = torch.softmax(forgetting_teacher_logits(z_orig_f, z_aug_f, cfg.alpha).float(), -1)
        rem = torch.softmax(z_orig_r.float(), -1)
        student_r = answer_logits(model, rb, kind)
        return (beta * soft_cross_entropy(answer_logits(model, fb, kind), fgt)
                + (1 - beta) * (soft_cross_entropy(student_r, rem) + F.cross_entropy(student_r.float(), rb["target"])))

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()

    def step(loss_fn: Callable[[], torch.Tensor]) -> float:
        begin = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()
        return time.perf_counter() - begin

    variants = {"e2urec": e2urec, "plain_lora_ce": plain, "naive_three_models": naive}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(2):
        for fn in variants.values():
            step(fn)
    for _ in range(args.steps):
        for name, fn in variants.items():
            times[name].append(step(fn))
    median = {k: statistics.median(v) for k, v in times.items()}
    vocab = student.model.config.vocab_size
    cached = len(forget) + len(retain)
    return {
        "machine": machine(),
        "backbone": args.backbone, "batch_size": args.batch_size, "timed_steps": args.steps,
        "median_step_seconds": {k: round(v, 4) for k, v in median.items()},
        "e2urec_vs_plain_lora_ce": round(median["e2urec"] / median["plain_lora_ce"], 3),
        "naive_vs_e2urec": round(median["naive_three_models"] / median["e2urec"], 3),
        "goal_e2urec_vs_plain": 1.2,
        "teacher_cache": {
            "samples": cached, "seconds": round(cache_seconds, 3),
            "seconds_per_sample": round(cache_seconds / cached, 5),
            "bytes_per_sample": TEACHER_TOP_K * (8 + 4) + 4,
            "full_vocabulary_bytes_per_sample": 4 * vocab,
        },
    }


if __name__ == "__main__":
    run(main)
