"""Metrics. Utility: AUC, accuracy at 0.5, log-loss; per-sample model outputs come from
`e2urec.model.scoring.per_sample`, the one batched, multi-process-safe inference pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from sklearn.metrics import log_loss, roc_auc_score
from torch import Tensor

from e2urec.data.roles import rows_for
from e2urec.errors import E2URecError, NonFinite

EPS = 1e-7


def utility_metrics(labels: np.ndarray, p_yes: np.ndarray) -> dict:
    """AUC (None when only one class is present), accuracy at 0.5, log-loss, and n."""
    labels = np.asarray(labels, dtype=int)
    p = np.asarray(p_yes, dtype=float)
    if not np.isfinite(p).all():
        raise NonFinite(f"{int((~np.isfinite(p)).sum())} of {len(p)} predictions are NaN or infinite; the model that "
                        "made them diverged or was damaged")
    p = np.clip(p, EPS, 1 - EPS)
    both = len(np.unique(labels)) == 2
    return {
        "auc": float(roc_auc_score(labels, p)) if both else None,
        "acc": float(((p >= 0.5).astype(int) == labels).mean()),
        "logloss": float(log_loss(labels, p, labels=[0, 1])),
        "n": int(len(labels)),
    }


# A model is degenerate when its P(yes) barely varies over the samples scored, or a weight grew past MAX_WEIGHT
# (trained LLM weights sit far below it; NegGrad at lr 1000 took the tiny backbone's weights to 1,001 in 5 steps
# and every P(yes) to exactly 0.5).
MIN_SPREAD, MAX_WEIGHT = 1e-6, 1e4


def max_abs_weight(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return max((float(p.detach().abs().max()) for p in model.parameters() if p.numel()), default=0.0)


def degenerate(p_yes: np.ndarray, max_weight: float) -> str | None:
    """Why a model's outputs mean nothing (constant predictions, exploded weights), or None."""
    spread = float(np.max(p_yes) - np.min(p_yes)) if len(p_yes) > 1 else 1.0
    if spread < MIN_SPREAD:
        return f"constant predictions (P(yes) spread {spread:.1e} over {len(p_yes)} samples)"
    if max_weight > MAX_WEIGHT:
        return f"exploded weights (largest |w| {max_weight:.3g} > {MAX_WEIGHT:g})"
    return None


def within_user_auc(users: np.ndarray, labels: np.ndarray, p_yes: np.ndarray) -> tuple[float | None, int]:
    """Mean AUC inside each user having both labels, and how many users that is.

    Pooled AUC mixes users' base rates (who likes more) with how well each user's own answers are ranked;
    memorisation shows in the latter, so forgetting is judged on it too.
    """
    frame = pd.DataFrame({"user": np.asarray(users), "label": np.asarray(labels, dtype=int), "p": p_yes})
    aucs = [roc_auc_score(g["label"], g["p"]) for _, g in frame.groupby("user", sort=True) if g["label"].nunique() == 2]
    return (float(np.mean(aucs)) if aucs else None), len(aucs)


def paired_auc_change(labels: np.ndarray, p_new: np.ndarray, p_base: np.ndarray, draws: int = 200,
                      seed: int = 0) -> tuple[float | None, float]:
    """AUC(p_new) − AUC(p_base) on the same samples, and its bootstrap standard error.

    Both models score the same rows, so the difference is far less noisy than either AUC: resampling rows
    (both predictions together) measures what the sample size can tell apart. (None, 0) with one class only.
    """
    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return None, 0.0

    def auc(y: np.ndarray, p: np.ndarray) -> np.ndarray:  # rows of y, p: one AUC per row (Mann–Whitney)
        ranks = rankdata(p, axis=-1)
        pos = y.sum(-1)
        neg = y.shape[-1] - pos
        with np.errstate(invalid="ignore", divide="ignore"):
            return ((ranks * y).sum(-1) - pos * (pos + 1) / 2) / (pos * neg)

    delta = float(auc(labels, np.asarray(p_new, dtype=float)) - auc(labels, np.asarray(p_base, dtype=float)))
    rows = np.random.default_rng([seed, 7]).integers(0, len(labels), size=(draws, len(labels)))
    y = labels[rows]
    diffs = auc(y, np.asarray(p_new, dtype=float)[rows]) - auc(y, np.asarray(p_base, dtype=float)[rows])
    diffs = diffs[np.isfinite(diffs)]
    return delta, float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0


def allowed_drop(tolerance: float, margin: float, cap: float) -> float:
    """How far a paired AUC may fall: `tolerance` plus `margin` (z standard errors of the paired change), at most
    `cap` — the SE of a paired change grows with the damage itself, so a collapse would widen its own allowance —
    unless the tolerance alone is above the cap (a tolerance of 1 turns the check off)."""
    return min(tolerance + margin, max(cap, tolerance))


def mia_features(labels: np.ndarray, p_yes: np.ndarray) -> np.ndarray:
    """Per-sample loss and confidence in the true answer: what a loss-based membership attack sees."""
    p_true = np.clip(np.where(np.asarray(labels) == 1, p_yes, 1 - np.asarray(p_yes)), EPS, 1 - EPS)
    return np.stack([-np.log(p_true), p_true], axis=1)


def membership_inference_auc(members: np.ndarray, non_members: np.ndarray, targets: np.ndarray, seed: int = 0) -> float:
    """AUC of an attack that tells `targets` (e.g. the forget set) from held-out non-members.

    The attack (logistic regression on loss and confidence) is trained on members (retained training
    samples) vs half of the non-members; it is then scored on targets vs the other half. Near 0.5 means
    the targets look like data the model never saw; Retrain's own value is the target to match.
    """
    from sklearn.linear_model import LogisticRegression

    order = np.random.default_rng([seed, 5]).permutation(len(non_members))
    fit_half, test_half = order[: len(order) // 2], order[len(order) // 2:]
    x = np.concatenate([members, non_members[fit_half]])
    y = np.r_[np.ones(len(members)), np.zeros(len(fit_half))]
    attack = LogisticRegression(class_weight="balanced").fit(x, y)
    scores = attack.predict_proba(np.concatenate([targets, non_members[test_half]]))[:, 1]
    truth = np.r_[np.ones(len(targets)), np.zeros(len(test_half))]
    return float(roc_auc_score(truth, scores))


def jsd(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Jensen–Shannon divergence per row (natural log), from log-probabilities; symmetric, in [0, ln 2]."""
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0))
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).clamp(min=0.0)


def jsd_yes_no(p: np.ndarray, q: np.ndarray) -> float:
    """Mean two-token JSD between two models' P(yes) on the same samples: `jsd` over (No, Yes)."""
    def log2(x: np.ndarray) -> Tensor:
        x = torch.as_tensor(np.clip(x, 1e-7, 1 - 1e-7), dtype=torch.float64)
        return torch.stack([torch.log1p(-x), torch.log(x)], 1)

    return float(jsd(log2(p), log2(q)).mean())


def symmetric_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """½KL(p‖q) + ½KL(q‖p) per row: what the paper's reference code reports as "JSD" (it is not the
    Jensen–Shannon divergence, which mixes through the midpoint), kept so our figures can sit beside the paper's."""
    return (0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)).clamp(min=0.0)


def l2(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Euclidean distance between the two probability vectors, per row."""
    return (log_p.exp() - log_q.exp()).norm(dim=-1)


def one_hot_anchor(samples: pd.DataFrame, split: str = "test", seed: int = 0) -> dict:
    """A simple non-LLM reference: logistic regression on user and item one-hots, fit on the train split.

    It tells whether an LLMRec model learned more than user and item biases; ids unseen in training fall
    back to the intercept.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder

    train, target = rows_for(samples, "train"), rows_for(samples, split)  # forget, retain: parts of train
    if target.empty:
        raise E2URecError(f"split {split!r} has no samples")
    encoder = OneHotEncoder(handle_unknown="ignore")
    columns = ["user_id", "item_id"]
    x_train = encoder.fit_transform(train[columns].astype(str))
    x_target = encoder.transform(target[columns].astype(str))
    model = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    model.fit(x_train, train["label"].to_numpy())
    return utility_metrics(target["label"].to_numpy(), model.predict_proba(x_target)[:, 1])
