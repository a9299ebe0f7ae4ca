"""Deletion requests on a run: ledger, data rebuild, version swap, purge, privacy, and the robustness cases
(unknown ids, repeated requests, kill -9 during train and forget, planted pickles, concurrent requests)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.data.store import load_prepared, load_tables
from e2urec.errors import E2URecError
from e2urec.ops.forget import forget, read_request
from e2urec.ops.ledger import Ledger
from e2urec.ops.run import init_run

runner = CliRunner()
QUICK = {"max_steps": 2, "batch_size": 8, "aug_steps": 2}


def new_run(trained: Path, tmp_path: Path) -> Path:
    return init_run(tmp_path / "run", trained / "data", trained / "original", QUICK)


def current_data(run: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    return load_prepared(run / "current" / "data")[0], load_tables(run / "current" / "data")


def train_users(run: Path, n: int) -> list[str]:
    samples, _ = current_data(run)
    return [str(u) for u in samples.loc[samples["split"] == "train", "user_id"].value_counts().index[:n]]


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_user_request_end_to_end(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    user = train_users(run, 1)[0]
    before, _ = current_data(run)
    n_user = int((before["user_id"].astype(str) == user).sum())
    result = runner.invoke(app, ["forget", "--run", str(run), "--users", user])
    assert result.exit_code == 0, result.output
    samples, tables = current_data(run)
    assert user not in set(samples["user_id"].astype(str)), "every split loses the user's rows"
    assert user not in set(tables["events"]["user_id"].astype(str)) and user not in set(
        tables["users"]["user_id"].astype(str))
    assert len(samples) == len(before) - n_user and not samples["forget"].any()
    assert os.readlink(run / "current") == os.path.join("versions", "v0001")
    assert sorted(p.name for p in (run / "versions").iterdir()) == ["v0001"], "the old version is purged"
    assert not (run / ".work").exists(), "augmented model, caches and scratch data are purged"

    ledger = Ledger(run / "ledger.sqlite")
    (record,) = ledger.requests()
    assert record["status"] == "done" and record["version"] == "v0001" and record["seconds"] > 0
    assert record["row_counts"]["samples_deleted"] == n_user and 0 <= record["metrics"]["auc"] <= 1
    assert record["id_hashes"] == ledger.hash_ids([user]) and len(record["id_hashes"][0]) == 64
    assert ledger.honoured_by("v0001") == [record["request_id"]]
    meta = json.loads((run / "current" / "version.json").read_text())
    assert meta["request_id"] == record["request_id"] and meta["parent"] == "v0000"

    listed = runner.invoke(app, ["ledger", "--run", str(run)])
    assert listed.exit_code == 0 and record["request_id"] in listed.output and "v0001" in listed.output
    again = runner.invoke(app, ["forget", "--run", str(run), "--users", user])
    assert again.exit_code == 0 and "already honoured" in again.output
    assert len(ledger.requests()) == 1 and os.readlink(run / "current").endswith("v0001")
    privacy_check(run, user, before[before["user_id"].astype(str) == user])


def privacy_check(run: Path, user: str, rows: pd.DataFrame) -> None:
    """No file under RUN (the ledger's hashes aside) holds the forgotten user's rows, ids or prompts."""
    prompts = [p.encode() for p in rows["prompt"]]
    keys = set(zip(rows["item_id"], rows["timestamp"], strict=True))
    for path in run.rglob("*"):
        if not path.is_file() or path.name.startswith("ledger.sqlite"):
            continue
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
            if "user_id" in table:
                assert user not in set(table["user_id"].astype(str)), f"{path} holds the user's id"
            if "prompt" in table:
                text = set(table["prompt"]) | set(table.get("prompt_original", pd.Series(dtype=object)).dropna())
                assert not text & set(rows["prompt"]), f"{path} holds the user's prompts"
            if {"item_id", "timestamp", "user_id"} <= set(table):
                mine = table[table["user_id"].astype(str) == user]
                assert not set(zip(mine["item_id"], mine["timestamp"], strict=True)) & keys
            continue
        blob = path.read_bytes()
        assert not any(p in blob for p in prompts), f"{path} holds a prompt of the forgotten user"
        if path.suffix == ".json":
            assert f'"{user}"' not in blob.decode(), f"{path} names the forgotten user"
    with sqlite3.connect(run / "ledger.sqlite") as db:
        dumped = "\n".join(db.iterdump())
    assert f"'{user}'" not in dumped and not any(p.decode()[:60] in dumped for p in prompts)


def test_unknown_ids_are_a_clear_error_and_change_nothing(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    before = snapshot(run)
    result = runner.invoke(app, ["forget", "--run", str(run), "--users", "999999,not-a-number"])
    assert result.exit_code == 2 and "ids must be integers" in result.output
    result = runner.invoke(app, ["forget", "--run", str(run), "--users", "999999"])
    assert result.exit_code == 2 and "not in the data" in result.output and "999999" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id\n1,999999\n")
    result = runner.invoke(app, ["forget", "--run", str(run), "--interactions", str(bad)])
    assert result.exit_code == 2 and "not in the data" in result.output
    assert runner.invoke(app, ["forget", "--run", str(run)]).exit_code == 2
    assert runner.invoke(app, ["forget", "--run", str(tmp_path / "nope"), "--users", "1"]).exit_code == 2
    after = {k: v for k, v in snapshot(run).items() if not k.startswith("ledger.sqlite") and k != ".lock"}
    assert after == {k: v for k, v in before.items() if k != ".lock"}
    assert Ledger(run / "ledger.sqlite").requests() == []
    samples, _ = current_data(run)
    user = train_users(run, 1)[0]
    with pytest.raises(AssertionError):  # the privacy check does see a user who is still there
        privacy_check(run, user, samples[samples["user_id"].astype(str) == user])


def test_interaction_request_rebuilds_later_histories(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    samples, tables = current_data(run)
    train_rows = samples[samples["split"] == "train"]
    user = train_rows["user_id"].value_counts().index[0]
    mine = samples[samples["user_id"] == user].sort_values("timestamp")
    target = mine.iloc[0]  # its item shows up in the user's later prompts' histories
    title = tables["items"].set_index("item_id").loc[target["item_id"], "title"]
    later = mine[mine["timestamp"] > target["timestamp"]]
    assert later["prompt"].str.contains(title, regex=False).any()
    csv = tmp_path / "gone.csv"
    pd.DataFrame([target[["user_id", "item_id", "timestamp"]]]).to_csv(csv, index=False)
    record = forget(run, read_request(interactions=csv))
    new, new_tables = current_data(run)
    assert target["sample_id"] not in set(new["sample_id"])
    kept = new[new["user_id"] == user]
    assert not kept["prompt"].str.contains(f'"{title}"', regex=False).any(), "later histories are rebuilt"
    assert len(new_tables["events"]) == len(tables["events"]) - 1
    assert record["row_counts"]["prompts_rebuilt"] > 0
    assert record["row_counts"]["forget_prompts"] >= 1 + int((later["split"] == "train").any())
    assert (new["user_id"] == user).sum() >= len(later) - record["row_counts"]["samples_dropped_short_history"]


def test_concurrent_requests_are_serialised(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    users = train_users(run, 2)
    errors: list[BaseException] = []

    def go(user: str) -> None:
        try:
            forget(run, read_request(users=[user]), log=lambda _: None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    records = Ledger(run / "ledger.sqlite").requests()
    assert [r["status"] for r in records] == ["done", "done"]
    assert sorted(r["version"] for r in records) == ["v0001", "v0002"]
    meta = json.loads((run / "current" / "version.json").read_text())
    assert meta["version"] == "v0002" and meta["parent"] == "v0001", "the second built on the first"
    samples, _ = current_data(run)
    assert not set(users) & set(samples["user_id"].astype(str))


def test_planted_pickle_in_the_current_version_is_refused(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    (run / "current" / "model" / "pytorch_model.bin").write_bytes(b"\x80\x04planted")
    with pytest.raises(E2URecError, match="pickle"):
        forget(run, read_request(users=train_users(run, 1)))
    assert os.readlink(run / "current").endswith("v0000")
    assert [r["status"] for r in Ledger(run / "ledger.sqlite").requests()] == ["failed"]


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "e2urec", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def test_kill_during_forget_then_rerun_completes(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    user = train_users(run, 1)[0]
    proc = cli("forget", "--run", str(run), "--users", user)
    wait_for(lambda: (run / ".work").exists() and any((run / "versions").glob(".v0001*")))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.readlink(run / "current").endswith("v0000"), "an unfinished request never becomes current"
    assert [r["status"] for r in Ledger(run / "ledger.sqlite").requests()] == ["running"]
    result = runner.invoke(app, ["forget", "--run", str(run), "--users", user])
    assert result.exit_code == 0, result.output
    (record,) = Ledger(run / "ledger.sqlite").requests()
    assert record["status"] == "done" and os.readlink(run / "current").endswith(record["version"])
    assert [p.name for p in (run / "versions").iterdir()] == [record["version"]]
    assert not (run / ".work").exists() and not list(run.glob(".current.*"))
    load_prepared(run / "current" / "data")  # checksums hold: nothing half-written


def test_kill_during_train_then_rerun_completes(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = ("train", "--data", str(trained / "data"), "--out", str(out), "--backbone", "tiny", "--epochs", "6",
            "--batch-size", "16", "--max-steps", "40")
    proc = cli(*args)
    resume = tmp_path / ".model.resume"
    wait_for(lambda: (resume / "state.json").is_file())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "no half-written model folder"
    result = subprocess.run([sys.executable, "-m", "e2urec", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch" in result.stdout + result.stderr
    assert (out / "meta.json").is_file() and not resume.exists()
