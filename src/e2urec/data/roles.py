"""What a split or a training role means in a prepared sample table: which rows, and which prompt texts."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from e2urec.errors import E2URecError
from e2urec.options import ROLES, SPLITS


def rows_for(samples: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows a split name means: forget/retain partition the train split."""
    if split not in SPLITS:
        raise E2URecError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    is_train = samples["split"] == "train"
    if split == "forget":
        return samples[is_train & samples["forget"]]
    if split == "retain":
        return samples[is_train & ~samples["forget"]]
    return samples[samples["split"] == split]


def prompts_seen_by_original(rows: pd.DataFrame) -> list[str]:
    """The Original trained before any deletion: prompts whose history was rebuilt use their old text."""
    return rows["prompt_original"].where(rows["prompt_original"].notna(), rows["prompt"]).tolist()


def rows_digest(rows: pd.DataFrame) -> str:
    """sha256 of the sample ids a model trained on: lets `unlearn` check an Original against the data."""
    return hashlib.sha256(",".join(map(str, sorted(rows["sample_id"].tolist()))).encode()).hexdigest()


def role_rows(samples: pd.DataFrame, role: str) -> tuple[pd.DataFrame, list[str] | None]:
    """Rows and prompt texts a role trains on: the Original saw every train row as it was before deletion;
    Retrain sees only retained rows, in their rebuilt form."""
    if role == "original":
        rows = rows_for(samples, "train")
        return rows, prompts_seen_by_original(rows)
    if role == "retrain":
        return rows_for(samples, "retain"), None
    raise E2URecError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")


def sample_rows(rows: pd.DataFrame, n: int, seed: int, stream: int) -> pd.DataFrame:
    if len(rows) <= n:
        return rows
    return rows.iloc[np.sort(np.random.default_rng([seed, stream]).choice(len(rows), size=n, replace=False))]
