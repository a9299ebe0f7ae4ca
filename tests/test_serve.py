"""The scoring service on a tiny real run: scores, its robustness to bad bodies, and deletion jobs end to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from e2urec.checkpoint import load_model
from e2urec.cli import app
from e2urec.data.prepare import PromptRenderer
from e2urec.data.samples import history_index
from e2urec.data.store import load_prepared, load_tables
from e2urec.model.scoring import score
from e2urec.ops.access import Tokens
from e2urec.ops.run import Run, init_run
from e2urec.ops.schemas import Problem
from e2urec.ops.service import create_app

MAX_PAIRS, MAX_BYTES = 20, 20_000


@pytest.fixture(scope="module")
def run(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    return init_run(root / "run", trained / "data", trained / "original",
                    {"max_steps": 2, "batch_size": 8, "aug_steps": 2}, key_file=root / "run.key",
                    audit={"audit_min_prompts": 100_000})  # recorded, never escalated (that is test_audit.py)


@pytest.fixture(scope="module")
def client(run: Path) -> Iterator[TestClient]:
    with TestClient(create_app(run, max_pairs=MAX_PAIRS, max_body_bytes=MAX_BYTES)) as client:
        yield client


@pytest.fixture(scope="module")
def ids(run: Path) -> dict[str, int]:
    """`gone` and `other`: the users with the second and third most training samples (forgotten last; not the
    heaviest, whose forgetting costs several times more and shows the jobs' mechanics no better); `kept`: scored."""
    samples, _ = load_prepared(Run(run).current() / "data")
    ranked = samples.loc[samples["split"] == "train", "user_id"].value_counts().index[1:]
    events = load_tables(Run(run).current() / "data")["events"]
    kept = next(u for u in events["user_id"].iloc[::-1] if u not in ranked[:2])
    return {"gone": int(ranked[0]), "other": int(ranked[1]), "kept": int(kept),
            "item": int(events["item_id"].iloc[0]), "item2": int(events["item_id"].iloc[-1])}


def test_health_names_the_version_and_an_empty_queue(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok", "version": "v0000", "honours": [], "queue": 0}


def test_score_one_and_many(client: TestClient, ids: dict[str, int]) -> None:
    one = client.post("/score", json={"user_id": ids["kept"], "item_id": ids["item"]})
    assert one.status_code == 200
    body = {"pairs": [{"user_id": ids["kept"], "item_id": ids["item"]},
                      {"user_id": ids["gone"], "item_id": ids["item2"]},
                      {"user_id": ids["kept"], "item_id": ids["item2"]}]}
    many = client.post("/score", json=body).json()
    again = client.post("/score", json=body).json()
    p = [s["p_yes"] for s in many["scores"]]
    assert many["version"] == "v0000" and all(0.0 <= v <= 1.0 for v in p)
    assert [s["user_id"] for s in many["scores"]] == [ids["kept"], ids["gone"], ids["kept"]]  # in order
    assert p == pytest.approx([s["p_yes"] for s in again["scores"]], abs=1e-6)
    assert one.json()["scores"][0]["p_yes"] == pytest.approx(p[0], abs=1e-5)


def test_score_is_the_training_prompt_after_the_users_last_event(client: TestClient, run: Path,
                                                                 ids: dict[str, int]) -> None:
    """Built independently, as prepare builds a sample: append the target as the user's newest event."""
    version = Run(run).current()
    tables = load_tables(version / "data")
    events = tables["events"]
    target = pd.DataFrame({"user_id": [ids["kept"]], "item_id": [ids["item"]], "rating": [0.0],
                           "timestamp": [events["timestamp"].max() + 1]})
    extended = pd.concat([events, target], ignore_index=True)
    index, count = history_index(pd.factorize(extended["user_id"])[0], np.ones(len(extended), dtype=bool), 10)
    assert count[-1] == (events["user_id"] == ids["kept"]).sum()
    prompt = PromptRenderer(extended, tables["items"], tables["users"], "movie")(index[-1:], target)[0][0]
    assert client.app.state.service.scorer().prompts([ids["kept"]], [ids["item"]]) == [prompt]
    expected = score(load_model(version / "model")[0], [prompt])[0]
    got = client.post("/score", json={"user_id": ids["kept"], "item_id": ids["item"]}).json()["scores"][0]["p_yes"]
    assert got == pytest.approx(float(expected), abs=1e-5)


def test_unknown_user_or_item_is_404_counting_without_naming_it(client: TestClient, ids: dict[str, int]) -> None:
    user = client.post("/score", json={"user_id": 987654, "item_id": ids["item"]})
    item = client.post("/score", json={"pairs": [{"user_id": ids["kept"], "item_id": 876543}]})
    assert user.status_code == 404 and "1 users not in the data" in user.json()["detail"]
    assert item.status_code == 404 and "1 items not in the data" in item.json()["detail"]
    forget_user = client.post("/forget", json={"user_ids": [987654]})
    forget_row = client.post("/forget", json={"interactions": [{"user_id": ids["kept"], "item_id": 876543}]})
    assert forget_user.status_code == 404 and "1 users not in the data" in forget_user.json()["detail"]
    assert forget_row.status_code == 404 and "1 interactions" in forget_row.json()["detail"]
    # The JSON field, not the CLI's flag (--users) that the same check names in a shell.
    assert forget_user.json()["detail"].startswith("user_ids: ") and "--" not in forget_user.text
    assert forget_row.json()["detail"].startswith("interactions: ") and "--" not in forget_row.text
    for response in (user, item, forget_user, forget_row):
        assert "987654" not in response.text and "876543" not in response.text
    assert client.get("/jobs/no-such-job").status_code == 404


@pytest.mark.parametrize("value", ["1e2", "13.0", "1.3e1", " 0x10", "99999999999999999999999", "42", True, 4.0])
def test_ids_are_parsed_exactly_never_coerced(client: TestClient, ids: dict[str, int], value) -> None:
    """ML-100K's ids are integers, and the schema says so: anything else is refused before it is read."""
    response = client.post("/score", json={"user_id": value, "item_id": ids["item"]})
    assert response.status_code == 422 and "user_id" in response.json()["detail"], response.text


@pytest.mark.parametrize("value", [2**63, -2**63 - 1, 10**40])
def test_an_integer_beyond_the_id_range_is_unknown_not_malformed(client: TestClient, ids: dict[str, int],
                                                                 value: int) -> None:
    """The schema calls every integer an id (a bound near 2**63 is not exact in JSON's doubles): one that no
    int64 can hold names no row, so it is answered like any unknown id."""
    scored = client.post("/score", json={"user_id": value, "item_id": ids["item"]})
    assert scored.status_code == 404 and "1 users not in the data" in scored.json()["detail"]
    deleted = client.post("/forget", json={"interactions": [{"user_id": ids["kept"], "item_id": ids["item"],
                                                              "timestamp": value}]})
    assert deleted.status_code == 404 and deleted.json()["detail"].startswith("interactions: 1 interactions")
    assert str(value) not in scored.text + deleted.text


@pytest.mark.parametrize(("path", "kwargs"), [
    ("/score", {"content": b'{"user_id": 1,', "headers": {"content-type": "application/json"}}),
    ("/score", {"content": b"user_id=1&item_id=2", "headers": {"content-type": "application/x-www-form-urlencoded"}}),
    ("/score", {"content": b"\xff\xfe not text"}),
    ("/score", {"content": '{"user_id": 1, "item_id": 2}'.encode("utf-16"),
                "headers": {"content-type": "application/json"}}),
    ("/score", {"content": b'{"user_id": "\xe9", "item_id": 2}', "headers": {"content-type": "application/json"}}),
    ("/score", {"json": [1, 2]}),
    ("/score", {"json": {"user_id": 1}}),
    ("/score", {"json": {"user_id": 1, "item_id": 2, "extra": 3}}),
    ("/score", {"json": {"user_id": True, "item_id": 2}}),
    ("/score", {"json": {"user_id": 1.5, "item_id": 2}}),
    ("/score", {"json": {"user_id": "x" * 200, "item_id": 2}}),
    ("/score", {"json": {"user_id": "not-a-number", "item_id": 2}}),  # ids are integers in ML-100K
    ("/score", {"json": {"pairs": []}}),
    ("/forget", {"json": {}}),
    ("/forget", {"json": {"user_ids": [1], "interactions": [{"user_id": 1, "item_id": 2}]}}),
    ("/forget", {"json": {"user_ids": []}}),
    ("/forget", {"json": {"interactions": [{"user_id": 1, "item_id": 2, "timestamp": 3}, {"user_id": 1,
                                                                                         "item_id": 4}]}}),
])
def test_malformed_bodies_are_422_with_a_reason(client: TestClient, path: str, kwargs: dict) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_too_many_pairs_or_too_large_a_body_is_413(client: TestClient, ids: dict[str, int]) -> None:
    pair = {"user_id": ids["kept"], "item_id": ids["item"]}
    many = client.post("/score", json={"pairs": [pair] * (MAX_PAIRS + 1)})
    assert many.status_code == 413 and f"at most {MAX_PAIRS}" in many.json()["detail"]
    assert client.post("/forget", json={"user_ids": list(range(MAX_PAIRS + 1))}).status_code == 413
    padded = b'{"user_id": 1, "item_id": 2' + b" " * MAX_BYTES + b"}"
    big = client.post("/score", content=padded, headers={"content-type": "application/json"})
    assert big.status_code == 413 and "bytes" in big.json()["detail"]
    chunked = client.post("/score", content=iter([padded[:1000], padded[1000:]]),  # no Content-Length
                          headers={"content-type": "application/json"})
    assert chunked.status_code == 413


def test_serve_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--run", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_openapi_documents_every_path(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/health", "/score", "/forget", "/jobs/{job_id}"} <= set(schema["paths"])
    assert {"Pair", "Pairs", "Scores", "ForgetBody", "JobStatus"} <= set(schema["components"]["schemas"])


def problem_of(response: httpx.Response) -> Problem:
    """The body as the declared Problem model, and nothing beyond it (the schema's whole promise)."""
    body = response.json()
    assert set(body) <= {"detail", "errors"} and isinstance(body["detail"], str), body
    return Problem.model_validate(body)


def test_forget_with_both_fields_is_the_documented_422(client: TestClient, run: Path, ids: dict[str, int]) -> None:
    """Both `user_ids` and `interactions`: matches no variant of the schema's oneOf, and is refused as such."""
    requests = len(Run(run).ledger().requests())
    body = {"user_ids": [ids["kept"]], "interactions": [{"user_id": ids["kept"], "item_id": ids["item"]}]}
    response = client.post("/forget", json=body)
    assert response.status_code == 422
    problem = problem_of(response)
    assert problem.errors and "extra_forbidden" in {error.type for error in problem.errors}
    assert str(ids["kept"]) not in response.text
    assert len(Run(run).ledger().requests()) == requests and client.get("/health").json()["queue"] == 0


def test_a_422_from_score_has_the_declared_body(client: TestClient) -> None:
    """FastAPI's own validation errors and the service's own 422s share the Problem body the schema declares."""
    for response in (client.post("/score", json={"user_id": 1}),
                     client.post("/score", content=b'{"user_id": 1,', headers={"content-type": "application/json"}),
                     client.post("/score", content=b'{"user_id": "\xe9"}', headers={"content-type":
                                                                                        "application/json"})):
        assert response.status_code == 422
        problem_of(response)
    missing = problem_of(client.post("/score", json={"user_id": 1}))
    assert {tuple(error.loc) for error in missing.errors} >= {("body", "Pair", "item_id")}
    assert all(error.msg and error.type for error in missing.errors)


def test_a_string_id_for_an_integer_column_is_422_and_nothing_is_deleted(client: TestClient, run: Path,
                                                                         ids: dict[str, int]) -> None:
    """{"user_ids": ["796"]} once deleted user 796: now the string is refused before anything is read or kept."""
    requests, version = len(Run(run).ledger().requests()), client.get("/health").json()["version"]
    for body in ({"user_ids": [str(ids["kept"])]},
                 {"interactions": [{"user_id": str(ids["kept"]), "item_id": ids["item"]}]},
                 {"interactions": [{"user_id": ids["kept"], "item_id": ids["item"], "timestamp": "0"}]}):
        response = client.post("/forget", json=body)
        assert response.status_code == 422, response.text
        assert "int_type" in {error.type for error in problem_of(response).errors}
        assert str(ids["kept"]) not in response.text
    assert len(Run(run).ledger().requests()) == requests and client.get("/health").json()["queue"] == 0
    assert client.get("/health").json()["version"] == version
    assert client.post("/score", json={"user_id": ids["kept"], "item_id": ids["item"]}).status_code == 200


def test_forget_job_swaps_the_version_and_the_user_is_gone(client: TestClient, run: Path,
                                                           ids: dict[str, int]) -> None:
    accepted = client.post("/forget", json={"user_ids": [ids["gone"]]})
    # Overlaps the first: by the time it runs `gone` is forgotten already, so only `other` is left to do.
    overlapping = client.post("/forget", json={"user_ids": [ids["gone"], ids["other"]]})
    assert accepted.status_code == overlapping.status_code == 202
    job_id, second = accepted.json()["job_id"], overlapping.json()["job_id"]
    assert accepted.json()["status"] == "queued" and second != job_id
    assert client.app.state.worker.join_idle(timeout=300)

    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "done" and job["version"] == "v0001" and job["error"] is None
    # /jobs leaves out row counts and the audit's sample counts: they single out a user (tests/test_hardening.py)
    assert 0.0 <= job["metrics"]["auc"] <= 1.0 and job["row_counts"] is None and "forget_prompts" not in job["audit"]
    assert job["audit"]["verdict"] == "insufficient"
    assert job["audit"]["after"]["mia_auc"] is not None and str(ids["gone"]) not in json.dumps(job["audit"])
    later = client.get(f"/jobs/{second}").json()
    assert later["status"] == "done" and later["version"] == "v0002", later["error"]

    health = client.get("/health").json()
    assert health["version"] == "v0002" and health["honours"] == [job_id, second] and health["queue"] == 0
    assert Run(run).ledger().honoured_by("v0001") == [job_id]
    for user in ("gone", "other"):
        gone = client.post("/score", json={"user_id": ids[user], "item_id": ids["item"]})
        assert gone.status_code == 404 and str(ids[user]) not in gone.text
    kept = client.post("/score", json={"user_id": ids["kept"], "item_id": ids["item"]}).json()
    assert kept["version"] == "v0002"

    repeat = client.post("/forget", json={"user_ids": [ids["gone"]]})
    assert repeat.status_code == 200 and repeat.json() == {"job_id": job_id, "status": "done", "version": "v0001"}


WRITE, READ = "w" * 8 + "0123456789abcdef", "r" * 8 + "0123456789abcdef"


def test_tokens_guard_every_endpoint_but_health(run: Path, ids: dict[str, int]) -> None:
    app_ = create_app(run, tokens=Tokens(write=(WRITE.encode(),), read=(READ.encode(),)),
                      allowed_hosts=["127.0.0.1", "localhost"])
    pair = {"user_id": ids["kept"], "item_id": ids["item"]}
    with TestClient(app_, base_url="http://localhost") as client:
        assert client.get("/health").status_code == 200
        calls = [("post", "/score", {"json": pair}), ("post", "/forget", {"json": {"user_ids": [987654]}}),
                 ("get", "/jobs/x", {}), ("get", "/openapi.json", {})]
        for method, path, kwargs in calls:
            for header in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": WRITE},
                           {"Authorization": f"Basic {WRITE}"}):
                response = getattr(client, method)(path, headers=header, **kwargs)
                assert response.status_code == 401, (path, header)
                assert response.headers["www-authenticate"] == "Bearer" and WRITE not in response.text
        write, read = {"Authorization": f"Bearer {WRITE}"}, {"Authorization": f"Bearer {READ}"}
        assert client.post("/score", json=pair, headers=read).status_code == 200
        assert client.get("/jobs/x", headers=read).status_code == 404
        refused = client.post("/forget", json={"user_ids": [987654]}, headers=read)
        assert refused.status_code == 403, "a read token may not delete"
        assert client.post("/forget", json={"user_ids": [987654]}, headers=write).status_code == 404
        rebinding = client.post("/score", json=pair, headers={**write, "Host": "attacker.example"})
        assert rebinding.status_code == 400, "the Host header must name an allowed host"
        assert client.get("/health", headers={"Host": "attacker.example:8000"}).status_code == 400


def test_a_stalled_body_is_408_not_a_held_connection(run: Path) -> None:
    app_ = create_app(run, body_timeout=0.2)
    sent: list[dict] = []

    async def receive() -> dict:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b'{"user_id": 1', "more_body": True}
        await asyncio.sleep(30)  # the client promised more and never sends it
        return {"type": "http.disconnect"}

    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    scope = {"type": "http", "method": "POST", "path": "/score", "headers": [(b"content-length", b"100"),
             (b"content-type", b"application/json")], "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1), "http_version": "1.1", "app": app_}
    asyncio.run(asyncio.wait_for(app_(scope, receive, send), 5))
    assert messages[0]["status"] == 408


def test_service_start_fails_orphans_and_sweeps_their_scratch(trained: Path, tmp_path: Path) -> None:
    """As after `kill -9` of a service mid-job: a record `running` under a dead process, scratch data left."""
    run = init_run(tmp_path / "run", trained / "data", trained / "original", key_file=tmp_path / "k")
    ledger = Run(run).ledger()
    record = ledger.add("users", ledger.hash_ids(["1"]))
    host = record["owner"].rsplit(":", 1)[0]
    ledger.update(record["request_id"], status="running", owner=f"{host}:{2**22 + 11}")
    (run / ".work" / record["request_id"] / "job-data").mkdir(parents=True)
    with TestClient(create_app(run)) as client:
        job = client.get(f"/jobs/{record['request_id']}").json()
        assert job["status"] == "failed" and "submit the request again" in job["error"]
        assert not (run / ".work").exists()
        assert client.get("/health").json()["status"] == "ok"


def test_damaged_weights_make_health_and_score_503(trained: Path, tmp_path: Path) -> None:
    run = init_run(tmp_path / "run", trained / "data", trained / "original", key_file=tmp_path / "k")
    weights = Run(run).current() / "model" / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.seek(weights.stat().st_size // 2)
        fh.write(b"\xff" * 4096)
    with TestClient(create_app(run)) as client:
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert "model.safetensors: missing or changed" in health.json()["detail"]
        scored = client.post("/score", json={"user_id": 1, "item_id": 1})
        assert scored.status_code == 503 and "model.safetensors" in scored.json()["detail"]


def test_unreadable_data_at_start_is_503_until_a_restart(trained: Path, tmp_path: Path) -> None:
    """Without the data's id types the schema cannot type ids; repairing the run does not make the loosely typed
    schema of this process safe to use (a string would be cast to an integer id), so only a restart does."""
    run = init_run(tmp_path / "run", trained / "data", trained / "original", key_file=tmp_path / "k")
    events = Run(run).current() / "data" / "events.parquet"
    events.rename(tmp_path / "aside")
    with TestClient(create_app(run)) as client:
        (tmp_path / "aside").rename(events)
        for path, body in (("/score", {"user_id": "1", "item_id": 1}), ("/forget", {"user_ids": ["1"]})):
            response = client.post(path, json=body)
            assert response.status_code == 503 and "restart" in response.json()["detail"], response.text
    assert Run(run).ledger().requests() == []


def test_kill_9_of_the_service_mid_job_then_restart_recovers(trained: Path, tmp_path: Path) -> None:
    """A real `e2urec serve` process killed (SIGKILL) while its deletion job runs: on restart the job is `failed`
    with the reason, scratch data and the half-written version are swept, and the run serves its old version."""
    run = init_run(tmp_path / "run", trained / "data", trained / "original",
                   {"max_steps": 200, "batch_size": 8, "aug_steps": 50}, key_file=tmp_path / "k")
    user = int(load_prepared(Run(run).current() / "data")[0].query("split == 'train'")["user_id"].iloc[0])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "e2urec", "serve", "--run", str(run), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "the service did not start"
                time.sleep(0.2)
        job = httpx.post(f"http://127.0.0.1:{port}/forget", json={"user_ids": [user]}, timeout=10).json()["job_id"]
        while not any((run / ".work").glob("*/*")):
            assert time.monotonic() < deadline and proc.poll() is None, "the job never started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert Run(run).ledger().get(job)["status"] in ("queued", "running")
    with TestClient(create_app(run)) as client:
        record = client.get(f"/jobs/{job}").json()
        assert record["status"] == "failed" and "submit the request again" in record["error"]
        assert client.get("/health").json()["version"] == "v0000"
    assert not (run / ".work").exists() and [p.name for p in (run / "versions").iterdir()] == ["v0000"]
