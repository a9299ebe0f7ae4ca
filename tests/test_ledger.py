"""The ledger on its own: keyed hashes that resist the small-id attack, fingerprints, one record for identical
concurrent requests, orphans after a crash (a reused pid included, and as a read shows them), which requests a
version honours, closed connections."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from e2urec.errors import E2URecError
from e2urec.ops.ledger import ORPHANED, Ledger, settled

KEY = bytes(range(32))


def dump(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return "\n".join(db.iterdump())
    finally:
        db.close()


def test_hashes_are_keyed_and_ids_never_stored(tmp_path: Path) -> None:
    a, b = Ledger(tmp_path / "a.sqlite", KEY), Ledger(tmp_path / "b.sqlite", secrets.token_bytes(32))
    assert a.hash_ids(["42"]) == Ledger(tmp_path / "a.sqlite", KEY).hash_ids(["42"]), "same key, same hash"
    assert a.hash_ids(["42"]) != b.hash_ids(["42"]), "another run's ledger cannot be joined on hashes"
    assert a.hash_ids(["7", "42", "7"]) == a.hash_ids(["42", "7"]) == sorted([a.hash_id("7"), a.hash_id("42")])
    assert a.hash_id("42") == hmac.new(KEY, b"42", hashlib.sha256).hexdigest()
    record = a.add("users", a.hash_ids(["424242"]))
    assert a.find(a.fingerprint("users", a.hash_ids(["424242"])))["request_id"] == record["request_id"]
    assert a.find(a.fingerprint("interactions", a.hash_ids(["424242"]))) is None
    assert "424242" not in dump(tmp_path / "a.sqlite") and KEY.hex() not in dump(tmp_path / "a.sqlite")
    with pytest.raises(E2URecError, match="not this ledger's"):
        Ledger(tmp_path / "a.sqlite", secrets.token_bytes(32))
    assert Ledger(tmp_path / "a.sqlite").requests()[0]["request_id"] == record["request_id"], "reading needs no key"
    with pytest.raises(E2URecError, match="needs the run's ledger key"):
        Ledger(tmp_path / "a.sqlite").hash_id("1")


def small_id_attack(db_text: str, hashes: set[str], limit: int) -> set[int]:
    """The attack from issue 11: hash every candidate id below `limit` with each value the database holds as a
    prefix (the old scheme's salt) and with none; return the ids whose hash is stored."""
    prefixes = [b""] + [word.encode() for word in set(db_text.replace("'", " ").replace(",", " ").split())
                        if len(word) in (16, 32, 64) and all(c in "0123456789abcdef" for c in word)]
    found = set()
    for prefix in prefixes:
        for i in range(limit):
            if hashlib.sha256(prefix + str(i).encode()).hexdigest() in hashes:
                found.add(i)
    return found


def test_without_the_key_a_million_small_ids_reveal_nothing(tmp_path: Path) -> None:
    forgotten = ["796", "13", "416", "999999"]
    ledger = Ledger(tmp_path / "l.sqlite", KEY)
    ledger.update(ledger.add("users", ledger.hash_ids(forgotten))["request_id"], status="done", version="v0001")
    stored = set(ledger.forgotten("users"))
    assert len(stored) == 4
    assert small_id_attack(dump(tmp_path / "l.sqlite"), stored, 10**6) == set(), "recovered ids without the key"
    # The same attack against the old scheme (salt stored beside the hashes) recovers every id: the test can fail.
    salt = secrets.token_hex(16)
    salted = {hashlib.sha256(salt.encode() + f.encode()).hexdigest() for f in forgotten}
    assert small_id_attack(f"INSERT INTO settings VALUES('salt','{salt}');", salted, 10**6) == {796, 13, 416, 999999}


def test_an_old_salted_ledger_or_garbage_is_a_clear_error(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO settings VALUES ('salt', 'abc')")
    db.commit()
    db.close()
    with pytest.raises(E2URecError, match="older e2urec with salted hashes"):
        Ledger(old, KEY)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all " * 100)
    with pytest.raises(E2URecError, match="not a readable ledger"):
        Ledger(garbage, KEY)


def test_identical_concurrent_requests_share_one_record(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite", KEY)
    hashes = ledger.hash_ids(["5", "6"])
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def add() -> None:
        barrier.wait()
        ids.append(ledger.add("users", hashes)["request_id"])

    threads = [threading.Thread(target=add) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1 and len(ledger.requests()) == 1
    ledger.update(ids[0], status="done", version="v0001")
    assert ledger.add("users", hashes)["request_id"] != ids[0], "a finished request is not reopened"


def test_orphans_of_a_dead_process_are_failed(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite", KEY)
    mine = ledger.add("users", ledger.hash_ids(["1"]))
    dead = ledger.add("users", ledger.hash_ids(["2"]))
    ledger.update(dead["request_id"], status="running", owner=f"{mine['owner'].rsplit(':', 1)[0]}:{2**22 + 7}")
    assert ledger.fail_orphans() == [dead["request_id"]]
    record = ledger.get(dead["request_id"])
    assert record["status"] == "failed" and "stopped" in record["error"]
    assert ledger.get(mine["request_id"])["status"] == "queued", "a live process's request is left alone"


def test_a_reused_pid_does_not_keep_a_dead_request_running(tmp_path: Path) -> None:
    """The owner is host, pid and the pid's start time: a later process with the same pid is not the owner."""
    ledger = Ledger(tmp_path / "l.sqlite", KEY)
    record = ledger.add("users", ledger.hash_ids(["1"]))
    host_pid, _, start = record["owner"].partition("@")
    assert host_pid == f"{socket.gethostname()}:{os.getpid()}" and start, "the start time is recorded"
    ledger.update(record["request_id"], status="running", owner=f"{host_pid}@{start}0")  # same pid, other start
    assert ledger.fail_orphans() == [record["request_id"]]


def test_reading_shows_a_dead_process_request_as_failed_without_writing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite", KEY)
    alive = ledger.add("users", ledger.hash_ids(["1"]))
    dead = ledger.add("users", ledger.hash_ids(["2"]))
    ledger.update(dead["request_id"], status="running", owner=f"{socket.gethostname()}:{2**22 + 7}")
    before = dump(tmp_path / "l.sqlite")
    shown = settled(ledger.get(dead["request_id"]))
    assert shown["status"] == "failed" and shown["error"] == ORPHANED == "the process running it stopped (crash or " \
        "kill); submit the request again"
    assert settled(ledger.get(alive["request_id"]))["status"] == "queued" and settled(None) is None
    assert dump(tmp_path / "l.sqlite") == before and ledger.get(dead["request_id"])["status"] == "running"


def test_connections_are_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[sqlite3.Connection] = []
    real = sqlite3.connect

    def connect(*args, **kwargs) -> sqlite3.Connection:
        opened.append(real(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr("e2urec.ops.ledger.sqlite3.connect", connect)
    ledger = Ledger(tmp_path / "l.sqlite", KEY)
    record = ledger.add("users", ledger.hash_ids(["1"]))
    ledger.update(record["request_id"], status="running")
    ledger.requests()
    assert len(opened) >= 4
    for db in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            db.execute("SELECT 1")


def test_honoured_by_follows_versions_not_submission_order(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite", KEY)
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
