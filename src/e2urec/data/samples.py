"""Turn rating events into samples: each rating with the user's K most recent earlier ratings and a label."""

from __future__ import annotations

import numpy as np
import pandas as pd


def order_events(interactions: pd.DataFrame) -> pd.DataFrame:
    """Sort by (timestamp, user, item): the one global order every later step relies on."""
    events = interactions.sort_values(["timestamp", "user_id", "item_id"], kind="mergesort")
    return events.reset_index(drop=True)


def history_index(users: np.ndarray, visible: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each event (in global time order) the positions of its user's last `k` earlier visible events.

    Returns `(index, count)`: `index` is an (n, k) int array of event positions, oldest first, right-aligned
    and padded with -1; `count` is how many visible earlier events each event has in total (its history
    length before truncation to k). An invisible event (a forgotten interaction) never appears in any
    history, but still gets its own history. Vectorised: one stable sort, no Python loop over events.
    """
    n = len(users)
    by_user = np.argsort(users, kind="stable")  # events grouped by user, time order kept within a user
    grouped_users = users[by_user]
    vis = visible[by_user].astype(np.int64)
    starts = np.r_[0, np.flatnonzero(grouped_users[1:] != grouped_users[:-1]) + 1]
    block = np.repeat(starts, np.diff(np.r_[starts, n]))
    csum = np.cumsum(vis)
    before_block = np.r_[0, csum][block]
    earlier = csum - vis - before_block  # visible events of the same user strictly before this one
    # Positions (in by_user order) of the visible events, so the j-th visible event of a user is found
    # at visible_pos[before_block + j].
    visible_pos = np.flatnonzero(vis)
    offsets = np.arange(-k, 0)
    rank = earlier[:, None] + offsets[None, :]  # which visible event of the user each slot shows
    valid = rank >= 0
    lookup = np.where(valid, before_block[:, None] + rank, 0)
    grouped_index = np.where(valid, by_user[visible_pos[lookup]] if len(visible_pos) else -1, -1)
    index = np.empty_like(grouped_index)
    index[by_user] = grouped_index
    count = np.empty(n, dtype=np.int64)
    count[by_user] = earlier
    return index, count


def gather_lists(index: np.ndarray, values: np.ndarray) -> list[list]:
    """Per row, the values at the row's non-negative positions (drops the -1 padding), as Python lists."""
    flat = values[np.where(index >= 0, index, 0)]
    keep = index >= 0
    return [row[mask].tolist() for row, mask in zip(flat, keep, strict=True)]
