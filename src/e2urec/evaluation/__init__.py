"""Scoring models: the metrics (`metrics`) and the `evaluate` command that applies them to a split."""

from e2urec.evaluation.evaluator import EvalConfig, distances, evaluate, membership_auc, split_scores
from e2urec.evaluation.metrics import (
    allowed_drop,
    jsd,
    jsd_yes_no,
    l2,
    membership_inference_auc,
    mia_features,
    one_hot_anchor,
    paired_auc_change,
    symmetric_kl,
    utility_metrics,
    within_user_auc,
)

__all__ = ["EvalConfig", "allowed_drop", "distances", "evaluate", "jsd", "jsd_yes_no", "l2", "membership_auc",
           "membership_inference_auc", "mia_features", "one_hot_anchor", "paired_auc_change", "split_scores",
           "symmetric_kl", "utility_metrics", "within_user_auc"]
