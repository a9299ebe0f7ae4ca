"""MovieLens readers. ML-100K comes in the official layout (u.data, u.user, u.item) or RecBole's atomic
layout (ml-100k.inter/.user/.item); both yield the same tidy tables, titles written as "Title (Year)"."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from e2urec.data.readers.common import read_delimited, read_text, require_file, to_number
from e2urec.data.tables import RawData
from e2urec.errors import E2URecError

ML100K_OFFICIAL = ("u.data", "u.user", "u.item")
ML100K_RECBOLE = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")


def ml100k_layout(folder: Path) -> str | None:
    """Which ML-100K layout `folder` holds: "official", "recbole", or None."""
    if all((folder / name).is_file() for name in ML100K_OFFICIAL):
        return "official"
    if all((folder / name).is_file() for name in ML100K_RECBOLE):
        return "recbole"
    return None


def read_ml100k(folder: Path) -> RawData:
    folder = Path(folder)
    layout = ml100k_layout(folder)
    if layout == "official":
        return _read_ml100k_official(folder)
    if layout == "recbole":
        return _read_ml100k_recbole(folder)
    raise E2URecError(
        f"{folder}: no MovieLens-100K files found; expected {', '.join(ML100K_OFFICIAL)} (official zip) "
        f"or {', '.join(ML100K_RECBOLE)} (RecBole atomic files). Run `e2urec data fetch ml-100k` to fetch them."
    )


def _ratings(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": to_number(frame, "user_id", source, integer=True),
            "item_id": to_number(frame, "item_id", source, integer=True),
            "rating": to_number(frame, "rating", source),
            "timestamp": to_number(frame, "timestamp", source, integer=True),
        }
    )


def _users(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": to_number(frame, "user_id", source, integer=True),
            "gender": frame["gender"].str.strip(),
            "age": to_number(frame, "age", source, integer=True),
            "occupation": frame["occupation"].str.strip(),
        }
    )


def _read_ml100k_official(folder: Path) -> RawData:
    data, user, item = (require_file(folder / n, n) for n in ML100K_OFFICIAL)
    ratings = read_delimited(data, read_text(data), "\t", ["user_id", "item_id", "rating", "timestamp"])
    users = read_delimited(
        user, read_text(user, "iso-8859-1"), "|", ["user_id", "age", "gender", "occupation", "zip"]
    )
    item_names = ["item_id", "title", "release", "video_release", "url"] + [f"g{i}" for i in range(19)]
    items = read_delimited(item, read_text(item, "iso-8859-1"), "|", item_names)
    items = pd.DataFrame(
        {"item_id": to_number(items, "item_id", item, integer=True), "title": items["title"].str.strip()}
    )
    return RawData("ml-100k", _ratings(ratings, data), _users(users, user), items, [data, user, item])


def _read_ml100k_recbole(folder: Path) -> RawData:
    inter, user, item = (require_file(folder / n, n) for n in ML100K_RECBOLE)
    ratings = read_delimited(
        inter, read_text(inter), "\t", ["user_id", "item_id", "rating", "timestamp"], skip_header=1
    )
    users = read_delimited(
        user, read_text(user), "\t", ["user_id", "age", "gender", "occupation", "zip"], skip_header=1
    )
    items = read_delimited(item, read_text(item), "\t", ["item_id", "title", "year", "genres"], skip_header=1)
    year = items["year"].str.strip()
    title = items["title"].str.strip()
    has_year = year.str.fullmatch(r"\d{4}")
    items = pd.DataFrame(
        {
            "item_id": to_number(items, "item_id", item, integer=True),
            "title": title.where(~has_year, title + " (" + year + ")"),
        }
    )
    return RawData("ml-100k", _ratings(ratings, inter), _users(users, user), items, [inter, user, item])
