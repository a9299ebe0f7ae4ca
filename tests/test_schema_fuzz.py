"""The service keeps the contract it publishes: Schemathesis, with every check, against a real `e2urec serve`
(and what the schema must state, checked directly).

Schemathesis reads /openapi.json and sends what it implies: valid bodies (which must not be refused with 4xx
other than 401/403/404), invalid ones (which must be), requests without the token, methods no route has, and
chains a deletion job's id into GET /jobs/{job_id}; every response must match the declared status, content type
and body. It runs as the CLI the issue used (`st run ... --checks all`), on a throwaway copy of the tiny run
(valid ids it guesses may be forgotten), with a fixed seed so a failure reproduces, and bounded examples so the
test takes seconds beyond the shared `trained` fixture.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
from pydantic import ValidationError

from e2urec.ops.run import init_run
from e2urec.ops.schemas import TEXT_ID_PATTERN, WHITESPACE, IdTypes, IntegerId, TextId, api_models

TOKEN = "s" * 8 + "0123456789abcdef"
MAX_EXAMPLES = 25  # per operation and phase; 60 (the issue's) finds nothing more here and takes twice as long
SEED = 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `e2urec serve` process with a write token on a copy of the tiny run: (base URL, its log file)."""
    root = tmp_path_factory.mktemp("fuzz")
    run = init_run(root / "run", trained / "data", trained / "original",
                   {"max_steps": 2, "batch_size": 8, "aug_steps": 2}, key_file=root / "run.key",
                   audit={"audit_min_prompts": 100_000})  # jobs Schemathesis sets off stay a few seconds each
    (root / "token").write_text(TOKEN + "\n")
    port, log = free_port(), root / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the fuzzer and the server share the cores
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "e2urec", "serve", "--run", str(run), "--port", str(port),
                                 "--token-file", str(root / "token")], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)
        yield url, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # a deletion job in progress is left to finish for a few seconds
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_schemathesis_finds_no_failure_and_no_server_error(served: tuple[str, Path], tmp_path: Path) -> None:
    url, log = served
    start = log.stat().st_size
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
         "-H", f"Authorization: Bearer {TOKEN}", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
         "--generation-database", "none", "--no-color", "--report", "junit",
         "--report-junit-path", str(tmp_path / "junit.xml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", output)
    assert summary and int(summary[1]) == int(summary[2]) > 100, output[-3000:]
    report = ElementTree.parse(tmp_path / "junit.xml").getroot().attrib  # one testcase per operation, + stateful
    assert (report["failures"], report["errors"]) == ("0", "0") and int(report["tests"]) >= 5, report

    # What the server itself answered (uvicorn's access log): no 5xx, and every kind of answer was reached.
    lines = log.read_bytes()[start:].decode(errors="replace")
    statuses = Counter(int(code) for code in re.findall(r'" (\d{3}) ', lines))
    assert not [code for code in statuses if code >= 500], statuses
    assert {200, 401, 404, 405, 422} <= set(statuses), statuses


def test_openapi_states_one_of_one_id_type_and_one_error_body(served: tuple[str, Path]) -> None:
    """What issue #31 found served otherwise: bodies of several shapes are `oneOf` closed variants, ids have
    the data's type (integers in ML-100K), every error status of every route declares the Problem body, and the
    bearer token the service demands is declared too (so a client, or Schemathesis, knows to send it)."""
    url, _ = served
    schema = httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    components = schema["components"]["schemas"]
    for name, variants in (("ForgetBody", {"ForgetUsers", "ForgetInteractions", "ForgetTimedInteractions"}),
                           ("ScoreBody", {"Pairs", "Pair"})):
        assert "anyOf" not in components[name]
        assert {ref["$ref"].rsplit("/", 1)[1] for ref in components[name]["oneOf"]} == variants
        assert all(components[v]["additionalProperties"] is False for v in variants)
    for model, field in (("Pair", "user_id"), ("Pair", "item_id"), ("TimedInteraction", "timestamp")):
        assert components[model]["properties"][field]["type"] == "integer", (model, field)
    assert components["ForgetUsers"]["properties"]["user_ids"]["items"]["type"] == "integer"
    assert "HTTPValidationError" not in components
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            failures = {int(code): r for code, r in operation["responses"].items() if int(code) >= 400}
            guarded = path != "/health"
            assert {400, 408, 413, 422, 500} | ({401} if guarded else set()) <= set(failures), (method, path)
            assert all(r["content"]["application/json"]["schema"] == problem for r in failures.values()), path
            assert bool(operation.get("security")) == guarded, path


def test_text_ids_are_strings_without_padding() -> None:
    """A dataset with text ids (Goodreads, a CSV): the schema types them as strings, an integer is refused rather
    than matched to "42", and so is a padded id (the data's ids are stripped: it would be trimmed into another)."""
    api = api_models(IdTypes(TextId, TextId, IntegerId))
    assert api.Pair.model_json_schema()["properties"]["user_id"]["type"] == "string"
    assert api.ScoreBody.model_validate({"user_id": "a b", "item_id": "x"}).pairs()[0].user_id == "a b"
    for bad in (42, " 42", "42\n", "\u3000x", "", "x" * 129):
        with pytest.raises(ValidationError):
            api.ScoreBody.model_validate({"user_id": bad, "item_id": "x"})
    assert all(not re.fullmatch(TEXT_ID_PATTERN, f"{c}x") and not re.fullmatch(TEXT_ID_PATTERN, f"x{c}")
               for c in WHITESPACE)  # the schema's pattern says what the validator checks
    assert re.fullmatch(TEXT_ID_PATTERN, "x") and re.fullmatch(TEXT_ID_PATTERN, "a b")
