"""The abuse suite (issue 11): inputs a hostile or careless user gives the CLI. Each must end in exit code 2 with a
message naming the problem, never a traceback, never a forgotten id, and nothing on disk may change."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.ops.run import init_run

runner = CliRunner()


@pytest.fixture(scope="module")
def world(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("abuse")
    shutil.copytree(trained / "data", root / "data")
    shutil.copytree(trained / "original", root / "model")
    init_run(root / "run", root / "data", root / "model", {"max_steps": 1, "batch_size": 8, "aug_steps": 1},
             key_file=tmp_path_factory.mktemp("keys") / "run.key")
    (root / "latin1.txt").write_bytes("42,caf\xe9\n".encode("latin-1"))
    (root / "utf16.txt").write_bytes("42\n".encode("utf-16"))
    (root / "binary.bin").write_bytes(bytes(range(256)))
    (root / "nul.txt").write_bytes(b"42\x00\x00\n")
    (root / "latin1.csv").write_bytes("user_id,item_id\n42,caf\xe9\n".encode("latin-1"))
    (root / "short.token").write_text("short\n")
    (root / "folder").mkdir()
    return root


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if not p.name.startswith(("ledger.sqlite", ".lock"))}


D, M, R, W = "{data}", "{model}", "{run}", "{root}"
PREP = ["prepare", "--dataset", "csv", "--data-dir", f"{W}/latin1.csv", "--out", f"{W}/new"]
TRAIN = ["train", "--data", D, "--out", f"{W}/new"]
EVAL = ["evaluate", "--model", M, "--data", D, "--out", f"{W}/new"]
UNLEARN = ["unlearn", "--method", "e2urec", "--model", M, "--data", D, "--out", f"{W}/new"]
INIT = ["init", "--data", D, "--model", M, "--run", f"{W}/new"]
FORGET = ["forget", "--run", R]
SERVE = ["serve", "--run", R]
CASES: list[tuple[list[str], str]] = [
    # ids that must be matched exactly, never coerced
    ([*FORGET, "--users", "1e2"], "not integers"),
    ([*FORGET, "--users", "13.0"], "not integers"),
    ([*FORGET, "--users", "1.3e1"], "not integers"),
    ([*FORGET, "--users", "99999999999999999999999"], "not integers"),
    ([*FORGET, "--users", "9223372036854775808"], "not integers"),
    ([*FORGET, "--users", "0x10"], "not integers"),
    ([*FORGET, "--users", "١٢"], "not integers"),
    ([*FORGET, "--users", "987654"], "1 users not in the data"),
    ([*FORGET, "--users", " , ,"], "empty"),
    # files that are not UTF-8 text, or not files
    ([*FORGET, "--users", f"@{W}/latin1.txt"], "not UTF-8"),
    ([*FORGET, "--users", f"@{W}/utf16.txt"], "not UTF-8"),
    ([*FORGET, "--users", f"@{W}/binary.bin"], "not UTF-8"),
    ([*FORGET, "--users", f"@{W}/nul.txt"], "binary"),
    ([*FORGET, "--users", f"@{W}/folder"], "is a folder"),
    ([*FORGET, "--users", f"@{W}/missing.txt"], "not found"),
    ([*FORGET, "--interactions", f"{W}/latin1.csv"], "not UTF-8"),
    ([*FORGET, "--interactions", f"{W}/utf16.txt"], "not UTF-8"),
    ([*FORGET, "--interactions", f"{W}/folder"], "is a folder"),
    ([*FORGET, "--users", "1", "--interactions", f"{W}/latin1.csv"], "not UTF-8"),
    ([*FORGET], "exactly one"),
    (["forget", "--run", f"{W}/folder", "--users", "1"], "not a run folder"),
    # numbers out of range or not finite, at parse time
    ([*PREP, "--seed", "-1"], "--seed"),
    ([*PREP, "--seed", str(2**32)], "--seed"),
    ([*PREP, "--sep", ""], "--sep"),
    ([*PREP, "--label-threshold", "nan"], "--label-threshold"),
    ([*PREP, "--label-threshold", "inf"], "--label-threshold"),
    ([*PREP, "--forget-fraction", "1.5"], "strictly between 0 and 1"),
    ([*PREP, "--forget-fraction", "nan"], "strictly between 0 and 1"),
    ([*PREP, "--last-n", "0"], "--last-n"),
    ([*PREP, "--history", "-3"], "--history"),
    ([*PREP, "--shards", "0"], "--shards"),
    ([*PREP, "--forget-users", f"@{W}/utf16.txt"], "not UTF-8"),
    ([*PREP, "--forget-interactions", f"{W}/binary.bin"], "not UTF-8"),
    ([*TRAIN, "--max-length", "-1"], "--max-length"),
    ([*TRAIN, "--lora-r", "0"], "--lora-r"),
    ([*TRAIN, "--lora-alpha", "0"], "--lora-alpha"),
    ([*TRAIN, "--lora-dropout", "2"], "--lora-dropout"),
    ([*TRAIN, "--lora-dropout", "nan"], "--lora-dropout"),
    ([*TRAIN, "--lr", "0"], "--lr"),
    ([*TRAIN, "--lr", "nan"], "--lr"),
    ([*TRAIN, "--lr", "-inf"], "--lr"),
    ([*TRAIN, "--epochs", "0"], "--epochs"),
    ([*TRAIN, "--batch-size", "0"], "--batch-size"),
    ([*TRAIN, "--grad-accum", "0"], "--grad-accum"),
    ([*TRAIN, "--patience", "0"], "--patience"),
    ([*TRAIN, "--max-steps", "0"], "--max-steps"),
    ([*TRAIN, "--seed", "-5"], "--seed"),
    ([*EVAL, "--mia-samples", "-1"], "--mia-samples"),
    ([*EVAL, "--batch-size", "0"], "--batch-size"),
    ([*EVAL, "--max-length", "0"], "--max-length"),
    ([*UNLEARN, "--epochs", "-1"], "--epochs"),
    ([*UNLEARN, "--lr", "nan"], "--lr"),
    ([*UNLEARN, "--max-steps", "0"], "--max-steps"),
    ([*UNLEARN, "--set", "alpha=nan"], "finite"),
    ([*UNLEARN, "--set", "alpha=inf"], "finite"),
    ([*UNLEARN, "--set", "epochs=-1"], "epochs"),
    ([*UNLEARN, "--set", "lora_r=0"], "lora_r"),
    ([*UNLEARN, "--set", "batch_size=0"], "batch_size"),
    ([*UNLEARN, "--set", "no_such=1"], "no_such"),
    ([*UNLEARN, "--set", "alpha"], "key=value"),
    ([*UNLEARN, "--set", "lora_r=abc"], "not a valid int"),
    (["unlearn", "--method", "nope", "--model", M, "--data", D, "--out", f"{W}/new"], "unknown method"),
    ([*INIT, "--set", "alpha=nan"], "finite"),
    ([*INIT, "--set", "batch_size=0"], "batch_size"),
    ([*INIT, "--set", "epochs=-3"], "epochs"),
    ([*INIT, "--set", "lora_dropout=2"], "lora_dropout"),
    ([*INIT, "--key-file", f"{W}/latin1.txt"], "exists already"),
    (["bench", "--out", f"{W}/new", "--seeds", "x"], "--seeds"),
    (["bench", "--out", f"{W}/new", "--seeds", "-1"], "--seeds"),
    (["bench", "--out", f"{W}/new", "--holdout-fraction", "1"], "--holdout-fraction"),
    # the service: ports, limits, addresses without a token, tokens
    ([*SERVE, "--port", "-1"], "--port"),
    ([*SERVE, "--port", "99999"], "--port"),
    ([*SERVE, "--port", "0"], "--port"),
    ([*SERVE, "--max-pairs", "0"], "--max-pairs"),
    ([*SERVE, "--host", "0.0.0.0"], "no token"),
    ([*SERVE, "--host", "192.0.2.1"], "no token"),
    ([*SERVE, "--token-file", f"{W}/short.token"], "at least 16"),
    ([*SERVE, "--token-file", f"{W}/missing.token"], "not found"),
    ([*SERVE, "--token-file", f"{W}/binary.bin"], "not UTF-8"),
    ([*SERVE, "--read-token-file", f"{W}/short.token"], "at least 16"),
]


def test_the_count_in_readme_is_current() -> None:
    assert len(CASES) == 80


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_input_is_a_clear_error_and_changes_nothing(world: Path, args: list[str], expected: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2UREC_API_TOKEN", raising=False)
    monkeypatch.delenv("E2UREC_API_READ_TOKEN", raising=False)
    before = tree(world)
    paths = {"data": world / "data", "model": world / "model", "run": world / "run", "root": world}
    result = runner.invoke(app, [a.format(**paths) for a in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), "no traceback"
    assert expected.lower() in result.output.lower(), result.output
    assert "987654" not in result.output, "an id given is never echoed"
    assert tree(world) == before and not (world / "new").exists()


def test_a_key_file_given_to_init_is_never_inside_the_run(world: Path) -> None:
    result = runner.invoke(app, ["init", "--data", str(world / "data"), "--model", str(world / "model"), "--run",
                                 str(world / "new"), "--key-file", str(world / "new" / "k")])
    assert result.exit_code == 2 and "inside the run folder" in result.output
    assert not (world / "new").exists() and os.listdir(world).count("new") == 0
