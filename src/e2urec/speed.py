"""The training loop's hardware features (length-bucketed batches, one forward per optimiser step, fused AdamW,
torch.compile), kept apart from the engine because they change how a recipe runs, never what it computes."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from e2urec.errors import E2URecError


class TrainConfig(Protocol):
    """What the speed features read of a recipe (e2urec.engine.TrainConfig); a protocol, so this module does not
    import the engine that imports it."""

    batch_size: int
    grad_accum: int

BUCKET_WINDOW = 32  # optimiser steps whose samples are sorted by length together when bucketing


@dataclass(frozen=True)
class Speed:
    """How the engine runs a recipe on the hardware, never what the recipe is: every optimiser step still sees
    `batch_size × grad_accum` samples and every sample is read once per epoch. `auto` turns the features on for
    a GPU and leaves CPU runs exactly as the plain loop (bit-identical weights); kept out of TrainConfig so
    recipes, meta.json and resume fingerprints do not depend on the machine."""

    bucket: bool = False  # batches of similar prompt length (less padding); changes which samples share a step
    device_batch: int | None = None  # samples per forward pass (None: batch_size); must divide the step's samples
    fused: bool = False  # fused AdamW kernel (one launch per step instead of one per tensor)
    compile: bool = False  # torch.compile the training forward (dynamic shapes); its first steps are slow
    sync_every: int = 1  # forwards between reading the loss back to the host for the progress bar

    @classmethod
    def auto(cls, device: torch.device, cfg: TrainConfig) -> Speed:
        """GPU: bucketing, one forward per optimiser step, fused AdamW, the loss read back every 50 forwards;
        torch.compile only with E2UREC_COMPILE=1."""
        gpu = device.type == "cuda"
        return cls(bucket=gpu, device_batch=cfg.batch_size * cfg.grad_accum if gpu else None, fused=gpu,
                   compile=os.environ.get("E2UREC_COMPILE") == "1", sync_every=50 if gpu else 1)

    def forwards_per_step(self, cfg: TrainConfig) -> tuple[int, int]:
        """(samples per forward, forwards per optimiser step) for a recipe."""
        step = cfg.batch_size * cfg.grad_accum
        micro = self.device_batch or cfg.batch_size
        if micro < 1 or step % micro:
            raise E2URecError(f"device batch {micro} must divide the {step} samples of an optimiser step "
                              f"(batch_size {cfg.batch_size} × grad_accum {cfg.grad_accum})")
        return micro, step // micro


def bucketed_batches(lengths: Sequence[int], batch_size: int, per_step: int, generator: torch.Generator,
                     window: int = BUCKET_WINDOW) -> list[list[int]]:
    """Every index once, in batches of similar length: shuffle, sort each window of `window` optimiser steps by
    length, cut it into steps of `per_step` batches, and shuffle the steps. A short last step stays last, so
    every other step holds exactly `batch_size × per_step` samples."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * per_step
    steps: list[list[list[int]]] = []
    for start in range(0, len(order), span * window):
        chunk = sorted(order[start:start + span * window], key=lambda i: lengths[i])
        window_steps = [chunk[i:i + span] for i in range(0, len(chunk), span)]
        steps += [window_steps[j] for j in torch.randperm(len(window_steps), generator=generator).tolist()]
    short = [s for s in steps if len(s) < span]
    return [step[i:i + batch_size] for step in [s for s in steps if len(s) == span] + short
            for i in range(0, len(step), batch_size)]


class Buckets:
    """A batch sampler over precomputed batches; `batch_size` lets accelerate shard it across processes."""

    def __init__(self, batches: list[list[int]], batch_size: int):
        self.batches, self.batch_size = batches, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

