"""The math of unlearning and of forgetting metrics, on plain tensors so it can be tested by hand.

Teacher distributions are stored compactly as their top-k probabilities plus the leftover mass ("rest"):
at an answer position a tuned model puts nearly all mass on a few tokens, so k = 64 keeps the soft
cross-entropy essentially exact while a cached row costs 64 ids + 64 probabilities instead of a vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from e2urec.engine import Batch


def forgetting_teacher_logits(z_orig: Tensor, z_aug: Tensor, alpha: float) -> Tensor:
    """z_fgt = z_orig − α·ReLU(z_aug − z_orig): push down whatever training further on the forget set pushed
    up (the paper's forgetting teacher)."""
    z_orig, z_aug = z_orig.float(), z_aug.float()  # bf16 logits would round the push away
    return z_orig - alpha * F.relu(z_aug - z_orig)


def label_push_logits(z_orig: Tensor, target: Tensor, answer_ids: tuple[int, int], alpha: float) -> Tensor:
    """The true answer's logit lowered by α/2 and the other answer's raised by α/2: the two-token log-odds of
    the true answer fall by α on every sample, the rest of the vocabulary is the Original's. A uniform discount
    of what the Original fitted, with no augmented model to say where."""
    no_id, yes_id = answer_ids
    sign = torch.where(target == yes_id, 1.0, -1.0).to(z_orig.device, torch.float32)[:, None] * alpha / 2
    z = z_orig.float().clone()
    z[:, yes_id:yes_id + 1] -= sign
    z[:, no_id:no_id + 1] += sign
    return z


def soft_cross_entropy(student_logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """Mean over rows of −Σ p_teacher · log p_student (KL(teacher ‖ student) up to the teacher's entropy)."""
    return -(teacher_probs * F.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()


def compress(logits: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(top-k token ids, their probabilities, the remaining mass) of softmax(logits), per row."""
    probs = F.softmax(logits.float(), dim=-1)
    top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
    return top_i.to(torch.int32), top_p, (1.0 - top_p.sum(-1)).clamp(min=0.0)


def compressed_soft_cross_entropy(student_logits: Tensor, top_i: Tensor, top_p: Tensor, rest: Tensor) -> Tensor:
    """Soft cross-entropy to a compressed teacher: its top-k tokens, then one bucket for everything else.

    −Σ_{v∈K} p_t(v) log p_s(v) − r_t log(1 − Σ_{v∈K} p_s(v)); exact for the bucketed distributions.
    """
    log_p = F.log_softmax(student_logits.float(), dim=-1)
    top_log = log_p.gather(-1, top_i.long())
    rest_log = torch.log1p(-top_log.exp().sum(-1).clamp(max=1 - 1e-6))
    return -((top_p * top_log).sum(-1) + rest * rest_log).mean()


def flip_targets(targets: Tensor, answer_ids: tuple[int, int]) -> Tensor:
    """Swap the Yes and No answer tokens (the reference code's 'Bad-T' labels)."""
    no_id, yes_id = answer_ids
    return torch.where(targets == yes_id, no_id, yes_id)


def teacher_loss(logits: torch.Tensor, batch: Batch, prefix: str) -> torch.Tensor:
    """Soft cross-entropy to a cached teacher over the full vocabulary (its compressed top-k, see `compress`)."""
    return compressed_soft_cross_entropy(logits, batch[f"{prefix}_idx"], batch[f"{prefix}_p"], batch[f"{prefix}_rest"])
