"""Read a prepared data folder back, verifying it is the one its manifest describes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from e2urec.data.prepare import MANIFEST_FILE, SAMPLES_FILE
from e2urec.errors import E2URecError
from e2urec.io import read_json, sha256_file


def load_prepared(folder: str | Path, verify: bool = True) -> tuple[pd.DataFrame, dict]:
    """Return (samples, manifest); a changed or truncated samples file is refused, not silently used."""
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise E2URecError(f"{folder}: not a prepared data folder (no {MANIFEST_FILE}); run `e2urec prepare`")
    manifest = read_json(folder / MANIFEST_FILE)
    path = folder / SAMPLES_FILE
    if not path.is_file():
        raise E2URecError(f"{path}: missing; run `e2urec prepare` again")
    if verify and sha256_file(path) != manifest.get("samples_sha256"):
        raise E2URecError(f"{path}: checksum differs from {MANIFEST_FILE}; the file was changed, prepare again")
    return pd.read_parquet(path), manifest
