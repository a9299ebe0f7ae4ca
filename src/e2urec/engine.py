"""The one training loop. A method is an Objective (a loss over named batches, e.g. "train", or "retain"
and "forget") plus the set of parameters left trainable; the engine does the rest: accelerate devices and
DDP, AdamW, gradient accumulation, bf16 on GPU, early stopping on a validation loss, a progress bar, and
resumable epochs (a rerun after an interruption continues from the last completed epoch)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from e2urec.errors import E2URecError
from e2urec.io import read_json, write_json_atomic
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, collator

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

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise E2URecError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise E2URecError(f"--lr must be positive, got {self.lr}")


class Objective(Protocol):
    """What a method contributes: which data streams an epoch reads and the loss over one step's batches."""

    def streams(self, epoch: int) -> tuple[str, ...]:
        """Stream names for this epoch; the first sets the epoch length, the others are cycled."""

    def loss(self, model: torch.nn.Module, batches: dict[str, Batch]) -> torch.Tensor: ...


@dataclass
class FitResult:
    epochs_run: int
    steps: int
    seconds: float
    best_valid_loss: float | None
    history: list[dict] = field(default_factory=list)


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


def make_accelerator() -> Accelerator:
    """bf16 autocast on a GPU that supports it, full precision on CPU."""
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return Accelerator(mixed_precision="bf16" if bf16 else "no")


def _loader(backbone: Backbone, data: PromptSet, batch_size: int, seed: int, epoch: int, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collator(backbone, data))


def _cycle(make: Callable[[int], DataLoader]) -> Iterator[Batch]:
    """Endless batches of a secondary stream, reshuffled (deterministically) on every pass."""
    round_ = 0
    while True:
        yield from make(round_)
        round_ += 1


class _Checkpoint:
    """Per-epoch state for resuming: trainable tensors, AdamW moments, the best state, counters.

    Everything is safetensors or JSON (no pickle); written to a temp folder and renamed into place.
    """

    def __init__(self, folder: Path, fingerprint: str):
        self.folder = folder
        self.fingerprint = fingerprint

    def load(self) -> dict | None:
        state_file = self.folder / "state.json"
        if not state_file.is_file():
            return None
        state = read_json(state_file)
        if state.get("fingerprint") != self.fingerprint:
            return None
        state["params"] = load_file(self.folder / "params.safetensors")
        state["best"] = load_file(self.folder / "best.safetensors")
        state["optim"] = load_file(self.folder / "optim.safetensors")
        return state

    def save(self, state: dict, params: dict, best: dict, optim: dict) -> None:
        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(params, str(tmp / "params.safetensors"))
        save_file(best, str(tmp / "best.safetensors"))
        save_file(optim, str(tmp / "optim.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "fingerprint": self.fingerprint})
        old = self.folder.with_name(self.folder.name + ".old")
        if self.folder.exists():
            self.folder.rename(old)
        tmp.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            flat[f"{names[id(param)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return flat


def _restore_optimizer(optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter],
                       flat: dict[str, torch.Tensor]) -> None:
    for key, value in flat.items():
        name, slot = key.rsplit("::", 1)
        param = params[name]
        optimizer.state[param][slot] = value.to(param.device) if slot != "step" else value


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
) -> FitResult:
    """Train the parameters of `backbone.model` that require grad, in place, and return what happened.

    With `valid_loss`, the best epoch's trainable weights are restored at the end and training stops after
    `cfg.patience` epochs without improvement. With `checkpoint_dir`, each completed epoch is saved and a
    rerun with the same `fingerprint` resumes after it.
    """
    accelerator = accelerator or make_accelerator()
    torch.manual_seed(cfg.seed)
    model = backbone.model
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise E2URecError("nothing to train: no parameter requires grad")
    optimizer = torch.optim.AdamW(list(named.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    names = {id(p): n for n, p in named.items()}

    key = json.dumps({"cfg": asdict(cfg), "extra": fingerprint or {}}, sort_keys=True, default=str)
    ckpt = _Checkpoint(checkpoint_dir, hashlib.sha256(key.encode()).hexdigest()) if checkpoint_dir else None
    start_epoch, steps, best_loss, bad_epochs, history = 0, 0, math.inf, 0, []
    best_state = trainable_state(model)
    elapsed = 0.0
    resumed = ckpt.load() if ckpt else None
    if resumed:
        with torch.no_grad():
            for name, value in resumed["params"].items():
                named[name].copy_(value)
        _restore_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, named,
                           resumed["optim"])
        best_state = resumed["best"]
        start_epoch, steps = resumed["epoch"] + 1, resumed["steps"]
        best_loss, bad_epochs = resumed["best_loss"], resumed["bad_epochs"]
        history, elapsed = resumed["history"], resumed["seconds"]
        accelerator.print(f"{desc}: resuming after epoch {start_epoch} (found a checkpoint in {checkpoint_dir})")

    started = time.perf_counter() - elapsed
    stop = start_epoch >= cfg.epochs or (cfg.max_steps is not None and steps >= cfg.max_steps)
    epoch = start_epoch
    while not stop and epoch < cfg.epochs:
        streams = objective.streams(epoch)
        primary = accelerator.prepare(_loader(backbone, data[streams[0]], cfg.batch_size, cfg.seed, epoch, True))
        others = {
            s: _cycle(lambda r, s=s, i=i, e=epoch: accelerator.prepare(
                _loader(backbone, data[s], cfg.batch_size, cfg.seed + 7919 * (i + 1), e * 10_000 + r, True)))
            for i, s in enumerate(streams[1:])
        }
        model.train()
        total, count = 0.0, 0
        bar = tqdm(primary, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not accelerator.is_local_main_process)
        for i, batch in enumerate(bar):
            batches = {streams[0]: batch, **{s: next(it) for s, it in others.items()}}
            loss = objective.loss(model, batches)
            accelerator.backward(loss / cfg.grad_accum)
            if (i + 1) % cfg.grad_accum == 0 or i + 1 == len(primary):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                steps += 1
            total += float(loss.detach())
            count += 1
            bar.set_postfix(loss=f"{total / count:.4f}")
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                stop = True
                break
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "streams": list(streams)}
        if valid_loss is not None:
            record["valid_loss"] = valid_loss(model, accelerator)
            if record["valid_loss"] < best_loss:
                best_loss, bad_epochs = record["valid_loss"], 0
                best_state = trainable_state(model)
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    stop = True
        else:
            best_state = trainable_state(model)
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        accelerator.print(f"{desc}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in record.items()))
        if ckpt and accelerator.is_main_process:
            ckpt.save(
                {"epoch": epoch, "steps": steps, "best_loss": best_loss, "bad_epochs": bad_epochs,
                 "history": history, "seconds": record["seconds"]},
                trainable_state(model), best_state,
                _optimizer_tensors(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, names),
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
    )
