"""The benchmark scripts stay runnable and their results traceable, without running any of them: every script in
benchmarks/ and benchmarks/studies/ imports against the current library (a removed option or a private name
breaks the import, or is caught here before a long run fails on it), says what it is for in a module docstring
and runs its `main` only as a script; every `benchmarks/...` script the docs name exists; every kept results
JSON says which command and which commit produced it."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
STUDIES = BENCHMARKS / "studies"
SCRIPTS = sorted([*BENCHMARKS.glob("*.py"), *STUDIES.glob("*.py")])
HELPERS = {BENCHMARKS / "common.py"}  # shared code, not run on its own
RESULTS = sorted((BENCHMARKS / "results").glob("*.json"))
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
# A script path as the docs write it; placeholders in capitals (benchmarks/NAME.py) are not paths.
SCRIPT_PATH = re.compile(r"\bbenchmarks/(?:studies/)?[a-z0-9_]+\.(?:py|sh)\b")


def script_id(path: Path) -> str:
    return str(path.relative_to(BENCHMARKS))


def load(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import `path` as `python benchmarks/...py` would run it, minus its main: a benchmark finds common.py
    because its own folder leads sys.path; a study must put benchmarks/ there itself, so its folder is all it
    gets here, and a `common` imported by an earlier test is forgotten first."""
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.delitem(sys.modules, "common", raising=False)
    name = f"benchmark_script_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def runs_main_only_as_script(tree: ast.Module) -> bool:
    """A top-level `if __name__ == "__main__":` whose body names `main` (`main()` or `run(main)`)."""
    for node in tree.body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
                and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)):
            return any(isinstance(n, ast.Name) and n.id == "main" for stmt in node.body for n in ast.walk(stmt))
    return False


def test_scripts_are_found() -> None:
    assert BENCHMARKS / "common.py" in SCRIPTS and any(p.parent == STUDIES for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=script_id)
def test_script_imports_with_a_docstring_and_a_guarded_main(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load(path, monkeypatch)
    assert (module.__doc__ or "").strip(), f"{script_id(path)}: no module docstring saying what it measures"
    if path in HELPERS:
        return
    assert callable(getattr(module, "main", None)), f"{script_id(path)}: no main()"
    assert runs_main_only_as_script(ast.parse(path.read_text(encoding="utf-8"))), \
        f"{script_id(path)}: main must run only under `if __name__ == \"__main__\":`"


def test_every_script_the_docs_name_exists() -> None:
    named = {(doc.relative_to(ROOT), path) for doc in DOCS
             for path in SCRIPT_PATH.findall(doc.read_text(encoding="utf-8"))}
    assert named, "no benchmarks/... path found in the docs: the pattern is broken"
    missing = sorted(f"{doc}: {path}" for doc, path in named if not (ROOT / path).is_file())
    assert not missing, f"the docs name scripts that do not exist: {missing}"


def places(report: dict) -> list[dict]:
    """Where a results JSON records what produced it: at its top level (a benchmark's stamp), in `provenance`
    (added afterwards to files recorded before the stamp), or in `config` (an `e2urec bench` report's own)."""
    return [report, *(report[key] for key in ("provenance", "config") if isinstance(report.get(key), dict))]


@pytest.mark.parametrize("path", RESULTS, ids=lambda p: p.name)
def test_results_record_their_command_and_commit(path: Path) -> None:
    report = json.loads(path.read_text(encoding="utf-8"))
    found = places(report)
    assert any("command" in place for place in found), f"{path.name}: no command (null where no doc gives one)"
    commits = [place["commit"] for place in found if place.get("commit")]  # a hash, perhaps with a remark after it
    assert commits and all(re.match(r"[0-9a-f]{7,40}\b", c) for c in commits), f"{path.name}: no git commit"
