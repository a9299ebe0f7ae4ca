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

from e2urec.checkpoint import META_FILE, load_model, save_model
from e2urec.data.store import load_prepared
from e2urec.engine import Batch, FitResult, TrainConfig, fit
from e2urec.errors import E2URecError
from e2urec.io import read_json
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, answer_logits, per_sample
from e2urec.training import make_trainable, prompt_set, rows_for
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
        self.original_meta = read_json(self.original / META_FILE)
        if rows_for(self.samples, "forget").empty:
            raise E2URecError(f"{self.data}: the forget set is empty; nothing to unlearn")

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

    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 16
    max_steps: int | None = None
    max_length: int | None = None
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, max_steps=self.max_steps,
                           max_length=self.max_length, seed=self.seed, patience=10**9)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MethodConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise E2URecError(f"{cls.__name__}: unknown options {unknown}; known: {sorted(known)}")
        return cls(**options)


@dataclass
class RecipeOverrides(MethodConfig):
    """For methods that retrain with the trained model's own recipe; a field set here (not None) overrides it."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int | None = None

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

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg
        self.facts: dict[str, Any] = {}  # method-specific entries for meta.json, set by run

    def run(self, job: Job) -> tuple[Backbone, FitResult]:
        raise NotImplementedError

    def save(self, job: Job, backbone: Backbone, folder: Path, meta: dict) -> None:
        """Write the unlearned model (adapter only, for a LoRA student) with its meta.json."""
        save_model(backbone, folder, meta)


class ObjectiveMethod(Method):
    """Train a student from the Original on (forget, retain) batches with a method-specific loss."""

    def student(self, job: Job) -> Backbone:
        """Full fine-tuning of a copy of the Original by default; LoRA methods freeze it and add adapters."""
        backbone = job.load_original()
        make_trainable(backbone, {"r": self.cfg.lora_r, "alpha": self.cfg.lora_alpha, "dropout": self.cfg.lora_dropout}
                       if self.lora else None)
        backbone.model.to(job.accelerator.device)
        return backbone

    def zipped_epochs(self) -> int:
        """Epochs that pair each forget batch with a retain batch (sizes the retain sample)."""
        return self.cfg.epochs

    def prompt_sets(self, job: Job, backbone: Backbone) -> dict[str, PromptSet]:
        """The forget set, and as many retain samples as the zipped epochs will read (seeded).

        Pairing each forget batch with one retain batch is the reference schedule; sampling only what is read
        keeps unlearning cost proportional to the forget set, not to the retained data.
        """
        forget = rows_for(job.samples, "forget")
        retain = rows_for(job.samples, "retain")
        need = max(1, self.zipped_epochs()) * len(forget)
        if need < len(retain):
            picked = np.random.default_rng([self.cfg.seed, 11]).choice(len(retain), size=need, replace=False)
            retain = retain.iloc[np.sort(picked)]
        return {"forget": prompt_set(backbone, forget, self.cfg.max_length),
                "retain": prompt_set(backbone, retain, self.cfg.max_length)}

    def attach_teachers(self, job: Job, backbone: Backbone, data: dict[str, PromptSet]) -> None:
        """Add cached teacher tensors to the prompt sets (none by default)."""

    def objective(self, backbone: Backbone) -> Any:
        raise NotImplementedError

    def run(self, job: Job) -> tuple[Backbone, FitResult]:
        torch.manual_seed(self.cfg.seed)
        student = self.student(job)
        data = self.prompt_sets(job, student)
        self.attach_teachers(job, student, data)
        result = fit(student, self.objective(student), data, self.cfg.train_config(),
                     checkpoint_dir=job.work / "resume", accelerator=job.accelerator,
                     fingerprint={"method": self.name, "config": vars(self.cfg),
                                  "data": job.manifest["samples_sha256"]},
                     desc=self.name)
        return student, result


def cache_teacher(backbone: Backbone, data: PromptSet, logits_fn: Any, prefix: str, accelerator: Accelerator,
                  batch_size: int = 64, k: int = TEACHER_TOP_K) -> None:
    """Compute a teacher's answer-position distribution once per sample and keep it compressed (top-k + rest)
    in `data.extras` under `{prefix}_idx`, `{prefix}_p`, `{prefix}_rest`, so no epoch recomputes it."""

    def fn(batch: Batch) -> torch.Tensor:
        top_i, top_p, rest = compress(logits_fn(batch), k)
        return torch.cat([top_i.float(), top_p, rest[:, None]], dim=-1)

    packed = torch.from_numpy(per_sample(backbone, data, fn, batch_size, accelerator, desc=f"teacher {prefix}"))
    width = (packed.shape[1] - 1) // 2
    data.extras[f"{prefix}_idx"] = packed[:, :width].round().to(torch.int64)
    data.extras[f"{prefix}_p"] = packed[:, width:2 * width].contiguous()
    data.extras[f"{prefix}_rest"] = packed[:, -1].contiguous()


def logits_of(model: torch.nn.Module, kind: str):
    """A batch → answer-position logits function for a frozen teacher."""
    model.eval()

    return lambda batch: answer_logits(model, batch, kind)
