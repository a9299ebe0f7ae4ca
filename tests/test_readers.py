"""Readers on small files in each dataset's real format: the tidy tables they return and the errors they raise."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from e2urec.data.readers import ITEM_NOUN, READERS, read_dataset
from e2urec.data.readers.csv import read_csv_interactions
from e2urec.data.readers.goodreads import read_goodreads
from e2urec.data.readers.movielens import read_ml1m, read_ml100k
from e2urec.data.tables import RawData
from e2urec.errors import E2URecError

FIXTURES = Path(__file__).parent / "fixtures"
GOODREADS = FIXTURES / "goodreads"
GOODREADS_INTERACTIONS = GOODREADS / "goodreads_interactions_sample.json"
GOODREADS_BOOKS = GOODREADS / "goodreads_books_sample.json.gz"
CSV = FIXTURES / "csv"
INTEGER_COLUMNS = {"user_id": "int64", "item_id": "int64", "rating": "float64", "timestamp": "int64"}


def assert_same(a: RawData, b: RawData) -> None:
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)


def copy_with_line(source: Path, folder: Path, number: int, line: str) -> Path:
    """Copy `source` into `folder` with line `number` (1-based) replaced, keeping the file's encoding."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = source.read_bytes().split(b"\n")
    lines[number - 1] = line.encode("iso-8859-1")
    (folder / source.name).write_bytes(b"\n".join(lines))
    return folder / source.name


# ---------- MovieLens-1M ----------


def test_ml1m_folder_gives_typed_tables_with_names_and_latin1_titles(ml1m: Path) -> None:
    raw = read_ml1m(ml1m)
    assert raw.name == "ml-1m"
    assert raw.interactions.dtypes.astype(str).to_dict() == INTEGER_COLUMNS
    assert len(raw.interactions) == len((ml1m / "ratings.dat").read_bytes().splitlines()) == 96
    assert raw.interactions.groupby("user_id").size().tolist() == [12] * 8
    assert raw.interactions.duplicated(["user_id", "timestamp"]).any()  # same-second ratings are kept
    first = raw.interactions.iloc[0]
    assert (first["user_id"], first["item_id"], first["rating"], first["timestamp"]) == (1, 6, 3.0, 970100000)

    users = raw.users.set_index("user_id")
    assert len(users) == 8
    assert users.loc[1].tolist() == ["F", 1, "K-12 student"]
    assert users.loc[5, "occupation"] == "writer"
    assert users.loc[8, "occupation"] == "other or not specified"
    assert users["age"].dtype == "int64"

    titles = raw.items.set_index("item_id")["title"]
    assert titles[73] == "Été indien, L' (1995)"
    assert titles[260] == "Orbit Nine: Part IV - The Long Return (1977)"
    assert raw.files == [ml1m / "ratings.dat", ml1m / "users.dat", ml1m / "movies.dat"]


def test_ml1m_reads_the_same_from_a_subfolder_and_from_the_official_zip(tmp_path: Path, ml1m: Path) -> None:
    shutil.copytree(ml1m, tmp_path / "unzipped" / "ml-1m")
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-1m/", "")
        for name in ("movies.dat", "ratings.dat", "users.dat", "README"):
            zf.writestr(f"ml-1m/{name}", (ml1m / name).read_bytes() if name != "README" else b"readme")

    from_folder = read_ml1m(ml1m)
    from_subfolder = read_ml1m(tmp_path / "unzipped")
    from_zip = read_dataset("ml-1m", archive)
    assert_same(from_folder, from_subfolder)
    assert_same(from_folder, from_zip)
    assert from_zip.files == [archive]


def test_ml1m_malformed_line_is_reported_with_file_and_line(tmp_path: Path, ml1m: Path) -> None:
    copy_with_line(ml1m / "ratings.dat", tmp_path, 5, "1::6::3")
    for name in ("users.dat", "movies.dat"):
        shutil.copy(ml1m / name, tmp_path)
    with pytest.raises(E2URecError, match=r"ratings\.dat:5: expected 4 fields"):
        read_ml1m(tmp_path)

    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("movies.dat", "ratings.dat", "users.dat"):
            zf.write(tmp_path / name, f"ml-1m/{name}")
    with pytest.raises(E2URecError, match=r"ml-1m\.zip/ml-1m/ratings\.dat:5"):
        read_ml1m(archive)


def test_ml1m_bad_values_are_reported_with_file_and_line(tmp_path: Path, ml1m: Path) -> None:
    copy_with_line(ml1m / "users.dat", tmp_path, 3, "3::M::25::21::55117")
    for name in ("ratings.dat", "movies.dat"):
        shutil.copy(ml1m / name, tmp_path)
    with pytest.raises(E2URecError, match=r"users\.dat:3: occupation code 21"):
        read_ml1m(tmp_path)
    shutil.copy(ml1m / "users.dat", tmp_path)
    copy_with_line(ml1m / "ratings.dat", tmp_path, 7, "1::6::three::970100000")
    with pytest.raises(E2URecError, match=r"ratings\.dat:7: column 'rating' should be a number"):
        read_ml1m(tmp_path)


def test_ml1m_missing_files_say_what_to_do(tmp_path: Path, ml1m: Path) -> None:
    with pytest.raises(E2URecError, match="no MovieLens-1M files found"):
        read_ml1m(tmp_path)
    shutil.copy(ml1m / "ratings.dat", tmp_path)
    with pytest.raises(E2URecError, match=r"users\.dat not found"):
        read_ml1m(tmp_path)
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(ml1m / "ratings.dat", "ml-1m/ratings.dat")
    with pytest.raises(E2URecError, match="lacks users.dat, movies.dat"):
        read_ml1m(archive)


# ---------- MovieLens-100K: both layouts ----------

ML100K_SAMPLE = [  # invented (id, title without year, year, genres, release date)
    (1, "Paper Lanterns", "1995", "Animation Children's Comedy", "01-Jan-1995"),
    (2, "Harbour Lights", "1995", "Action Adventure Thriller", "01-Jan-1995"),
    (3, "Été indien, L'", "1995", "Drama Musical", "01-Jan-1995"),
    (4, "unknown", "", "unknown", ""),
]
ML100K_USERS = [(1, 24, "M", "technician", "10001"), (2, 53, "F", "other", "10002"), (3, 23, "M", "writer", "10003")]
ML100K_RATINGS = [(1, 1, 5, 880000100), (1, 3, 3, 880000200), (2, 2, 4, 880000300), (3, 4, 1, 880000300),
                  (3, 1, 2, 880000150)]  # fmt: skip


def write_ml100k_official(folder: Path) -> None:
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML100K_RATINGS))
    users = "".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, a, g, o, z in ML100K_USERS)
    (folder / "u.user").write_bytes(users.encode("iso-8859-1"))
    lines = []
    for item, title, year, _, date in ML100K_SAMPLE:
        full = f"{title} ({year})" if year else title
        flags = "|".join(["1" if k == item else "0" for k in range(19)])
        url = f"http://us.imdb.com/M/title-exact?{full.replace(' ', '%20')}" if year else ""
        lines.append(f"{item}|{full}|{date}||{url}|{flags}\n")
    (folder / "u.item").write_bytes("".join(lines).encode("iso-8859-1"))


def write_ml100k_recbole(folder: Path) -> None:
    folder.mkdir()
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    inter += "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ML100K_RATINGS)
    (folder / "ml-100k.inter").write_text(inter, encoding="utf-8")
    user = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    user += "".join(f"{u}\t{a}\t{g}\t{o}\t{z}\n" for u, a, g, o, z in ML100K_USERS)
    (folder / "ml-100k.user").write_text(user, encoding="utf-8")
    item = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    item += "".join(f"{i}\t{title}\t{year}\t{genres}\n" for i, title, year, genres, _ in ML100K_SAMPLE)
    (folder / "ml-100k.item").write_text(item, encoding="utf-8")


def test_ml100k_official_and_recbole_layouts_give_identical_tables(tmp_path: Path) -> None:
    write_ml100k_official(tmp_path / "official")
    write_ml100k_recbole(tmp_path / "recbole")
    official, recbole = read_ml100k(tmp_path / "official"), read_dataset("ml-100k", tmp_path / "recbole")
    assert_same(official, recbole)
    assert official.interactions.dtypes.astype(str).to_dict() == INTEGER_COLUMNS
    assert official.items["title"].tolist() == ["Paper Lanterns (1995)", "Harbour Lights (1995)",
                                                "Été indien, L' (1995)", "unknown"]  # fmt: skip
    assert official.users.set_index("user_id").loc[2].tolist() == ["F", 53, "other"]


# ---------- GoodReads ----------


def goodreads_records() -> list[dict]:
    return [json.loads(line) for line in GOODREADS_INTERACTIONS.read_text(encoding="utf-8").splitlines()]


def test_goodreads_drops_shelved_rows_and_parses_zoned_dates() -> None:
    records = goodreads_records()
    rated = [r for r in records if r["rating"] > 0]
    assert len(rated) < len(records)  # the fixture has shelved-only rows

    raw = read_goodreads(GOODREADS)
    assert raw.name == "goodreads"
    frame = raw.interactions
    assert len(frame) == len(rated) == 96
    assert (frame["rating"] > 0).all()
    assert frame["user_id"].tolist() == [r["user_id"] for r in rated]
    assert frame["item_id"].tolist() == [r["book_id"] for r in rated]
    assert pd.api.types.is_string_dtype(frame["user_id"]) and pd.api.types.is_string_dtype(frame["item_id"])
    assert str(frame["rating"].dtype) == "float64" and str(frame["timestamp"].dtype) == "int64"
    expected = [int(datetime.strptime(r["date_added"], "%a %b %d %H:%M:%S %z %Y").timestamp()) for r in rated]
    assert frame["timestamp"].tolist() == expected
    assert frame.duplicated(["user_id", "timestamp"]).any()

    assert raw.users.columns.tolist() == ["user_id"]
    assert len(raw.users) == 8
    titles = raw.items.set_index("item_id")["title"]
    assert titles["24178"] == "Les Misérables"
    assert titles["2429135"] == "The Girl with the Dragon Tattoo (Millennium, #1)"
    assert raw.files == [GOODREADS_INTERACTIONS, GOODREADS_BOOKS]


def test_goodreads_reads_gzipped_interactions_and_plain_books(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "goodreads_interactions_sample.json.gz", "wb") as gz:
        gz.write(GOODREADS_INTERACTIONS.read_bytes())
    (tmp_path / "goodreads_books_sample.json").write_bytes(gzip.decompress(GOODREADS_BOOKS.read_bytes()))
    assert_same(read_dataset("goodreads", tmp_path), read_goodreads(GOODREADS))


def test_goodreads_pairs_per_genre_files_by_name(tmp_path: Path) -> None:
    shutil.copy(GOODREADS_INTERACTIONS, tmp_path / "goodreads_interactions_poetry.json")
    shutil.copy(GOODREADS_BOOKS, tmp_path / "goodreads_books_poetry.json.gz")
    (tmp_path / "goodreads_books_comics.json").write_text('{"book_id": "1", "title": "Watchmen"}\n')
    assert read_goodreads(tmp_path).files[1].name == "goodreads_books_poetry.json.gz"
    shutil.copy(GOODREADS_INTERACTIONS, tmp_path / "goodreads_interactions_comics.json")
    with pytest.raises(E2URecError, match="several goodreads_interactions files"):
        read_goodreads(tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"user_id": "u1", "book_id": "3", "rating": 4,', r":3: not valid JSON"),
        ('{"user_id": "u1", "book_id": "3", "rating": 4}', r":3: record lacks the 'date_added' key"),
        ('["u1", "3", 4]', r":3: expected a JSON object"),
        ('{"user_id": "u1", "book_id": "3", "rating": "four", "date_added": "x"}', r":3: rating should be a number"),
        ('{"user_id": "u1", "book_id": "3", "rating": 4, "date_added": "2017-07-30"}', r":3: date_added should look"),
    ],
)
def test_goodreads_bad_lines_are_reported_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    lines = GOODREADS_INTERACTIONS.read_text(encoding="utf-8").splitlines()
    lines[2] = line
    (tmp_path / "goodreads_interactions_x.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.copy(GOODREADS_BOOKS, tmp_path)
    with pytest.raises(E2URecError, match=r"goodreads_interactions_x\.json" + message):
        read_goodreads(tmp_path)


def test_goodreads_missing_books_file_says_where_to_get_it(tmp_path: Path) -> None:
    shutil.copy(GOODREADS_INTERACTIONS, tmp_path)
    with pytest.raises(E2URecError, match=r"no goodreads_books\*\.json or \.json\.gz file found.*UCSD"):
        read_goodreads(tmp_path)
    with pytest.raises(E2URecError, match="no goodreads_interactions"):
        read_goodreads(tmp_path / "elsewhere")


# ---------- generic CSV ----------


def test_csv_with_items_file_parses_iso_dates_and_quoted_titles() -> None:
    raw = read_dataset("csv", CSV / "interactions.csv", items=str(CSV / "items.csv"))
    assert raw.name == "csv"
    assert raw.interactions.dtypes.astype(str).to_dict() == INTEGER_COLUMNS
    assert len(raw.interactions) == 96 and len(raw.users) == 8
    first = raw.interactions.iloc[0]
    assert (first["user_id"], first["item_id"], first["timestamp"]) == (1, 110, 1672579800)  # 2023-01-01T13:30Z
    titles = raw.items.set_index("item_id")["title"]
    assert titles[101] == "Good, the Bad and the Ugly, The"
    assert titles[102] == "Amélie"
    assert raw.files == [CSV / "interactions.csv", CSV / "items.csv"]


def test_csv_without_items_uses_ids_as_titles() -> None:
    raw = read_csv_interactions(CSV / "interactions.csv")
    assert raw.items["item_id"].dtype == "int64"
    assert (raw.items["title"] == raw.items["item_id"].astype(str)).all()
    assert sorted(raw.items["item_id"]) == sorted(raw.interactions["item_id"].unique())


def test_csv_custom_columns_string_ids_and_unix_seconds(tmp_path: Path) -> None:
    data = tmp_path / "log.tsv"
    data.write_text("who;what;stars;when;extra\nu1;b7;4.5;1700000000;x\nu2;b7;2;1700000100;y\n\nu1;b9;3;1700000050;z\n")
    raw = read_csv_interactions(data, user_col="who", item_col="what", rating_col="stars", time_col="when", sep=";")
    assert raw.interactions["user_id"].tolist() == ["u1", "u2", "u1"]
    assert raw.interactions["item_id"].tolist() == ["b7", "b7", "b9"]
    assert raw.interactions["timestamp"].tolist() == [1700000000, 1700000100, 1700000050]
    assert raw.interactions["rating"].tolist() == [4.5, 2.0, 3.0]


def test_csv_item_ids_stay_text_when_the_items_file_has_non_integer_ids(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("item_id,title\n1,One\nB2,Two\n")
    (tmp_path / "data.csv").write_text("user_id,item_id,rating,timestamp\n1,1,4,10\n2,1,3,20\n")
    raw = read_csv_interactions(tmp_path / "data.csv", items=tmp_path / "items.csv")
    assert raw.interactions["item_id"].tolist() == ["1", "1"]
    assert raw.interactions["user_id"].tolist() == [1, 2]


def test_csv_missing_column_lists_the_columns_the_file_has(tmp_path: Path) -> None:
    with pytest.raises(E2URecError, match=r"has no column 'ts'; its columns are 'user_id', 'item_id', 'rating'"):
        read_csv_interactions(CSV / "interactions.csv", time_col="ts")
    (tmp_path / "items.csv").write_text("id,name\n1,One\n")
    with pytest.raises(E2URecError, match=r"items\.csv: has no column 'item_id', 'title'"):
        read_csv_interactions(CSV / "interactions.csv", items=tmp_path / "items.csv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("3,101,4,not a date", r":5: column 'timestamp' should be a date"),
        ("3,101,good,2023-01-02T10:00:00", r":5: column 'rating' should be a number"),
        (",101,4,2023-01-02T10:00:00", r":5: column 'user_id' should be an id"),
        ("3,101,4,2023-01-02T10:00:00,extra,more", r":5: malformed CSV"),
    ],
)
def test_csv_bad_rows_are_reported_with_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    lines = ["user_id,item_id,rating,timestamp", "1,100,5,2023-01-01T10:00:00", "", "2,100,3,2023-01-01T11:00:00", row]
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(E2URecError, match=r"bad\.csv" + message):
        read_csv_interactions(tmp_path / "bad.csv")


def test_csv_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(E2URecError, match="interactions CSV not found"):
        read_csv_interactions(tmp_path / "nope.csv")


# ---------- registry ----------


def test_registry_knows_every_dataset_and_refuses_unknown_names_and_options(ml1m: Path) -> None:
    assert set(READERS) == set(ITEM_NOUN) == {"ml-100k", "ml-1m", "goodreads", "csv"}
    with pytest.raises(E2URecError, match="unknown dataset 'ml-20m'; known: csv, goodreads, ml-100k, ml-1m"):
        read_dataset("ml-20m", ml1m)
    with pytest.raises(E2URecError, match="dataset 'ml-1m' does not take these reader options"):
        read_dataset("ml-1m", ml1m, sep=";")
