"""The ledger on its own: salted hashes, fingerprints, which requests a version honours."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from e2urec.ops.ledger import Ledger


def test_hashes_are_salted_per_run_and_ids_never_stored(tmp_path: Path) -> None:
    a, b = Ledger(tmp_path / "a.sqlite"), Ledger(tmp_path / "b.sqlite")
    assert a.hash_ids(["42"]) == Ledger(tmp_path / "a.sqlite").hash_ids(["42"]), "the salt persists"
    assert a.hash_ids(["42"]) != b.hash_ids(["42"]), "another run's ledger cannot be joined on hashes"
    assert a.hash_ids(["7", "42", "7"]) == a.hash_ids(["42", "7"]) == sorted([a.hash_id("7"), a.hash_id("42")])
    record = a.add("users", a.hash_ids(["424242"]))
    assert a.find(a.fingerprint("users", a.hash_ids(["424242"])))["request_id"] == record["request_id"]
    assert a.find(a.fingerprint("interactions", a.hash_ids(["424242"]))) is None
    with sqlite3.connect(tmp_path / "a.sqlite") as db:
        assert "424242" not in "\n".join(db.iterdump())


def test_honoured_by_follows_versions_not_submission_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    queued_first = ledger.add("users", ledger.hash_ids(["1"]))
    from_shell = ledger.add("users", ledger.hash_ids(["2"]))
    ledger.update(from_shell["request_id"], status="done", version="v0001")  # got the lock first
    ledger.update(queued_first["request_id"], status="done", version="v0002")
    failed = ledger.add("users", ledger.hash_ids(["3"]))
    ledger.update(failed["request_id"], status="failed", error="boom")
    assert ledger.honoured_by("v0000") == []
    assert ledger.honoured_by("v0001") == [from_shell["request_id"]]
    assert ledger.honoured_by("v0002") == [from_shell["request_id"], queued_first["request_id"]]
    assert ledger.forgotten("users") == set(ledger.hash_ids(["1", "2"]))
