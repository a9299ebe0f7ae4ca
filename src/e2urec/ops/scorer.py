"""Scoring one version of a run: (user, item) → P(yes) from the user's retained history only.

A prompt is rendered exactly as training renders one (profile, the user's K most recent events oldest first,
the target's title) from the version's own events table, so a forgotten event can never reach a prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.checkpoint import load_model
from e2urec.data.prepare import PromptRenderer, cast_known
from e2urec.data.readers import ITEM_NOUN
from e2urec.data.store import load_manifest, load_tables
from e2urec.errors import UnknownIds
from e2urec.evaluation import EvalConfig
from e2urec.model.scoring import score
from e2urec.ops.run import Run, data_dir, model_dir, verify_version


def last_k_index(events: pd.DataFrame, k: int) -> tuple[pd.Index, np.ndarray]:
    """Per user, the positions of their `k` most recent events: (users, (n_users, k) array), oldest first,
    right-aligned and padded with -1 like `history_index`; one vectorised pass at load, none per request."""
    codes, users = pd.factorize(events["user_id"])
    rank = events.groupby(codes, sort=False).cumcount(ascending=False).to_numpy()  # 0 = the most recent
    keep = np.flatnonzero(rank < k)
    index = np.full((len(users), k), -1, dtype=np.int64)
    index[codes[keep], k - 1 - rank[keep]] = keep
    return pd.Index(users), index


def outside(values: Sequence, like: pd.Series) -> list:
    """The values that cannot be ids of `like`'s integer type (beyond its range): ids that name no row, so the
    service answers 404 as for any unknown id rather than 422 (the schema calls every integer an id)."""
    if not pd.api.types.is_integer_dtype(like):
        return []
    info = np.iinfo(like.dtype)
    return [v for v in values if isinstance(v, int) and not info.min <= v <= info.max]


class Scorer:
    """One version of a run, loaded whole (model and tables); `score` is safe to call from many threads."""

    def __init__(self, run: str | Path, version: Path | None = None):
        self.run = Run(run)
        folder = version or self.run.current()
        self.version: str = verify_version(folder)["version"]  # damaged weights are refused, not served
        config = load_manifest(data_dir(folder))["config"]
        tables = load_tables(data_dir(folder))
        self.events, items, users = tables["events"], tables["items"], tables["users"]
        self.backbone, _ = load_model(model_dir(folder))
        self.backbone.model.eval()
        self.eval_config = EvalConfig(**self.run.config.get("eval", {}))
        self.render = PromptRenderer(self.events, items, users, ITEM_NOUN.get(config["dataset"], "item"))
        self.history_users, index = last_k_index(self.events, int(config["history"]))
        # A user known only from the users table (no retained events) gets the empty history in the last row.
        self.history = np.vstack([index, np.full((1, index.shape[1]), -1, dtype=np.int64)])
        self._user_ids_like, self._item_ids_like = self.events["user_id"], items["item_id"]
        self.users = pd.Index(self.history_users.union(pd.Index(users["user_id"].unique())))
        self.items = pd.Index(self.render.titles.index)
        self._lock = threading.Lock()

    @property
    def honours(self) -> list[str]:
        """Request ids this version honours, read from the ledger each time (a request is marked done only
        after its version is swapped in, so a value cached at load could miss it)."""
        return self.run.ledger(keyed=False).honoured_by(self.version)

    def cast(self, users: Sequence, items: Sequence) -> tuple[pd.Series, pd.Series]:
        """Ids as the dataset types them (the schema has typed them already); unknown ones raise UnknownIds."""
        user_ids, bad_users = self._known(users, self._user_ids_like, "user_id", self.users)
        item_ids, bad_items = self._known(items, self._item_ids_like, "item_id", self.items)
        if bad_users or bad_items:
            raise UnknownIds("score", users=bad_users, items=bad_items)
        return user_ids, item_ids

    @staticmethod
    def _known(values: Sequence, like: pd.Series, what: str, known: pd.Index) -> tuple[pd.Series, list]:
        """`cast_known`, with ids beyond the column's range counted as unknown (it would call them malformed)."""
        far = set(outside(values, like))
        ids, unknown = cast_known([v for v in values if v not in far], like, what, known)
        return ids, sorted(set(unknown) | far)

    def prompts(self, users: Sequence, items: Sequence) -> list[str]:
        """The prompt for each (user, item) pair, as training would render it after the user's last event."""
        user_ids, item_ids = self.cast(users, items)
        rows = self.history_users.get_indexer(user_ids)
        targets = pd.DataFrame({"user_id": user_ids.to_numpy(), "item_id": item_ids.to_numpy()})
        return self.render(self.history[rows], targets)[0]  # row -1 (no events) is the empty history

    def score(self, users: Sequence, items: Sequence) -> np.ndarray:
        """P(yes) for each (user, item) pair, in order."""
        prompts = self.prompts(users, items)
        with self._lock:  # scoring toggles train/eval and the tokenizer is not re-entrant
            return score(self.backbone, prompts, self.eval_config.batch_size, self.eval_config.max_length)
