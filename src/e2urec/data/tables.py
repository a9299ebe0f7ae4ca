"""The one tidy shape every reader returns, whatever the source format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from e2urec.errors import E2URecError

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass
class RawData:
    """Interactions (user_id, item_id, rating, timestamp in unix seconds), users and items.

    `users` holds user_id plus whichever of gender, age, occupation the source knows (may be empty);
    `items` holds item_id and title plus optional attributes. Ids keep their source type (int or str).
    `files` lists the input files read, so the manifest can checksum them.
    """

    name: str
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in INTERACTION_COLUMNS if c not in self.interactions.columns]
        if missing:
            raise E2URecError(f"{self.name}: interactions lack columns {missing}")
        if "item_id" not in self.items.columns or "title" not in self.items.columns:
            raise E2URecError(f"{self.name}: items need item_id and title columns")
        if "user_id" not in self.users.columns:
            raise E2URecError(f"{self.name}: users need a user_id column")
        if self.interactions.empty:
            raise E2URecError(f"{self.name}: no interactions were read from {[str(f) for f in self.files]}")
        self.interactions = self.interactions.loc[:, list(INTERACTION_COLUMNS)].reset_index(drop=True)
        self.interactions["rating"] = self.interactions["rating"].astype("float64")
        self.interactions["timestamp"] = self.interactions["timestamp"].astype("int64")
        unknown = ~self.interactions["item_id"].isin(self.items["item_id"])
        if unknown.any():
            example = self.interactions.loc[unknown, "item_id"].iloc[0]
            raise E2URecError(
                f"{self.name}: {int(unknown.sum())} interactions name items with no title "
                f"(e.g. item {example!r}); check that the item file matches the interactions file"
            )
