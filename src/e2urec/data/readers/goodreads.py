"""GoodReads reader for the UCSD Book Graph JSON-lines dumps (plain or gzipped): an interactions file and
a books file in one folder. Only rated shelvings count: rating 0 means "shelved, not rated" and is dropped."""

from __future__ import annotations

import gzip
import json
import operator
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from e2urec.data.tables import RawData
from e2urec.errors import E2URecError

BOOK_GRAPH_URL = "https://mengtingwan.github.io/data/goodreads.html"
DATE_ADDED_FORMAT = "%a %b %d %H:%M:%S %z %Y"  # "Sun Jul 30 07:44:10 -0700 2017"
SUFFIX = re.compile(r"goodreads_(?:interactions|books)(.*)\.json(?:\.gz)?")


def read_goodreads(path: Path) -> RawData:
    """Rated interactions (user_id, book_id as strings; unix-second timestamps from date_added) and titles."""
    folder = Path(path)
    interactions_file = _find(folder, "interactions")
    books_file = _find(folder, "books", like=interactions_file)

    interactions, lines = _read_json_lines(interactions_file, ("user_id", "book_id", "rating", "date_added"))
    rating = pd.to_numeric(pd.Series(interactions["rating"], dtype=object), errors="coerce")
    _report_first(rating.isna(), lines, interactions_file, "rating should be a number", interactions["rating"])
    rated = (rating != 0).to_numpy()
    date_added = pd.Series(interactions["date_added"], dtype=object)[rated]
    when = pd.to_datetime(date_added, format=DATE_ADDED_FORMAT, utc=True, errors="coerce")
    expected = f"date_added should look like {DATE_ADDED_FORMAT!r}"
    _report_first(when.isna(), lines[rated], interactions_file, expected, date_added.tolist())
    frame = pd.DataFrame(
        {
            "user_id": pd.Series(interactions["user_id"], dtype=str)[rated],
            "item_id": pd.Series(interactions["book_id"], dtype=str)[rated],
            "rating": rating[rated],
            "timestamp": (when - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1),
        }
    )

    books, _ = _read_json_lines(books_file, ("book_id", "title"))
    items = pd.DataFrame(
        {"item_id": pd.Series(books["book_id"], dtype=str), "title": pd.Series(books["title"], dtype=str).str.strip()}
    )
    users = pd.DataFrame({"user_id": frame["user_id"].drop_duplicates().reset_index(drop=True)})
    return RawData("goodreads", frame, users, items, [interactions_file, books_file])


def _find(folder: Path, kind: str, like: Path | None = None) -> Path:
    """The one `goodreads_{kind}*.json(.gz)` file in `folder`; among several books files, the one whose name
    suffix matches the interactions file (the per-genre dumps pair `_interactions_poetry` with `_books_poetry`)."""
    found = sorted(p for p in folder.glob(f"goodreads_{kind}*.json*") if _suffix(p) is not None)
    if like is not None and len(found) > 1:
        found = [p for p in found if _suffix(p) == _suffix(like)] or found
    if len(found) == 1:
        return found[0]
    if not found:
        raise E2URecError(
            f"{folder}: no goodreads_{kind}*.json or .json.gz file found; download the UCSD Book Graph files "
            f"from {BOOK_GRAPH_URL} into this folder"
        )
    raise E2URecError(
        f"{folder}: several goodreads_{kind} files ({', '.join(p.name for p in found)}); keep one per folder"
    )


def _suffix(file: Path) -> str | None:
    match = SUFFIX.fullmatch(file.name)
    return match.group(1) if match else None


def _read_json_lines(path: Path, keys: tuple[str, ...]) -> tuple[dict[str, list], pd.Index]:
    """The named keys of every JSON object in the file, plus each object's line number for error messages."""
    pick, loads = operator.itemgetter(*keys), json.loads
    rows: list[tuple] = []
    numbers: list[int] = []
    number, line = 0, ""
    try:
        for number, line in _lines(path):
            if line.strip():
                rows.append(pick(loads(line)))
                numbers.append(number)
    except json.JSONDecodeError as exc:
        raise E2URecError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except KeyError as exc:
        raise E2URecError(
            f"{path}:{number}: record lacks the {exc.args[0]!r} key (needed: {', '.join(keys)}); "
            f"is this a UCSD Book Graph file from {BOOK_GRAPH_URL}?"
        ) from exc
    except TypeError as exc:
        raise E2URecError(f"{path}:{number}: expected a JSON object, found {line[:80]!r}") from exc
    except UnicodeDecodeError as exc:
        raise E2URecError(f"{path}: not valid UTF-8 text ({exc.reason}); re-download it") from exc
    except (OSError, EOFError) as exc:
        raise E2URecError(f"{path}: cannot be read ({exc}); re-download it") from exc
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in keys]
    return dict(zip(keys, columns, strict=True)), pd.Index(numbers)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        yield from enumerate(handle, start=1)


def _report_first(bad: pd.Series, lines: pd.Index, path: Path, what: str, values: list) -> None:
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise E2URecError(f"{path}:{lines[row]}: {what}, found {values[row]!r}")
