"""The approximate unlearning methods, each a small objective over (forget, retain) batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from e2urec.checkpoint import unwrap
from e2urec.engine import Batch
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, answer_logits
from e2urec.options import MAX_WEIGHT
from e2urec.unlearning.base import (
    Job,
    MethodConfig,
    ObjectiveMethod,
    cache_teacher,
    logits_of,
    option,
    register,
)
from e2urec.unlearning.losses import flip_targets, teacher_loss


class RetainForget:
    """Objectives that read a forget batch and a retain batch every step; subclasses give the two terms."""

    def __init__(self, backbone: Backbone, cfg: MethodConfig):
        self.kind = backbone.kind
        self.answer_ids = backbone.answer_ids
        self.cfg = cfg

    def streams(self, epoch: int, step: int) -> tuple[str, ...]:
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
    gamma: float = option(0.2, "weight of the forget term", low=0, high=MAX_WEIGHT)


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
