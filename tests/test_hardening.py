"""Issue #31, a deletion that nothing undoes by accident: `init --overwrite` never replaces a run that took
requests; the ledger key lives outside every e2urec folder; forget-derived scratch left by a killed process is
swept by the next command that finds it (or resumed by a rerun of the same command); a dead process's request
reads as failed; row counts are left out of `ledger` and `/jobs` unless the caller holds the run's key."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.errors import E2URecError
from e2urec.ops.forget import recover
from e2urec.ops.ledger import FINAL, ORPHANED, bucket
from e2urec.ops.run import Run, init_run
from e2urec.ops.service import create_app
from e2urec.scratch import OWNER_FILE, Owner, claim, process_start, read_owner, reclaim
from e2urec.unlearning.runner import unlearn

runner = CliRunner()
DEAD = f"{socket.gethostname()}:{2**22 + 7}"  # above Linux's largest pid: never a running process
REUSED = f"{socket.gethostname()}:{os.getpid()}@{'0' * 8}-1"  # this pid, but started at another time
QUICK = {"max_steps": 1, "batch_size": 8}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def new_run(trained: Path, tmp_path: Path) -> Path:
    return init_run(tmp_path / "run", trained / "data", trained / "original", key_file=tmp_path / "keys" / "run.key")


def honoured(run: Path, counts: dict | None = None, audit: dict | None = None) -> str:
    """A finished request recorded in the run's ledger (the data is not touched: these tests are about the record)."""
    ledger = Run(run).ledger()
    record = ledger.add("users", ledger.hash_ids(["107"]))
    ledger.update(record["request_id"], status="done", version="v0000", seconds=3.5,
                  row_counts=counts or {"events_deleted": 107, "train_samples_removed": 14},
                  metrics={"auc": 0.61, "test_n": 57, "audit": audit or {"verdict": "insufficient"}})
    return record["request_id"]


def test_init_overwrite_refuses_a_run_that_took_requests(trained: Path, tmp_path: Path) -> None:
    """The repro of #31: `init --overwrite` on a run with an honoured request wiped its ledger and brought the user
    back. Now: exit 2, a message on how to retire a run on purpose, not a byte changed, no key made."""
    run = new_run(trained, tmp_path)
    honoured(run)
    before, keys = tree(run), tree(tmp_path / "keys")
    args = ["init", "--run", str(run), "--data", str(trained / "data"), "--model", str(trained / "original"),
            "--overwrite", "--key-file", str(tmp_path / "new.key")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "1 deletion requests (1 honoured)" in result.output and "move or delete the folder" in result.output
    assert "nothing was changed" in result.output and "107" not in result.output
    assert tree(run) == before and tree(tmp_path / "keys") == keys and not (tmp_path / "new.key").exists()
    with pytest.raises(E2URecError, match="permanent"):  # the library call refuses too, before any work
        init_run(run, trained / "data", trained / "original", overwrite=True, key_file=tmp_path / "new.key")
    assert tree(run) == before and not (tmp_path / "new.key").exists()


def test_init_overwrite_of_a_failed_request_or_an_unreadable_ledger_is_refused_too(trained: Path,
                                                                                   tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    ledger = Run(run).ledger()
    ledger.update(ledger.add("users", ledger.hash_ids(["1"]))["request_id"], status="failed", error="boom")
    assert runner.invoke(app, ["init", "--run", str(run), "--data", str(trained / "data"), "--model",
                               str(trained / "original"), "--overwrite"]).exit_code == 2
    (run / "ledger.sqlite").write_bytes(b"garbage, not a database " * 64)
    before = tree(run)
    result = runner.invoke(app, ["init", "--run", str(run), "--data", str(trained / "data"), "--model",
                                 str(trained / "original"), "--overwrite"])
    assert result.exit_code == 2 and "cannot be read" in result.output and tree(run) == before


def test_init_overwrite_of_a_run_without_requests_still_works(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    old_id = json.loads((run / "run.json").read_text())["run_id"]
    init_run(run, trained / "data", trained / "original", overwrite=True, key_file=tmp_path / "second.key")
    assert json.loads((run / "run.json").read_text())["run_id"] != old_id and Run(run).ledger().requests() == []


@pytest.mark.parametrize("where", ["data/k.key", "data/sub/k.key", "original/k.key", "original/sub/deep/k.key",
                                   "other-run/k.key", "eval/k.key", "bench/k.key", "new-run/k.key"])
def test_a_key_inside_any_e2urec_folder_is_refused(trained: Path, tmp_path: Path, where: str) -> None:
    for name in ("data", "original"):
        (tmp_path / name).symlink_to(trained / name, target_is_directory=True)
    (tmp_path / "other-run").mkdir()
    (tmp_path / "other-run" / "run.json").write_text("{}")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text("{}")
    (tmp_path / "bench" / "seed-0").mkdir(parents=True)
    shared = tree(trained)
    result = runner.invoke(app, ["init", "--run", str(tmp_path / "new-run"), "--data", str(tmp_path / "data"),
                                 "--model", str(tmp_path / "original"), "--key-file", str(tmp_path / where)])
    assert result.exit_code == 2, result.output
    assert "--key-file" in result.output and "lies inside" in result.output and "nothing was changed" in result.output
    assert not (tmp_path / where).exists() and not (tmp_path / "new-run").exists() and tree(trained) == shared


def test_owner_tells_a_reused_pid_from_its_process(tmp_path: Path) -> None:
    me = Owner.me()
    assert me.alive() and me.is_me() and Owner.parse(me.token()) == me and me.start == process_start(os.getpid())
    assert not Owner.parse(REUSED).alive(), "a pid reused by a later process is not the owner"
    assert not Owner.parse(DEAD).alive() and Owner.parse("garbage") is None
    assert Owner.parse(f"{socket.gethostname()}:{os.getpid()}").alive(), "an old `host:pid` record: pid alone"
    assert Owner.parse(f"elsewhere.example:{2**22 + 7}").alive(), "another host's process cannot be checked"


def plant(folder: Path, owner: str | None, command: str = "unlearn", fingerprint: str = "other") -> Path:
    """Scratch as a killed process leaves it: a forget-derived file and (unless None) its owner record."""
    (folder / "augmented").mkdir(parents=True)
    (folder / "augmented" / "model.safetensors").write_bytes(b"forget-derived")
    if owner is not None:
        (folder / OWNER_FILE).write_text(json.dumps({"owner": owner, "command": command,
                                                     "fingerprint": fingerprint}))
    return folder


def test_reclaim_resumes_the_same_command_sweeps_the_rest_and_spares_the_living(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "e2urec.scratch")
    same = plant(tmp_path / ".same.work", DEAD, fingerprint="f")
    assert reclaim(same, "unlearn", "f", "forget-derived scratch") is True
    assert (same / "augmented" / "model.safetensors").is_file() and "resuming from" in caplog.text
    assert Owner.parse(read_owner(same)["owner"]).is_me(), "the rerun owns it now"
    # another fingerprint, another command, no owner record at all: swept, and stderr says so
    for i, (owner, command, fingerprint) in enumerate(((REUSED, "unlearn", "other"), (DEAD, "forget", "f"),
                                                       (None, "unlearn", "f"))):
        folder = plant(tmp_path / f".swept-{i}.work", owner, command, fingerprint)
        assert reclaim(folder, "unlearn", "f", "forget-derived scratch") is False
        assert not (folder / "augmented").exists() and Owner.parse(read_owner(folder)["owner"]).is_me()
    assert caplog.text.count("removed forget-derived scratch left by a stopped process") == 3
    fresh = claim(tmp_path / "fresh", "unlearn", "f")
    assert [p.name for p in fresh.iterdir()] == [OWNER_FILE] and not list(tmp_path.glob("fresh.claim-*"))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        wait_for(lambda: process_start(child.pid) is not None)
        live = plant(tmp_path / ".live.work", Owner(socket.gethostname(), child.pid, process_start(child.pid)).token(),
                     fingerprint="f")
        before = tree(live)
        with pytest.raises(E2URecError, match="still running"):
            reclaim(live, "unlearn", "f", "forget-derived scratch")
        assert tree(live) == before
    finally:
        child.kill()
        child.wait()
    assert not Owner.parse(read_owner(live)["owner"]).alive(), "once its process is gone, the owner is dead"


def test_unlearn_sweeps_scratch_a_killed_run_left(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    """kill -9 leftovers of `unlearn --out OUT`, simulated: `.OUT.work` with an augmented model, a half-written
    `.OUT.tmp-*`, an owner that is gone. The next `unlearn` to the same --out sweeps both and says so."""
    caplog.set_level(logging.WARNING, "e2urec.scratch")
    out = workspace / "swept"
    plant(workspace / ".swept.work", REUSED)
    (workspace / ".swept.tmp-abc123").mkdir()
    (workspace / ".swept.tmp-abc123" / "model.safetensors").write_bytes(b"half")
    unlearn("neggrad", workspace / "original", workspace / "data", out, QUICK)
    assert (out / "meta.json").is_file() and not (workspace / ".swept.work").exists()
    assert not (workspace / ".swept.tmp-abc123").exists()
    assert "removed forget-derived scratch" in caplog.text and "a half-written folder" in caplog.text


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_kill_9_of_unlearn_then_the_same_command_resumes(workspace: Path) -> None:
    """A real `e2urec unlearn` killed (SIGKILL) after its first epoch's checkpoint: its scratch outlives it with a
    dead owner; rerunning the same command resumes from that checkpoint and purges the scratch at the end."""
    out = workspace / "resumed"
    work = workspace / ".resumed.work"
    args = [sys.executable, "-m", "e2urec", "unlearn", "--method", "neggrad", "--model", str(workspace / "original"),
            "--data", str(workspace / "data"), "--out", str(out), "--set", "batch_size=2", "--set", "epochs=30"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (work / "resume" / "state.json").is_file() or proc.poll() is not None)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists() and (work / "resume" / "state.json").is_file(), "killed after an epoch, before the end"
    assert not Owner.parse(read_owner(work)["owner"]).alive()
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr and "resuming after epoch" in rerun.stdout + rerun.stderr
    assert (out / "meta.json").is_file() and not work.exists()


def test_forget_recovery_sweeps_a_dead_request_scratch_and_says_so(trained: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "e2urec.scratch")
    run = new_run(trained, tmp_path)
    deployed = Run(run)
    ledger = deployed.ledger()
    record = ledger.add("users", ledger.hash_ids(["424242"]))
    ledger.update(record["request_id"], status="running", owner=REUSED)
    plant(deployed.work / record["request_id"], REUSED, command="forget")
    (deployed.work / "no-owner" / "job-data").mkdir(parents=True)  # an older e2urec's, or killed before the record
    mine = deployed.scratch("mine")
    assert Owner.parse(read_owner(mine)["owner"]).is_me() and json.loads((mine / OWNER_FILE).read_text())
    with deployed.lock():
        assert recover(deployed, ledger) == [record["request_id"]]
    assert not deployed.work.exists() and ledger.get(record["request_id"])["status"] == "failed"
    assert "removed 2 scratch folder(s)" in caplog.text and "424242" not in caplog.text


def test_ledger_reads_a_dead_process_request_as_failed_and_writes_nothing(trained: Path, tmp_path: Path) -> None:
    run = new_run(trained, tmp_path)
    ledger = Run(run).ledger()
    dead, swapped = (ledger.add("users", ledger.hash_ids([u]))["request_id"] for u in ("1", "2"))
    ledger.update(dead, status="running", owner=REUSED)
    ledger.update(swapped, status="running", owner=DEAD)
    meta = json.loads((run / "current" / "version.json").read_text())  # as if it died just after the swap
    (run / "current" / "version.json").write_text(json.dumps({**meta, "request_id": swapped, "status": "done"}))
    before = tree(run)
    result = runner.invoke(app, ["ledger", "--run", str(run)], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "│ running" not in result.output and "│ failed" in result.output
    records = Run(run).records()
    assert [r["status"] for r in records] == ["failed", "done"] and records[0]["error"] == ORPHANED
    assert tree(run) == before and [r["status"] for r in ledger.requests()] == ["running", "running"]


def test_bucket_is_an_order_of_magnitude() -> None:
    assert [bucket(n) for n in (0, 1, 10, 11, 100, 101, 107, 1000, 1001, 12345)] == [
        "0", "1–10", "1–10", "11–100", "11–100", "101–1,000", "101–1,000", "101–1,000", "1,001–10,000",
        "10,001–100,000"]
    assert bucket(None) is None and bucket(True) is True


AUDIT = {"verdict": "insufficient", "forget_prompts": 14, "forget_yes": 9, "non_members": 500, "threshold": 0.6712,
         "before": {"mia_auc": 0.61234, "se": 0.0734, "compared": 14}, "after": {"mia_auc": 0.5521, "se": 0.0734,
                                                                                 "compared": 14},
         "forgetting_effect": {"effect": 0.01234, "se": 0.02, "z": 0.6}, "drift": {"rows": 187, "drop": 0.001,
                                                                                   "allowed": 0.05, "se": 0.01},
         "reason": "14 forget prompts comparable with non-members; the audit needs 20 (MIA AUC 0.612 ≤ 0.671)",
         "attempts": [{"method": "e2urec", "verdict": "insufficient", "mia_auc": 0.5521, "seconds": 4.2}]}


def test_ledger_and_jobs_leave_out_counts_exact_only_with_the_key(trained: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact row counts single out most ML-100K users, and even orders of magnitude some of them
    (benchmarks/ledger_counts.py): `ledger` and `/jobs` leave out the counts and every figure computed from them;
    `ledger --exact` shows them, and needs the run's key."""
    run = new_run(trained, tmp_path)
    rid = honoured(run, audit=AUDIT)
    listed = runner.invoke(app, ["ledger", "--run", str(run)], terminal_width=250)
    assert listed.exit_code == 0, listed.output
    assert f"{rid}: insufficient AUC 0.612→0.552" in listed.output and "left out" in listed.output
    shown = listed.output.replace(rid, "<request>").replace(str(run), "<run>")  # hex and paths hold digits
    assert not any(figure in shown for figure in ("107", "14", "0.671", "n=", "101–1,000", "11–100"))
    with TestClient(create_app(run)) as client:
        job = client.get(f"/jobs/{rid}")
    assert job.status_code == 200, job.text
    body = job.json()
    audit = body["audit"]
    assert body["row_counts"] is None and "test_n" not in body["metrics"] and body["metrics"]["auc"] == 0.61
    assert not {"forget_prompts", "forget_yes", "non_members", "threshold"} & set(audit)
    assert "se" not in audit["after"] and "compared" not in audit["after"] and "rows" not in audit["drift"]
    assert audit["after"]["mia_auc"] == 0.552 and audit["attempts"][0]["verdict"] == "insufficient"
    assert audit["reason"] == "too few forget prompts comparable with non-members; the audit needs 20 (MIA AUC " \
                              "0.61 ≤ 0.67)"
    counted = json.dumps([body["row_counts"], body["metrics"], audit])
    assert not any(figure in counted for figure in ("107", "14", "0.671", "57"))

    exact = runner.invoke(app, ["ledger", "--run", str(run), "--exact"], terminal_width=250)
    assert exact.exit_code == 0 and "events_deleted 107, train_samples_removed 14" in exact.output
    assert "n=14" in exact.output and "≤0.671" in exact.output
    (tmp_path / "keys" / "run.key").rename(tmp_path / "away.key")
    refused = runner.invoke(app, ["ledger", "--run", str(run), "--exact"], terminal_width=250)
    assert refused.exit_code == 2 and "ledger key file is missing" in refused.output and "107" not in refused.output
    monkeypatch.setenv("E2UREC_KEY_FILE", str(tmp_path / "away.key"))
    assert runner.invoke(app, ["ledger", "--run", str(run), "--exact"]).exit_code == 0
    assert all(r["status"] in FINAL for r in Run(run).records())


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path: Path) -> None:
    from e2urec.cli.common import parse_ids

    ids = tmp_path / "ids.txt"
    ids.write_bytes("\ufeff42\n77\n".encode())
    assert parse_ids(f"@{ids}") == ["42", "77"]


def test_a_bad_timestamp_is_not_called_an_id() -> None:
    import pandas as pd

    from e2urec.data.prepare import cast_like

    with pytest.raises(E2URecError, match="1 of 1 values are not integers"):
        cast_like(pd.Series(["8.8e8"]), pd.Series([1], dtype="int64"), "gone.csv column timestamp")


def test_wrong_messages_name_the_right_thing(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """#31 item 9: every role `train` takes is listed; a short token from the environment names the variable; an
    unknown backbone fails at once when the hub cannot be reached."""
    result = CliRunner().invoke(app, ["train", "--data", str(workspace / "data"), "--out", str(workspace / "r"),
                                      "--role", "bogus"])
    assert result.exit_code == 2 and all(f"'{role}'" in result.output
                                         for role in ("original", "retrain", "sisa", "receraser"))
    from e2urec.ops.access import load_tokens

    monkeypatch.setenv("E2UREC_API_TOKEN", "short")
    with pytest.raises(E2URecError, match="^E2UREC_API_TOKEN: the token must be at least 16"):
        load_tokens()
    import e2urec.model.backbone as backbone

    monkeypatch.setattr(backbone, "_hub_reachable", lambda timeout=3.0: False)
    started = time.perf_counter()
    with pytest.raises(E2URecError, match="hub cannot be reached from here"):
        backbone.load_backbone("nobody/no-such-model-e2urec")
    assert time.perf_counter() - started < 5
