"""One option parser and validator (issue 31): `none` only where a field's type allows it, booleans only as
true/false/yes/no/1/0, whole numbers for int fields, an upper bound on every number — for method options
(`--set`), a run's audit settings (`init --set`) and the command line's own numbers alike. Every refusal is exit
code 2 with a message naming the option, before anything is written."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from e2urec.cli import app
from e2urec.data.prepare import PrepareConfig
from e2urec.errors import E2URecError
from e2urec.ops.audit import AuditConfig, parse_settings
from e2urec.options import check_fields, check_lora_rank, hidden_width, option, parse_options, specs
from e2urec.unlearning.base import REGISTRY, RecipeOverrides
from e2urec.unlearning.e2urec import E2URecConfig
from e2urec.unlearning.methods import GammaConfig

runner = CliRunner()


def refused(tmp_path: Path, args: list[str], *expected: str) -> str:
    """Run the CLI in an empty folder: exit 2, no traceback, every `expected` in the message, nothing written."""
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), "no traceback"
    for text in expected:
        assert text.lower() in result.output.lower(), result.output
    assert list(tmp_path.iterdir()) == [], "nothing may be written"
    return result.output


UNLEARN = ["unlearn", "--model", "{tmp}/m", "--data", "{tmp}/d", "--out", "{tmp}/out"]
INIT = ["init", "--run", "{tmp}/run", "--data", "{tmp}/d", "--model", "{tmp}/m"]
NONE_REFUSED = [("e2urec", key) for key in ("epochs", "lr", "batch_size", "lora_r", "alpha", "seed")] + [
    ("neggrad", "gamma"), ("npo", "npo_beta"), ("neggrad", "epochs"), ("label-flip", "batch_size")]


@pytest.mark.parametrize(("method", "key"), NONE_REFUSED)
def test_none_is_refused_where_the_type_has_no_none(tmp_path: Path, method: str, key: str) -> None:
    refused(tmp_path, [*UNLEARN, "--method", method, "--set", f"{key}=none"], key, "none is not accepted")
    refused(tmp_path, [*UNLEARN, "--method", method, "--set", f"{key}=None"], key, "none is not accepted")


@pytest.mark.parametrize("key", ["profile", "alpha_rule", "lora_targets", "push"])
def test_none_is_no_choice_of_a_text_option(tmp_path: Path, key: str) -> None:
    refused(tmp_path, [*UNLEARN, "--method", "e2urec", "--set", f"{key}=none"], key, "not a known choice", "one of")


@pytest.mark.parametrize(("pair", "expected"), [
    ("retain_ce=maybe", "not a valid bool"), ("retain_ce=", "not a valid bool"), ("retain_ce=2", "not a valid bool"),
    ("min_steps=1.5", "not a valid int"), ("min_steps=1e3", "not a valid int"), ("min_steps=0x10", "not a valid int"),
    ("min_steps=١٢", "not a valid int"), ("lora_r=abc", "not a valid int"), ("alpha=two", "not a valid float"),
    ("alpha=nan", "finite"), ("alpha=-inf", "finite"), ("alpha=1e999", "finite"),
    ("epochs=99999999999", "≤ 65536"), ("batch_size=99999999999999999999", "≤ 65536"),
    ("lora_r=99999999999", "≤ 4096"), ("lora_r=4097", "≤ 4096"), ("lora_alpha=99999999999", "lora_alpha"),
    ("max_steps=99999999999", "≤ 1048576"), ("aug_batch_size=99999999999", "aug_batch_size"),
    ("lr=1001", "≤ 1000"), ("seed=4294967296", "≤ 4294967295"), ("monitor_samples=99999999999", "monitor_samples"),
    ("lora_r=" + "9" * 5000, "out of range"), ("epochs=0", "> 0"), ("alpha", "key=value"), ("=3", "key=value"),
])
def test_bad_method_options_are_refused(tmp_path: Path, pair: str, expected: str) -> None:
    key = pair.partition("=")[0] or "key"
    refused(tmp_path, [*UNLEARN, "--method", "e2urec", "--set", pair], expected, key)


def test_neggrad_and_retrain_options(tmp_path: Path) -> None:
    refused(tmp_path, [*UNLEARN, "--method", "neggrad", "--set", "gamma=none"], "gamma")
    refused(tmp_path, [*UNLEARN, "--method", "neggrad", "--set", "gamma=1e9"], "gamma", "≤ 10000")
    refused(tmp_path, [*UNLEARN, "--method", "neggrad", "--set", "epochs=1.5"], "epochs", "not a valid int")
    refused(tmp_path, [*UNLEARN, "--method", "retrain", "--set", "epochs=99999999999"], "epochs", "≤ 65536")


@pytest.mark.parametrize(("pair", "expected"), [
    ("on_unverified=none", "not a known choice"), ("audit_tolerance=none", "none is not accepted"),
    ("audit_retries=none", "none is not accepted"), ("audit_seed=none", "none is not accepted"),
    ("audit_retries=1.5", "not a valid int"), ("audit_samples=1e3", "not a valid int"),
    ("audit_tolerance=nan", "finite"), ("audit_retries=6", "≤ 5"), ("test_samples=0", "≥ 1"),
    ("test_samples=99999999999", "≤ 10000000"), ("epochs=none", "none is not accepted"),
    ("alpha=none", "none is not accepted"), ("retain_ce=maybe", "not a valid bool"),
    ("lora_r=99999999999", "≤ 4096"), ("batch_size=99999999999999999999", "≤ 65536"),
])
def test_init_refuses_bad_settings_and_options(tmp_path: Path, pair: str, expected: str) -> None:
    refused(tmp_path, [*INIT, "--set", pair], pair.partition("=")[0], expected)


@pytest.mark.parametrize(("args", "expected"), [
    (["prepare", "--dataset", "csv", "--out", "{tmp}/o", "--history", "99999999999"], "--history"),
    (["prepare", "--dataset", "csv", "--out", "{tmp}/o", "--history", "101"], "--history"),
    (["prepare", "--dataset", "csv", "--out", "{tmp}/o", "--last-n", "99999999999"], "--last-n"),
    (["prepare", "--dataset", "csv", "--out", "{tmp}/o", "--min-history", "99999999999"], "--min-history"),
    (["prepare", "--dataset", "csv", "--out", "{tmp}/o", "--shards", "99999999999"], "--shards"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--batch-size", "99999999999999999999"], "--batch-size"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--lora-r", "99999999999"], "--lora-r"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--lora-alpha", "99999999999"], "--lora-alpha"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--epochs", "99999999999"], "--epochs"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--grad-accum", "99999999999"], "--grad-accum"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--patience", "99999999999"], "--patience"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--max-steps", "99999999999"], "--max-steps"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--max-length", "99999999999"], "--max-length"),
    (["train", "--data", "{tmp}/d", "--out", "{tmp}/o", "--lr", "1e9"], "--lr"),
    (["evaluate", "--model", "{tmp}/m", "--data", "{tmp}/d", "--out", "{tmp}/o", "--batch-size", "99999999999"],
     "--batch-size"),
    (["evaluate", "--model", "{tmp}/m", "--data", "{tmp}/d", "--out", "{tmp}/o", "--mia-samples", "99999999999"],
     "--mia-samples"),
    (["evaluate", "--model", "{tmp}/m", "--data", "{tmp}/d", "--out", "{tmp}/o", "--max-length", "99999999999"],
     "--max-length"),
    ([*UNLEARN, "--method", "e2urec", "--epochs", "99999999999"], "--epochs"),
    ([*UNLEARN, "--method", "e2urec", "--batch-size", "99999999999"], "--batch-size"),
    ([*UNLEARN, "--method", "e2urec", "--max-steps", "99999999999"], "--max-steps"),
    ([*UNLEARN, "--method", "e2urec", "--lr", "1e9"], "--lr"),
])
def test_command_line_numbers_have_upper_bounds(tmp_path: Path, args: list[str], expected: str) -> None:
    refused(tmp_path, args, expected, "out of range")


def test_one_parser_for_method_options_and_audit_settings() -> None:
    assert parse_options(["epochs=3", "retain_ce=NO", "max_steps=None", "stop=none", "lr=1e-3"], E2URecConfig) == {
        "epochs": 3.0, "retain_ce": False, "max_steps": None, "stop": "none", "lr": 1e-3}
    assert parse_options(["retain_ce=Yes"], E2URecConfig) == {"retain_ce": True}
    assert parse_options(["retain_ce=1", "lora-r=8"], E2URecConfig) == {"retain_ce": True, "lora_r": 8}
    assert parse_options(["epochs=none", "seed=none"], RecipeOverrides) == {"epochs": None, "seed": None}
    assert parse_settings({"test_samples": "none", "audit_retries": "2"}) == {"test_samples": None,
                                                                             "audit_retries": 2}
    with pytest.raises(E2URecError, match="init --set on_unverified"):
        parse_settings({"on_unverified": "none"})
    with pytest.raises(E2URecError, match="gamma"):
        GammaConfig(gamma=None)
    assert E2URecConfig.from_options({}) == E2URecConfig(), "defaults unchanged"
    assert AuditConfig() == AuditConfig.from_run({})


@pytest.mark.parametrize("options", [{"epochs": None}, {"lr": None}, {"alpha_rule": None}, {"profile": None},
                                     {"retain_ce": "maybe"}, {"min_steps": 1.5}, {"min_steps": True},
                                     {"lora_r": 10**11}, {"batch_size": 2**17}, {"alpha": "2"}])
def test_configs_built_from_code_are_checked_the_same_way(options: dict) -> None:
    with pytest.raises(E2URecError, match=next(iter(options))):
        E2URecConfig.from_options(options)


@pytest.mark.parametrize("stored", [{"on_unverified": None}, {"audit_tolerance": None}, {"audit_retries": True},
                                    {"audit_seed": 2**40}, {"test_samples": 10**12}])
def test_a_damaged_run_json_is_refused_with_a_message(stored: dict) -> None:
    with pytest.raises(E2URecError, match="run.json"):
        AuditConfig.from_run({"audit": stored})


def test_prepare_config_has_upper_bounds() -> None:
    for bad in ({"history": 99999999999}, {"last_n": 10**12}, {"shards": 10**6}, {"min_history": 10**12},
                {"seed": 2**40}):
        with pytest.raises(E2URecError, match="at most"):
            PrepareConfig("ml-100k", **bad)
    assert PrepareConfig("ml-100k", history=100).history == 100


def test_every_option_of_every_method_is_typed_and_bounded() -> None:
    for name, cls in REGISTRY.items():
        for key, spec in specs(cls.Config).items():
            assert spec.kind is not None, f"{name}.{key}: not typed"
            if spec.kind in (int, float):
                assert spec.high is not None, f"{name}.{key}: no upper bound"
    for key, spec in specs(AuditConfig).items():
        assert spec.kind is not None and (spec.kind not in (int, float) or spec.high is not None), key


def test_methods_lists_ranges() -> None:
    result = runner.invoke(app, ["methods"], terminal_width=400)
    assert result.exit_code == 0
    assert "lora_r=16" in result.output and "a whole number in [1, 4096]" in result.output
    assert "max_steps=None" in result.output and "or none]" in result.output
    assert "one of default | reference" in result.output
    # essential options first; the advanced ones only for one method by name
    assert "retain_ce=" not in result.output and "advanced options: e2urec methods e2urec" in result.output
    full = runner.invoke(app, ["methods", "e2urec"], terminal_width=400)
    assert full.exit_code == 0 and "  advanced:" in full.output and "true or false" in full.output
    assert full.output.index("lora_r=16") < full.output.index("  advanced:") < full.output.index("retain_ce=True")
    assert "neggrad" not in full.output
    bad = runner.invoke(app, ["methods", "bogus"])
    assert bad.exit_code == 2 and "unknown method 'bogus'" in bad.output


def test_version() -> None:
    from e2urec import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"e2urec {__version__}"


def test_the_lora_rank_is_bounded_by_the_hidden_width() -> None:
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=128))
    assert hidden_width(model) == 128 and hidden_width(SimpleNamespace(config=SimpleNamespace(d_model=64))) == 64
    check_lora_rank(128, model, "here")
    with pytest.raises(E2URecError, match="hidden width 128"):
        check_lora_rank(129, model, "here")
    check_lora_rank(10**6, object(), "unknown width: nothing to check")


def test_a_new_config_gets_the_same_checks() -> None:
    @dataclass
    class Toy:
        steps: int = option(1, "steps", low=1, high=10)
        rate: float | None = option(None, "rate", low=0, high=1, open_high=True)

        def __post_init__(self) -> None:
            check_fields(self)

    assert parse_options(["rate=none", "steps=10"], Toy) == {"rate": None, "steps": 10}
    for bad in ({"steps": 11}, {"rate": 1.0}, {"steps": None}):
        with pytest.raises(E2URecError):
            Toy(**bad)


@pytest.fixture()
def copies(trained: Path, tmp_path: Path) -> Path:
    """The trained fixture's data and Original under `tmp_path/src` (refusals must leave `tmp_path/work` empty)."""
    for name in ("data", "original"):
        shutil.copytree(trained / name, tmp_path / "src" / name)
    (tmp_path / "work").mkdir()
    return tmp_path


def test_init_checks_the_rank_against_the_backbone_and_every_escalation(copies: Path) -> None:
    src, work = copies / "src", copies / "work"
    init = ["init", "--run", str(work / "run"), "--data", str(src / "data"), "--model", str(src / "original"),
            "--key-file", str(copies / "run.key")]
    refused(work, [*init, "--set", "lora_r=200"], "lora_r=200", "hidden width 128")
    refused(work, [*init, "--set", "epochs=1000", "--set", "audit_retries=5"], "attempt", "epochs", "≤ 65536")
    assert not (copies / "run.key").exists()
    result = runner.invoke(app, [*init, "--set", "lora_r=128", "--set", "retain_ce=no", "--set", "test_samples=none",
                                 "--set", "max_steps=1"])
    assert result.exit_code == 0, result.output
    config = json.loads((work / "run" / "run.json").read_text())
    assert config["options"] == {"lora_r": 128, "retain_ce": False, "max_steps": 1}
    assert config["audit"]["test_samples"] is None and config["audit"]["on_unverified"] == "retry"


def test_train_and_unlearn_refuse_a_rank_above_the_hidden_width(copies: Path) -> None:
    src, work = copies / "src", copies / "work"
    refused(work, ["train", "--data", str(src / "data"), "--out", str(work / "o"), "--lora", "--lora-r", "129"],
            "hidden width 128")
    refused(work, ["unlearn", "--method", "e2urec", "--model", str(src / "original"), "--data", str(src / "data"),
                   "--out", str(work / "o"), "--set", "lora_r=129"], "hidden width 128")
