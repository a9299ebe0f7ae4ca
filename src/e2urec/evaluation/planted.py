"""Metrics for planted memorisation (issue #26; the data side is `e2urec.data.plant`).

- KS forget quality (TOFU / OpenUnlearning style): the p-value of a two-sample Kolmogorov–Smirnov test between a
  model's and the reference's (Retrain's) per-sample P(yes) on the forget set. High: the two distributions cannot
  be told apart; it is reported on every forget evaluation with a reference, planted or not.
- Shilling promotion: on genuine test users' prompts the candidate item is swapped for the attack's target and for
  a fixed, seeded set of control items; an Original that learned the fakes ranks the target high, Retrain does
  not. The fakes shift every item's base rate, so raw P(yes) differences do not separate the two (DESIGN §8):
  the target is judged by its rank among the candidates and by its per-prompt z-score against the controls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from accelerate import Accelerator
from scipy.stats import ks_2samp

from e2urec.data.prompts import build_prompts, profile_text
from e2urec.data.readers import ITEM_NOUN
from e2urec.data.roles import rows_for, sample_rows
from e2urec.errors import E2URecError
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, encode_prompts, per_sample_p_yes

# Seeded streams of the eval seed, apart from the membership attack's (21, 22) and the metrics' own (5, 7).
PROMPT_STREAM, CONTROL_STREAM = 31, 32
TOP_K = 10  # promotion_hr10: the target among the top 10 candidates
MIN_SPREAD = 1e-9  # controls' P(yes) spread below this (rounding of equal values) gives no z-score
MAX_CONTROLS = 1000  # caps, far above any intended value, so a typo cannot ask for millions of prompts
MAX_PROMOTION_PROMPTS = 1_000_000
PROMOTION_KEYS = ("promotion_hr10", "promotion_rank", "promotion_z")
ROW_KEYS = ("ks_forget_quality", *PROMOTION_KEYS)  # what a bench row carries from the two evaluations
PROMOTION_FILE = "promotion.parquet"


def _plain(value):
    """A numpy scalar as the Python value JSON writes as itself (not as its str())."""
    return value.item() if isinstance(value, np.generic) else value


def ks_forget_quality(p_yes: np.ndarray, p_reference: np.ndarray) -> dict:
    """`ks_forget_quality`: the KS two-sample p-value between the model's and the reference's P(yes) (1.0 for
    identical distributions, near 0 for ones a test tells apart), and `ks_stat`, the KS statistic itself."""
    p, q = (np.asarray(x, dtype=float) for x in (p_yes, p_reference))
    for name, x in (("model", p), ("reference", q)):
        if x.ndim != 1 or len(x) == 0:
            raise E2URecError(f"KS forget quality: the {name}'s P(yes) must be a non-empty 1-D array, got shape "
                              f"{x.shape}")
        if not np.isfinite(x).all():
            raise E2URecError(f"KS forget quality: the {name}'s P(yes) holds NaN or infinite values")
    result = ks_2samp(p, q)
    return {"ks_forget_quality": float(result.pvalue), "ks_stat": float(result.statistic)}


def promotion_scores(p_yes: np.ndarray, top_k: int = TOP_K) -> tuple[dict, np.ndarray, np.ndarray]:
    """Promotion metrics from P(yes) of shape (prompts, 1 + controls), column 0 the target, the others controls.

    A target's rank is 1 + the controls above it + half those tied with it (1 = best); `promotion_hr10` is the
    share of prompts ranking it within `top_k`, `promotion_rank` its mean rank, `promotion_z` the mean over
    prompts of (P_target − mean P_controls) / std P_controls (sample std; prompts whose controls all tie, std
    below MIN_SPREAD, are left out; None if all are). Returns the metrics and the per-prompt ranks and z-scores."""
    p = np.asarray(p_yes, dtype=float)
    if p.ndim != 2 or len(p) == 0 or p.shape[1] < 3:
        raise E2URecError(f"promotion: P(yes) must have shape (prompts ≥ 1, 1 + controls ≥ 3), got {p.shape}")
    if not np.isfinite(p).all():
        raise E2URecError("promotion: P(yes) holds NaN or infinite values")
    target, controls = p[:, :1], p[:, 1:]
    rank = 1.0 + (controls > target).sum(1) + 0.5 * (controls == target).sum(1)
    spread = controls.std(1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > MIN_SPREAD, (target[:, 0] - controls.mean(1)) / spread, np.nan)
    finite = np.isfinite(z)
    metrics = {"promotion_hr10": float((rank <= top_k).mean()), "promotion_rank": float(rank.mean()),
               "promotion_z": float(z[finite].mean()) if finite.any() else None}
    return metrics, rank, z


def is_shilling(manifest: dict) -> bool:
    """Whether a prepared data folder's manifest says it holds shilling fakes (`prepare --plant shilling`)."""
    return (manifest.get("counts") or {}).get("planted") == "shilling"


@dataclass
class PromotionSet:
    """The prompts promotion scores: for each of `rows` (genuine test samples), the prompt with the target as
    candidate, then one per control item, in that order (prompt-major)."""

    rows: pd.DataFrame
    target: object
    controls: np.ndarray
    prompts: list[str]

    @property
    def candidates(self) -> int:
        return 1 + len(self.controls)


def check_promotion_options(prompts: int, controls: int) -> None:
    """Refuse promotion options that cannot give a rank and a z-score, before any model is loaded."""
    for name, value, low, high in (("promotion_prompts", prompts, 1, MAX_PROMOTION_PROMPTS),
                                   ("controls", controls, 2, MAX_CONTROLS)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
            raise E2URecError(f"{name} must be a whole number from {low} to {high}, got {value!r}"
                              + ("; a z-score needs at least 2 control items" if name == "controls" else ""))


def promotion_prompts(samples: pd.DataFrame, tables: dict[str, pd.DataFrame], manifest: dict, prompts: int = 1000,
                      controls: int = 20, seed: int = 0) -> PromotionSet:
    """Up to `prompts` seeded genuine test samples (users who are not fakes), each rebuilt with `build_prompts`
    from its own profile and history for the target and for `controls` seeded other items of the data.

    The samples' stored prompts are rebuilt first with their own item and must come out identical: a swap then
    changes the candidate title and nothing else."""
    check_promotion_options(prompts, controls)
    counts = manifest.get("counts") or {}
    if not is_shilling(manifest):
        raise E2URecError("promotion: the data is not planted with shilling fakes (`prepare --plant shilling`)")
    if counts.get("planted_target_item") is None:
        raise E2URecError("promotion: the manifest's counts name no planted_target_item; prepare the data again")
    from e2urec.data.prepare import cast_like  # the data layer's exact id cast, as `--plant target=` uses

    items = tables["items"].drop_duplicates("item_id")
    titles = items.set_index("item_id")["title"]
    target = cast_like(pd.Series([counts["planted_target_item"]]), items["item_id"],
                       "manifest planted_target_item").iloc[0]
    if target not in titles.index or pd.isna(titles.loc[target]):
        raise E2URecError(f"promotion: the planted target item {_plain(target)!r} has no title in the items table; "
                          "prepare the data again")
    fakes = rows_for(samples, "forget")["user_id"].unique()  # shilling makes the fakes, and only they, the forget set
    test = rows_for(samples, "test")
    genuine = test[~test["user_id"].isin(fakes)]
    if genuine.empty:
        raise E2URecError("promotion: the test split has no samples of genuine (non-fake) users")
    chosen = sample_rows(genuine, prompts, seed, PROMPT_STREAM)
    pool = np.sort(pd.unique(samples["item_id"].to_numpy()))
    pool = pool[(pool != target) & titles.reindex(pool).notna().to_numpy()]
    if len(pool) < controls:
        raise E2URecError(f"promotion: controls={controls} but the data has only {len(pool)} other titled items; "
                          "use fewer controls")
    picked = pool[np.sort(np.random.default_rng([seed, CONTROL_STREAM]).choice(len(pool), controls, replace=False))]

    users = tables["users"].drop_duplicates("user_id").reset_index(drop=True)
    profiles = chosen["user_id"].map(profile_text(users)).fillna("").to_numpy()
    history = [titles.reindex(ids).tolist() for ids in chosen["history_item_ids"]]
    ratings = [list(r) for r in chosen["history_ratings"]]
    noun = ITEM_NOUN.get((manifest.get("config") or {}).get("dataset"), "item")
    own = build_prompts(profiles, history, ratings, chosen["item_id"].map(titles).to_numpy(), noun)
    if own != chosen["prompt"].tolist():
        bad = sum(a != b for a, b in zip(own, chosen["prompt"], strict=True))
        raise E2URecError(f"promotion: {bad} of {len(own)} test prompts differ from their rebuild from history and "
                          "items (prepared by another prompt template?); prepare the data again")
    candidates = titles.reindex([target, *picked]).to_numpy()
    m = len(candidates)
    built = build_prompts(np.repeat(profiles, m), [h for h in history for _ in range(m)],
                          [r for r in ratings for _ in range(m)], np.tile(candidates, len(chosen)), noun)
    return PromotionSet(chosen, target, picked, built)


def promotion(backbone: Backbone, samples: pd.DataFrame, tables: dict[str, pd.DataFrame], manifest: dict,
              prompts: int = 1000, controls: int = 20, seed: int = 0, batch_size: int = 64,
              max_length: int | None = None, accelerator: Accelerator | None = None) -> tuple[dict, pd.DataFrame]:
    """Score every candidate prompt of `promotion_prompts` in one batched pass; returns the metrics (with the
    prompts used, the target and the controls) and one row per prompt (sample, P of the target, rank, z)."""
    built = promotion_prompts(samples, tables, manifest, prompts, controls, seed)
    data = PromptSet(encode_prompts(backbone.tokenizer, built.prompts, max_length))
    p = per_sample_p_yes(backbone, data, batch_size, accelerator).reshape(len(built.rows), built.candidates)
    metrics, rank, z = promotion_scores(p)
    metrics.update(promotion_n=len(built.rows), promotion_target_item=_plain(built.target),
                   promotion_control_items=[_plain(c) for c in built.controls])
    frame = pd.DataFrame({"sample_id": built.rows["sample_id"].to_numpy(), "user_id": built.rows["user_id"].to_numpy(),
                          "p_target": p[:, 0], "p_controls_mean": p[:, 1:].mean(1), "rank": rank, "z": z})
    return metrics, frame


def planted_row(test: dict, forget: dict) -> dict:
    """The planted-signal metrics one bench row carries: KS forget quality from its forget evaluation, promotion
    from its test evaluation; None where an evaluation did not report them (no shilling, no reference)."""
    return {"ks_forget_quality": forget.get("ks_forget_quality"),
            **{key: test.get(key) for key in PROMOTION_KEYS}}
