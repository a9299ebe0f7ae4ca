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

from e2urec.data.plant import plain_value
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


def _mean_z(z: np.ndarray) -> float | None:
    finite = np.isfinite(z)
    return float(z[finite].mean()) if finite.any() else None


def promotion_scores(p_yes: np.ndarray, top_k: int = TOP_K, targets: int = 1) -> tuple[dict, np.ndarray, np.ndarray]:
    """Promotion metrics from P(yes) of shape (prompts, targets + controls): the first `targets` columns the
    targets, the others controls.

    A target's rank is 1 + the controls above it + half those tied with it (1 = best; the other targets do not
    count); per target, hr10 is the share of prompts ranking it within `top_k`, rank its mean rank, z the mean
    over prompts of (P_target − mean P_controls) / std P_controls (sample std; prompts whose controls all tie, std
    below MIN_SPREAD, are left out; None if all are). `promotion_hr10`, `promotion_rank` and `promotion_z` are the
    means over targets (over those with a z for `promotion_z`); with several targets `promotion_per_target` lists
    each one's. Returns the metrics and the ranks and z-scores per (prompt, target), prompt-major."""
    p = np.asarray(p_yes, dtype=float)
    if isinstance(targets, bool) or not isinstance(targets, int | np.integer) or targets < 1:
        raise E2URecError(f"promotion: targets must be a whole number ≥ 1, got {targets!r}")
    if p.ndim != 2 or len(p) == 0 or p.shape[1] < targets + 2:
        raise E2URecError(f"promotion: P(yes) must have shape (prompts ≥ 1, {targets} target(s) + controls ≥ 2), "
                          f"got {p.shape}")
    if not np.isfinite(p).all():
        raise E2URecError("promotion: P(yes) holds NaN or infinite values")
    target, controls = p[:, :targets], p[:, targets:]
    rank = (1.0 + (controls[:, None, :] > target[:, :, None]).sum(2)
            + 0.5 * (controls[:, None, :] == target[:, :, None]).sum(2))  # (prompts, targets)
    spread = controls.std(1, ddof=1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > MIN_SPREAD, (target - controls.mean(1)[:, None]) / spread, np.nan)
    each = [{"hr10": float((rank[:, t] <= top_k).mean()), "rank": float(rank[:, t].mean()), "z": _mean_z(z[:, t])}
            for t in range(targets)]
    zs = [e["z"] for e in each if e["z"] is not None]
    metrics = {"promotion_hr10": float(np.mean([e["hr10"] for e in each])),
               "promotion_rank": float(np.mean([e["rank"] for e in each])),
               "promotion_z": float(np.mean(zs)) if zs else None}
    if targets > 1:
        metrics["promotion_per_target"] = each
    return metrics, rank.ravel(), z.ravel()


def is_shilling(manifest: dict) -> bool:
    """Whether a prepared data folder's manifest says it holds shilling fakes (`prepare --plant shilling`)."""
    return (manifest.get("counts") or {}).get("planted") == "shilling"


@dataclass
class PromotionSet:
    """The prompts promotion scores: for each of `rows` (genuine test samples), one prompt per target as
    candidate, then one per control item, in that order (prompt-major)."""

    rows: pd.DataFrame
    targets: np.ndarray
    controls: np.ndarray
    prompts: list[str]

    @property
    def target(self) -> object:
        """The first target (the only one unless the data was planted with targets=K > 1)."""
        return self.targets[0]

    @property
    def candidates(self) -> int:
        return len(self.targets) + len(self.controls)


def check_promotion_options(prompts: int, controls: int) -> None:
    """Refuse promotion options that cannot give a rank and a z-score, before any model is loaded."""
    for name, value, low, high in (("promotion_prompts", prompts, 1, MAX_PROMOTION_PROMPTS),
                                   ("controls", controls, 2, MAX_CONTROLS)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
            raise E2URecError(f"{name} must be a whole number from {low} to {high}, got {value!r}"
                              + ("; a z-score needs at least 2 control items" if name == "controls" else ""))


def planted_targets(manifest: dict, items: pd.Series) -> np.ndarray:
    """The planted target items, cast like `items`: `planted_target_items` where the manifest has them
    (`--plant shilling:targets=K`), else the single `planted_target_item`."""
    from e2urec.data.prepare import cast_like  # the data layer's exact id cast, as `--plant target=` uses

    counts = manifest.get("counts") or {}
    many = counts.get("planted_target_items")
    if many is None and counts.get("planted_target_item") is None:
        raise E2URecError("promotion: the manifest's counts name no planted_target_item; prepare the data again")
    if many is not None and (not isinstance(many, list) or not many):
        raise E2URecError("promotion: the manifest's planted_target_items is not a non-empty list; prepare the data "
                          "again")
    key = "planted_target_item" if many is None else "planted_target_items"
    targets = cast_like(pd.Series(many or [counts["planted_target_item"]], dtype=object), items,
                        f"manifest {key}").to_numpy()
    if len(pd.unique(targets)) != len(targets):
        raise E2URecError("promotion: the manifest's planted_target_items repeats an item; prepare the data again")
    return targets


def promotion_prompts(samples: pd.DataFrame, tables: dict[str, pd.DataFrame], manifest: dict, prompts: int = 1000,
                      controls: int = 20, seed: int = 0) -> PromotionSet:
    """Up to `prompts` seeded genuine test samples (users who are not fakes), each rebuilt with `build_prompts`
    from its own profile and history for each target, then for `controls` seeded other items (never a target).

    The samples' stored prompts are rebuilt first with their own item and must come out identical: a swap then
    changes the candidate title and nothing else."""
    check_promotion_options(prompts, controls)
    if not is_shilling(manifest):
        raise E2URecError("promotion: the data is not planted with shilling fakes (`prepare --plant shilling`)")
    items = tables["items"].drop_duplicates("item_id")
    titles = items.set_index("item_id")["title"]
    targets = planted_targets(manifest, items["item_id"])
    for target in targets:
        if target not in titles.index or pd.isna(titles.loc[target]):
            raise E2URecError(f"promotion: the planted target item {plain_value(target)!r} has no title in the items "
                              "table; prepare the data again")
    fakes = rows_for(samples, "forget")["user_id"].unique()  # shilling makes the fakes, and only they, the forget set
    test = rows_for(samples, "test")
    genuine = test[~test["user_id"].isin(fakes)]
    if genuine.empty:
        raise E2URecError("promotion: the test split has no samples of genuine (non-fake) users")
    chosen = sample_rows(genuine, prompts, seed, PROMPT_STREAM)
    pool = np.sort(pd.unique(samples["item_id"].to_numpy()))
    pool = pool[~pd.Series(pool).isin(targets).to_numpy() & titles.reindex(pool).notna().to_numpy()]
    if len(pool) < controls:
        raise E2URecError(f"promotion: controls={controls} but the data has only {len(pool)} titled items that are "
                          "not targets; use fewer controls")
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
    candidates = titles.reindex([*targets, *picked]).to_numpy()
    m = len(candidates)
    built = build_prompts(np.repeat(profiles, m), [h for h in history for _ in range(m)],
                          [r for r in ratings for _ in range(m)], np.tile(candidates, len(chosen)), noun)
    return PromotionSet(chosen, targets, picked, built)


def promotion(backbone: Backbone, samples: pd.DataFrame, tables: dict[str, pd.DataFrame], manifest: dict,
              prompts: int = 1000, controls: int = 20, seed: int = 0, batch_size: int = 64,
              max_length: int | None = None, accelerator: Accelerator | None = None) -> tuple[dict, pd.DataFrame]:
    """Score every candidate prompt of `promotion_prompts` in one batched pass; returns the metrics (with the
    prompts used, the targets and the controls) and one row per (prompt, target), prompt-major: sample, target,
    P of the target, mean P of the controls, the target's rank among the controls and its z-score."""
    built = promotion_prompts(samples, tables, manifest, prompts, controls, seed)
    data = PromptSet(encode_prompts(backbone.tokenizer, built.prompts, max_length))
    p = per_sample_p_yes(backbone, data, batch_size, accelerator).reshape(len(built.rows), built.candidates)
    k = len(built.targets)
    metrics, rank, z = promotion_scores(p, targets=k)
    items = [plain_value(t) for t in built.targets]
    metrics.update(promotion_n=len(built.rows), promotion_target_item=items[0],
                   promotion_control_items=[plain_value(c) for c in built.controls])
    if k > 1:  # with one target the metrics stay exactly those of before targets= existed
        metrics["promotion_target_items"] = items
        metrics["promotion_per_target"] = [{"item": item, **each}
                                           for item, each in zip(items, metrics["promotion_per_target"], strict=True)]
    frame = pd.DataFrame({"sample_id": np.repeat(built.rows["sample_id"].to_numpy(), k),
                          "user_id": np.repeat(built.rows["user_id"].to_numpy(), k),
                          "target_item": np.tile(built.targets, len(built.rows)),
                          "p_target": p[:, :k].ravel(), "p_controls_mean": np.repeat(p[:, k:].mean(1), k),
                          "rank": rank, "z": z})
    return metrics, frame


def planted_row(test: dict, forget: dict) -> dict:
    """The planted-signal metrics one bench row carries: KS forget quality from its forget evaluation, promotion
    from its test evaluation; None where an evaluation did not report them (no shilling, no reference)."""
    return {"ks_forget_quality": forget.get("ks_forget_quality"),
            **{key: test.get(key) for key in PROMOTION_KEYS}}
