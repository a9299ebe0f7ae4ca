"""The one training loop. A method is an Objective (a loss over named batches, e.g. "train", or "retain"
and "forget") plus the set of parameters left trainable; the engine does the rest: accelerate devices and
DDP, AdamW, gradient accumulation, bf16 on GPU, early stopping on a validation loss, a progress bar, and
resumable epochs (a rerun after an interruption continues from the last completed epoch). How a recipe runs
on the hardware (`e2urec.speed.Speed`) is chosen per device and kept out of the recipe."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from e2urec.errors import Diverged, E2URecError
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, collator
from e2urec.options import KEEP
from e2urec.resume import Checkpoint, optimizer_tensors, restore_optimizer
from e2urec.speed import Buckets, Speed, bucketed_batches

Batch = dict[str, torch.Tensor]



@dataclass
class TrainConfig:
    """Optimisation settings shared by every method; each method picks its own defaults."""

    epochs: int = 10
    lr: float = 5e-4
    batch_size: int = 32
    grad_accum: int = 1
    weight_decay: float = 0.0
    patience: int = 3
    max_steps: int | None = None
    max_length: int | None = None
    eval_batch_size: int = 64
    seed: int = 0
    # Gradients are scaled down to this total L2 norm before each optimiser step (the HF Trainer's default);
    # 0 turns clipping off. Non-finite losses and gradients are caught either way (see `Diverged`).
    max_grad_norm: float = 1.0
    # Which epoch's weights a run with a validation loss keeps: "best" (lowest valid loss; stops after `patience`
    # epochs without a better one) or "last" (every epoch runs). Planted-memorisation testbeds need "last": the
    # epochs that memorise the planted rows are the ones a clean validation set calls worse.
    keep: str = "best"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise E2URecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise E2URecError(f"--lr must be a positive finite number, got {self.lr}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise E2URecError(f"--max-grad-norm must be ≥ 0 (0: no clipping), got {self.max_grad_norm}")
        if self.keep not in KEEP:
            raise E2URecError(f"--keep must be one of {', '.join(KEEP)}, got {self.keep!r}")


class _Watch:
    """Non-finite loss or gradient detection that stays on the device: the first bad optimiser step and its
    loss and gradient norm are kept in tensors, and read back only where the loop reads anything back anyway
    (the loss for the progress bar, a monitor check, the end of an epoch). No host sync is added per step; on a
    GPU a divergence is reported at most `Speed.sync_every` forwards late, and nothing diverged is ever kept."""

    def __init__(self, device: torch.device):
        self.first = torch.full((), -1, dtype=torch.int64, device=device)
        self.values = torch.zeros(2, dtype=torch.float32, device=device)

    def see(self, step: int, loss: torch.Tensor, norm: torch.Tensor) -> None:
        now = torch.stack([loss.detach().float().reshape(()), norm.detach().float().reshape(())])
        bad = ~torch.isfinite(now).all() & (self.first < 0)
        self.first = torch.where(bad, step, self.first)
        self.values = torch.where(bad, now, self.values)

    def check(self, desc: str, cfg: TrainConfig, precision: str) -> None:
        step = int(self.first)
        if step < 0:
            return
        loss, norm = (float(v) for v in self.values.cpu())
        hints = [f"a lower learning rate (lr is {cfg.lr:g}; try {cfg.lr / 10:g})"]
        if not 0 < cfg.max_grad_norm <= 1:
            hints.append("gradient clipping (max_grad_norm 1)")
        if precision != "no":
            hints.append(f"full precision (this run used {precision} autocast; set E2UREC_PRECISION=fp32)")
        raise Diverged(f"{desc}: training diverged at optimiser step {step + 1}: loss {loss:g}, gradient norm "
                       f"{norm:g}. The weights are no longer finite, so nothing was kept or written. Try "
                       + "; or ".join(hints))


class Objective(Protocol):
    """What a method contributes: which data streams a step reads and the loss over one step's batches."""

    def streams(self, epoch: int, step: int) -> tuple[str, ...]:
        """Stream names for this step (`step` = optimiser steps done so far). The first is the epoch's primary
        stream, which sets the epoch length and must not change within an epoch; the others are cycled."""

    def loss(self, model: torch.nn.Module, batches: dict[str, Batch]) -> torch.Tensor: ...


@dataclass
class Check:
    """A monitor's verdict at a step: keep this state as the result, stop training, and what it measured."""

    keep: bool
    stop: bool
    record: dict = field(default_factory=dict)


class Monitor(Protocol):
    """Called every `every` optimiser steps (and once before the first) to decide when training has done its
    job, e.g. E2URec's stopping rule; the state of the last check that said `keep` is the result."""

    every: int

    def __call__(self, model: torch.nn.Module, accelerator: Accelerator, steps: int) -> Check: ...


@dataclass
class FitResult:
    epochs_run: int
    steps: int
    seconds: float
    best_valid_loss: float | None
    history: list[dict] = field(default_factory=list)
    loop_seconds: float = 0.0  # forward/backward/optimiser only: validation and monitor checks excluded
    checks: list[dict] = field(default_factory=list)
    # Which state the returned weights are and why: {"epoch", "step", "why"} (epoch 0, step 0: the start).
    kept: dict = field(default_factory=dict)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


PRECISIONS = ("auto", "fp32", "bf16")


def make_accelerator() -> Accelerator:
    """Precision from E2UREC_PRECISION: auto (default) is bf16 autocast on a GPU that supports it and full
    precision on CPU; fp32 is full precision everywhere; bf16 is bf16 autocast on CPU too, so the GPU's numerics
    can be reproduced and tested without one."""
    precision = os.environ.get("E2UREC_PRECISION", "auto") or "auto"
    if precision not in PRECISIONS:
        raise E2URecError(f"E2UREC_PRECISION={precision!r} is not one of {', '.join(PRECISIONS)}")
    bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_available()
                                   and torch.cuda.is_bf16_supported())
    return Accelerator(mixed_precision="bf16" if bf16 else "no")


# Shuffling seeds: one generator per (seed, pass), kept apart by a prime stride; a secondary stream i (e.g.
# retain beside forget) shifts its seed by i strides of another prime and counts its own passes within an epoch.
PASS_STRIDE, STREAM_STRIDE, PASSES_PER_EPOCH = 1_000_003, 7919, 10_000


def _loader(backbone: Backbone, data: PromptSet, batch_size: int, seed: int, epoch: int, per_step: int = 1,
            bucket: bool = False) -> DataLoader:
    """Shuffled batches of a stream for one pass (seeded by `seed` and `epoch`)."""
    generator = torch.Generator().manual_seed(seed * PASS_STRIDE + epoch)
    make = collator(backbone, data)
    if not bucket:
        return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=make)
    batches = bucketed_batches([len(ids) for ids in data.ids], batch_size, per_step, generator)
    return DataLoader(data, batch_sampler=Buckets(batches, batch_size), collate_fn=make)


def _cycle(make: Callable[[int], DataLoader]) -> Iterator[Batch]:
    """Endless batches of a secondary stream, reshuffled (deterministically) on every pass."""
    round_ = 0
    while True:
        yield from make(round_)
        round_ += 1


def fit(
    backbone: Backbone,
    objective: Objective,
    data: dict[str, PromptSet],
    cfg: TrainConfig,
    valid_loss: Callable[[torch.nn.Module, Accelerator], float] | None = None,
    checkpoint_dir: Path | None = None,
    fingerprint: dict | None = None,
    accelerator: Accelerator | None = None,
    desc: str = "train",
    monitor: Monitor | None = None,
    speed: Speed | None = None,
) -> FitResult:
    """Train the parameters of `backbone.model` that require grad, in place, and return what happened.

    With `valid_loss`, the best epoch's trainable weights are restored at the end and training stops after
    `cfg.patience` epochs without improvement. With `checkpoint_dir`, each completed epoch is saved and a
    rerun with the same `fingerprint` resumes after it. With `monitor`, its checks decide which state is kept
    and when to stop (a monitored run ignores `valid_loss`). `speed` defaults to `Speed.auto` for the device.
    """
    accelerator = accelerator or make_accelerator()
    speed = speed or Speed.auto(accelerator.device, cfg)
    micro, per_step = speed.forwards_per_step(cfg)
    if accelerator.device.type == "cpu":
        # Adam's moments of embedding rows whose tokens stopped appearing decay into subnormal floats, which x86
        # CPUs handle many times slower: the full-protocol Original slowed from 4.4 to 1.1 steps/s by step 3,300
        # (benchmarks/denormals.py). Flushing them to zero changes nothing above 1e-38.
        torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    model = backbone.model
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise E2URecError("nothing to train: no parameter requires grad")
    optimizer = torch.optim.AdamW(list(named.values()), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=speed.fused or None)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner = backbone.model  # unwrapped: state names without DDP's "module." prefix
    forward = torch.compile(model, dynamic=True) if speed.compile else model
    names = {id(p): n for n, p in named.items()}

    key = json.dumps({"cfg": asdict(cfg), "extra": fingerprint or {}}, sort_keys=True, default=str)
    ckpt = Checkpoint(checkpoint_dir, hashlib.sha256(key.encode()).hexdigest()) if checkpoint_dir else None
    start_epoch, steps, best_loss, bad_epochs, history, checks = 0, 0, math.inf, 0, [], []
    best_state = trainable_state(inner)
    kept = {"epoch": 0, "step": 0, "why": "the starting weights"}
    elapsed = loop = 0.0
    resumed = ckpt.load() if ckpt else None
    if resumed:
        with torch.no_grad():
            for name, value in resumed["params"].items():
                named[name].copy_(value)
        restore_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, named,
                           resumed["optim"])
        best_state = resumed["best"]
        start_epoch, steps = resumed["epoch"] + 1, resumed["steps"]
        best_loss, bad_epochs = resumed["best_loss"], resumed["bad_epochs"]
        history, elapsed = resumed["history"], resumed["seconds"]
        loop, checks = resumed.get("loop_seconds", 0.0), resumed.get("checks", [])
        kept = resumed.get("kept", kept)
        accelerator.print(f"{desc}: resuming after epoch {start_epoch} (found a checkpoint in {checkpoint_dir})")

    started = time.perf_counter() - elapsed
    stop = start_epoch >= cfg.epochs or (cfg.max_steps is not None and steps >= cfg.max_steps)

    params = list(named.values())
    watch = _Watch(accelerator.device)

    def check(epoch: int) -> bool:
        """Run the monitor; keep the state it approves; True when it says stop."""
        nonlocal best_state, kept
        watch.check(desc, cfg, accelerator.mixed_precision)
        verdict = monitor(model, accelerator, steps)
        checks.append({"step": steps, "keep": verdict.keep, "stop": verdict.stop, **verdict.record})
        if verdict.keep:
            best_state = trainable_state(inner)
            kept = {"epoch": epoch, "step": steps, "why": f"the last state the monitor approved (step {steps})"}
        model.train()
        return verdict.stop

    if monitor is not None and not resumed:
        stop = check(0) or stop
    epoch = start_epoch
    while not stop and epoch < cfg.epochs:
        primary_stream = objective.streams(epoch, steps)[0]
        primary = accelerator.prepare(_loader(backbone, data[primary_stream], micro, cfg.seed, epoch, per_step,
                                              speed.bucket))
        others: dict[str, Iterator[Batch]] = {}

        def secondary(name: str, epoch: int = epoch, others: dict[str, Iterator[Batch]] = others) -> Iterator[Batch]:
            if name not in others:
                i = len(others) + 1
                others[name] = _cycle(lambda r: accelerator.prepare(_loader(
                    backbone, data[name], micro, cfg.seed + STREAM_STRIDE * i, epoch * PASSES_PER_EPOCH + r, per_step,
                    speed.bucket)))
            return others[name]

        model.train()
        # Summed in float64 (exactly what adding Python floats gave), on a GPU without reading it back each step.
        on_gpu = accelerator.device.type == "cuda"
        total, count = torch.zeros((), dtype=torch.float64, device=accelerator.device if on_gpu else "cpu"), 0
        norms = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # Σ gradient norm, steps clipped
        bar = tqdm(primary, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not accelerator.is_local_main_process)
        tick = time.perf_counter()
        for i, batch in enumerate(bar):
            wanted = objective.streams(epoch, steps)
            batches = {primary_stream: batch, **{s: next(secondary(s)) for s in wanted if s != primary_stream}}
            loss = objective.loss(forward, batches)
            accelerator.backward(loss / per_step)
            total += loss.detach().to(total.device)
            count += 1
            if count % speed.sync_every == 0:
                watch.check(desc, cfg, accelerator.mixed_precision)
                if not bar.disable:
                    bar.set_postfix(loss=f"{float(total) / count:.4f}")
            if (i + 1) % per_step != 0 and i + 1 != len(primary):
                continue
            norm = _clip(accelerator, params, cfg.max_grad_norm)
            watch.see(steps, loss, norm)
            norms += torch.stack([norm.double(), (norm > cfg.max_grad_norm).double() * (cfg.max_grad_norm > 0)])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                stop = True
            if monitor is not None and (stop or steps % monitor.every == 0):
                loop += time.perf_counter() - tick
                stop = check(epoch + 1) or stop
                tick = time.perf_counter()
            if stop:
                break
        loop += time.perf_counter() - tick
        watch.check(desc, cfg, accelerator.mixed_precision)
        epoch_steps = max(1, math.ceil(count / per_step))
        norm_sum, clipped = (float(v) for v in norms.cpu())
        record = {"epoch": epoch + 1, "train_loss": float(total) / max(count, 1),
                  "grad_norm": norm_sum / epoch_steps, "clipped_share": clipped / epoch_steps,
                  "streams": sorted({primary_stream, *others})}
        if monitor is None and valid_loss is not None:
            record["valid_loss"] = valid_loss(model, accelerator)
            if not math.isfinite(record["valid_loss"]):
                raise Diverged(f"{desc}: the validation loss after epoch {epoch + 1} is {record['valid_loss']} "
                               f"although training stayed finite; nothing was written. Try "
                               "E2UREC_PRECISION=fp32 or a lower learning rate")
            if record["valid_loss"] < best_loss:
                best_loss, bad_epochs = record["valid_loss"], 0
                if cfg.keep == "best":
                    best_state = trainable_state(inner)
                    kept = {"epoch": epoch + 1, "step": steps, "why": f"lowest valid loss ({best_loss:.4f})"}
            elif cfg.keep == "best":
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    stop = True
        if monitor is None and (valid_loss is None or cfg.keep == "last"):
            best_state = trainable_state(inner)
            why = "keep=last" if valid_loss is not None else "no validation loss to choose by"
            kept = {"epoch": epoch + 1, "step": steps, "why": f"the last epoch ({why})"}
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        accelerator.print(f"{desc}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in record.items()))
        if ckpt and accelerator.is_main_process:
            ckpt.save(
                {"epoch": epoch, "steps": steps, "best_loss": best_loss, "bad_epochs": bad_epochs,
                 "history": history, "seconds": record["seconds"], "loop_seconds": loop, "checks": checks,
                 "kept": kept},
                trainable_state(inner), best_state,
                optimizer_tensors(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, names),
            )
        accelerator.wait_for_everyone()
        epoch += 1

    with torch.no_grad():
        for name, value in best_state.items():
            named[name].copy_(value.to(named[name].device))
    return FitResult(
        epochs_run=len(history),
        steps=steps,
        seconds=time.perf_counter() - started,
        best_valid_loss=None if best_loss == math.inf else best_loss,
        history=history,
        loop_seconds=loop,
        checks=checks,
        kept=kept,
    )


def _clip(accelerator: Accelerator, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """The gradients' total L2 norm before clipping (a device tensor, never read back here); with `max_norm`
    > 0 they are scaled down to it, as the HF Trainer does. The norm is also what reveals a non-finite gradient."""
    if max_norm > 0:
        return torch.as_tensor(accelerator.clip_grad_norm_(params, max_norm))
    grads = [p.grad for p in params if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=accelerator.device)
