"""Preference-style baselines from LLM unlearning: NPO and SimNPO, each with the retain cross-entropy.

Here a "response" is the single answer token, so π(y|x) is the probability of the true answer at the answer
position (full-vocabulary softmax) and SimNPO's length normalisation |y| is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from e2urec.engine import Batch
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, answer_logits, per_sample
from e2urec.options import MAX_WEIGHT
from e2urec.unlearning.base import Job, MethodConfig, ObjectiveMethod, option, register
from e2urec.unlearning.methods import RetainForget


def answer_log_prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """log π(y|x) of the target token, per row."""
    return torch.log_softmax(logits.float(), -1).gather(1, target[:, None])[:, 0]


def npo_loss(log_p: torch.Tensor, log_p_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO (Zhang et al. 2024): (2/β)·mean log(1 + (π/π_ref)^β); bounded, unlike gradient ascent's −log π."""
    return (2 / beta) * F.softplus(beta * (log_p - log_p_ref)).mean()


def simnpo_loss(log_p: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): −(2/β)·mean log σ(−β·log π − δ); reference-free NPO (|y| = 1 here)."""
    return -(2 / beta) * F.logsigmoid(-beta * log_p - delta).mean()


@dataclass
class NPOConfig(MethodConfig):
    gamma: float = option(1.0, "weight of the forget term", low=0, high=MAX_WEIGHT)
    npo_beta: float = option(0.1, "NPO's β (inverse temperature)", low=0, high=MAX_WEIGHT, open_low=True)


@dataclass
class SimNPOConfig(MethodConfig):
    gamma: float = option(1.0, "weight of the forget term", low=0, high=MAX_WEIGHT)
    npo_beta: float = option(2.5, "SimNPO's β (inverse temperature)", low=0, high=MAX_WEIGHT, open_low=True)
    delta: float = option(0.0, "SimNPO's reward margin δ", low=0, high=MAX_WEIGHT)


class NPOObjective(RetainForget):
    """CE on retain + γ·NPO on forget, against the Original's cached log π_ref."""

    def forget_term(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        log_p = answer_log_prob(logits, batch["target"])
        return self.cfg.gamma * npo_loss(log_p, batch["ref_logp"], self.cfg.npo_beta)


class SimNPOObjective(RetainForget):
    """CE on retain + γ·SimNPO on forget."""

    def forget_term(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.cfg.gamma * simnpo_loss(answer_log_prob(logits, batch["target"]), self.cfg.npo_beta,
                                            self.cfg.delta)


@register
class NPO(ObjectiveMethod):
    """Full fine-tune: CE on retain + γ·NPO on forget (Original as the reference policy)."""

    name = "npo"
    Config = NPOConfig

    def attach_teachers(self, job: Job, backbone: Backbone, data: dict[str, PromptSet]) -> None:
        original = job.load_original()
        original.model.eval()
        data["forget"].extras["ref_logp"] = torch.from_numpy(per_sample(
            backbone, data["forget"],
            lambda b: answer_log_prob(answer_logits(original.model, b, original.kind), b["target"]),
            64, job.accelerator, desc="reference"))

    def objective(self, backbone: Backbone) -> NPOObjective:
        return NPOObjective(backbone, self.cfg)


@register
class SimNPO(ObjectiveMethod):
    """Full fine-tune: CE on retain + γ·SimNPO on forget (no reference model)."""

    name = "simnpo"
    Config = SimNPOConfig

    def objective(self, backbone: Backbone) -> SimNPOObjective:
        return SimNPOObjective(backbone, self.cfg)
