"""A per-sample difficulty reference for E2URec's non-member level.

E2URec aims the forget set at the misfit (answer loss) non-members have under the Original. But users differ
far more than training does: on the demo slice Retrain, which never saw the forgotten users, still fits them
with loss 0.46 while the Original fits held-out users of the same period at 0.64 — those users are simply
harder. Aiming the forget set at the non-members' raw level therefore asks for over-forgetting wherever the
forgotten users are easy. Membership-inference work calls the fix difficulty calibration: compare each set with
a reference model that saw neither, and carry over only the *excess* misfit. The reference here is deliberately
simple — a logistic regression on what the prompt shows of the user's taste (the ratings of the history items)
and the target item's like-rate among retained samples, fit on the retain set — so it never memorises the forget
set and costs milliseconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

# Pseudo-count that shrinks a rarely rated item's like-rate towards the overall rate.
ITEM_PRIOR_WEIGHT = 5.0


class DifficultyReference:
    """P(yes) from the history's ratings and the item's retained like-rate; fit on `train` rows (the retain set)
    with a samples table's columns (history_ratings, item_id, label)."""

    def __init__(self, train: pd.DataFrame, threshold: float, seed: int = 0):
        self.threshold = threshold
        likes = train.groupby("item_id")["label"].agg(["sum", "count"])
        self.prior = float(train["label"].mean())
        self.item_rate = (likes["sum"] + ITEM_PRIOR_WEIGHT * self.prior) / (likes["count"] + ITEM_PRIOR_WEIGHT)
        labels = train["label"].to_numpy()
        self.constant = len(np.unique(labels)) < 2
        if not self.constant:
            self.model = LogisticRegression(max_iter=2000, random_state=seed).fit(self.features(train), labels)

    def features(self, rows: pd.DataFrame) -> np.ndarray:
        """Mean, spread and share of likes of the history's ratings, its last rating, its last three's share of
        likes, and the target item's retained like-rate."""
        # A sample with no history (min_history 0) reads as one rating at the threshold: no taste shown.
        history = [np.asarray(r, dtype=float) if len(r) else np.array([self.threshold])
                   for r in rows["history_ratings"]]
        liked = [h > self.threshold for h in history]
        columns = [[h.mean() for h in history], [h.std() for h in history], [x.mean() for x in liked],
                   [h[-1] for h in history], [x[-3:].mean() for x in liked],
                   rows["item_id"].map(self.item_rate).fillna(self.prior).to_numpy(dtype=float)]
        return np.column_stack(columns)

    def p_yes(self, rows: pd.DataFrame) -> np.ndarray:
        if self.constant:
            return np.full(len(rows), self.prior)
        return self.model.predict_proba(self.features(rows))[:, 1]
