"""The math of unlearning and forgetting metrics, checked on hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from e2urec.evaluation import jsd, l2, membership_inference_auc, mia_features
from e2urec.model.ensemble import AttentionAggregator, ShardEnsemble
from e2urec.unlearning.losses import (
    compress,
    compressed_soft_cross_entropy,
    flip_targets,
    forgetting_teacher_logits,
    soft_cross_entropy,
)
from e2urec.unlearning.methods import LabelFlipObjective, NegGradObjective


def test_forgetting_teacher_pushes_down_what_the_augmented_model_pushed_up() -> None:
    z_orig = torch.tensor([[1.0, 2.0, 3.0]])
    z_aug = torch.tensor([[2.0, 1.0, 3.5]])
    # token 0: aug raised it by 1 → 1 − 2·1; token 1: aug lowered it → unchanged; token 2: raised by .5 → 3 − 1
    assert torch.equal(forgetting_teacher_logits(z_orig, z_aug, alpha=2.0), torch.tensor([[-1.0, 2.0, 2.0]]))
    assert torch.equal(forgetting_teacher_logits(z_orig, z_aug, alpha=0.0), z_orig)


def test_soft_cross_entropy_goes_from_teacher_to_student() -> None:
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    student = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    expected = -(teacher * F.log_softmax(student, -1)).sum()
    loss = soft_cross_entropy(student, teacher)
    assert loss.item() == pytest.approx(expected.item())
    # KL(teacher ‖ student) + H(teacher): the teacher's entropy is the constant
    kl = F.kl_div(F.log_softmax(student, -1), teacher, reduction="sum")
    entropy = -(teacher * teacher.log()).sum()
    assert loss.item() == pytest.approx((kl + entropy).item(), rel=1e-6)
    loss.backward()
    assert torch.allclose(student.grad, F.softmax(student, -1).detach() - teacher)  # pulls student to teacher
    swapped = soft_cross_entropy(teacher.log(), F.softmax(student.detach(), -1))
    assert swapped.item() != pytest.approx(loss.item())


def test_compressed_teacher_is_exact_at_full_width_and_close_for_a_peaked_teacher() -> None:
    torch.manual_seed(0)
    teacher_logits = torch.randn(4, 50)
    teacher_logits[:, 3] += 12.0  # peaked, as at a tuned model's answer position
    student = torch.randn(4, 50)
    full = soft_cross_entropy(student, F.softmax(teacher_logits, -1))
    assert compressed_soft_cross_entropy(student, *compress(teacher_logits, 50)).item() == pytest.approx(
        full.item(), rel=1e-5)
    idx, p, rest = compress(teacher_logits, 5)
    assert torch.allclose(p.sum(-1) + rest, torch.ones(4))
    assert compressed_soft_cross_entropy(student, idx, p, rest).item() == pytest.approx(full.item(), rel=0.02)


def test_jsd_is_symmetric_nonnegative_and_zero_on_identical_inputs() -> None:
    p = torch.log_softmax(torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]]), -1)
    q = torch.log_softmax(torch.tensor([[0.0, 1.0, 3.0], [5.0, 0.0, 0.0]]), -1)
    assert torch.allclose(jsd(p, q), jsd(q, p))
    assert (jsd(p, q) > 0).all()
    assert torch.allclose(jsd(p, p), torch.zeros(2), atol=1e-7)
    disjoint = torch.log(torch.tensor([[1.0, 1e-30], [1e-30, 1.0]]))
    assert jsd(disjoint[:1], disjoint[1:]).item() == pytest.approx(math.log(2), rel=1e-4)
    half = torch.log(torch.tensor([[0.5, 0.5]]))
    one = torch.log(torch.tensor([[1.0, 1e-30]]))
    assert l2(half, one).item() == pytest.approx(math.sqrt(0.5), rel=1e-5)


class _Stub:
    kind = "causal"
    answer_ids = (7, 9)


class _Cfg:
    gamma = 0.2


def test_neggrad_ascends_on_forget_and_label_flip_swaps_answers() -> None:
    logits = torch.tensor([[0.0] * 7 + [2.0, 0.0, -1.0]])
    batch = {"target": torch.tensor([9])}
    ce = F.cross_entropy(logits, batch["target"])
    assert NegGradObjective(_Stub(), _Cfg()).forget_term(logits, batch).item() == pytest.approx(-0.2 * ce.item())
    flipped = F.cross_entropy(logits, torch.tensor([7]))
    assert LabelFlipObjective(_Stub(), _Cfg()).forget_term(logits, batch).item() == pytest.approx(
        0.2 * flipped.item())
    assert flip_targets(torch.tensor([7, 9, 9]), (7, 9)).tolist() == [9, 7, 7]


class _Const(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, **inputs: torch.Tensor) -> object:
        return type("Out", (), {"logits": self.logits})()


def test_sisa_averages_shard_logits_and_receraser_weights_sum_to_one() -> None:
    a, b = torch.tensor([[[1.0, 3.0, 0.0]]]), torch.tensor([[[3.0, -1.0, 2.0]]])
    mean = ShardEnsemble([_Const(a), _Const(b)], (0, 1))(input_ids=torch.zeros(1, 1)).logits
    assert torch.equal(mean, torch.tensor([[[2.0, 1.0, 1.0]]]))
    attention = ShardEnsemble([_Const(a), _Const(b)], (0, 1), AttentionAggregator())
    weights = attention.aggregator(torch.stack([a, b])[..., [0, 1]])
    assert torch.allclose(weights.sum(0), torch.ones(1, 1, 1))
    combined = attention(input_ids=torch.zeros(1, 1)).logits
    assert torch.allclose(combined, weights[0] * a + weights[1] * b)


def test_membership_attack_separates_members_and_not_non_members() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    confident = np.where(labels == 1, 0.95, 0.05)  # memorised: low loss
    unsure = np.where(labels == 1, 0.55, 0.45) + rng.normal(0, 0.1, 400)
    members = mia_features(labels, confident)
    non_members = mia_features(labels, np.clip(unsure, 0.01, 0.99))
    assert membership_inference_auc(members, non_members, members[:100]) > 0.9
    fresh = mia_features(labels[:100], np.clip(np.where(labels[:100] == 1, 0.55, 0.45) + rng.normal(0, 0.1, 100),
                                               0.01, 0.99))
    assert abs(membership_inference_auc(members, non_members, fresh) - 0.5) < 0.15
