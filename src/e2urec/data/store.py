"""A prepared data folder: `samples.parquet` (one row per sample), the tidy tables it was built from
(`events`, `items`, `users` parquet: what a deletion request rebuilds samples from and the service builds
prompts from), and `manifest.json` with checksums of all of them. Written whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from e2urec.errors import E2URecError
from e2urec.io import atomic_dir, read_json, sha256_file, write_json_atomic

SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "manifest.json"
TABLES = ("events", "items", "users")


def write_prepared(out: Path, samples: pd.DataFrame, tables: dict[str, pd.DataFrame], manifest: dict,
                   overwrite: bool = False) -> dict:
    """Write samples, tables and the manifest (with their checksums) into `out` atomically; return the manifest."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        samples.to_parquet(tmp / SAMPLES_FILE, index=False, compression="zstd")
        for name in TABLES:
            tables[name].to_parquet(tmp / f"{name}.parquet", index=False, compression="zstd")
        manifest = {**manifest, "samples_sha256": sha256_file(tmp / SAMPLES_FILE),
                    "tables_sha256": {name: sha256_file(tmp / f"{name}.parquet") for name in TABLES}}
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return manifest


def load_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / MANIFEST_FILE).is_file():
        raise E2URecError(f"{folder}: not a prepared data folder (no {MANIFEST_FILE}); run `e2urec prepare`")
    return read_json(folder / MANIFEST_FILE)


def _checked(path: Path, expected: str | None, verify: bool) -> Path:
    if not path.is_file():
        raise E2URecError(f"{path}: missing; run `e2urec prepare` again")
    if verify and sha256_file(path) != expected:
        raise E2URecError(f"{path}: checksum differs from {MANIFEST_FILE}; the file was changed, prepare again")
    return path


def load_prepared(folder: str | Path, verify: bool = True) -> tuple[pd.DataFrame, dict]:
    """Return (samples, manifest); a changed or truncated samples file is refused, not silently used."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    path = _checked(folder / SAMPLES_FILE, manifest.get("samples_sha256"), verify)
    return pd.read_parquet(path), manifest


def load_tables(folder: str | Path, verify: bool = True) -> dict[str, pd.DataFrame]:
    """The events/items/users tables a data folder was built from (checked against the manifest)."""
    folder = Path(folder)
    sums = load_manifest(folder).get("tables_sha256")
    if sums is None:
        raise E2URecError(f"{folder}: prepared by an older e2urec without its source tables; run `e2urec prepare` "
                          f"again")
    return {name: pd.read_parquet(_checked(folder / f"{name}.parquet", sums.get(name), verify)) for name in TABLES}
