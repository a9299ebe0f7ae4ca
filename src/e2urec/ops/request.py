"""A deletion request as given: its ids normalised (what the ledger hashes), matched against a run's events, cut
down to what earlier requests have not done, and kept out of every message stored or shown about it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from e2urec.data.prepare import cast_known, match_interactions, read_interactions
from e2urec.errors import E2URecError, UnknownIds


@dataclass
class Request:
    """A request as given: its kind and normalised keys (what the ledger hashes), and the ids to check."""

    kind: str  # "users" or "interactions"
    keys: list[str]
    users: list[str] | None = None
    interactions: pd.DataFrame | None = None


def read_request(users: list[str] | None = None, interactions: Path | pd.DataFrame | None = None) -> Request:
    """Normalise a request (ids stripped, sorted, unique) so repeating it gives the same ledger fingerprint."""
    if (users is None) == (interactions is None):
        raise E2URecError("give exactly one of --users or --interactions")
    if users is not None:
        keys = sorted({str(u).strip() for u in users if str(u).strip()})
        if not keys:
            raise E2URecError("--users is empty: name at least one user id")
        return Request("users", keys, users=keys)
    table = interactions if isinstance(interactions, pd.DataFrame) else read_interactions(Path(interactions))
    table = table.astype(str).apply(lambda c: c.str.strip()).drop_duplicates()
    return Request("interactions", sorted("|".join(row) for row in table.itertuples(index=False)),
                   interactions=table)


def match(events: pd.DataFrame, request: Request) -> np.ndarray:
    """Mask of the events a request names; an id not in the run's data is an error and nothing changes."""
    if request.kind == "users":
        wanted, unknown = cast_known(request.users, events["user_id"], "--users")
        if unknown:
            raise UnknownIds("--users", users=unknown)
        return events["user_id"].isin(wanted).to_numpy()
    return match_interactions(request.interactions, events, "--interactions")


def narrowed(request: Request, keys: list[str]) -> Request:
    """The part of a request still to do: only `keys` (ids that earlier requests have not forgotten)."""
    if request.kind == "users":
        return Request("users", keys, users=keys)
    table = request.interactions
    rows = table.apply(lambda row: "|".join(row), axis=1)
    return Request("interactions", keys, interactions=table[rows.isin(keys).to_numpy()])


def redact(text: str, request: Request) -> str:
    """`text` with every id the request names replaced by `<id>`: failure messages from deep inside a library
    may quote a row or a key, and they are stored in the ledger, returned by the service and logged."""
    ids = sorted({part for key in request.keys for part in key.split("|") if part}, key=len, reverse=True)
    if not ids:
        return text
    pattern = re.compile(r"(?<![\w.])(?:" + "|".join(map(re.escape, ids)) + r")(?![\w.])")
    return pattern.sub("<id>", text)


def failure(exc: BaseException, request: Request) -> str:
    """What the ledger records about a failed request: the error's type and its message, ids redacted."""
    return redact(f"{type(exc).__name__}: {exc}", request)
