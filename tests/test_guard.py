"""The output guard: every command that writes a folder refuses, before any work and with exit code 2, an --out that
is an input, contains one, lies inside one or inside another artifact, or is an artifact of another kind, with
--overwrite or without; no byte of anything on disk changes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.io import artifact_kind
from e2urec.ops.run import init_run

runner = CliRunner()
KIND = {"prepare": "data", "train": "model", "evaluate": "evaluation", "unlearn": "model", "init": "run",
        "bench": "bench", "demo": "bench"}
TARGETS = ("data", "data/sub", "model", "model/sub", ".", "run", "run/current", "run/versions/v0000", "eval",
           "bench", "plain", "ratings.csv")
INPUTS = {"prepare": ("ratings.csv",), "train": ("data",), "evaluate": ("model", "data"),
          "unlearn": ("model", "data"), "init": ("data", "model"), "bench": (), "demo": ()}
TARGET_KIND = {"data": "data", "model": "model", "run": "run", "eval": "evaluation", "bench": "bench"}


@pytest.fixture(scope="module")
def world(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inputs and artifacts of every kind side by side: data, model, run, evaluation, bench, a plain folder."""
    root = tmp_path_factory.mktemp("world")
    shutil.copytree(trained / "data", root / "data")
    shutil.copytree(trained / "original", root / "model")
    init_run(root / "run", root / "data", root / "model", key_file=tmp_path_factory.mktemp("keys") / "run.key")
    (root / "eval").mkdir()
    (root / "eval" / "metrics.json").write_text("{}")
    (root / "bench" / "seed-0").mkdir(parents=True)
    (root / "plain").mkdir()
    (root / "plain" / "notes.txt").write_text("mine")
    (root / "ratings.csv").write_text("user_id,item_id,rating,timestamp\n1,2,4,100\n")
    return root


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` with the sha256 of its bytes (or where a link points): any change shows."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            out[key] = "-> " + os.readlink(path)
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = "dir"
    return out


def command(name: str, root: Path, out: Path) -> list[str]:
    data, model = str(root / "data"), str(root / "model")
    return {"prepare": ["prepare", "--dataset", "csv", "--data-dir", str(root / "ratings.csv"), "--out", str(out)],
            "train": ["train", "--data", data, "--out", str(out)],
            "evaluate": ["evaluate", "--model", model, "--data", data, "--out", str(out)],
            "unlearn": ["unlearn", "--method", "e2urec", "--model", model, "--data", data, "--out", str(out)],
            "init": ["init", "--run", str(out), "--data", data, "--model", model],
            "bench": ["bench", "--out", str(out)], "demo": ["demo", "--out", str(out)]}[name]


def refused(name: str, target: str, overwrite: bool) -> bool:
    """Whether the guard must refuse: all but an artifact of the command's own kind that is not its input (which
    --overwrite may replace, and a bench folder resumes)."""
    same = TARGET_KIND.get(target) == KIND[name] and target not in INPUTS[name]
    return not (same and (overwrite or KIND[name] == "bench"))


CASES = [(name, target, overwrite) for name in KIND for target in TARGETS for overwrite in (False, True)
         if refused(name, target, overwrite) and not (overwrite and name in ("bench", "demo"))]


def test_kinds_are_told_by_their_markers(world: Path) -> None:
    assert [artifact_kind(world / t) for t in ("data", "model", "run", "eval", "bench", "plain", "run/current")] \
        == ["data", "model", "run", "evaluation", "bench", None, None]


@pytest.mark.parametrize("name", list(KIND))
def test_every_writing_command_refuses_a_dangerous_out_and_changes_nothing(world: Path, name: str) -> None:
    before = tree(world)
    cases = [(target, overwrite) for n, target, overwrite in CASES if n == name]
    assert len(cases) >= 11
    for target, overwrite in cases:
        args = command(name, world, world / target) + (["--overwrite"] if overwrite else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        option = "--run" if name == "init" else "--out"  # the option the message names is the one given
        assert option in result.output and "nothing was changed" in result.output or "--overwrite" in result.output
        assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
        assert tree(world) == before, f"{args} changed something on disk"
    assert len(CASES) == 138  # the figure in docs/security.md


def test_overwrite_replaces_only_the_same_kind(world: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    shutil.copytree(world / "eval", out)
    result = runner.invoke(app, ["evaluate", "--model", str(world / "model"), "--data", str(world / "data"),
                                 "--out", str(out)])
    assert result.exit_code == 2 and "pass --overwrite" in result.output
    result = runner.invoke(app, ["evaluate", "--model", str(world / "model"), "--data", str(world / "data"),
                                 "--out", str(out), "--overwrite", "--batch-size", "64"])
    assert result.exit_code == 0, result.output
    assert (out / "predictions.parquet").is_file()


def test_an_unwritable_out_is_refused_before_work(world: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", str(world / "data"), "--out", str(world / "ratings.csv" / "m")])
    assert result.exit_code == 2 and "is a file" in result.output
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        result = runner.invoke(app, ["train", "--data", str(world / "data"), "--out", str(locked / "m")])
        assert result.exit_code == 2 and "permission denied" in result.output
    finally:
        locked.chmod(0o700)
