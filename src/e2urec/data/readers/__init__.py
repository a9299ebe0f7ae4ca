"""Readers registry: dataset name → function returning the tidy RawData shape."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from e2urec.data.readers.csv import read_csv_interactions
from e2urec.data.readers.goodreads import read_goodreads
from e2urec.data.readers.movielens import read_ml1m, read_ml100k
from e2urec.data.tables import RawData
from e2urec.errors import E2URecError
from e2urec.options import DATASETS

# One reader per name of options.DATASETS (the names `prepare --dataset` offers), in that order.
READERS: dict[str, Callable[..., RawData]] = dict(
    zip(DATASETS, (read_ml100k, read_ml1m, read_goodreads, read_csv_interactions), strict=True)
)
ITEM_NOUN = {"ml-100k": "movie", "ml-1m": "movie", "goodreads": "book", "csv": "item"}


def read_dataset(name: str, path: Path, **options: object) -> RawData:
    """Read dataset `name` from `path`; options a reader does not take are refused up front, not as a TypeError."""
    if name not in READERS:
        raise E2URecError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    reader = READERS[name]
    try:
        inspect.signature(reader).bind(path, **options)
    except TypeError as exc:
        raise E2URecError(f"dataset {name!r} does not take these reader options: {exc}") from exc
    return reader(Path(path), **options)
