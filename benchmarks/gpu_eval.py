"""Evaluation speed: scoring a split against a reference the old way and the new way, in one run.

`evaluate --split forget --reference R` used to run four forwards per prompt (P(yes) of the model, then model
and reference again for JSD/L2, then the reference again for its P(yes)); it now runs two (`split_scores`:
both P(yes) and every distance from the same logits). Rows: the old path and the new one at the same batch
size (outputs checked identical), and the new one at a larger GPU batch (checked close: only the padding
differs). Reports seconds, prompts/s and forward MFU.

Usage: python benchmarks/gpu_eval.py [--backbone smollm2-135m|smollm2-shape|tiny] [--prompts 2590]
       [--batch-sizes 64,256]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from common import recent_samples, run
from e2urec.bench import machine
from e2urec.data.roles import rows_for
from e2urec.engine import make_accelerator
from e2urec.evaluation import EvalConfig, distances, split_scores
from e2urec.model.scoring import per_sample_p_yes, prompt_set
from gpu_train import backbone_named, mfu, peak_flops, sync


def timed(fn):
    sync()
    started = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - started


def main() -> dict:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="smollm2-135m" if gpu else "tiny")
    parser.add_argument("--prompts", type=int, default=2590 if gpu else 48, help="split size (the issue's forget set)")
    parser.add_argument("--batch-sizes", default="64,256" if gpu else "16,32", help="old batch, then larger ones")
    parser.add_argument("--last-n", type=int, default=6000 if gpu else 600, help="recent ML-100K samples to draw")
    args = parser.parse_args()
    accelerator = make_accelerator()
    model = backbone_named(args.backbone)
    reference = copy.deepcopy(model)
    with torch.no_grad():  # a different model of the same tokenizer, as Retrain is to a method's model
        generator = torch.Generator().manual_seed(1)
        for p in reference.model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02 * p.std().nan_to_num())
    for b in (model, reference):
        b.model.to(accelerator.device)
    rows = rows_for(recent_samples(args.last_n), "train").iloc[:args.prompts]
    data = prompt_set(model, rows)
    lengths = [len(ids) for ids in data.ids]
    sizes = [int(b) for b in args.batch_sizes.split(",")]

    def old(batch_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
        cfg = EvalConfig(batch_size=batch_size)
        p = per_sample_p_yes(model, data, batch_size, accelerator)
        near = distances(model, reference, data, cfg, accelerator)
        return p, per_sample_p_yes(reference, data, batch_size, accelerator), near

    def new(batch_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
        return split_scores(model, reference, data, EvalConfig(batch_size=batch_size), accelerator)

    new(sizes[0])  # warm-up: kernels, allocator
    report: dict = {"machine": machine(), "backbone": args.backbone, "prompts": len(data),
                    "tokens_per_prompt": round(float(np.mean(lengths)), 1), "peak_bf16_flops": peak_flops(),
                    "rows": []}
    baseline, old_seconds = timed(lambda: old(sizes[0]))
    runs = [("old: 4 forwards per prompt", sizes[0], baseline, old_seconds)]
    runs += [("new: 2 forwards per prompt", b, *timed(lambda b=b: new(b))) for b in sizes]
    for label, batch_size, (p, p_ref, near), seconds in runs:
        same = batch_size == sizes[0]
        check = np.array_equal if same else (lambda a, b: np.allclose(a, b, atol=2e-3))
        rate = len(data) / seconds
        report["rows"].append({
            "path": label, "batch_size": batch_size, "seconds": round(seconds, 3),
            "prompts_per_second": round(rate, 1), "speedup": round(old_seconds / seconds, 2),
            "forward_mfu": mfu(model.model, lengths, rate * (4 if label.startswith("old") else 2), training=False),
            "p_yes_equal" if same else "p_yes_close": bool(check(p, baseline[0]) and check(p_ref, baseline[1])),
            "max_distance_difference": max(abs(near[k] - baseline[2][k]) for k in near)})
    return report


if __name__ == "__main__":
    run(main)
