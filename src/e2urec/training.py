"""LLMRec: instruction-tune a backbone on prepared samples (`e2urec train`). Scoring lives in
`e2urec.evaluation`."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from peft import LoraConfig

from e2urec import __version__
from e2urec.checkpoint import save_model
from e2urec.data.roles import role_rows, rows_digest, rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import Batch, FitResult, TrainConfig, count_parameters, fit, make_accelerator
from e2urec.errors import E2URecError
from e2urec.evaluation.metrics import utility_metrics
from e2urec.io import atomic_dir
from e2urec.model.backbone import Backbone, load_backbone
from e2urec.model.lora import add_lora, as_lora_config, lora_config, lora_to_meta
from e2urec.model.scoring import PromptSet, answer_logits, per_sample, per_sample_p_yes, prompt_set

# `e2urec train --lora`: rank 16, alpha 32, dropout 0.05 on the attention projections. add_lora copies a config
# before peft fills it in, so this one is never changed.
LORA_DEFAULTS = lora_config(r=16, alpha=32, dropout=0.05)


class AnswerCrossEntropy:
    """Instruction tuning: cross-entropy of the answer token at the answer position (prompt masked)."""

    def __init__(self, kind: str, stream: str = "train"):
        self.kind = kind
        self.stream = stream

    def streams(self, epoch: int, step: int) -> tuple[str, ...]:
        return (self.stream,)

    def loss(self, model: torch.nn.Module, batches: dict[str, Batch]) -> torch.Tensor:
        batch = batches[self.stream]
        return F.cross_entropy(answer_logits(model, batch, self.kind).float(), batch["target"])


def valid_loss_fn(backbone: Backbone, data: PromptSet, batch_size: int):
    """Mean answer cross-entropy on validation samples (the early-stopping signal)."""

    def compute(model: torch.nn.Module, accelerator: Accelerator) -> float:
        model.eval()
        losses = per_sample(
            backbone, data,
            lambda b: F.cross_entropy(answer_logits(model, b, backbone.kind).float(), b["target"], reduction="none"),
            batch_size, accelerator, desc="valid")
        model.train()
        return float(losses.mean())

    return compute


def make_trainable(backbone: Backbone, lora: LoraConfig | dict | None) -> None:
    """LoRA adapters only (backbone frozen) when a LoRA recipe is given; otherwise every weight."""
    config = as_lora_config(lora)
    if config is not None:
        add_lora(backbone, config)
    else:
        backbone.model.requires_grad_(True)


def fit_rows(
    samples: pd.DataFrame,
    manifest: dict,
    train_rows: pd.DataFrame,
    backbone_name: str,
    cfg: TrainConfig,
    accelerator: Accelerator,
    lora: LoraConfig | dict | None = None,
    prompts: list[str] | None = None,
    checkpoint_dir: Path | None = None,
    desc: str = "train",
) -> tuple[Backbone, FitResult, dict]:
    """Tune a fresh backbone on `train_rows`, early-stopped on the valid split; returns it, what the engine
    reported, and the facts a model's meta.json records."""
    config = as_lora_config(lora)
    record = lora_to_meta(config) if config is not None else None  # what the fingerprint and meta.json hold
    backbone = load_backbone(backbone_name, seed=cfg.seed)
    make_trainable(backbone, config)
    valid_rows = rows_for(samples, "valid")
    data = {"train": prompt_set(backbone, train_rows, cfg.max_length, prompts)}
    valid = prompt_set(backbone, valid_rows, cfg.max_length)
    backbone.model.to(accelerator.device)
    fingerprint = {"data": manifest["samples_sha256"], "rows": train_rows["sample_id"].tolist(),
                   "backbone": backbone_name, "lora": record}
    result = fit(backbone, AnswerCrossEntropy(backbone.kind), data, cfg,
                 valid_loss=valid_loss_fn(backbone, valid, cfg.eval_batch_size),
                 checkpoint_dir=checkpoint_dir, fingerprint=fingerprint, accelerator=accelerator, desc=desc)
    p_valid = per_sample_p_yes(backbone, valid, cfg.eval_batch_size, accelerator)
    trainable, total = count_parameters(backbone.model)
    facts = {
        "backbone": backbone_name,
        "base": {"backbone": backbone_name, "seed": cfg.seed},
        "lora": record,
        "data": {"samples_sha256": manifest["samples_sha256"]},
        "config": asdict(cfg),
        "fit": asdict(result),
        "trainable_params": trainable,
        "total_params": total,
        "train_samples": len(train_rows),
        "train_rows_sha256": rows_digest(train_rows),
        "valid": utility_metrics(valid_rows["label"].to_numpy(), p_valid),
    }
    return backbone, result, facts


def train(
    data_dir: Path,
    role: str,
    backbone_name: str,
    out: Path,
    cfg: TrainConfig,
    lora: LoraConfig | bool | None = None,
    overwrite: bool = False,
) -> dict:
    """Train an Original (all train samples) or a Retrain (train minus forget) model into `out`: every weight,
    or LoRA adapters as `lora` says (True: LORA_DEFAULTS)."""
    out = Path(out)
    if out.exists() and not overwrite and (out / "meta.json").is_file():
        raise E2URecError(f"{out}: a trained model is already there; pass --overwrite to replace it")
    accelerator = make_accelerator()
    samples, manifest = load_prepared(data_dir)
    resume = out.parent / f".{out.name}.resume"
    started = time.perf_counter()
    rows, prompts = role_rows(samples, role)
    recipe = LORA_DEFAULTS if lora is True else lora or None
    backbone, _, facts = fit_rows(samples, manifest, rows, backbone_name, cfg, accelerator, recipe, prompts,
                                  checkpoint_dir=resume, desc=role)
    meta = {"e2urec_version": __version__, "role": role, **facts,
            "train_seconds": round(time.perf_counter() - started, 3)}
    meta["data"]["dir"] = str(Path(data_dir).resolve())
    if accelerator.is_main_process:
        with atomic_dir(out, overwrite=True) as tmp:
            save_model(backbone, tmp, meta)
        shutil.rmtree(resume, ignore_errors=True)
    accelerator.wait_for_everyone()
    return meta


