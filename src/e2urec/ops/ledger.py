"""The deletion ledger (SQLite in the run folder): one row per request, with salted hashes of the ids, never the
ids themselves, so the ledger can prove a request was honoured without keeping what was forgotten."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    request_id   TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    created      REAL NOT NULL,
    finished     REAL,
    status       TEXT NOT NULL,
    id_hashes    TEXT NOT NULL,
    row_counts   TEXT,
    version      TEXT,
    metrics      TEXT,
    seconds      REAL,
    error        TEXT
);
CREATE INDEX IF NOT EXISTS requests_fingerprint ON requests (fingerprint);
"""
STATUSES = ("queued", "running", "done", "failed")


class Ledger:
    """Request records for one run. Each call opens its own connection, so threads and processes may share it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        with self._connect() as db:
            db.executescript(SCHEMA)
            db.execute("INSERT OR IGNORE INTO settings VALUES ('salt', ?)", (secrets.token_hex(16),))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._connect() as db:
            return db.execute(sql, args).fetchone()

    @property
    def salt(self) -> str:
        row = self._one("SELECT value FROM settings WHERE key = 'salt'")
        return row["value"]

    def hash_id(self, key: str, salt: str | None = None) -> str:
        """Salted SHA-256 of one id: comparable between requests of this run, useless elsewhere."""
        return hashlib.sha256((salt or self.salt).encode() + key.encode()).hexdigest()

    def hash_ids(self, keys: Iterable[str]) -> list[str]:
        """The sorted, distinct hashes of a request's ids (what the ledger stores and fingerprints)."""
        salt = self.salt
        return sorted({self.hash_id(key, salt) for key in keys})

    def fingerprint(self, kind: str, hashes: list[str]) -> str:
        return hashlib.sha256(json.dumps([kind, hashes]).encode()).hexdigest()

    def find(self, fingerprint: str) -> dict | None:
        """The newest request with this fingerprint (same kind, same ids)."""
        row = self._one("SELECT * FROM requests WHERE fingerprint = ? ORDER BY created DESC LIMIT 1", (fingerprint,))
        return _decode(row)

    def get(self, request_id: str) -> dict | None:
        return _decode(self._one("SELECT * FROM requests WHERE request_id = ?", (request_id,)))

    def add(self, kind: str, hashes: list[str], status: str = "queued") -> dict:
        request_id = uuid.uuid4().hex[:16]
        with self._connect() as db:
            db.execute("INSERT INTO requests (request_id, fingerprint, kind, created, status, id_hashes) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (request_id, self.fingerprint(kind, hashes), kind, time.time(), status, json.dumps(hashes)))
        return self.get(request_id)

    def update(self, request_id: str, **values: Any) -> None:
        if "status" in values and values["status"] not in STATUSES:
            raise ValueError(f"unknown status {values['status']!r}")
        if values.get("status") in ("done", "failed"):
            values.setdefault("finished", time.time())
        encoded = {k: json.dumps(v) if k in ("row_counts", "metrics") else v for k, v in values.items()}
        columns = ", ".join(f"{k} = ?" for k in encoded)
        with self._connect() as db:
            db.execute(f"UPDATE requests SET {columns} WHERE request_id = ?", (*encoded.values(), request_id))

    def requests(self) -> list[dict]:
        with self._connect() as db:
            return [_decode(row) for row in db.execute("SELECT * FROM requests ORDER BY created")]

    def forgotten(self, kind: str) -> set[str]:
        """Hashes of every id that finished requests of this kind forgot."""
        return {h for r in self.requests() if r["status"] == "done" and r["kind"] == kind for h in r["id_hashes"]}

    def honoured_by(self, version: str) -> list[str]:
        """Request ids a model version honours: versions only ever build on the one before, so every finished
        request whose version is this one or an earlier one, in the order they finished."""
        done = [r for r in self.requests() if r["status"] == "done" and r["version"]]
        number = int(version.lstrip("v"))
        return [r["request_id"] for r in sorted(done, key=lambda r: r["finished"])
                if int(r["version"].lstrip("v")) <= number]


def _decode(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    out = dict(row)
    for key in ("id_hashes", "row_counts", "metrics"):
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out
