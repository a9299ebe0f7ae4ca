"""Training speed of the engine against a plain PyTorch loop of the same model, in one run.

Both train the full model on the answer cross-entropy of real ML-100K prompts, bf16 autocast on a GPU. Rows:
- `plain`: the shortest correct loop (random batches, AdamW, no host sync until the end), per batch size;
- `engine (features off)`: `e2urec.engine.fit` as it runs on CPU (no bucketing, unfused AdamW, loss read back
  every step);
- `engine (GPU features)`: what `fit` does by default on a GPU (length-bucketed batches, fused AdamW, one
  forward per optimiser step, loss read back every 50 forwards), here forced on whatever the device;
- `engine (GPU features + compile)` with `--compile`.
Each reports samples/s after `--warmup` steps and model FLOP utilisation (MFU: useful training FLOPs — padding
excluded — over the GPU's dense bf16 peak; null where the peak is unknown, e.g. on CPU).

Usage: python benchmarks/gpu_train.py [--backbone smollm2-135m|smollm2-shape|tiny] [--batch-sizes 32,64]
       [--steps 40] [--warmup 10] [--compile]
On CPU it runs the tiny backbone on a few steps (a smoke test of every path); on a GPU SmolLM2-135M.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

from common import recent_samples, run
from e2urec.bench import machine
from e2urec.data.roles import rows_for
from e2urec.engine import Check, TrainConfig, fit, make_accelerator
from e2urec.model.backbone import Backbone, answer_token_ids, load_backbone
from e2urec.model.scoring import PromptSet, answer_logits, collator, prompt_set
from e2urec.speed import Speed
from e2urec.training import AnswerCrossEntropy

# Dense bf16 tensor-core peaks (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12,
             "H100": 756e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def smollm2_shape() -> Backbone:
    """SmolLM2-135M's architecture with random weights: the same speed without the weights (or their transfer).
    Its tokenizer is the tiny built-in's, which is SmolLM2's, already set up for causal prompts by the loader."""
    tokenizer = load_backbone("tiny").tokenizer
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=1e5,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    return Backbone(model, tokenizer, "causal", "smollm2-shape", answer_token_ids(tokenizer, "causal"))


def backbone_named(name: str) -> Backbone:
    return smollm2_shape() if name == "smollm2-shape" else load_backbone(name)


def forward_flops(model: torch.nn.Module, tokens: float) -> float:
    """FLOPs of one forward over `tokens` real tokens of one prompt, answer logits at the last position only:
    2·(non-embedding parameters)·T + attention scores and values 4·layers·T²·d + the output head 2·d·V."""
    config = model.config
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    dense = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
    return 2 * dense * tokens + 4 * layers * tokens**2 * d + 2 * d * vocab


def mfu(model: torch.nn.Module, lengths: list[int], samples_per_second: float, training: bool) -> float | None:
    """Useful FLOP/s (3× forward when training) over the device's bf16 peak, for prompts of these lengths."""
    peak = peak_flops()
    if peak is None:
        return None
    per_sample = float(np.mean([forward_flops(model, t) for t in lengths])) * (3 if training else 1)
    return round(per_sample * samples_per_second / peak, 4)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def plain_loop(backbone: Backbone, data: PromptSet, batch_size: int, steps: int, warmup: int) -> float:
    """Samples/s of the shortest correct training loop: random batches, bf16 autocast, AdamW, no host syncs."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = backbone.model.to(device).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda" or None)
    make = collator(backbone, data)
    order = np.random.default_rng(0).permutation(np.resize(np.arange(len(data)), (warmup + steps) * batch_size))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            started = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True)
                 for k, v in make(order[step * batch_size:(step + 1) * batch_size].tolist()).items()}
        with autocast:
            loss = F.cross_entropy(answer_logits(model, batch, backbone.kind).float(), batch["target"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    return steps * batch_size / (time.perf_counter() - started)


class Clock:
    """A Monitor that only reads the time (after a device sync) every `every` steps."""

    def __init__(self, every: int):
        self.every = every
        self.times: dict[int, float] = {}

    def __call__(self, model: torch.nn.Module, accelerator: object, steps: int) -> Check:
        sync()
        self.times[steps] = time.perf_counter()
        return Check(keep=False, stop=False)


def engine(backbone: Backbone, data: PromptSet, batch_size: int, steps: int, warmup: int, speed: Speed) -> float:
    """Samples/s of `fit` between optimiser step `warmup` and `warmup + steps`."""
    accelerator = make_accelerator()
    backbone.model.to(accelerator.device).requires_grad_(True)
    clock = Clock(warmup)
    cfg = TrainConfig(epochs=1000, lr=1e-5, batch_size=batch_size, max_steps=warmup + steps)
    fit(backbone, AnswerCrossEntropy(backbone.kind), {"train": data}, cfg, accelerator=accelerator,
        desc="engine", monitor=clock, speed=speed)
    return steps * batch_size / (clock.times[warmup + steps] - clock.times[warmup])


def main() -> dict:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="smollm2-135m" if gpu else "tiny")
    parser.add_argument("--batch-sizes", default="32,64" if gpu else "8")
    parser.add_argument("--steps", type=int, default=40 if gpu else 3, help="timed steps (a multiple of --warmup)")
    parser.add_argument("--warmup", type=int, default=10 if gpu else 1)
    parser.add_argument("--last-n", type=int, default=4000 if gpu else 600, help="recent ML-100K samples to draw")
    parser.add_argument("--compile", action="store_true", help="also time the engine with torch.compile")
    args = parser.parse_args()
    if args.steps % args.warmup:
        parser.error("--steps must be a multiple of --warmup (the clock reads the time every --warmup steps)")
    backbone = backbone_named(args.backbone)
    data = prompt_set(backbone, rows_for(recent_samples(args.last_n), "train"))
    lengths = [len(ids) for ids in data.ids]
    initial = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    report: dict = {"machine": machine(), "backbone": args.backbone, "prompts": len(data),
                    "tokens_per_prompt": {"mean": round(float(np.mean(lengths)), 1), "max": max(lengths)},
                    "steps": args.steps, "warmup": args.warmup, "peak_bf16_flops": peak_flops(), "rows": []}
    device = make_accelerator().device
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        cfg = TrainConfig(batch_size=batch_size)
        features = replace(Speed.auto(torch.device("cuda"), cfg), compile=False)  # also on CPU: tests the paths
        variants = [("engine (features off)", Speed()), ("engine (GPU features)", features)]
        if args.compile:
            variants.append(("engine (GPU features + compile)", replace(features, compile=True)))
        rates = {"plain": plain_loop(backbone, data, batch_size, args.steps, args.warmup)}
        for label, speed in variants:
            backbone.model.load_state_dict(initial)
            rates[label] = engine(backbone, data, batch_size, args.steps, args.warmup, speed)
        for label, rate in rates.items():
            report["rows"].append({"loop": label, "batch_size": batch_size, "samples_per_second": round(rate, 1),
                                   "mfu": mfu(backbone.model, lengths, rate, training=True),
                                   "vs_plain": round(rate / rates["plain"], 3)})
        report[f"default_speed_here_batch_{batch_size}"] = asdict(Speed.auto(device, cfg))
        backbone.model.load_state_dict(initial)
    return report


if __name__ == "__main__":
    run(main)
