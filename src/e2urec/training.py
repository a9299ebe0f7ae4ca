"""LLMRec: instruction-tune a backbone on prepared samples (`e2urec train`) and score it (`evaluate`)."""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model

from e2urec import __version__
from e2urec.checkpoint import load_model, save_model
from e2urec.data.store import load_prepared
from e2urec.engine import Batch, FitResult, TrainConfig, count_parameters, fit, make_accelerator
from e2urec.errors import E2URecError
from e2urec.evaluation import (
    jsd,
    l2,
    membership_inference_auc,
    mia_features,
    symmetric_kl,
    utility_metrics,
    within_user_auc,
)
from e2urec.io import atomic_dir, write_json_atomic
from e2urec.model.backbone import Backbone, load_backbone
from e2urec.model.scoring import PromptSet, answer_logits, encode_prompts, p_yes_from_logits, per_sample

ROLES = ("original", "retrain")
SPLITS = ("train", "valid", "test", "forget", "retain")
LORA_DEFAULTS = {"r": 16, "alpha": 32, "dropout": 0.05}


def rows_for(samples: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows a split name means: forget/retain partition the train split."""
    if split not in SPLITS:
        raise E2URecError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    is_train = samples["split"] == "train"
    if split == "forget":
        return samples[is_train & samples["forget"]]
    if split == "retain":
        return samples[is_train & ~samples["forget"]]
    return samples[samples["split"] == split]


def prompts_seen_by_original(rows: pd.DataFrame) -> list[str]:
    """The Original trained before any deletion: prompts whose history was rebuilt use their old text."""
    return rows["prompt_original"].where(rows["prompt_original"].notna(), rows["prompt"]).tolist()


def prompt_set(backbone: Backbone, rows: pd.DataFrame, max_length: int | None = None,
               prompts: list[str] | None = None) -> PromptSet:
    ids = encode_prompts(backbone.tokenizer, prompts if prompts is not None else rows["prompt"].tolist(),
                         max_length)
    targets = np.asarray(backbone.answer_ids)[rows["label"].to_numpy(dtype=int)]
    return PromptSet(ids, targets)


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


def per_sample_p_yes(backbone: Backbone, data: PromptSet, batch_size: int,
                     accelerator: Accelerator | None = None, model: torch.nn.Module | None = None,
                     progress: bool = True) -> np.ndarray:
    model = model if model is not None else backbone.model
    model.eval()
    yes = torch.as_tensor(backbone.answer_ids)
    return per_sample(backbone, data, lambda b: p_yes_from_logits(answer_logits(model, b, backbone.kind), yes),
                      batch_size, accelerator, desc="p(yes)", progress=progress)


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


LORA_TARGETS = ("attention", "all-linear", "all-linear+embeddings")


def lora_target_modules(model: torch.nn.Module, targets: str) -> list[str] | str | None:
    """peft `target_modules` for a named choice: attention → peft's per-architecture default (q/v projections);
    all-linear → every linear layer but the output head; +embeddings → and the input embedding."""
    if targets == "attention":
        return None
    if targets == "all-linear":
        return "all-linear"
    if targets == "all-linear+embeddings":
        head = model.get_output_embeddings()
        embedding = model.get_input_embeddings()
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and m is not head}
        names |= {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is embedding}
        return sorted(names)
    raise E2URecError(f"unknown LoRA targets {targets!r}; choose one of {', '.join(LORA_TARGETS)}")


def add_lora(backbone: Backbone, r: int, alpha: int, dropout: float, targets: str = "attention") -> None:
    """Freeze the backbone and insert LoRA modules where `targets` says."""
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=lora_target_modules(backbone.model, targets),
                        task_type="SEQ_2_SEQ_LM" if backbone.kind == "seq2seq" else "CAUSAL_LM")
    backbone.model = get_peft_model(backbone.model, config)


def make_trainable(backbone: Backbone, lora: dict | None) -> None:
    """LoRA adapters only (backbone frozen) when `lora` gives r/alpha/dropout[/targets]; otherwise every weight."""
    if lora:
        add_lora(backbone, lora["r"], lora["alpha"], lora["dropout"], lora.get("targets", "attention"))
    else:
        backbone.model.requires_grad_(True)


def fit_rows(
    samples: pd.DataFrame,
    manifest: dict,
    train_rows: pd.DataFrame,
    backbone_name: str,
    cfg: TrainConfig,
    accelerator: Accelerator,
    lora: dict | None = None,
    prompts: list[str] | None = None,
    checkpoint_dir: Path | None = None,
    desc: str = "train",
) -> tuple[Backbone, FitResult, dict]:
    """Tune a fresh backbone on `train_rows`, early-stopped on the valid split; returns it, what the engine
    reported, and the facts a model's meta.json records."""
    backbone = load_backbone(backbone_name, seed=cfg.seed)
    make_trainable(backbone, lora)
    valid_rows = rows_for(samples, "valid")
    data = {"train": prompt_set(backbone, train_rows, cfg.max_length, prompts)}
    valid = prompt_set(backbone, valid_rows, cfg.max_length)
    backbone.model.to(accelerator.device)
    fingerprint = {"data": manifest["samples_sha256"], "rows": train_rows["sample_id"].tolist(),
                   "backbone": backbone_name, "lora": lora}
    result = fit(backbone, AnswerCrossEntropy(backbone.kind), data, cfg,
                 valid_loss=valid_loss_fn(backbone, valid, cfg.eval_batch_size),
                 checkpoint_dir=checkpoint_dir, fingerprint=fingerprint, accelerator=accelerator, desc=desc)
    p_valid = per_sample_p_yes(backbone, valid, cfg.eval_batch_size, accelerator)
    trainable, total = count_parameters(backbone.model)
    facts = {
        "backbone": backbone_name,
        "base": {"backbone": backbone_name, "seed": cfg.seed},
        "lora": lora,
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


def rows_digest(rows: pd.DataFrame) -> str:
    """sha256 of the sample ids a model trained on: lets `unlearn` check an Original against the data."""
    return hashlib.sha256(",".join(map(str, sorted(rows["sample_id"].tolist()))).encode()).hexdigest()


def role_rows(samples: pd.DataFrame, role: str) -> tuple[pd.DataFrame, list[str] | None]:
    """Rows and prompt texts a role trains on: the Original saw every train row as it was before deletion;
    Retrain sees only retained rows, in their rebuilt form."""
    if role == "original":
        rows = rows_for(samples, "train")
        return rows, prompts_seen_by_original(rows)
    if role == "retrain":
        return rows_for(samples, "retain"), None
    raise E2URecError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")


def train(
    data_dir: Path,
    role: str,
    backbone_name: str,
    out: Path,
    cfg: TrainConfig,
    lora: bool = False,
    lora_r: int = LORA_DEFAULTS["r"],
    lora_alpha: int = LORA_DEFAULTS["alpha"],
    lora_dropout: float = LORA_DEFAULTS["dropout"],
    overwrite: bool = False,
) -> dict:
    """Train an Original (all train samples) or a Retrain (train minus forget) model into `out`."""
    out = Path(out)
    if out.exists() and not overwrite and (out / "meta.json").is_file():
        raise E2URecError(f"{out}: a trained model is already there; pass --overwrite to replace it")
    accelerator = make_accelerator()
    samples, manifest = load_prepared(data_dir)
    resume = out.parent / f".{out.name}.resume"
    started = time.perf_counter()
    rows, prompts = role_rows(samples, role)
    backbone, _, facts = fit_rows(samples, manifest, rows, backbone_name, cfg, accelerator,
                                  {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout} if lora else None,
                                  prompts, checkpoint_dir=resume, desc=role)
    meta = {"e2urec_version": __version__, "role": role, **facts,
            "train_seconds": round(time.perf_counter() - started, 3)}
    meta["data"]["dir"] = str(Path(data_dir).resolve())
    if accelerator.is_main_process:
        with atomic_dir(out, overwrite=True) as tmp:
            save_model(backbone, tmp, meta)
        shutil.rmtree(resume, ignore_errors=True)
    accelerator.wait_for_everyone()
    return meta


def sample_rows(rows: pd.DataFrame, n: int, seed: int, stream: int) -> pd.DataFrame:
    if len(rows) <= n:
        return rows
    return rows.iloc[np.sort(np.random.default_rng([seed, stream]).choice(len(rows), size=n, replace=False))]


def membership_auc(backbone: Backbone, samples: pd.DataFrame, targets: pd.DataFrame, p_targets: np.ndarray,
                   cfg: EvalConfig, accelerator: Accelerator, non_member_split: str = "test") -> float:
    """MIA AUC of `targets` for this model: members are retained training samples, non-members test ones
    (valid ones when tuning, which must not read test)."""
    members = sample_rows(rows_for(samples, "retain"), cfg.mia_samples, cfg.seed, 21)
    non_members = sample_rows(rows_for(samples, non_member_split), 2 * cfg.mia_samples, cfg.seed, 22)
    p_members, p_non = (per_sample_p_yes(backbone, prompt_set(backbone, r, cfg.max_length), cfg.batch_size,
                                         accelerator) for r in (members, non_members))
    return membership_inference_auc(mia_features(members["label"].to_numpy(), p_members),
                                    mia_features(non_members["label"].to_numpy(), p_non),
                                    mia_features(targets["label"].to_numpy(), p_targets), cfg.seed)


DISTANCES = ("jsd", "l2", "jsd_yesno", "l2_yesno", "sym_kl")


def _distance_rows(model: Backbone, reference: Backbone, with_p_yes: bool = False):
    """batch → per-sample distances of `model` to `reference` (DISTANCES order), after both P(yes) if asked."""
    if model.answer_ids != reference.answer_ids or len(model.tokenizer) != len(reference.tokenizer):
        raise E2URecError("--reference uses a different tokenizer; compare models of the same backbone")
    answer = list(model.answer_ids)
    model.model.eval()
    reference.model.eval()

    def fn(batch: Batch) -> torch.Tensor:
        zp = answer_logits(model.model, batch, model.kind).float()
        zq = answer_logits(reference.model, batch, reference.kind).float()
        lp, lq = torch.log_softmax(zp, -1), torch.log_softmax(zq, -1)
        yp, yq = torch.log_softmax(zp[:, answer], -1), torch.log_softmax(zq[:, answer], -1)
        rows = [jsd(lp, lq), l2(lp, lq), jsd(yp, yq), l2(yp, yq), symmetric_kl(lp, lq)]
        if with_p_yes:
            rows = [p_yes_from_logits(zp, model.answer_ids), p_yes_from_logits(zq, reference.answer_ids), *rows]
        return torch.stack(rows, dim=1)

    return fn


def distances(model: Backbone, reference: Backbone, data: PromptSet, cfg: EvalConfig,
              accelerator: Accelerator) -> dict:
    """Mean JSD and L2 to the reference's answer-position distributions: full vocabulary (the paper's) and
    the two answer tokens only; also the symmetrised KL the paper's code reports under the name "JSD"."""
    values = per_sample(model, data, _distance_rows(model, reference), cfg.batch_size, accelerator,
                        desc="distance").mean(0)
    return dict(zip(DISTANCES, map(float, values), strict=True))


def split_scores(model: Backbone, reference: Backbone, data: PromptSet, cfg: EvalConfig,
                 accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray, dict]:
    """P(yes) of the model and of the reference, and the mean distances, from one forward of each per batch
    (what `per_sample_p_yes` twice and `distances` gave, without scoring either model again)."""
    values = per_sample(model, data, _distance_rows(model, reference, with_p_yes=True), cfg.batch_size,
                        accelerator, desc="score + distance")
    means = np.ascontiguousarray(values[:, 2:]).mean(0)
    return values[:, 0].copy(), values[:, 1].copy(), dict(zip(DISTANCES, map(float, means), strict=True))


@dataclass
class EvalConfig:
    batch_size: int = 64
    max_length: int | None = None
    mia_samples: int = 1000
    seed: int = 0
    reference_mia: bool = True  # also attack the reference; a bench that evaluates Retrain itself skips it


def evaluate(model_dir: Path, data_dir: Path, split: str, out: Path, cfg: EvalConfig | None = None,
             reference: Path | None = None) -> dict:
    """Score a split: P(yes), AUC/ACC/LogLoss; with a reference (Retrain) also JSD/L2 to it; on the forget
    split also the membership-inference AUC (and the reference's own, the value to match)."""
    cfg = cfg or EvalConfig()
    accelerator = make_accelerator()
    samples, manifest = load_prepared(data_dir)
    backbone, _ = load_model(model_dir)
    backbone.model.to(accelerator.device)
    rows = rows_for(samples, split)
    if rows.empty:
        raise E2URecError(f"{data_dir}: split {split!r} has no samples")
    data = prompt_set(backbone, rows, cfg.max_length)
    ref = None
    if reference is None:
        p = per_sample_p_yes(backbone, data, cfg.batch_size, accelerator)
    else:
        ref, _ = load_model(reference)
        ref.model.to(accelerator.device)
        # One pass scores both models on the split: P(yes) of each and the distances come from the same logits.
        p, p_ref, near = split_scores(backbone, ref, data, cfg, accelerator)
    within, users = within_user_auc(rows["user_id"].to_numpy(), rows["label"].to_numpy(), p)
    metrics = {**utility_metrics(rows["label"].to_numpy(), p), "within_user_auc": within, "within_user_n": users,
               "split": split, "model": str(model_dir), "data_samples_sha256": manifest["samples_sha256"]}
    if ref is not None:
        metrics.update(near)
        metrics["reference"] = str(reference)
    if split == "forget":
        metrics["mia_auc"] = membership_auc(backbone, samples, rows, p, cfg, accelerator)
        if ref is not None and cfg.reference_mia:
            metrics["mia_auc_reference"] = membership_auc(ref, samples, rows, p_ref, cfg, accelerator)
    if accelerator.is_main_process:
        with atomic_dir(out, overwrite=True) as tmp:
            pd.DataFrame({"sample_id": rows["sample_id"].to_numpy(), "p_yes": p,
                          "label": rows["label"].to_numpy()}).to_parquet(tmp / "predictions.parquet", index=False)
            write_json_atomic(tmp / "metrics.json", metrics)
    accelerator.wait_for_everyone()
    return metrics
