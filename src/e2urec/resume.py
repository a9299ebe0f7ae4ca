"""Resumable training state: per-epoch trainable tensors, AdamW moments, the best state and counters, so a rerun
after an interruption continues from the last completed epoch. Everything is safetensors or JSON (no pickle)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from e2urec.io import read_json, write_json_atomic


class Checkpoint:
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


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            flat[f"{names[id(param)]}::{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return flat


def restore_optimizer(optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter],
                       flat: dict[str, torch.Tensor]) -> None:
    on_device = bool(optimizer.defaults.get("fused"))  # fused AdamW keeps its step counter beside the weights
    for key, value in flat.items():
        name, slot = key.rsplit("::", 1)
        param = params[name]
        optimizer.state[param][slot] = value.to(param.device) if slot != "step" or on_device else value
