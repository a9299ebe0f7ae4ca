"""What every unlearning method shares: the job (Original + prepared data), a registry, the student, the
(retain, forget) prompt sets, and cached teacher distributions. A method adds only its objective and its
choice of trainable parameters; the engine (`e2urec.engine.fit`) trains it like everything else."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from peft import LoraConfig

from e2urec.checkpoint import META_FILE, base_reference, load_model, read_meta, save_model
from e2urec.data.roles import role_rows, rows_digest, rows_for
from e2urec.data.store import load_prepared
from e2urec.engine import Batch, FitResult, Monitor, TrainConfig, fit
from e2urec.errors import E2URecError
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, answer_logits, per_sample, prompt_set
from e2urec.options import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LR,
    MAX_SEED,
    MAX_STEPS,
    MAX_TOKENS,
    check_fields,
    option,
)
from e2urec.training import make_trainable
from e2urec.unlearning.losses import compress

TEACHER_TOP_K = 64


@dataclass
class Job:
    """One unlearning request: the Original, the data, where to write, and scratch space for intermediates."""

    original: Path
    data: Path
    out: Path
    work: Path
    accelerator: Accelerator
    keep_intermediates: bool = False
    samples: pd.DataFrame = field(init=False)
    manifest: dict = field(init=False)
    original_meta: dict = field(init=False)

    def __post_init__(self) -> None:
        self.samples, self.manifest = load_prepared(self.data)
        if not (self.original / META_FILE).is_file():
            raise E2URecError(f"{self.original}: not a model directory written by `e2urec train`")
        self.original_meta = read_meta(self.original)
        if rows_for(self.samples, "forget").empty:
            raise E2URecError(f"{self.data}: the forget set is empty; nothing to unlearn")
        recorded = self.original_meta.get("train_rows_sha256")
        if self.original_meta.get("role") == "original" and recorded and recorded != rows_digest(
                role_rows(self.samples, "original")[0]):
            raise E2URecError(f"{self.original}: this Original was not trained on the train rows of {self.data}; "
                              "unlearn from the Original trained on this data folder (or retrain it)")

    def load_original(self, trainable: bool = False) -> Backbone:
        backbone, _ = load_model(self.original, trainable=trainable)
        backbone.model.to(self.accelerator.device)
        return backbone

    def purge(self) -> None:
        """Delete intermediates derived from the forget set (augmented model, caches) unless kept."""
        if not self.keep_intermediates:
            shutil.rmtree(self.work, ignore_errors=True)


@dataclass
class MethodConfig:
    """Fields shared by the objective-based methods; each method overrides the defaults it needs."""

    epochs: int = option(1, "passes over the forget set", low=1, high=MAX_EPOCHS)
    lr: float = option(5e-5, "learning rate (AdamW)", low=0, high=MAX_LR, open_low=True)
    batch_size: int = option(16, "samples per stream per step", low=1, high=MAX_BATCH)
    max_steps: int | None = option(None, "stop after this many optimiser steps", low=1, high=MAX_STEPS)
    max_length: int | None = option(None, "truncate prompts to this many tokens (from the left)", low=1,
                                    high=MAX_TOKENS)
    seed: int = option(0, "seed of sampling, shuffling and initialisation", low=0, high=MAX_SEED)

    def __post_init__(self) -> None:
        check_fields(self)

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, max_steps=self.max_steps,
                           max_length=self.max_length, seed=self.seed)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MethodConfig:
        """The config for options given as values (`--set` texts are typed by `e2urec.options.parse_options`):
        unknown keys and bad values, of type or range, are refused here, before any work."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise E2URecError(f"{cls.__name__}: unknown options {unknown}; known: {sorted(known)}")
        return cls(**options)

    def ignored_options(self, given: set[str]) -> dict[str, str]:
        """{option: why} for options given explicitly that these settings do not read (warned about and
        recorded in meta.json: a setting that silently does nothing misleads whoever reads the run)."""
        return {}

    def stronger(self, k: int) -> dict[str, Any]:
        """Options for the k-th stronger attempt after a failed forgetting audit (k = 1, 2, …): the schedule
        fields this config has and sets (epochs, min_steps, max_steps), each ×3**k. Which options size the work
        is the method's knowledge, so a deployed run escalates any method without naming its options."""
        return {key: getattr(self, key) * 3**k for key in ("epochs", "min_steps", "max_steps")
                if getattr(self, key, None) is not None}


@dataclass
class RecipeOverrides(MethodConfig):
    """For methods that retrain with the trained model's own recipe; a field set here (not None) overrides it."""

    epochs: int | None = option(None, "epochs (the trained model's recipe if unset)", low=1, high=MAX_EPOCHS)
    lr: float | None = option(None, "learning rate (the recipe's if unset)", low=0, high=MAX_LR, open_low=True)
    batch_size: int | None = option(None, "batch size (the recipe's if unset)", low=1, high=MAX_BATCH)
    seed: int | None = option(None, "seed (the recipe's if unset)", low=0, high=MAX_SEED)

    def recipe(self, config: dict) -> TrainConfig:
        return TrainConfig(**{**config, **{k: v for k, v in asdict(self).items() if v is not None}})


REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in REGISTRY:
        raise ValueError(f"unlearning method {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


class Method:
    """A registered unlearning method. `run` returns the unlearned model and what the engine reported."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    lora: ClassVar[bool] = False
    # How the bench runs it: "approximate" from the Original, "exact" (Retrain, the reference of every
    # comparison), or "sharded" from a shard system trained for it.
    family: ClassVar[str] = "approximate"

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg
        self.facts: dict[str, Any] = {}  # method-specific entries for meta.json, set by run

    def run(self, job: Job) -> tuple[Backbone, FitResult]:
        raise NotImplementedError

    def save(self, job: Job, backbone: Backbone, folder: Path, meta: dict) -> None:
        """Write the unlearned model (adapter only, for a LoRA student) with its meta.json."""
        save_model(backbone, folder, meta)

    def lora_meta(self, job: Job) -> dict | None:
        """meta.json's `lora`: the LoRA recipe of a model trained from scratch (an adapter on the Original has
        none: its `base` names the Original)."""
        return None

    def base_meta(self, job: Job, out: Path) -> dict | None:
        """meta.json's `base`, what loading the saved weights starts from: the Original, for an adapter."""
        return {"model": base_reference(out, job.original)} if self.lora else None


class ObjectiveMethod(Method):
    """Train a student from the Original on (forget, retain) batches with a method-specific loss."""

    def lora_config(self) -> LoraConfig | None:
        """The student's LoRA recipe, as peft takes it (build it with `e2urec.model.lora.lora_config`, which
        meta.json can record); None: full fine-tuning of a copy of the Original."""
        return None

    def student(self, job: Job) -> Backbone:
        """A trainable copy of the Original: every weight, or frozen with LoRA adapters."""
        backbone = job.load_original()
        make_trainable(backbone, self.lora_config())
        backbone.model.to(job.accelerator.device)
        backbone.origin = f"the {self.name} student"
        return backbone

    def retain_needed(self, n_forget: int) -> int:
        """Retain samples the schedule will read: one retain batch per forget batch, every epoch."""
        return max(1, self.cfg.epochs) * n_forget

    def prompt_sets(self, job: Job, backbone: Backbone) -> dict[str, PromptSet]:
        """The forget set, and as many retain samples as the schedule will read (seeded).

        Sampling only what is read keeps unlearning cost proportional to the forget set, not to the retained
        data.
        """
        forget = rows_for(job.samples, "forget")
        retain = rows_for(job.samples, "retain")
        need = self.retain_needed(len(forget))
        if need < len(retain):
            picked = np.random.default_rng([self.cfg.seed, 11]).choice(len(retain), size=need, replace=False)
            retain = retain.iloc[np.sort(picked)]
        return {"forget": prompt_set(backbone, forget, self.cfg.max_length),
                "retain": prompt_set(backbone, retain, self.cfg.max_length)}

    def attach_teachers(self, job: Job, backbone: Backbone, data: dict[str, PromptSet]) -> None:
        """Add cached teacher tensors to the prompt sets (none by default)."""

    def objective(self, backbone: Backbone) -> Any:
        raise NotImplementedError

    def train_config(self, data: dict[str, PromptSet]) -> TrainConfig:
        return self.cfg.train_config()

    def monitor(self, job: Job, backbone: Backbone, data: dict[str, PromptSet]) -> Monitor | None:
        """A check that decides when the method has done its job (None: train the whole schedule)."""
        return None

    def nothing_to_unlearn(self) -> bool:
        """True when the teachers show there is nothing to move (then the student is not trained at all)."""
        return False

    def run(self, job: Job) -> tuple[Backbone, FitResult]:
        torch.manual_seed(self.cfg.seed)
        student = self.student(job)
        data = self.prompt_sets(job, student)
        self.attach_teachers(job, student, data)
        if self.nothing_to_unlearn():
            return student, FitResult(epochs_run=0, steps=0, seconds=0.0, best_valid_loss=None, kept={
                "epoch": 0, "step": 0, "why": "nothing to unlearn: the student was not trained and is the Original"})
        result = fit(student, self.objective(student), data, self.train_config(data),
                     checkpoint_dir=job.work / "resume", accelerator=job.accelerator,
                     fingerprint={"method": self.name, "config": vars(self.cfg),
                                  "data": job.manifest["samples_sha256"]},
                     desc=self.name, monitor=self.monitor(job, student, data))
        return student, result


def cache_teacher(backbone: Backbone, data: PromptSet, logits_fn: Any, prefix: str, accelerator: Accelerator,
                  batch_size: int = 64, k: int = TEACHER_TOP_K) -> None:
    """Compute a teacher's answer-position distribution once per sample and keep it compressed (top-k + rest)
    in `data.extras` under `{prefix}_idx`, `{prefix}_p`, `{prefix}_rest`, so no epoch recomputes it; also its
    distribution over the two answer tokens (No, Yes) under `{prefix}_p2`."""
    pair = torch.as_tensor(backbone.answer_ids)

    def fn(batch: Batch) -> torch.Tensor:
        logits = logits_fn(batch)
        top_i, top_p, rest = compress(logits, k)
        p2 = torch.softmax(logits.float().index_select(-1, pair.to(logits.device)), dim=-1)
        return torch.cat([top_i.float(), top_p, p2, rest[:, None]], dim=-1)

    packed = torch.from_numpy(per_sample(backbone, data, fn, batch_size, accelerator, desc=f"teacher {prefix}"))
    width = (packed.shape[1] - 3) // 2
    data.extras[f"{prefix}_idx"] = packed[:, :width].round().to(torch.int64)
    data.extras[f"{prefix}_p"] = packed[:, width:2 * width].contiguous()
    data.extras[f"{prefix}_p2"] = packed[:, 2 * width:2 * width + 2].contiguous()
    data.extras[f"{prefix}_rest"] = packed[:, -1].contiguous()


def logits_of(model: torch.nn.Module, kind: str):
    """A batch → answer-position logits function for a frozen teacher."""
    model.eval()

    return lambda batch: answer_logits(model, batch, kind)
