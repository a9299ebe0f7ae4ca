"""Scoring models: the metrics (`metrics`, the planted signal's in `planted`) and the `evaluate` command that
applies them to a split."""

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
from e2urec.evaluation.planted import (
    is_shilling,
    ks_forget_quality,
    planted_row,
    promotion,
    promotion_prompts,
    promotion_scores,
)

__all__ = ["EvalConfig", "allowed_drop", "distances", "evaluate", "is_shilling", "jsd", "jsd_yes_no",
           "ks_forget_quality", "l2", "membership_auc", "membership_inference_auc", "mia_features", "one_hot_anchor",
           "paired_auc_change", "planted_row", "promotion", "promotion_prompts", "promotion_scores", "split_scores",
           "symmetric_kl", "utility_metrics", "within_user_auc"]
