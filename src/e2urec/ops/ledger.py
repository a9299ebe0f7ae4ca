"""The deletion ledger (SQLite in the run folder): one row per request, with keyed hashes (HMAC-SHA256) of the ids,
never the ids themselves, so the ledger can prove a request was honoured without keeping what was forgotten.

The key lives outside the run folder (see `e2urec.ops.run.ledger_key`): ids are small integers, so an unkeyed or
salted hash stored beside its salt is reversed by hashing every candidate; without the key nothing can be tested.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from e2urec.errors import E2URecError
from e2urec.scratch import Owner, owner_alive

SCHEME = "hmac-sha256-v1"
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
    error        TEXT,
    owner        TEXT
);
CREATE INDEX IF NOT EXISTS requests_fingerprint ON requests (fingerprint);
"""
STATUSES = ("queued", "running", "done", "unverified", "failed")
FINAL = ("done", "unverified")  # honoured: the data is gone (unverified: the forgetting audit did not pass)


def key_id(key: bytes) -> str:
    """A public name for a key (HMAC of a constant): tells which key a ledger needs, reveals nothing of it."""
    return hmac.new(key, b"e2urec ledger key id", hashlib.sha256).hexdigest()[:16]


ORPHANED = "the process running it stopped (crash or kill); submit the request again"


def owner() -> str:
    """This process, as recorded on the requests it queues or runs (to tell orphans after a crash): host, pid and
    the pid's start time, so a later process that reuses the pid is not taken for the owner."""
    return Owner.me().token()


def settled(record: dict | None) -> dict | None:
    """A record as it really stands: `queued`/`running` under a process that is gone is `failed` with the reason,
    exactly as the next recovery (`fail_orphans`) will write it. Reading changes nothing on disk, so `e2urec
    ledger` and `/jobs` never show a dead process's request as running, even to a reader without write access."""
    if record and record["status"] in ("queued", "running") and not owner_alive(record["owner"]):
        return {**record, "status": "failed", "error": ORPHANED}
    return record


class Ledger:
    """Request records for one run. Each call opens and closes its own connection, so threads and processes may
    share it. `key` is needed to hash ids; listing and updating records works without it."""

    def __init__(self, path: Path, key: bytes | None = None):
        self.path = Path(path)
        self._key = key
        with self._connect() as db:
            try:
                db.executescript(SCHEMA)
                settings = dict(db.execute("SELECT key, value FROM settings").fetchall())
                if "salt" in settings:
                    raise E2URecError(
                        f"{self.path}: made by an older e2urec with salted hashes, which can be reversed; it cannot "
                        f"be converted (the ids are not known). Keep it offline as a record and create the run "
                        f"again with `e2urec init`")
                if key is not None:
                    db.execute("INSERT OR IGNORE INTO settings VALUES ('scheme', ?), ('key_id', ?)",
                               (SCHEME, key_id(key)))
                    stored = db.execute("SELECT value FROM settings WHERE key = 'key_id'").fetchone()["value"]
                    if stored != key_id(key):
                        raise E2URecError(f"{self.path}: the ledger key given is not this ledger's (key id {stored}); "
                                          f"point E2UREC_KEY_FILE at the key file made by `e2urec init`")
            except sqlite3.DatabaseError as exc:
                raise E2URecError(f"{self.path}: not a readable ledger ({exc}); restore it from a backup") from exc

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection per call, closed on exit (`with sqlite3.connect()` alone commits but never closes)."""
        try:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.DatabaseError as exc:
            raise E2URecError(f"{self.path}: not a readable ledger ({exc}); restore it from a backup") from exc
        try:
            yield db
        finally:
            db.close()

    def _one(self, sql: str, args: tuple = ()) -> sqlite3.Row | None:
        with self._connect() as db:
            return db.execute(sql, args).fetchone()

    def hash_id(self, key: str) -> str:
        """HMAC-SHA256 of one id under the run's key: comparable between requests of this run, and without the key
        not even a guess can be checked."""
        if self._key is None:
            raise E2URecError(f"{self.path}: hashing ids needs the run's ledger key")
        return hmac.new(self._key, key.encode(), hashlib.sha256).hexdigest()

    def hash_ids(self, keys: Iterable[str]) -> list[str]:
        """The sorted, distinct hashes of a request's ids (what the ledger stores and fingerprints)."""
        return sorted({self.hash_id(key) for key in keys})

    def fingerprint(self, kind: str, hashes: list[str]) -> str:
        return hashlib.sha256(json.dumps([kind, hashes]).encode()).hexdigest()

    def find(self, fingerprint: str) -> dict | None:
        """The newest request with this fingerprint (same kind, same ids)."""
        row = self._one("SELECT * FROM requests WHERE fingerprint = ? ORDER BY created DESC LIMIT 1", (fingerprint,))
        return _decode(row)

    def get(self, request_id: str) -> dict | None:
        return _decode(self._one("SELECT * FROM requests WHERE request_id = ?", (request_id,)))

    def add(self, kind: str, hashes: list[str], status: str = "queued") -> dict:
        """Record a new request; an identical one (same fingerprint) not yet finished is returned instead, checked
        and inserted in one write transaction so concurrent identical submissions share one record."""
        fingerprint = self.fingerprint(kind, hashes)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT request_id FROM requests WHERE fingerprint = ? AND status NOT IN (?, ?) "
                                 "ORDER BY created DESC LIMIT 1", (fingerprint, *FINAL)).fetchone()
                request_id = row["request_id"] if row else uuid.uuid4().hex[:16]
                if row is None:
                    db.execute("INSERT INTO requests (request_id, fingerprint, kind, created, status, id_hashes, "
                               "owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (request_id, fingerprint, kind, time.time(), status, json.dumps(hashes), owner()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.get(request_id)

    def update(self, request_id: str, **values: Any) -> None:
        if "status" in values and values["status"] not in STATUSES:
            raise ValueError(f"unknown status {values['status']!r}")
        if values.get("status") in (*FINAL, "failed"):
            values.setdefault("finished", time.time())
        if values.get("status") in ("queued", "running"):
            values.setdefault("owner", owner())
        encoded = {k: json.dumps(v) if k in ("row_counts", "metrics") else v for k, v in values.items()}
        columns = ", ".join(f"{k} = ?" for k in encoded)
        with self._connect() as db:
            db.execute(f"UPDATE requests SET {columns} WHERE request_id = ?", (*encoded.values(), request_id))

    def requests(self) -> list[dict]:
        with self._connect() as db:
            return [_decode(row) for row in db.execute("SELECT * FROM requests ORDER BY created")]

    def fail_orphans(self) -> list[str]:
        """Mark `queued`/`running` records whose owning process is gone `failed` (it died: kill -9, power loss);
        returns their ids. A waiting request's ids lived only in that process, so it must be submitted again."""
        orphans = [r["request_id"] for r in self.requests()
                   if r["status"] in ("queued", "running") and not owner_alive(r["owner"])]
        for request_id in orphans:
            self.update(request_id, status="failed", error=ORPHANED)
        return orphans

    def forgotten(self, kind: str) -> set[str]:
        """Hashes of every id that finished requests of this kind forgot (unverified ones too: their data is gone)."""
        return {h for r in self.requests() if r["status"] in FINAL and r["kind"] == kind for h in r["id_hashes"]}

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


# What a reader without the run's key sees of a request's sizes: nothing. Exact row counts single out 73% of
# ML-100K's users, every count as its order of magnitude still 32 of them, and the order of magnitude of
# `events_deleted` alone, next to what the audit's verdict says (no, too few or enough forget prompts), leaves
# a group of 2 (benchmarks/ledger_counts.py, benchmarks/results/ledger-counts-2026-12-07.json). So `e2urec ledger`
# and `/jobs` leave out the row counts and every figure computed from them (sample counts, standard errors, the
# audit's threshold, the drift check's rows, the test sample's size); `ledger --exact` shows them to the key holder.
AUDIT_KEPT = ("statistic", "verdict", "failed_on", "exact", "escalation", "remembered_before", "tolerance",
              "utility_tolerance", "min_prompts", "z")


def bucket(n: int | None) -> str | None:
    """A count as its order of magnitude: "0", "1–10", "11–100", "101–1,000", ... (None stays None). `e2urec
    ledger` shows the number of interactions a request names this way."""
    if n is None or isinstance(n, bool) or not isinstance(n, int):
        return n
    if n <= 0:
        return "0"
    low, high = 1, 10
    while n > high:
        low, high = high + 1, high * 10
    return f"{low:,}–{high:,}"


def _rounded(value: object, digits: int = 3) -> object:
    return round(value, digits) if isinstance(value, float) else value


def coarse_reason(reason: str | None) -> str | None:
    """The audit's reason without its prompt count and with its figures to 2 decimals: a threshold quoted to 3
    decimals gives away the standard error, and with it the number of forget prompts."""
    if not reason:
        return reason
    reason = re.sub(r"\b\d+( forget prompts? comparable)", r"too few\1", reason)
    return re.sub(r"\d+\.\d+", lambda m: f"{float(m.group()):.2f}", reason)


def coarse_audit(audit: dict | None) -> dict | None:
    """An audit record as a reader without the key sees it: a whitelist, so a figure added later stays hidden
    until someone decides it reveals nothing."""
    if not audit:
        return audit
    out = {k: audit[k] for k in AUDIT_KEPT if k in audit}
    for side in ("before", "after"):
        if isinstance(audit.get(side), dict):
            out[side] = {k: _rounded(audit[side].get(k)) for k in ("mia_auc", "forget_loss", "non_member_loss",
                                                                   "valid_auc")}
    if isinstance(audit.get("forgetting_effect"), dict):
        out["forgetting_effect"] = {"effect": _rounded(audit["forgetting_effect"].get("effect"))}
    if "valid_auc_drop" in audit:
        out["valid_auc_drop"] = _rounded(audit["valid_auc_drop"])
        out["valid_auc_drop_allowed"] = _rounded(audit.get("valid_auc_drop_allowed"))
    if isinstance(audit.get("drift"), dict):
        out["drift"] = {k: _rounded(audit["drift"].get(k)) for k in ("reference", "kind", "drop", "allowed")}
    out["attempts"] = [{k: _rounded(a.get(k)) for k in ("method", "options", "verdict", "mia_auc", "seconds")
                        if k in a} for a in audit.get("attempts", [])]
    out["reason"] = coarse_reason(audit.get("reason"))
    return out


def coarse(record: dict | None) -> dict | None:
    """A ledger record without its sizes (see above): what `e2urec ledger` shows without `--exact` and what `/jobs`
    always returns. The exact record stays in the ledger for the run's operator (`ledger --exact`)."""
    if record is None:
        return None
    out = {**record, "row_counts": None}
    if record.get("metrics"):
        metrics = {k: v for k, v in record["metrics"].items() if k != "test_n"}
        if "audit" in metrics:
            metrics["audit"] = coarse_audit(metrics["audit"])
        out["metrics"] = metrics
    return out
