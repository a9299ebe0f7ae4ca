"""The command line is consistent and discoverable: every option with fixed values is a choice built from the
library's own names (a bad value stops at parse time, exit code 2, the valid values named), valid values reach
the library as plain strings, `e2urec --help` groups the commands by workflow step, `methods --audit` lists a
deployed run's audit settings from AuditConfig itself, and `bench` says when a preset swaps in its own backbone.
Nothing here trains a model: the library functions behind the commands are replaced where a command would run."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from e2urec import options as cap
from e2urec.cli import app
from e2urec.errors import E2URecError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def flat(output: str) -> str:
    """Typer's boxed output as one line: a message wrapped inside a box reads the same as unwrapped."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def bench_choices() -> tuple[str, ...]:
    from e2urec.bench import PRESETS

    return tuple(PRESETS)


def role_choices() -> tuple[str, ...]:
    from e2urec.data.roles import ROLES
    from e2urec.unlearning.sharded import SYSTEMS

    return (*ROLES, *SYSTEMS)


def split_choices() -> tuple[str, ...]:
    from e2urec.data.roles import SPLITS

    return SPLITS


def dataset_choices() -> tuple[str, ...]:
    from e2urec.data.readers import READERS

    return tuple(READERS)


CASES = [
    (["prepare", "--out", "{tmp}/o", "--dataset", "nope"], dataset_choices),
    (["bench", "--out", "{tmp}/o", "--dataset", "nope"], dataset_choices),
    (["bench", "--out", "{tmp}/o", "--preset", "nope"], bench_choices),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--role", "nope"], role_choices),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--keep", "nope"], lambda: cap.KEEP),
    (["evaluate", "--model", "{tmp}/m", "--data", "{tmp}/d", "--out", "{tmp}/o", "--split", "nope"], split_choices),
    (["anchor", "--data", "{tmp}/d", "--out", "{tmp}/o", "--split", "nope"], split_choices),
]


@pytest.mark.parametrize("args, expected", CASES, ids=[f"{args[0]} {args[-2]}" for args, _ in CASES])
def test_a_bad_value_names_the_choices_and_exits_2(tmp_path: Path, args: list[str], expected) -> None:
    """The choices are the library's own names (its readers, splits, roles, shard systems, presets), listed by
    typer before any work: nothing is written."""
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    text = flat(result.output)
    assert result.exit_code == 2, result.output
    assert "'nope' is not one of" in text, text
    assert all(f"'{choice}'" in text for choice in expected()), text
    assert not (tmp_path / "o").exists()


def test_docs_cli_lists_the_same_choices() -> None:
    """docs/cli.md's table of choices is checked against the CLI's own, value for value, so it cannot drift."""
    from e2urec.cli.common import Dataset, Keep, PresetName, Role, Split

    rows = [line.split("|")[2] for line in (ROOT / "docs" / "cli.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| `")]
    for choice in (Dataset, Role, Keep, Split, PresetName):
        values = [member.value for member in choice]
        assert any(re.findall(r"`([a-z0-9-]+)`", row) == values for row in rows), f"docs/cli.md lacks {values}"


def test_valid_values_reach_the_library_as_plain_strings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import e2urec.data.prepare as prepare_module
    import e2urec.evaluation as evaluation
    import e2urec.unlearning.sharded as sharded

    seen: dict[str, object] = {}

    def fake_prepare(cfg, out, overwrite=False):
        seen["dataset"] = cfg.dataset
        return {"source": "test", "counts": {}}

    def fake_evaluate(model, data, split, out, cfg, reference=None):
        seen["split"] = split
        return {"n": 1}

    def fake_system(data, role, backbone, out, cfg, recipe, overwrite=False):
        seen["role"] = role
        return {"shards": 2, "train_seconds": 0.0}

    monkeypatch.setattr(prepare_module, "prepare", fake_prepare)
    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(sharded, "train_system", fake_system)
    for args in (["prepare", "--dataset", "csv", "--out", str(tmp_path / "p")],
                 ["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--split", "retain",
                  "--out", str(tmp_path / "e")],
                 ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "s"), "--role", "receraser"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert seen == {"dataset": "csv", "split": "retain", "role": "receraser"}
    assert all(type(value) is str for value in seen.values())


def panels(output: str) -> dict[str, set[str]]:
    """The commands listed under each panel title of a rich help screen."""
    found: dict[str, set[str]] = {}
    current = None
    for line in output.splitlines():
        title = re.match(r"╭─ (\w+) ─", line)
        if title:
            current = found.setdefault(title.group(1), set())
        elif current is not None and (command := re.match(r"│ ([a-z][a-z-]*)\s", line)):
            current.add(command.group(1))
    return found


def test_top_level_help_groups_the_commands_in_five_panels() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    found = panels(result.output)
    assert {name: commands for name, commands in found.items() if name != "Options"} == {
        "Data": {"data", "prepare"},
        "Train": {"train", "anchor"},
        "Unlearn": {"unlearn", "methods"},
        "Evaluate": {"evaluate", "bench", "demo"},
        "Deploy": {"init", "forget", "ledger", "serve"},
    }
    assert list(found)[1:] == ["Data", "Train", "Unlearn", "Evaluate", "Deploy"]  # the workflow's order


def test_methods_audit_lists_every_audit_setting_with_its_default() -> None:
    from e2urec.ops.audit import AuditConfig

    result = runner.invoke(app, ["methods", "--audit"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for field in dataclasses.fields(AuditConfig):
        line = next((x for x in lines if x.strip().startswith(f"{field.name}=")), None)
        assert line is not None, f"{field.name} is not listed:\n{result.output}"
        assert line.strip().startswith(f"{field.name}={field.default}  {field.metadata['help']}"), line
    assert "init --set" in lines[0]
    both = runner.invoke(app, ["methods", "e2urec", "--audit"])
    assert both.exit_code == 2 and "not both" in both.output
    assert "e2urec methods --audit" in flat(runner.invoke(app, ["init", "--help"]).output)


@pytest.mark.parametrize("backbone, swapped", [(None, True), ("smollm2-135m", False)])
def test_bench_says_when_a_preset_replaces_the_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        backbone: str | None, swapped: bool) -> None:
    """One line before the first stage starts, only when the preset's backbone differs from the one given; the
    stages themselves are replaced, so nothing trains."""
    import e2urec.bench as bench_module
    import e2urec.report as report

    used: list[tuple[str, str]] = []

    def fake_seed(root, dataset, data_dir, chosen, preset, seed, stage, rows):
        used.append((dataset, chosen))
        stage.log("first stage")
        return {}

    monkeypatch.setattr(bench_module, "run_seed", fake_seed)
    monkeypatch.setattr(report, "write_report", lambda out, per_seed, config, machine: {
        "config": config, "per_seed": per_seed, "methods": []})
    given = [] if backbone is None else ["--backbone", backbone]
    result = runner.invoke(app, ["bench", "--out", str(tmp_path / "b"), "--preset", "gpu", *given])
    assert result.exit_code == 0, result.output
    assert used == [("ml-100k", "smollm2-135m")]
    notice = "preset gpu: backbone smollm2-135m (instead of tiny)"
    lines = result.output.splitlines()
    if swapped:
        assert lines.index(notice) < lines.index("first stage"), result.output
    else:
        assert "instead of" not in result.output
    assert "preset gpu uses smollm2-135m instead" in flat(runner.invoke(app, ["bench", "--help"]).output)


def test_anchor_scores_every_split_evaluate_takes() -> None:
    """forget and retain are parts of the train split (not values of its column); an empty split is named."""
    from e2urec.evaluation import one_hot_anchor

    users, items = [str(i % 6) for i in range(48)], [str(i % 5) for i in range(48)]
    samples = pd.DataFrame({"user_id": users, "item_id": items, "label": [i % 2 for i in range(48)],
                            "split": ["train"] * 32 + ["valid"] * 8 + ["test"] * 8,
                            "forget": [i < 8 for i in range(48)]})
    assert one_hot_anchor(samples, "forget")["n"] == 8
    assert one_hot_anchor(samples, "retain")["n"] == 24
    with pytest.raises(E2URecError, match="'holdout' has no samples"):
        one_hot_anchor(samples, "holdout")
