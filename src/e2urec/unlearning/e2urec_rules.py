"""E2URec's level and stopping rule: how far the forgetting teacher pushes (α, calibrated so its forget-set misfit
equals held-out non-members') and when the student stops (its forget-set misfit reaches theirs, while valid AUC
holds). Plain numpy on per-sample answers, so each can be tested by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator
from scipy.special import expit

from e2urec.engine import Check
from e2urec.evaluation import allowed_drop, mia_features, paired_auc_change, utility_metrics
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, per_sample_p_yes

if TYPE_CHECKING:
    from e2urec.unlearning.e2urec import E2URecConfig


def answer_losses(backbone: Backbone, model: torch.nn.Module, data: PromptSet, accelerator: Accelerator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample two-token log-loss of the true answer and P(yes), in `data` order."""
    p_yes = per_sample_p_yes(backbone, data, 64, accelerator, model=model, progress=False)
    return mia_features(data.targets == backbone.answer_ids[1], p_yes)[:, 0], p_yes


def misfit(level: str, p_yes: np.ndarray, yes: np.ndarray) -> float:
    """How little P(yes) fits labels `yes`: the mean answer loss (level=loss) or 1 − AUC (level=auc); both grow
    as a teacher pushes the true answers down. NaN for AUC on one class."""
    if level == "auc":
        auc = utility_metrics(yes, p_yes)["auc"]
        return float("nan") if auc is None else 1.0 - auc
    return float(mia_features(yes, p_yes)[:, 0].mean())


def teacher_pairs(push: str, z_orig: np.ndarray, yes: np.ndarray, z_aug: np.ndarray | None = None
                  ) -> Callable[[float], np.ndarray]:
    """α → the forgetting teacher's [N, 2] answer logits (No, Yes): they depend on α elementwise, so the
    calibration needs no vocabulary. push=augmented: z_orig − α·ReLU(z_aug − z_orig); push=label: the true
    answer's log-odds lowered by α."""
    if push == "label":
        toward_wrong = 0.5 - np.eye(2)[yes]
        return lambda alpha: z_orig + alpha * toward_wrong
    raised = np.maximum(z_aug - z_orig, 0.0)
    return lambda alpha: z_orig - alpha * raised


def calibrate_alpha(teacher: Callable[[float], np.ndarray], yes: np.ndarray, target: float, alpha_max: float,
                    level: str = "loss") -> float:
    """α at which the forgetting teacher's misfit on the forget set (see `misfit`) equals `target`.

    0 when the Original already misfits that much (nothing to forget), `alpha_max` when even that is not
    enough. Bisection: the misfit grows with α wherever the push lowers the true answer, which is what training
    on the forget set raised (push=augmented) or every sample (push=label).
    """

    def worse(alpha: float) -> float:
        z = teacher(alpha)
        return misfit(level, expit(z[:, 1].astype(np.float64) - z[:, 0]), yes)  # overflow-safe logistic

    if not worse(0.0) < target:
        return 0.0
    if worse(alpha_max) <= target:
        return alpha_max
    low, high = 0.0, alpha_max
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if worse(mid) < target else (low, mid)
    return (low + high) / 2


class NonMemberStop:
    """The stopping rule: stop once the forget set's misfit (mean answer loss, or 1 − AUC with level=auc)
    reaches that of held-out non-members (see `E2URec.non_member_rows`), after `min_steps`. A state is kept only
    while utility holds: the AUC on valid samples of users who are not forgotten, paired with the Original's on
    the same samples (the first check), may not fall by more than `utility_tolerance` beyond what those samples
    can resolve (`utility_z` bootstrap standard errors of the paired difference), and never by more than
    `utility_cap`. Needs no Retrain, no test data."""

    def __init__(self, backbone: Backbone, forget: PromptSet, non_members: PromptSet, utility: PromptSet,
                 labels: np.ndarray, cfg: E2URecConfig, level: str = "loss"):
        self.backbone, self.forget, self.non_members, self.cfg = backbone, forget, non_members, cfg
        self.level = level
        self.utility, self.labels = utility, labels
        self.every = cfg.check_every
        self.base_p: np.ndarray | None = None

    def __call__(self, model: torch.nn.Module, accelerator: Accelerator, steps: int) -> Check:
        p = answer_losses(self.backbone, model, self.utility, accelerator)[1]
        if self.base_p is None:
            self.base_p = p
        change, se = paired_auc_change(self.labels, p, self.base_p, seed=self.cfg.seed)
        allowed = allowed_drop(self.cfg.utility_tolerance, self.cfg.utility_z * se, self.cfg.utility_cap)
        useful = change is None or change >= -allowed
        record: dict = {"valid_auc": utility_metrics(self.labels, p)["auc"], "valid_auc_change": change,
                        "valid_auc_change_se": se}
        if steps < self.cfg.min_steps or not useful:  # the loss rule cannot stop it yet: skip its scoring
            return Check(keep=useful, stop=not useful, record=record)
        (f_loss, f_p), (n_loss, n_p) = (answer_losses(self.backbone, model, data, accelerator)
                                        for data in (self.forget, self.non_members))
        record.update(forget_loss=float(f_loss.mean()), nonmember_loss=float(n_loss.mean()))
        f_misfit, n_misfit = record["forget_loss"], record["nonmember_loss"]
        if self.level == "auc":
            f_misfit, n_misfit = (misfit("auc", p, data.targets == self.backbone.answer_ids[1])
                                  for p, data in ((f_p, self.forget), (n_p, self.non_members)))
            record.update(forget_auc=1 - f_misfit, nonmember_auc=1 - n_misfit)
        return Check(keep=True, stop=f_misfit >= n_misfit, record=record)
