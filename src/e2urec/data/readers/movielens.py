"""MovieLens readers. ML-100K comes in the official layout (u.data, u.user, u.item) or RecBole's atomic
layout (ml-100k.inter/.user/.item); both yield the same tidy tables, titles written as "Title (Year)"."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

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


ML1M_FILES = ("ratings.dat", "users.dat", "movies.dat")
ML1M_URL = "https://grouplens.org/datasets/movielens/1m/"
ML1M_OCCUPATIONS = (
    "other or not specified", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student",
    "lawyer", "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip


def read_ml1m(path: Path) -> RawData:
    """MovieLens-1M from its folder (files directly or under `ml-1m/`) or straight from the official zip.

    Occupation codes become the dataset README's names so prompts read naturally; age stays the age-group code.
    """
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        texts: dict[str, tuple[Path | str, str]] = _ml1m_from_zip(path)
        sources = [path]
    else:
        folder = path / "ml-1m" if (path / "ml-1m" / "ratings.dat").is_file() else path
        if not (folder / "ratings.dat").is_file():
            raise E2URecError(
                f"{path}: no MovieLens-1M files found; expected {', '.join(ML1M_FILES)} in this folder (or an "
                f"ml-1m/ subfolder), or the official ml-1m.zip. Download it from {ML1M_URL} and pass its path."
            )
        sources = [require_file(folder / name, name) for name in ML1M_FILES]
        texts = {name: (file, read_text(file, "iso-8859-1")) for name, file in zip(ML1M_FILES, sources, strict=True)}

    ratings_source, ratings_text = texts["ratings.dat"]
    ratings = read_delimited(ratings_source, ratings_text, "::", ["user_id", "item_id", "rating", "timestamp"])
    users_source, users_text = texts["users.dat"]
    users = read_delimited(users_source, users_text, "::", ["user_id", "gender", "age", "occupation", "zip"])
    movies_source, movies_text = texts["movies.dat"]
    movies = read_delimited(movies_source, movies_text, "::", ["item_id", "title", "genres"])

    codes = to_number(users, "occupation", users_source, integer=True)
    unknown = ~codes.between(0, len(ML1M_OCCUPATIONS) - 1)
    if unknown.any():
        row = int(unknown.to_numpy().argmax())
        line = users.index[row] + users.attrs["line_offset"]
        raise E2URecError(f"{users_source}:{line}: occupation code {codes.iloc[row]} is not one of MovieLens-1M's 0-20")
    users = _users(users.assign(occupation=codes.map(dict(enumerate(ML1M_OCCUPATIONS)))), users_source)
    items = pd.DataFrame(
        {"item_id": to_number(movies, "item_id", movies_source, integer=True), "title": movies["title"].str.strip()}
    )
    return RawData("ml-1m", _ratings(ratings, ratings_source), users, items, sources)


def _ml1m_from_zip(archive: Path) -> dict[str, tuple[Path | str, str]]:
    """Each ML-1M file's (where-to-report, text) read from the zip, wherever the members sit inside it."""
    with zipfile.ZipFile(archive) as zf:
        members = {PurePosixPath(m).name: m for m in zf.namelist() if not m.endswith("/")}
        missing = [name for name in ML1M_FILES if name not in members]
        if missing:
            raise E2URecError(
                f"{archive}: not a MovieLens-1M zip, it lacks {', '.join(missing)}; "
                f"download the official ml-1m.zip from {ML1M_URL}"
            )
        return {
            name: (f"{archive}/{members[name]}", zf.read(members[name]).decode("iso-8859-1")) for name in ML1M_FILES
        }
