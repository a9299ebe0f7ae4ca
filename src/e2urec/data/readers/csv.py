"""Generic reader for any interactions CSV, so a new dataset needs no code: the columns are named by flags and
titles come from an optional second file (without one, the item id stands in as the title)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from e2urec.data.readers.common import require_file, to_number
from e2urec.data.tables import RawData
from e2urec.errors import E2URecError

INTEGER = r"-?\d{1,18}"  # fits int64 without overflow


def read_csv_interactions(
    path: Path,
    *,
    items: Path | str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str = "rating",
    time_col: str = "timestamp",
    title_col: str = "title",
    sep: str = ",",
) -> RawData:
    """Interactions from `path` (numeric times are unix seconds, others are parsed as dates) and titles from
    `items`. Ids become int64 when every id is an integer, else stay strings."""
    path = require_file(Path(path), "interactions CSV")
    frame = _read_table(path, sep, [user_col, item_col, rating_col, time_col])
    user_ids = _ids(frame, user_col, path)
    item_ids = _ids(frame, item_col, path)
    interactions = pd.DataFrame(
        {
            "user_id": user_ids,
            "item_id": item_ids,
            "rating": to_number(frame, rating_col, path),
            "timestamp": _unix_seconds(frame, time_col, path),
        }
    )
    files = [path]
    if items is None:
        titles = pd.DataFrame({"item_id": item_ids.drop_duplicates(), "title": item_ids.drop_duplicates()})
    else:
        items_path = require_file(Path(items), "items CSV")
        table = _read_table(items_path, sep, [item_col, title_col])
        titles = pd.DataFrame({"item_id": _ids(table, item_col, items_path), "title": table[title_col].str.strip()})
        files.append(items_path)
    if pd.concat([item_ids, titles["item_id"]]).str.fullmatch(INTEGER).all():
        interactions["item_id"] = interactions["item_id"].astype("int64")
        titles["item_id"] = titles["item_id"].astype("int64")
    if user_ids.str.fullmatch(INTEGER).all():
        interactions["user_id"] = interactions["user_id"].astype("int64")
    users = pd.DataFrame({"user_id": interactions["user_id"].drop_duplicates()})
    return RawData("csv", interactions, users.reset_index(drop=True), titles.reset_index(drop=True), files)


def _read_table(path: Path, sep: str, needed: list[str]) -> pd.DataFrame:
    """All columns as text; row i (0-based, blank lines kept then dropped) sits on file line i + 2."""
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f"{path}:{line.group(1)}" if line else str(path)
        raise E2URecError(f"{where}: malformed CSV ({exc}); check the separator (--sep {sep!r}) and quoting") from exc
    except (pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise E2URecError(f"{path}: cannot be read as a CSV with a header row ({exc})") from exc
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise E2URecError(
            f"{path}: has no column {', '.join(map(repr, missing))}; its columns are "
            f"{', '.join(map(repr, frame.columns))}. "
            "Name the right columns with --user-col/--item-col/--rating-col/--time-col/--title-col (or --sep)."
        )
    frame = frame[(frame != "").any(axis=1)]
    frame.attrs["line_offset"] = 2
    return frame


def _ids(frame: pd.DataFrame, column: str, source: Path) -> pd.Series:
    ids = frame[column].str.strip()
    _report_first(ids == "", frame, column, source, "an id")
    return ids


def _unix_seconds(frame: pd.DataFrame, column: str, source: Path) -> pd.Series:
    """Numbers are unix seconds; anything else goes through pandas' date parser (naive times read as UTC).

    A column mixing numbers and other text is reported at its first non-number."""
    values = frame[column].str.strip()
    if pd.to_numeric(values, errors="coerce").notna().any():
        return to_number(frame, column, source).floordiv(1).astype("int64")
    when = pd.to_datetime(values, utc=True, errors="coerce")
    _report_first(when.isna(), frame, column, source, "a date or unix seconds")
    return (when - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)


def _report_first(bad: pd.Series, frame: pd.DataFrame, column: str, source: Path, what: str) -> None:
    if bad.any():
        row = int(bad.to_numpy().argmax())
        line = frame.index[row] + frame.attrs["line_offset"]
        raise E2URecError(f"{source}:{line}: column {column!r} should be {what}, found {frame[column].iloc[row]!r}")
