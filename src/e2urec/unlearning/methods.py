"""The approximate unlearning methods, each a small objective over (forget, retain) batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from e2urec.checkpoint import load_model, save_model, unwrap
from e2urec.engine import Batch, TrainConfig, fit
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, answer_logits
from e2urec.training import AnswerCrossEntropy
from e2urec.unlearning.base import (
    Job,
    MethodConfig,
    ObjectiveMethod,
    cache_teacher,
    logits_of,
    register,
)
from e2urec.unlearning.losses import compressed_soft_cross_entropy, flip_targets, forgetting_teacher_logits


def teacher_loss(logits: torch.Tensor, batch: Batch, prefix: str) -> torch.Tensor:
    return compressed_soft_cross_entropy(logits, batch[f"{prefix}_idx"], batch[f"{prefix}_p"], batch[f"{prefix}_rest"])


class RetainForget:
    """Objectives that read a forget batch and a retain batch every step; subclasses give the two terms."""

    def __init__(self, backbone: Backbone, cfg: MethodConfig):
        self.kind = backbone.kind
        self.answer_ids = backbone.answer_ids
        self.cfg = cfg

    def streams(self, epoch: int) -> tuple[str, ...]:
        return ("forget", "retain")

    def retain_term(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["target"])

    def forget_term(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batches: dict[str, Batch]) -> torch.Tensor:
        forget, retain = batches["forget"], batches["retain"]
        return (self.retain_term(answer_logits(model, retain, self.kind), retain)
                + self.forget_term(answer_logits(model, forget, self.kind), forget))


@dataclass
class GammaConfig(MethodConfig):
    gamma: float = 0.2


class NegGradObjective(RetainForget):
    """CE on retain minus γ·CE on forget: gradient ascent on what is to be forgotten."""

    def forget_term(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return -self.cfg.gamma * F.cross_entropy(logits.float(), batch["target"])


class LabelFlipObjective(RetainForget):
    """CE on retain plus γ·CE on forget with Yes and No swapped (the paper code's "Bad-T")."""

    def forget_term(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.cfg.gamma * F.cross_entropy(logits.float(), flip_targets(batch["target"], self.answer_ids))


class BadTeacherObjective(RetainForget):
    """Published Bad Teacher: distil the Original on retain and an untrained model on forget."""

    def retain_term(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return teacher_loss(logits, batch, "good")

    def forget_term(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return teacher_loss(logits, batch, "bad")


@register
class NegGrad(ObjectiveMethod):
    """Full fine-tune: CE on retain minus γ·CE on forget (gradient ascent)."""

    name = "neggrad"
    Config = GammaConfig

    def objective(self, backbone: Backbone) -> NegGradObjective:
        return NegGradObjective(backbone, self.cfg)


@register
class LabelFlip(ObjectiveMethod):
    """Full fine-tune: CE on retain plus γ·CE on forget with Yes/No flipped (paper code's Bad-T)."""

    name = "label-flip"
    Config = GammaConfig

    def objective(self, backbone: Backbone) -> LabelFlipObjective:
        return LabelFlipObjective(backbone, self.cfg)


@register
class BadTeacher(ObjectiveMethod):
    """Published Bad Teacher: distil the Original on retain, a random untrained model on forget."""

    name = "badt"

    def attach_teachers(self, job: Job, backbone: Backbone, data: dict[str, PromptSet]) -> None:
        original = job.load_original()
        cache_teacher(backbone, data["retain"], logits_of(original.model, original.kind), "good", job.accelerator)
        del original
        config = unwrap(backbone.model).config
        auto = AutoModelForSeq2SeqLM if backbone.kind == "seq2seq" else AutoModelForCausalLM
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)
            incompetent = auto.from_config(config).to(job.accelerator.device)
        cache_teacher(backbone, data["forget"], logits_of(incompetent, backbone.kind), "bad", job.accelerator)

    def objective(self, backbone: Backbone) -> BadTeacherObjective:
        return BadTeacherObjective(backbone, self.cfg)


@dataclass
class E2URecConfig(MethodConfig):
    """DESIGN §1 reference values: LoRA r16/α32/dropout .05, α=2, β=0.4, lr 1e-3, batch 16, the first epoch on
    the forgetting loss alone; augmented model: full fine-tune on forget, lr 5e-5, batch 16, fixed steps."""

    epochs: int = 3
    lr: float = 1e-3
    alpha: float = 2.0
    beta: float = 0.4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    aug_steps: int = 100
    aug_lr: float = 5e-5
    aug_batch_size: int = 16


class E2URecObjective:
    """L = β·L_FGT + (1−β)·(L_REM + CE_retain); the first epoch reads forget batches only and uses L_FGT."""

    def __init__(self, backbone: Backbone, cfg: E2URecConfig):
        self.kind = backbone.kind
        self.beta = cfg.beta

    def streams(self, epoch: int) -> tuple[str, ...]:
        return ("forget",) if epoch == 0 else ("forget", "retain")

    def loss(self, model: torch.nn.Module, batches: dict[str, Batch]) -> torch.Tensor:
        forget = batches["forget"]
        l_fgt = teacher_loss(answer_logits(model, forget, self.kind), forget, "fgt")
        if "retain" not in batches:
            return l_fgt
        retain = batches["retain"]
        logits = answer_logits(model, retain, self.kind)
        l_rem = teacher_loss(logits, retain, "rem") + F.cross_entropy(logits.float(), retain["target"])
        return self.beta * l_fgt + (1 - self.beta) * l_rem


@register
class E2URec(ObjectiveMethod):
    """LoRA student; forgetting teacher on forget, the Original as remembering teacher on retain."""

    name = "e2urec"
    Config = E2URecConfig
    lora = True

    def zipped_epochs(self) -> int:
        return max(0, self.cfg.epochs - 1)

    def augmented(self, job: Job, data: PromptSet) -> Backbone:
        """The Original tuned further on the forget set: it exaggerates what the Original learned from it."""
        folder = job.work / "augmented"
        if (folder / "meta.json").is_file():
            backbone, _ = load_model(folder)
            backbone.model.to(job.accelerator.device)
            return backbone
        backbone = job.load_original()
        backbone.model.requires_grad_(True)
        cfg = TrainConfig(epochs=10**6, lr=self.cfg.aug_lr, batch_size=self.cfg.aug_batch_size,
                          max_steps=self.cfg.aug_steps, seed=self.cfg.seed, patience=10**9)
        fit(backbone, AnswerCrossEntropy(backbone.kind, stream="forget"), {"forget": data}, cfg,
            accelerator=job.accelerator, desc="augmented")
        backbone.model.eval()
        if job.accelerator.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
            save_model(backbone, folder, {"role": "augmented", "backbone": job.original_meta.get("backbone")})
        return backbone

    def attach_teachers(self, job: Job, backbone: Backbone, data: dict[str, PromptSet]) -> None:
        original = job.load_original()
        augmented = self.augmented(job, data["forget"])
        z_orig = logits_of(original.model, original.kind)
        z_aug = logits_of(augmented.model, augmented.kind)
        alpha = self.cfg.alpha
        cache_teacher(backbone, data["forget"], lambda b: forgetting_teacher_logits(z_orig(b), z_aug(b), alpha),
                      "fgt", job.accelerator)
        del augmented
        cache_teacher(backbone, data["retain"], z_orig, "rem", job.accelerator)

    def objective(self, backbone: Backbone) -> E2URecObjective:
        return E2URecObjective(backbone, self.cfg)
