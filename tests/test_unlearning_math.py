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


def test_npo_and_simnpo_losses_by_hand() -> None:
    from e2urec.unlearning.npo import answer_log_prob, npo_loss, simnpo_loss

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 1])
    log_p = answer_log_prob(logits, target)
    expected_log_p = [2 - math.log(math.exp(2) + 1 + math.exp(-1)), 1 - math.log(2 + math.e)]
    assert log_p.tolist() == pytest.approx(expected_log_p, rel=1e-6)
    log_ref = torch.tensor([-0.5, -1.0])
    beta = 0.1
    by_hand = sum((2 / beta) * math.log(1 + math.exp(beta * (lp - lr))) for lp, lr in
                  zip(expected_log_p, [-0.5, -1.0], strict=True)) / 2
    assert npo_loss(log_p, log_ref, beta).item() == pytest.approx(by_hand, rel=1e-6)
    # at π = π_ref NPO is (2/β)·log 2, and its gradient lowers π (it pushes the forget answer down)
    assert npo_loss(log_ref, log_ref, beta).item() == pytest.approx(2 / beta * math.log(2))
    beta, delta = 2.5, 0.5
    by_hand = sum(-(2 / beta) * math.log(1 / (1 + math.exp(beta * lp + delta))) for lp in expected_log_p) / 2
    loss = simnpo_loss(log_p, beta, delta)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 0] > 0 and logits.grad[1, 1] > 0, "descending the loss lowers the true answer's logit"


def test_within_user_auc_ignores_base_rates() -> None:
    from e2urec.evaluation import within_user_auc

    users = np.array([1, 1, 1, 2, 2, 2, 3])
    labels = np.array([1, 0, 1, 1, 0, 0, 1])
    # user 1 ranked perfectly, user 2 inverted, user 3 has one label only (skipped)
    p = np.array([0.9, 0.8, 0.95, 0.1, 0.2, 0.3, 0.5])
    value, n = within_user_auc(users, labels, p)
    assert n == 2 and value == pytest.approx(0.5)
    assert within_user_auc(np.array([1, 1]), np.array([1, 1]), np.array([0.2, 0.4])) == (None, 0)


def test_symmetric_kl_is_the_papers_jsd_not_jensen_shannon() -> None:
    from e2urec.evaluation import symmetric_kl

    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.2, 0.5, 0.3]])
    kl_pq = (p * (p / q).log()).sum()
    kl_qp = (q * (q / p).log()).sum()
    assert symmetric_kl(p.log(), q.log()).item() == pytest.approx((0.5 * (kl_pq + kl_qp)).item(), rel=1e-6)
    assert symmetric_kl(p.log(), q.log()).item() > jsd(p.log(), q.log()).item()
    assert symmetric_kl(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_two_token_jsd_from_p_yes_by_hand() -> None:
    """Bernoulli(0.2) against Bernoulli(0.8): the midpoint is 0.5, so JSD = KL(0.2 ‖ 0.5) = 0.2·ln 0.4 + 0.8·ln 1.6;
    the mean runs over samples."""
    from e2urec.evaluation import jsd_yes_no

    by_hand = 0.2 * math.log(0.4) + 0.8 * math.log(1.6)
    assert jsd_yes_no(np.array([0.2]), np.array([0.8])) == pytest.approx(by_hand, rel=1e-6)
    assert jsd_yes_no(np.array([0.2, 0.6]), np.array([0.8, 0.6])) == pytest.approx(by_hand / 2, rel=1e-6)
    assert jsd_yes_no(np.array([0.3, 0.9]), np.array([0.3, 0.9])) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("options, message", [
    ({"alpha": float("nan")}, "finite"), ({"lora_r": 0}, "lora_r"), ({"forget_only": 1.5}, "forget_only"),
    ({"epochs": -1}, "epochs"), ({"min_steps": 0}, "min_steps"), ({"push": "logits"}, "push"),
    ({"unknown_key": 1}, "unknown"), ({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr"),
])
def test_method_options_are_checked_before_any_work(options: dict, message: str) -> None:
    from e2urec.errors import E2URecError
    from e2urec.unlearning.e2urec import E2URecConfig

    with pytest.raises(E2URecError, match=message):
        E2URecConfig.from_options(options)


def test_e2urec_schedule_in_steps_and_reference_profile() -> None:
    from e2urec.unlearning.e2urec import E2URec, E2URecConfig, E2URecObjective

    method = E2URec(E2URecConfig.from_options({"epochs": 10, "min_steps": 60, "forget_only": 0.8}))
    assert method.schedule(16 * 20) == (200, 160)  # 10 passes of 20 batches
    assert method.schedule(16) == (60, 48)  # the floor does not depend on the forget set's size
    assert E2URec(E2URecConfig.from_options({"max_steps": 30})).schedule(16 * 20)[0] == 30
    reference = E2URecConfig.from_options({"profile": "reference"})
    assert (reference.aug_lr, reference.stop, reference.forget_only) == (5e-5, "none", pytest.approx(1 / 3))
    assert E2URec(reference).schedule(16 * 10) == (30, 10)  # 3 epochs, the first on the forgetting loss alone
    assert E2URecConfig.from_options({"profile": "reference", "alpha": 5}).alpha == 5

    class _Backbone:
        kind, answer_ids = "causal", (1, 2)

    objective = E2URecObjective(_Backbone(), reference, forget_only_steps=10)
    assert objective.streams(0, 9) == ("forget",) and objective.streams(1, 10) == ("forget", "retain")


def test_e2urec_objective_mixes_beta_and_optional_retain_ce() -> None:
    from e2urec.unlearning.e2urec import E2URecConfig, E2URecObjective

    torch.manual_seed(0)
    vocab = 5
    teacher_f, teacher_r = F.softmax(torch.randn(2, vocab), -1), F.softmax(torch.randn(2, vocab), -1)

    def batch(teacher: torch.Tensor, prefix: str) -> dict:
        idx, p, rest = compress(teacher.log(), vocab)
        return {"input_ids": torch.zeros(2, 1, dtype=torch.long), "target": torch.tensor([1, 2]),
                f"{prefix}_idx": idx, f"{prefix}_p": p, f"{prefix}_rest": rest,
                f"{prefix}_p2": F.softmax(teacher.log()[:, [1, 2]], -1)}

    z_f, z_r = torch.randn(2, vocab), torch.randn(2, vocab)

    class _Model(torch.nn.Module):
        def forward(self, input_ids, **_):  # answer logits depend on which batch is asked
            z = z_f if input_ids.shape[1] == 1 else z_r
            return type("Out", (), {"logits": z[:, None, :]})

    class _Backbone:
        kind, answer_ids = "causal", (1, 2)

    forget, retain = batch(teacher_f, "fgt"), batch(teacher_r, "rem")
    retain["input_ids"] = torch.zeros(2, 2, dtype=torch.long)
    l_fgt, l_rem = soft_cross_entropy(z_f, teacher_f), soft_cross_entropy(z_r, teacher_r)
    ce = F.cross_entropy(z_r, retain["target"])
    cfg = E2URecConfig(beta=0.25, retain_ce=True)
    objective = E2URecObjective(_Backbone(), cfg, forget_only_steps=0)
    joint = objective.loss(_Model(), {"forget": forget, "retain": retain})
    assert joint.item() == pytest.approx((0.25 * l_fgt + 0.75 * (l_rem + ce)).item(), rel=1e-5)
    assert objective.loss(_Model(), {"forget": forget}).item() == pytest.approx(l_fgt.item(), rel=1e-5)
    no_ce = E2URecObjective(_Backbone(), E2URecConfig(beta=0.25, retain_ce=False), 0)
    assert no_ce.loss(_Model(), {"forget": forget, "retain": retain}).item() == pytest.approx(
        (0.25 * l_fgt + 0.75 * l_rem).item(), rel=1e-5)


def test_alpha_is_calibrated_to_the_non_member_loss() -> None:
    from e2urec.unlearning.e2urec import calibrate_alpha, teacher_pairs

    z_orig = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])  # (No, Yes); the Original is right on all three
    z_aug = z_orig + np.array([[-0.5, 0.5], [0.5, -0.5], [0.0, 1.0]])  # the augmented model raised the truth
    yes = np.array([1, 0, 1])

    def teacher_loss_at(alpha: float) -> float:
        z = z_orig - alpha * np.maximum(z_aug - z_orig, 0)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return float(-np.log(p[np.arange(3), yes]).mean())

    plain = teacher_pairs("augmented", z_orig, yes, z_aug)
    alpha = calibrate_alpha(plain, yes, target=0.6, alpha_max=50)
    assert teacher_loss_at(alpha) == pytest.approx(0.6, abs=1e-6) and alpha > 0
    assert calibrate_alpha(plain, yes, target=teacher_loss_at(0.0) - 0.01, alpha_max=50) == 0.0
    assert calibrate_alpha(plain, yes, target=100.0, alpha_max=7.0) == 7.0


def test_label_push_lowers_every_true_answer_by_alpha() -> None:
    """push=label: the two-token log-odds of the true answer fall by α on every sample (½α off the true answer,
    ½α onto the other), the rest of the vocabulary stays; the calibration sees the same pair logits."""
    from e2urec.unlearning.e2urec import teacher_pairs
    from e2urec.unlearning.losses import label_push_logits

    z = torch.tensor([[0.3, 1.0, 2.0, -1.0], [0.3, 0.5, -0.5, 2.0]])  # vocab of 4; answers (No, Yes) = (2, 3)
    target = torch.tensor([3, 2])  # the first sample's answer is Yes, the second's No
    pushed = label_push_logits(z, target, (2, 3), alpha=1.0)
    assert torch.allclose(pushed[:, :2], z[:, :2])
    assert torch.allclose(pushed[:, 2:], torch.tensor([[2.5, -1.5], [-1.0, 2.5]]))
    log_odds_true = lambda t: torch.stack([t[0, 3] - t[0, 2], t[1, 2] - t[1, 3]])  # noqa: E731
    assert torch.allclose(log_odds_true(pushed), log_odds_true(z) - 1.0)
    pairs = teacher_pairs("label", z[:, 2:].numpy(), np.array([1, 0]))
    assert np.allclose(pairs(1.0), pushed[:, 2:].numpy())


def test_alpha_is_calibrated_to_the_non_member_auc() -> None:
    """level=auc: α lowers the forget set's AUC to the non-members' (a rank statistic: it ignores a later
    period's base rate, which moves the loss). A uniform push lowers every true answer, so positives fall below
    negatives one pair at a time."""
    from sklearn.metrics import roc_auc_score

    from e2urec.unlearning.e2urec import calibrate_alpha, misfit, teacher_pairs

    yes = np.array([1, 1, 0, 0])
    d = np.array([2.0, 0.5, 0.0, -1.0])  # log-odds of Yes: the Original ranks all four right (AUC 1)
    z = np.stack([np.zeros(4), d], 1)
    make = teacher_pairs("label", z, yes)
    alpha = calibrate_alpha(make, yes, target=0.25, alpha_max=50, level="auc")  # to AUC 0.75: 1 pair of 4 flips
    pushed = make(alpha)
    assert roc_auc_score(yes, pushed[:, 1] - pushed[:, 0]) == pytest.approx(0.75)
    # positives fall by α, negatives' Yes log-odds rise by α: the closest pair (0.5 vs 0.0) meets at α = 0.25
    assert alpha == pytest.approx(0.25, abs=1e-6)
    assert misfit("auc", np.array([0.9, 0.1]), np.array([1, 0])) == 0.0
    assert math.isnan(misfit("auc", np.array([0.9, 0.1]), np.array([1, 1])))
    assert misfit("loss", np.array([0.5]), np.array([1])) == pytest.approx(math.log(2))
