"""The paper's "simple" prompt template: profile, the K most recent rated items with stars, the target.

The prompt ends with "Answer:"; the model is asked for ANSWER_SEPARATOR + "Yes" or + "No". Answer token
ids are always derived from the tokenizer on this exact text, never hard-coded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ANSWER_SEPARATOR = " "
ANSWERS = ("No", "Yes")  # index = label

# MovieLens-1M's age groups; a raw age (ML-100K) falls into the group whose lower bound it passes.
AGE_GROUPS = ((1, "under 18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"), (50, "50-55"),
              (56, "56 or older"))
GENDERS = {"M": "male", "F": "female"}


def age_group(age: float) -> str | None:
    if age is None or pd.isna(age) or age <= 0:
        return None
    label = AGE_GROUPS[0][1]
    for bound, name in AGE_GROUPS:
        if age >= bound:
            label = name
    return label


def profile_text(users: pd.DataFrame) -> pd.Series:
    """One profile sentence per user from whatever attributes are known; empty when none are."""
    parts: list[pd.Series] = []
    if "gender" in users:
        parts.append(users["gender"].map(GENDERS))
    if "age" in users:
        parts.append(users["age"].map(age_group).map(lambda g: f"aged {g}" if isinstance(g, str) else None))
    if "occupation" in users:
        occ = users["occupation"].astype("string").str.strip()
        parts.append(occ.where(occ.notna() & (occ != "") & (occ != "none") & (occ != "other"))
                     .map(lambda o: f"working as {o}" if isinstance(o, str) else None))
    if not parts:
        return pd.Series("", index=users.index, dtype=object)
    joined = pd.concat(parts, axis=1).apply(lambda row: ", ".join(v for v in row if isinstance(v, str)), axis=1)
    text = joined.map(lambda s: f"The user is {s}.\n" if s else "")
    return pd.Series(text.to_numpy(), index=users["user_id"].to_numpy())


def stars(rating: float) -> str:
    value = int(rating) if float(rating).is_integer() else rating
    return f"{value} star" if value == 1 else f"{value} stars"


def build_prompts(
    profiles: np.ndarray,
    history_titles: list[list[str]],
    history_ratings: list[list[float]],
    target_titles: np.ndarray,
    item_noun: str = "movie",
) -> list[str]:
    """Render one prompt per sample; histories are oldest first, as the user lived them."""
    prompts = []
    for profile, titles, ratings, target in zip(
        profiles, history_titles, history_ratings, target_titles, strict=True
    ):
        lines = "\n".join(f'"{t}" ({stars(r)})' for t, r in zip(titles, ratings, strict=True))
        prompts.append(
            f"{profile}The user rated these {item_noun}s, oldest first (1 to 5 stars):\n{lines}\n"
            f'Will the user like the {item_noun} "{target}"? Answer Yes or No.\nAnswer:'
        )
    return prompts
