"""Metrics. Utility: AUC, accuracy at 0.5, log-loss; per-sample model outputs come from
`e2urec.model.scoring.per_sample`, the one batched, multi-process-safe inference pass."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

EPS = 1e-7


def utility_metrics(labels: np.ndarray, p_yes: np.ndarray) -> dict:
    """AUC (None when only one class is present), accuracy at 0.5, log-loss, and n."""
    labels = np.asarray(labels, dtype=int)
    p = np.clip(np.asarray(p_yes, dtype=float), EPS, 1 - EPS)
    both = len(np.unique(labels)) == 2
    return {
        "auc": float(roc_auc_score(labels, p)) if both else None,
        "acc": float(((p >= 0.5).astype(int) == labels).mean()),
        "logloss": float(log_loss(labels, p, labels=[0, 1])),
        "n": int(len(labels)),
    }
