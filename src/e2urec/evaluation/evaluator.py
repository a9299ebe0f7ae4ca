"""`e2urec evaluate`: score a model on a split — utility, distances to a reference (Retrain), and the
membership-inference attack — from one forward of each model per prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator

from e2urec.checkpoint import load_model
from e2urec.data.roles import rows_for, sample_rows
from e2urec.data.store import load_prepared, load_tables
from e2urec.engine import Batch, make_accelerator
from e2urec.errors import E2URecError
from e2urec.evaluation.metrics import (
    degenerate,
    jsd,
    l2,
    max_abs_weight,
    membership_inference_auc,
    mia_features,
    symmetric_kl,
    utility_metrics,
    within_user_auc,
)
from e2urec.evaluation.planted import PROMOTION_FILE, check_promotion_options, is_shilling, ks_forget_quality, promotion
from e2urec.io import atomic_dir, write_json_atomic
from e2urec.model.backbone import Backbone
from e2urec.model.scoring import PromptSet, answer_logits, p_yes_from_logits, per_sample, per_sample_p_yes, prompt_set


def membership_auc(backbone: Backbone, samples: pd.DataFrame, targets: pd.DataFrame, p_targets: np.ndarray,
                   cfg: EvalConfig, accelerator: Accelerator, non_member_split: str = "test") -> float:
    """MIA AUC of `targets` for this model: members are retained training samples, non-members test ones
    (valid ones when tuning, which must not read test)."""
    members = sample_rows(rows_for(samples, "retain"), cfg.mia_samples, cfg.seed, 21)
    non_members = sample_rows(rows_for(samples, non_member_split), 2 * cfg.mia_samples, cfg.seed, 22)
    p_members, p_non = (per_sample_p_yes(backbone, prompt_set(backbone, r, cfg.max_length), cfg.batch_size,
                                         accelerator) for r in (members, non_members))
    return membership_inference_auc(mia_features(members["label"].to_numpy(), p_members),
                                    mia_features(non_members["label"].to_numpy(), p_non),
                                    mia_features(targets["label"].to_numpy(), p_targets), cfg.seed)


DISTANCES = ("jsd", "l2", "jsd_yesno", "l2_yesno", "sym_kl")


def _distance_rows(model: Backbone, reference: Backbone, with_p_yes: bool = False):
    """batch → per-sample distances of `model` to `reference` (DISTANCES order), after both P(yes) if asked."""
    if model.answer_ids != reference.answer_ids or len(model.tokenizer) != len(reference.tokenizer):
        raise E2URecError("--reference uses a different tokenizer; compare models of the same backbone")
    answer = list(model.answer_ids)
    model.model.eval()
    reference.model.eval()

    def fn(batch: Batch) -> torch.Tensor:
        zp = answer_logits(model.model, batch, model.kind).float()
        zq = answer_logits(reference.model, batch, reference.kind).float()
        lp, lq = torch.log_softmax(zp, -1), torch.log_softmax(zq, -1)
        yp, yq = torch.log_softmax(zp[:, answer], -1), torch.log_softmax(zq[:, answer], -1)
        rows = [jsd(lp, lq), l2(lp, lq), jsd(yp, yq), l2(yp, yq), symmetric_kl(lp, lq)]
        if with_p_yes:
            rows = [p_yes_from_logits(zp, model.answer_ids), p_yes_from_logits(zq, reference.answer_ids), *rows]
        return torch.stack(rows, dim=1)

    return fn


def distances(model: Backbone, reference: Backbone, data: PromptSet, cfg: EvalConfig,
              accelerator: Accelerator) -> dict:
    """Mean JSD and L2 to the reference's answer-position distributions: full vocabulary (the paper's) and
    the two answer tokens only; also the symmetrised KL the paper's code reports under the name "JSD"."""
    values = per_sample(model, data, _distance_rows(model, reference), cfg.batch_size, accelerator,
                        desc="distance").mean(0)
    return dict(zip(DISTANCES, map(float, values), strict=True))


def split_scores(model: Backbone, reference: Backbone, data: PromptSet, cfg: EvalConfig,
                 accelerator: Accelerator) -> tuple[np.ndarray, np.ndarray, dict]:
    """P(yes) of the model and of the reference, and the mean distances, from one forward of each per batch
    (what `per_sample_p_yes` twice and `distances` gave, without scoring either model again)."""
    values = per_sample(model, data, _distance_rows(model, reference, with_p_yes=True), cfg.batch_size,
                        accelerator, desc="score + distance")
    means = np.ascontiguousarray(values[:, 2:]).mean(0)
    return values[:, 0].copy(), values[:, 1].copy(), dict(zip(DISTANCES, map(float, means), strict=True))


@dataclass
class EvalConfig:
    batch_size: int = 64
    max_length: int | None = None
    mia_samples: int = 1000
    seed: int = 0
    reference_mia: bool = True  # also attack the reference; a bench that evaluates Retrain itself skips it
    promotion_prompts: int = 1000  # shilling-planted data: genuine test prompts the target's promotion is scored on
    controls: int = 20  # ... and the control items it is ranked against on each

    def __post_init__(self) -> None:
        check_promotion_options(self.promotion_prompts, self.controls)


def evaluate(model_dir: Path, data_dir: Path, split: str, out: Path, cfg: EvalConfig | None = None,
             reference: Path | None = None) -> dict:
    """Score a split: P(yes), AUC/ACC/LogLoss; with a reference (Retrain) also JSD/L2 to it; on the forget
    split also the membership-inference AUC (and the reference's own, the value to match) and, with a reference,
    the KS forget quality; on the test split of shilling-planted data also the target's promotion
    (`e2urec.evaluation.planted`), its per-prompt values in promotion.parquet."""
    cfg = cfg or EvalConfig()
    accelerator = make_accelerator()
    samples, manifest = load_prepared(data_dir)
    backbone, _ = load_model(model_dir)
    backbone.model.to(accelerator.device)
    rows = rows_for(samples, split)
    if rows.empty:
        raise E2URecError(f"{data_dir}: split {split!r} has no samples")
    data = prompt_set(backbone, rows, cfg.max_length)
    ref = None
    if reference is None:
        p = per_sample_p_yes(backbone, data, cfg.batch_size, accelerator)
    else:
        ref, _ = load_model(reference)
        ref.model.to(accelerator.device)
        # One pass scores both models on the split: P(yes) of each and the distances come from the same logits.
        p, p_ref, near = split_scores(backbone, ref, data, cfg, accelerator)
    within, users = within_user_auc(rows["user_id"].to_numpy(), rows["label"].to_numpy(), p)
    metrics = {**utility_metrics(rows["label"].to_numpy(), p), "within_user_auc": within, "within_user_n": users,
               "degenerate": degenerate(p, max_abs_weight(backbone.model)),
               "split": split, "model": str(model_dir), "data_samples_sha256": manifest["samples_sha256"]}
    if ref is not None:
        metrics.update(near)
        metrics["reference"] = str(reference)
    if split == "forget":
        metrics["mia_auc"] = membership_auc(backbone, samples, rows, p, cfg, accelerator)
        if ref is not None and cfg.reference_mia:
            metrics["mia_auc_reference"] = membership_auc(ref, samples, rows, p_ref, cfg, accelerator)
        if ref is not None:
            metrics.update(ks_forget_quality(p, p_ref))
    promoted = None
    if split == "test" and is_shilling(manifest):
        found, promoted = promotion(backbone, samples, load_tables(data_dir), manifest, cfg.promotion_prompts,
                                    cfg.controls, cfg.seed, cfg.batch_size, cfg.max_length, accelerator)
        metrics.update(found)
    if accelerator.is_main_process:
        with atomic_dir(out, overwrite=True) as tmp:
            pd.DataFrame({"sample_id": rows["sample_id"].to_numpy(), "p_yes": p,
                          "label": rows["label"].to_numpy()}).to_parquet(tmp / "predictions.parquet", index=False)
            if promoted is not None:
                promoted.to_parquet(tmp / PROMOTION_FILE, index=False)
            write_json_atomic(tmp / "metrics.json", metrics)
    accelerator.wait_for_everyone()
    return metrics
