"""Benchmark scoring and training throughput, every ratio measured side by side in one run.

- last-position logits (`logits_to_keep=1`, what e2urec does) against full logits then slicing, on a handful
  of real prompts, for the tiny backbone and SmolLM2-135M; outputs checked equal;
- length-sorted batches against the same batches in random order (more padding), P(yes) checked equal;
- training samples/s of the tiny backbone (full fine-tune) and SmolLM2-135M with LoRA, on the one engine.

Prints one JSON object. Usage: python benchmarks/scoring.py [--skip-smollm2] [--prompts 8,32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import DataLoader

from common import recent_samples, run
from e2urec.bench import machine
from e2urec.data.roles import rows_for
from e2urec.engine import TrainConfig, fit, make_accelerator
from e2urec.model.backbone import Backbone, load_backbone
from e2urec.model.scoring import (
    MODEL_INPUTS,
    PromptSet,
    answer_logits,
    collate,
    collator,
    encode_prompts,
    length_sorted_batches,
    p_yes_from_logits,
    prompt_set,
)
from e2urec.training import LORA_DEFAULTS, AnswerCrossEntropy, make_trainable


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time over `repeats` calls after one warm-up: the least noisy estimate on a shared CPU."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


@torch.inference_mode()
def last_vs_full(backbone: Backbone, prompts: list[str], repeats: int) -> dict:
    batch = collate(backbone, encode_prompts(backbone.tokenizer, prompts))
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    model = backbone.model.eval()

    def full() -> torch.Tensor:
        return model(**inputs, use_cache=False).logits[:, -1]

    def last() -> torch.Tensor:
        return answer_logits(model, batch, backbone.kind)

    same = torch.allclose(full(), last(), atol=1e-4, rtol=1e-4)
    full_s, last_s = best_of(full, repeats), best_of(last, repeats)
    return {"prompts": len(prompts), "tokens_per_prompt": int(inputs["input_ids"].shape[1]),
            "full_logits_seconds": round(full_s, 4), "last_position_seconds": round(last_s, 4),
            "speedup": round(full_s / last_s, 2), "same_output": bool(same)}


@torch.inference_mode()
def sorted_vs_unsorted(backbone: Backbone, prompts: list[str], batch_size: int, repeats: int, seed: int = 0) -> dict:
    data = PromptSet(encode_prompts(backbone.tokenizer, prompts))
    make = collator(backbone, data)
    yes = torch.as_tensor(backbone.answer_ids)
    model = backbone.model.eval()
    sorted_batches = length_sorted_batches(data, batch_size)
    order = np.random.default_rng(seed).permutation(len(data))
    random_batches = [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]

    def run(batches: list[list[int]]) -> np.ndarray:
        out = np.empty(len(data))
        for batch in DataLoader(data, batch_sampler=batches, collate_fn=make):
            out[batch["index"].numpy()] = p_yes_from_logits(answer_logits(model, batch, backbone.kind), yes).numpy()
        return out

    def padding(batches: list[list[int]]) -> float:
        lengths = [[len(data.ids[i]) for i in b] for b in batches]
        return 1 - sum(map(sum, lengths)) / sum(max(b) * len(b) for b in lengths)

    same = np.allclose(run(sorted_batches), run(random_batches), atol=1e-4)
    sorted_s, random_s = best_of(lambda: run(sorted_batches), repeats), best_of(lambda: run(random_batches), repeats)
    return {"prompts": len(data), "batch_size": batch_size, "sorted_seconds": round(sorted_s, 3),
            "random_order_seconds": round(random_s, 3), "speedup": round(random_s / sorted_s, 2),
            "padding_share_sorted": round(padding(sorted_batches), 3),
            "padding_share_random": round(padding(random_batches), 3), "same_output": bool(same)}


def training_rate(name: str, rows, lora: bool, batch_size: int, steps: int) -> dict:
    backbone = load_backbone(name)
    make_trainable(backbone, LORA_DEFAULTS if lora else None)
    data = {"train": prompt_set(backbone, rows)}
    objective = AnswerCrossEntropy(backbone.kind)
    cfg = TrainConfig(epochs=1, lr=1e-4, batch_size=batch_size, max_steps=steps)
    fit(backbone, objective, data, replace(cfg, max_steps=1), accelerator=make_accelerator(), desc="warm-up")
    result = fit(backbone, objective, data, cfg, accelerator=make_accelerator(), desc=f"{name} train")
    samples = result.steps * batch_size
    return {"backbone": name, "lora": lora, "batch_size": batch_size, "steps": result.steps,
            "seconds": round(result.seconds, 2), "samples_per_second": round(samples / result.seconds, 2)}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-smollm2", action="store_true", help="tiny backbone only")
    parser.add_argument("--prompts", default="8,32", help="batch sizes (prompts) for last-vs-full, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    report: dict = {"machine": machine()}
    samples = recent_samples()
    train_rows = rows_for(samples, "train")
    prompts = rows_for(samples, "test")["prompt"].tolist()
    names = ["tiny"] if args.skip_smollm2 else ["tiny", "smollm2-135m"]
    sizes = [int(n) for n in args.prompts.split(",")]
    report["last_position_vs_full_logits"] = {
        name: [last_vs_full(backbone, prompts[:n], args.repeats) for n in sizes]
        for name, backbone in ((name, load_backbone(name)) for name in names)}
    report["length_sorted_vs_random_batches"] = {
        "tiny": sorted_vs_unsorted(load_backbone("tiny"), prompts[:256], 32, args.repeats)}
    if not args.skip_smollm2:
        report["length_sorted_vs_random_batches"]["smollm2-135m"] = sorted_vs_unsorted(
            load_backbone("smollm2-135m"), prompts[:32], 8, 1)
    report["training"] = [training_rate("tiny", train_rows, lora=False, batch_size=32, steps=20)]
    if not args.skip_smollm2:
        report["training"].append(training_rate("smollm2-135m", train_rows, lora=True, batch_size=4, steps=6))
    return report


if __name__ == "__main__":
    run(main)
